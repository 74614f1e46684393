"""The build's fault seam (qadwh_ray/index_build/faults.py): a no-op unless a test arms a point."""

import subprocess
import sys

import pytest

from qadwh_ray.index_build.faults import KILL_ENCODER_ENV, PAUSE_BEFORE_PUBLISH_ENV, PAUSE_SECONDS_ENV, POINTS, fault_point


def test_unarmed_points_do_nothing(monkeypatch):
    for env, _ in POINTS.values():
        monkeypatch.delenv(env, raising=False)
    for name in POINTS:
        fault_point(name)
    with pytest.raises(KeyError):
        fault_point("no-such-point")


def test_kill_encoder_kills_the_first_process_only(tmp_path):
    marker = tmp_path / "crashed"
    code = "from qadwh_ray.index_build.faults import fault_point; fault_point('encoder-batch'); print('survived')"
    env = {KILL_ENCODER_ENV: str(marker), "PATH": "/usr/bin:/bin"}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1 and "survived" not in first.stdout
    assert int(marker.read_text()) > 0  # the pid of the process that died
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "survived" in second.stdout


def test_pause_before_publish_writes_its_marker(tmp_path, monkeypatch):
    marker = tmp_path / "about-to-publish"
    monkeypatch.setenv(PAUSE_BEFORE_PUBLISH_ENV, str(marker))
    monkeypatch.setenv(PAUSE_SECONDS_ENV, "0")
    fault_point("before-publish")
    assert int(marker.read_text()) > 0
