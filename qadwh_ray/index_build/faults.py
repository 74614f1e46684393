"""Fault injection for the index build's tests: named points, no-ops unless a test arms them.

The build calls :func:`fault_point` at the points below and knows nothing else
about faults. A test arms a point by setting its environment variable: in the
driver's environment, or for the pipeline's Ray workers through
``BuildOptions(worker_env=...)``.

``encoder-batch`` (each encoder call), armed by ``$QADWH_FAULT_KILL_ENCODER=<path>``:
    the first call, in any actor, that finds no file at ``<path>`` creates it
    with its process id and kills its own process (``os._exit``), as a crashed
    node would.
``before-publish`` (a verified, staged version about to be published), armed by
``$QADWH_FAULT_PAUSE_BEFORE_PUBLISH=<path>``:
    writes the process id to ``<path>`` and sleeps ``$QADWH_FAULT_PAUSE_SECONDS``
    (default 600), so a test can kill the build between staging and publishing.
"""

from __future__ import annotations

import os
import time

__all__ = ["KILL_ENCODER_ENV", "PAUSE_BEFORE_PUBLISH_ENV", "PAUSE_SECONDS_ENV", "POINTS", "fault_point"]

KILL_ENCODER_ENV = "QADWH_FAULT_KILL_ENCODER"
PAUSE_BEFORE_PUBLISH_ENV = "QADWH_FAULT_PAUSE_BEFORE_PUBLISH"
PAUSE_SECONDS_ENV = "QADWH_FAULT_PAUSE_SECONDS"


def _kill_once(marker: str) -> None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another call already died: this one runs normally
        return
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    os._exit(1)


def _pause(marker: str) -> None:
    from qadwh_ray import storage

    storage.write_bytes(marker, f"{os.getpid()}\n".encode())
    time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "600")))


POINTS = {"encoder-batch": (KILL_ENCODER_ENV, _kill_once), "before-publish": (PAUSE_BEFORE_PUBLISH_ENV, _pause)}


def fault_point(name: str) -> None:
    """Pass the named point: runs its fault when a test armed it, else does nothing."""
    env, fault = POINTS[name]
    marker = os.environ.get(env)
    if marker:
        fault(marker)
