"""Ray's own output goes to its log files; the console keeps our stages, progress and results.

By default a driver prints Ray's INFO lines (cluster start, Serve
deployments, Data execution plans), every worker's stdout and stderr, and
warnings that are normal in operation. :func:`init_ray` starts or joins Ray
with the workers' output left in the session's log files (``log_to_driver``
off) and Ray's Python loggers writing to the console only at ERROR; the rest
of what they log goes to ``<session>/logs/driver.log`` beside Ray's own
files (``ray-data.log``, ``serve/``, ``worker-*.out``). Commands print
:func:`ray_log_dir` once so a user knows where to look.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

__all__ = ["init_ray", "quiet_ray_console", "ray_log_dir"]

_RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "ray.air")
_DRIVER_LOG = "driver.log"


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


def init_ray(**kwargs) -> Optional[str]:
    """``ray.init(**kwargs)`` with a quiet console (see the module docstring); returns the log directory."""
    import ray

    kwargs.setdefault("logging_level", "INFO")  # INFO into driver.log; the console shows errors only
    kwargs.setdefault("log_to_driver", False)
    quiet_ray_console()  # before init: its start-up messages too
    ray.init(**kwargs)
    quiet_ray_console()
    return ray_log_dir()
