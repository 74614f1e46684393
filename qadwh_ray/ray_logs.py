"""Ray's own output goes to its log files; the console keeps our stages, progress and results.

By default a driver prints Ray's INFO lines (cluster start, Serve
deployments, Data execution plans), every worker's stdout and stderr, and
warnings that are normal in operation. :func:`init_ray` starts or joins Ray
so that the console shows only:

* the command's own lines (stages, tables, results);
* the lines workers print with :func:`console_print` (the training workers'
  per-epoch metrics) and progress bars (``ray.experimental.tqdm_ray``: the
  step bar of training), relayed from the workers' output stream (a failing
  task or actor still fails the command with its traceback);
* records of Ray's Python loggers at ERROR.

Notices the cluster pushes to every driver (the raylet's "N worker processes
have been started" warning, dead-worker notes) go to ``driver.log`` as well: a
failing task or actor still fails the command with its own error.

Ray's C++ core also writes notices to the process's own stderr (file
descriptor 2, below Python); those go to ``<logs>/driver-native.err`` while
Python's ``sys.stderr`` keeps the terminal.

Everything else stays in the session's log directory, which commands print
once (:func:`ray_log_dir`): every worker's and replica's output in
``worker-*.out`` / ``.err`` and ``serve/``, Ray Data's in ``ray-data.log``,
and Ray's driver-side messages in ``driver.log``. The relay replaces the
handler ``ray.init(log_to_driver=True)`` registers on Ray's worker-output
dispatcher with a filtering one (Ray is pinned, see pyproject.toml).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

__all__ = ["init_ray", "quiet_ray_console", "ray_log_dir", "console_print"]

_RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "ray.air")
_DRIVER_LOG = "driver.log"
_CONSOLE_MARK = "[qadwh] "  # a worker line meant for the user's console (stripped by the relay)
_NATIVE_STDERR = "driver-native.err"


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _is_console(h: logging.Handler) -> bool:
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


def quiet_ray_console() -> None:
    """Ray's loggers print only errors to the console (idempotent; their files keep everything)."""
    import ray.data  # noqa: F401 — configures its loggers now, so they are quieted too
    import ray.serve  # noqa: F401

    for name in _RAY_LOGGERS:
        for h in logging.getLogger(name).handlers:
            if _is_console(h) and not any(isinstance(f, _ErrorsOnly) for f in h.filters):
                h.addFilter(_ErrorsOnly())
    log_dir = ray_log_dir()
    if log_dir is None:
        return
    path = os.path.join(log_dir, _DRIVER_LOG)
    for name in _RAY_LOGGERS:
        logger = logging.getLogger(name)
        if name != "ray" and logger.propagate:
            continue  # its records reach "ray"'s file handler
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in logger.handlers):
            fh = logging.FileHandler(path)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"))
            logger.addHandler(fh)


def ray_log_dir() -> Optional[str]:
    """The log directory of the Ray session this process is connected to (None when not connected)."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray._private.worker import _global_node

        return os.path.join(_global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 — a client connection has no local session directory
        return None


def console_print(text: str) -> None:
    """Print a line from a Ray worker that the driver's console shows (through :func:`init_ray`'s relay).

    Written to the process's own stdout: Ray Train's workers patch ``print`` to
    log as well, which would relay the line twice."""
    out = sys.__stdout__ or sys.stdout
    out.write(_CONSOLE_MARK + text + "\n")
    out.flush()


def _relay(data: dict) -> None:
    """Print the worker lines that belong on the console (see the module docstring)."""
    from ray._private.worker import print_worker_logs
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    keep = [ln[len(_CONSOLE_MARK):] if ln.startswith(_CONSOLE_MARK) else ln for ln in data.get("lines", [])
            if ln.startswith(_CONSOLE_MARK) or RAY_TQDM_MAGIC in ln]
    if keep:
        print_worker_logs({**data, "lines": keep}, sys.stderr if data.get("is_err") else sys.stdout, ignore_prefix=True)


def _cluster_notice_to_log(data: dict, ignore_prefix: bool) -> None:
    """Ray's error listener prints the cluster's notices with this (see the module docstring)."""
    for line in data.get("lines", []):
        logging.getLogger("ray").warning("(%s) %s", data.get("pid", "cluster"), line.rstrip())


def _install_relay() -> None:
    from ray._private import worker as ray_worker

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _relay)
    # the worker-output dispatcher bound the original at connect; only the error listener looks this name up
    ray_worker.print_to_stdstream = _cluster_notice_to_log


def _native_stderr_to(path: str) -> None:
    """File descriptor 2 (C++ writes) to ``path``; ``sys.stderr`` to the terminal it was."""
    sys.stderr.flush()
    terminal = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, errors="backslashreplace")


def init_ray(**kwargs) -> Optional[str]:
    """``ray.init(**kwargs)`` with a quiet console (see the module docstring); returns the log directory."""
    import ray

    kwargs.setdefault("logging_level", "INFO")  # INFO into driver.log; the console shows errors only
    kwargs.setdefault("log_to_driver", True)  # the training workers' lines and bar, through the relay
    quiet_ray_console()  # before init: its start-up messages too
    ray.init(**kwargs)
    if kwargs["log_to_driver"]:
        _install_relay()
    quiet_ray_console()
    log_dir = ray_log_dir()
    if log_dir is not None:
        _native_stderr_to(os.path.join(log_dir, _NATIVE_STDERR))
    return log_dir
