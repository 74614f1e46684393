"""Ray Train runs: 2 workers = 1 process on the global batch; checkpoints, worker failure, resume.

Each fit takes ~25 s or more on the 2-core CI machine, so these tests are few and tiny.
"""

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qadwh_ray import storage
from qadwh_ray.core.triplets import ClassBalancedBatchSampler
from qadwh_ray.data.transforms import to_float_tensor
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.datasets import load_retrieval_data, limit_training
from qadwh_ray.training.loop import make_optimizer, train_step
from qadwh_ray.model.checkpoint import load_checkpoint, load_payload
from qadwh_ray.model.network import HashOutput, build_model
from qadwh_ray.ray_train import train_on_ray
from qadwh_ray.data.catalog import DatasetInfo

FASHION_INFO = DatasetInfo("fashion", "fashion", tuple(str(i) for i in range(10)), False, "L", (28, 28), 70000)

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]

# The worker loops below live in this test module, which Ray workers cannot import: ship them by value.
ray_cloudpickle = pytest.importorskip("ray.cloudpickle")
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def small_data():
    data = load_retrieval_data("fashion", split_seed=0, val_fraction=0.1)
    data = limit_training(data, 160, seed=0)
    return dataclasses.replace(data, val_pos=data.val_pos[:60])


def _identity(self, x):
    return x


def _loop_without_dropout(config):
    """The real worker loop with dropout off, so its step is deterministic."""
    import torch

    from qadwh_ray.ray_train.worker import train_loop_per_worker

    torch.nn.Dropout.forward = _identity  # this Ray worker process only; it ends with the run
    return train_loop_per_worker(config)


class _TwoWorkerForward(nn.Module):
    """One process reproducing 2 DDP workers: each half of the global batch is its own BatchNorm batch."""

    def __init__(self, net):
        super().__init__()
        self.module = net  # unwrap() finds the network (and W) here, as with DDP

    def forward(self, x):
        half = len(x) // 2
        a, b = self.module(x[:half]), self.module(x[half:])
        return HashOutput(*(torch.cat([u, v]) for u, v in zip(a, b)))


def test_two_workers_take_the_same_step_as_one_process_on_the_global_batch(ray_cluster, small_data, tmp_path, monkeypatch):
    cfg = TrainConfig(
        nbits=16, classes_per_batch=4, images_per_class=4, optimizer="sgd", lr=0.1, momentum=0.9, augment=False,
        epochs=1, max_steps=1, num_workers=2, cpus_per_worker=0.5, seed=3,
    )
    info = train_on_ray(
        cfg, str(tmp_path / "runs"), "grad", data=small_data, max_failures=0, collective_timeout_s=60,
        train_loop_per_worker=_loop_without_dropout, log=lambda *_: None,
    )
    assert info.steps == info.total_steps == 1
    distributed = load_checkpoint(info.checkpoint_uri)  # a checkpoint directory holding model.pt loads as is

    # the same step in this process: the local trainer's first global batch, train_step, no Ray
    monkeypatch.setattr(torch.nn.Dropout, "forward", _identity)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model_config(FASHION_INFO, 28))
    optimizer = make_optimizer(net, cfg)
    sampler = ClassBalancedBatchSampler(small_data.train_labels, 4, 4, seed=cfg.seed)
    sampler.set_epoch(0)
    idx = next(iter(sampler))
    x = to_float_tensor(small_data.train_images[idx], mean=net.config.mean, std=net.config.std)
    y = torch.as_tensor(small_data.train_labels[idx], dtype=torch.float32)
    parts = train_step(_TwoWorkerForward(net), optimizer, x, y, cfg, np.random.default_rng(0), epoch=0)
    assert parts.num_triplets > 0

    for (name, p), (_, q) in zip(net.named_parameters(), distributed.named_parameters()):
        torch.testing.assert_close(q, p.detach(), rtol=1e-5, atol=1e-6, msg=name)
    torch.manual_seed(cfg.seed)
    start = build_model(cfg.model_config(FASHION_INFO, 28))
    moved = [n for (n, a), b in zip(start.named_parameters(), net.parameters()) if (a - b).abs().max() > 1e-4]
    assert "W" in moved and "hash_head.weight" in moved  # the step really moved the weights being compared

    # the checkpoint carries what a resume needs, and the epoch's metrics are reported
    payload = load_payload(info.checkpoint_uri)
    assert {"optimizer", "scheduler", "step", "epoch", "train_config", "split_seed", "history"} <= payload.keys()
    assert payload["step"] == 1 and payload["train_config"]["nbits"] == 16 and payload["split_seed"] == 0
    row = info.history[-1]
    assert row["loss"] == pytest.approx(float(parts.total.detach()), rel=1e-5)
    assert row["triplet"] == pytest.approx(parts.triplet, rel=1e-5)
    assert 0 <= row["train_accuracy"] <= 1 and 0 < row["val_map"] <= 1


