"""Bad settings fail fast, with a clear message, before anything is written to storage."""

import argparse
import importlib.util
from pathlib import Path

import pytest

from qadwh_ray import storage
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.ray_train import train_on_ray
from qadwh_ray.ray_train.cli import add_train_parser, run_train

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def _job_main():
    spec = importlib.util.spec_from_file_location("jobs_train", ROOT / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_train_subcommand_parses():
    parser = argparse.ArgumentParser(prog="qadwh")
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "c.yaml", "--set", "nbits=16", "--storage", "s3://b/runs", "--name", "r1"])
    assert (args.func, args.config, args.set, args.storage, args.name, args.max_failures) == (
        run_train, "c.yaml", ["nbits=16"], "s3://b/runs", "r1", 1,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "nbitz=16"], "unknown config key 'nbitz'"),
        (["--set", "nbits=0"], "between 1 and 4096 bits"),
        (["--config", "{cfg}"], "unknown config keys: learning_rate"),
        (["--set", "num_workers=3", "--set", "classes_per_batch=4"], "split evenly over num_workers=3"),
    ],
)
def test_bad_config_exits_2_with_the_reason_and_writes_nothing(argv, message, tmp_path, capsys, ray_cluster):
    (tmp_path / "bad.yaml").write_text("nbits: 16\nlearning_rate: 0.1\n")
    store = tmp_path / "runs"
    argv = [a.format(cfg=tmp_path / "bad.yaml") for a in argv] + ["--storage", str(store), "--name", "bad"]
    assert _job_main()(argv) == 2
    assert message in capsys.readouterr().err
    assert not store.exists()


def test_more_workers_than_the_cluster_has_fails_before_storage(ray_cluster, tmp_path):
    cpus = ray_cluster.cluster_resources()["CPU"]
    with pytest.raises(ValueError, match=rf"needs {int(cpus) + 1} CPUs, but the Ray cluster has {int(cpus)}"):
        train_on_ray(TrainConfig(num_workers=int(cpus) + 1, cpus_per_worker=1.0), str(tmp_path / "runs"), "big")
    with pytest.raises(ValueError, match="use_gpu with num_workers=1 needs 1 GPUs"):
        train_on_ray(TrainConfig(use_gpu=True, cpus_per_worker=0.5), str(tmp_path / "runs"), "gpu")
    assert not (tmp_path / "runs").exists()


def test_unreachable_or_unwritable_storage_fails_fast(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("QADWH_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("QADWH_S3_MAX_ATTEMPTS", "1")
    cfg = TrainConfig(num_workers=1, cpus_per_worker=0.5)
    with pytest.raises(storage.StorageError, match="s3://nowhere/runs"):
        train_on_ray(cfg, "s3://nowhere/runs", "r", log=lambda *_: None)

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(storage.StorageError, match="a-file/runs"):
        train_on_ray(cfg, str(blocker / "runs"), "r", log=lambda *_: None)
    assert blocker.read_text() == "not a directory"
