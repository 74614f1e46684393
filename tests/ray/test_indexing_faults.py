"""Faults: an encoder actor killed mid-build, and a build killed before publishing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from index_helpers import local_codes, save_model

from qadwh_ray.index import IndexStore, open_index, write_index
from qadwh_ray.index_build import BuildOptions, build_index
from qadwh_ray.index_build.faults import KILL_ENCODER_ENV, PAUSE_BEFORE_PUBLISH_ENV
from qadwh_ray.data.fashion import fashion_augmented_images

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


def test_encoder_actor_killed_mid_build_every_item_exactly_once(ray_cluster, tmp_path):
    ckpt = save_model(tmp_path / "model.pt")
    marker = tmp_path / "crashed"
    root = str(tmp_path / "index")
    n = 900
    res = build_index(ckpt, f"fashion-augmented:{n}", root,
                      BuildOptions(shards=2, block_rows=150, batch_size=150, actors=1, worker_env={KILL_ENCODER_ENV: str(marker)}))
    assert marker.exists()  # an encoder process did die (os._exit) during the build
    assert int(marker.read_text()) > 0
    assert res.manifest.num_items == n
    data = open_index(root).read_all()
    assert np.array_equal(data.ids, np.arange(n))  # every item exactly once, none twice
    images, _ = fashion_augmented_images(data.ids)
    assert data.codes.tobytes() == local_codes(ckpt, images).tobytes()


def test_build_killed_before_publish_leaves_current_untouched(ray_cluster, tmp_path):
    ckpt = save_model(tmp_path / "model.pt")
    root = str(tmp_path / "index")
    rng = np.random.default_rng(0)
    write_index(root, np.arange(50), rng.integers(0, 256, (50, 2), dtype=np.uint8), code_bits=16, version="v-old")
    marker = tmp_path / "about-to-publish"
    env = {**os.environ, PAUSE_BEFORE_PUBLISH_ENV: str(marker), "PYTHONPATH": str(REPO)}
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "index.py"), "--checkpoint", ckpt, "--source", "fashion-augmented:300",
           "--out", root, "--shards", "2", "--block-rows", "150", "--batch-size", "150", "--ray-address", address]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the build exited ({proc.returncode}) before reaching publish:\n{proc.stdout.read()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("the build did not reach publish in time")
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies between writing its version and publishing it
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    store = IndexStore(root)
    assert store.current_version() == "v-old"
    assert store.list_versions() == ["v-old"]  # no half version visible
    staged = store.list_staged()
    assert len(staged) == 1  # the killed build's files, invisible to readers
    r = open_index(root)
    assert r.version == "v-old" and len(r.read_all()) == 50
    assert store.cleanup(keep=3, stale_after_s=0, now=time.time() + 1)["staging"] == staged
    assert store.list_staged() == []