def _crash_rank1_at_second_report(marker, store, run_name, env):
    """Worker loop whose rank 1 dies (os._exit) once, at its second epoch end, before reporting.

    Ray Train registers a checkpoint when its controller has polled every rank's report; rank 1 first
    waits until the epoch-1 checkpoint is registered (the run's checkpoint-manager snapshot on storage
    names it), so the test does not depend on how fast the controller polls on a loaded machine.
    """

    def loop(config):
        import os
        import time

        import ray.train

        from qadwh_ray.ray_train.trainer import latest_checkpoint
        from qadwh_ray.ray_train.worker import train_loop_per_worker

        real_report = ray.train.report
        steps = []

        def report(metrics, checkpoint=None, **kwargs):
            steps.append(metrics["step"])
            if ray.train.get_context().get_world_rank() == 1 and len(steps) == 2 and not os.path.exists(marker):
                os.environ.update(env)  # this worker may predate the test's S3 server settings
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    uri, _ = latest_checkpoint(store, run_name)
                    if uri and uri.endswith(f"checkpoint_step{steps[0]:08d}"):
                        break
                    time.sleep(0.5)
                open(marker, "w").close()
                os._exit(1)
            return real_report(metrics, checkpoint=checkpoint, **kwargs)

        ray.train.report = report  # this Ray worker process only
        return train_loop_per_worker(config)

    return loop


def test_worker_restore_reads_storage_and_walks_back_past_a_damaged_checkpoint(tmp_path, capsys):
    import pyarrow.fs as pafs
    import ray.train

    from qadwh_ray.training.loop import make_scheduler
    from qadwh_ray.model.checkpoint import checkpoint_dir_name, save_checkpoint
    from qadwh_ray.ray_train.worker import _restore

    cfg = TrainConfig(nbits=8, classes_per_batch=4, images_per_class=4, epochs=3)

    def state(seed):
        torch.manual_seed(seed)
        net = build_model(cfg.model_config(FASHION_INFO, 28))
        optimizer = make_optimizer(net, cfg)
        return net, optimizer, make_scheduler(optimizer, cfg)

    for step in (5, 10):
        net, optimizer, scheduler = state(step)
        save_checkpoint(str(tmp_path / checkpoint_dir_name(step) / "model.pt"), net, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, history=[{"step": step}])
    latest = tmp_path / checkpoint_dir_name(10) / "model.pt"
    latest.write_bytes(latest.read_bytes()[:-1])
    net, optimizer, scheduler = state(0)
    start, history = _restore(ray.train.Checkpoint(str(latest.parent), filesystem=pafs.LocalFileSystem()), net, optimizer, scheduler)
    assert start == 5 and history == [{"step": 5}]
    assert f"skipping checkpoint {latest.parent}: {latest} is damaged" in capsys.readouterr().out
    expected = state(5)[0].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())


