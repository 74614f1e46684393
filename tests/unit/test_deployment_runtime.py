"""What the cluster deployment relies on at run time: the service's index root from the
environment and its wait for a first index, the nightly's MAP gate, and jobs measuring a
cluster by what its autoscaler can reach (qadwh_ray.capacity)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from qadwh_ray.capacity import Capacity
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.serving.config import INDEX_ENV, AppArgs
from qadwh_ray.ray_train.trainer import check_cluster


def test_the_index_root_comes_from_the_environment_when_args_give_none(monkeypatch):
    monkeypatch.delenv(INDEX_ENV, raising=False)
    with pytest.raises(ValueError, match=f"args.index, or \\${INDEX_ENV}"):
        AppArgs.parse({"index": None})
    monkeypatch.setenv(INDEX_ENV, "s3://bucket/index")
    assert AppArgs.parse({"index": None}).index == "s3://bucket/index"
    assert AppArgs.parse({}).index == "s3://bucket/index"
    assert AppArgs.parse({"index": "/elsewhere"}).index == "/elsewhere"  # args win


def _publish(root: str) -> str:
    from qadwh_ray.index import write_index

    ids = np.arange(8, dtype=np.int64)
    codes = np.arange(16, dtype=np.uint8).reshape(8, 2)
    from qadwh_ray.model import ModelConfig

    ckpt = {"uri": "/nowhere/model.pt", "sha256": "0" * 64, "model_config": ModelConfig(nbits=16).to_dict()}
    return write_index(root, ids, codes, None, num_shards=2, checkpoint=ckpt).version


def test_a_service_deployed_before_its_first_index_waits_for_it(tmp_path):
    from qadwh_ray.serving.app import shard_count, wait_for_index

    root = str(tmp_path / "index")
    args = AppArgs.parse({"index": root, "wait_for_index_s": 120})
    publisher = threading.Timer(1.0, _publish, args=(root,))
    publisher.start()
    t0 = time.monotonic()
    wait_for_index(args, poll_s=0.2)
    publisher.join()
    assert time.monotonic() - t0 >= 0.9 and shard_count(args) == 2

    empty = AppArgs.parse({"index": str(tmp_path / "never"), "wait_for_index_s": 0.5})
    wait_for_index(empty, poll_s=0.2)  # gives up after its limit ...
    with pytest.raises(ValueError, match="Publish an index version first"):
        shard_count(empty)  # ... and the build fails naming what is missing


def test_the_nightly_refuses_to_publish_without_its_map_gate(tmp_path):
    from qadwh_ray.index_build.reindex import CheckOptions
    from qadwh_ray.pipelines.nightly import NightlyOptions, run_nightly

    for queries in ("none", "", None):
        opts = NightlyOptions(index=str(tmp_path / "index"), source="s3://bucket/images/", checkpoint=str(tmp_path / "ckpt"),
                              checks=CheckOptions(queries=queries))
        with pytest.raises(ValueError, match="always checks MAP on a query set"):
            run_nightly(opts)
    assert not (tmp_path / "index").exists()  # refused before anything was written


def test_capacity_of_fixed_and_autoscaling_clusters():
    now = {"CPU": 4.0}
    fixed = Capacity(now=now, autoscaling=False)
    assert fixed.limit() == now and fixed.reachable("GPU") == 0.0
    scaling = Capacity(now=now, autoscaling=True, most={"CPU": 68.0, "GPU": 8.0})
    assert scaling.limit() == {"CPU": 68.0, "GPU": 8.0} and scaling.reachable("GPU") == 8.0
    unknown = Capacity(now=now, autoscaling=True)
    assert unknown.limit() is None and unknown.reachable("GPU") == 0.0


def test_training_counts_the_gpus_an_autoscaler_can_add():
    cfg = TrainConfig(num_workers=2, use_gpu=True)
    no_gpu_yet = Capacity(now={"CPU": 16.0}, autoscaling=True, most={"CPU": 80.0, "GPU": 8.0})
    check_cluster(cfg, no_gpu_yet.limit(), no_gpu_yet.describe())  # waits for the nodes: no error
    with pytest.raises(ValueError, match="needs 2 GPUs, but the Ray cluster has 0"):
        fixed = Capacity(now={"CPU": 16.0}, autoscaling=False)
        check_cluster(cfg, fixed.limit(), fixed.describe())
    small = Capacity(now={}, autoscaling=True, most={"CPU": 80.0, "GPU": 1.0})
    with pytest.raises(ValueError, match=r"needs 2 GPUs, but the Ray cluster at its largest \(autoscaling\) has 1"):
        check_cluster(cfg, small.limit(), small.describe())  # can never fit: fail at once