def _job_main():
    spec = importlib.util.spec_from_file_location("jobs_train", ROOT / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_killed_worker_resumes_from_checkpoint_and_rerun_resumes_on_s3(ray_cluster, s3_server, tmp_path, capsys):
    bucket = s3_server.make_bucket()
    store = f"s3://{bucket}/runs"
    cfg = TrainConfig(
        nbits=8, classes_per_batch=4, images_per_class=4, epochs=3, train_limit=160, val_fraction=0.02,
        num_workers=2, cpus_per_worker=0.5,
    )
    marker = tmp_path / "crashed"
    s3_env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    info = train_on_ray(
        cfg, store, "faulty", max_failures=1, collective_timeout_s=60,
        train_loop_per_worker=_crash_rank1_at_second_report(str(marker), store, "faulty", s3_env), log=lambda *_: None,
    )
    assert marker.exists()  # a worker did die mid-run
    spe = info.total_steps // 3
    assert info.last_attempt_start_step == spe  # the new worker group started from the epoch-1 checkpoint
    assert info.steps == info.total_steps == 3 * spe  # and finished the configured number of steps
    assert [r["step"] for r in info.history] == [spe, 2 * spe, 3 * spe]
    assert info.checkpoint_uri == f"{store}/faulty/checkpoint_step{3 * spe:08d}"
    assert load_payload(info.checkpoint_uri)["step"] == 3 * spe  # a directory: verified against its checksum file
    names = storage.list_dir(info.run_uri)
    assert {f"checkpoint_step{s:08d}" for s in (spe, 2 * spe, 3 * spe)} <= set(names)
    assert all(storage.exists(f"{info.run_uri}/checkpoint_step{s:08d}/model.pt.sha256") for s in (spe, 2 * spe, 3 * spe))

    # damage the latest checkpoint (Ray Train still lists it as the latest): a re-run with the same name skips
    # it, says why, and resumes from the one before, through the job entry point, for one more epoch
    latest = f"{store}/faulty/checkpoint_step{3 * spe:08d}"
    data = storage.read_bytes(f"{latest}/model.pt")
    storage.write_bytes(f"{latest}/model.pt", data[: len(data) // 2])
    run = _job_main()
    args = ["--storage", store, "--name", "faulty", "--max-failures", "0", "--timeout", "60",
            "--set", "nbits=8", "--set", "classes_per_batch=4", "--set", "images_per_class=4", "--set", "epochs=4",
            "--set", "train_limit=160", "--set", "val_fraction=0.02", "--set", "num_workers=2", "--set", "cpus_per_worker=0.5"]
    assert run(args) == 0
    out = capsys.readouterr().out
    assert f"skipping checkpoint {latest}: {latest}/model.pt is damaged" in out
    assert f"resuming run faulty from {store}/faulty/checkpoint_step{2 * spe:08d}" in out
    assert f"{4 * spe}/{4 * spe} steps" in out and f"(resumed at step {2 * spe})" in out
    payload = load_payload(f"{store}/faulty/checkpoint_step{4 * spe:08d}")
    assert payload["step"] == 4 * spe and [r["step"] for r in payload["history"]] == [spe, 2 * spe, 3 * spe, 4 * spe]
    assert load_payload(latest)["step"] == 3 * spe  # the workers too went back to step 2*spe and rewrote step 3*spe

    # a resume with different model settings is refused before anything runs
    assert run(args + ["--set", "nbits=16"]) == 2
    assert "was started with other settings (nbits: 8 -> 16)" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_gpu_worker_trains_with_nccl(ray_cluster, small_data, tmp_path):
    cfg = TrainConfig(nbits=16, classes_per_batch=4, images_per_class=4, epochs=1, max_steps=3, use_gpu=True,
                      num_workers=1, cpus_per_worker=0.5)
    info = train_on_ray(cfg, str(tmp_path / "runs"), "gpu", data=small_data, max_failures=0, collective_timeout_s=60,
                        log=lambda *_: None)
    assert info.steps == 3 and 0 < info.history[-1]["val_map"] <= 1
    assert load_checkpoint(info.checkpoint_uri).W.device.type == "cpu"
