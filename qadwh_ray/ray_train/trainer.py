"""Driver side of a Ray Train run: validate, build the input, run the TorchTrainer, say where things went.

``train_on_ray(cfg, storage_path, run_name)`` checks everything that can be
checked before any worker starts (config, cluster size, storage reachable,
resume compatibility) so bad settings fail in seconds and leave no
half-written checkpoint; then it runs a Ray Train V2 ``TorchTrainer`` (DDP over
gloo on CPUs, NCCL on GPUs) whose workers call the local trainer's step
function (:mod:`qadwh_ray.ray_train.worker`) on class-balanced global batches
streamed by Ray Data (:mod:`qadwh_ray.ray_train.input`).

Checkpoints go to ``RunConfig(storage_path, name)``; re-running with the same
name resumes from the latest one, and ``FailureConfig(max_failures)`` restarts
failed workers from it inside one run.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from qadwh_ray import storage
from qadwh_ray.capacity import cluster_capacity
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.datasets import RetrievalData, load_training_data, model_config_for
from qadwh_ray.model.checkpoint import FILENAME, load_newest_good

STORAGE_ENV = "QADWH_STORAGE"
DEFAULT_STORAGE = "~/qadwh_runs"

# Settings a resumed run may change; everything else must match the checkpoint's config.
# Validation MAP ranks held-out images against the training images, at most this many (a seeded sample).
VALIDATION_DATABASE_MAX = 5000

RESUMABLE_CHANGES = ("epochs", "max_steps", "num_workers", "use_gpu", "cpus_per_worker", "worker_resources")


@dataclass
class TrainRunInfo:
    """What a Ray Train run produced and where."""

    run_name: str
    storage_path: str  # URI: local path or s3://
    run_uri: str  # storage_path/run_name
    checkpoint_uri: str | None  # latest checkpoint directory (holds model.pt); load_checkpoint accepts it
    steps: int  # steps done in total (resumed runs count earlier steps too)
    total_steps: int
    start_step: int  # 0, or the step a resumed (re-run) run started from
    last_attempt_start_step: int  # where the last worker group started (> start_step after a worker failure)
    num_workers: int
    history: list[dict] = field(default_factory=list)  # one row per epoch: loss parts, accuracy, val MAP
    metrics: dict = field(default_factory=dict)  # the latest checkpoint's metrics
    seconds: float = 0.0  # driver wall time, Ray start-up included

    @property
    def model_uri(self) -> str | None:
        return storage.join(self.checkpoint_uri, FILENAME) if self.checkpoint_uri else None

    def summary(self) -> str:
        last = self.history[-1] if self.history else {}
        vm = f", val MAP {last['val_map']:.4f}" if "val_map" in last else ""
        resumed = f" (resumed at step {self.start_step})" if self.start_step else ""
        return (
            f"run {self.run_name}: {self.steps}/{self.total_steps} steps on {self.num_workers} worker(s){resumed}"
            f"{vm}; checkpoint: {self.checkpoint_uri}"
        )


def default_storage() -> str:
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def default_run_name(cfg: TrainConfig) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg.dataset.rstrip("/").rsplit("/", 1)[-1])
    return f"qadwh-{name}-{cfg.method}-{cfg.nbits}b-{time.strftime('%Y%m%d-%H%M%S')}"


def normalize_storage(uri: str) -> str:
    """s3:// URIs as given; local paths (and file://) made absolute."""
    return uri.rstrip("/") if storage.is_s3(uri) else storage.local_path(uri)


def check_storage(uri: str) -> None:
    """Write and delete a small probe object so an unreachable or read-only store fails before training."""
    probe = storage.join(uri, f".qadwh-probe-{uuid.uuid4().hex}")
    try:
        storage.write_bytes(probe, b"probe")
        storage.delete(probe, missing_ok=True)
    except storage.StorageError:
        raise
    except FileNotFoundError as exc:  # e.g. a missing bucket
        raise storage.StorageError(f"storage path {uri} is not usable: {exc}") from exc
    except OSError as exc:
        raise storage.StorageError(f"cannot write to storage path {uri}: {exc}") from exc


def check_cluster(cfg: TrainConfig, resources: dict[str, float], where: str = "the Ray cluster") -> None:
    """Fail fast when the workers cannot fit in ``resources`` (what ``where`` has, or can reach by
    autoscaling: qadwh_ray.capacity) instead of waiting forever for resources."""
    need = cfg.num_workers * cfg.cpus_per_worker
    have = float(resources.get("CPU", 0.0))
    if need > have + 1e-9:
        raise ValueError(
            f"num_workers={cfg.num_workers} x cpus_per_worker={cfg.cpus_per_worker:g} needs {need:g} CPUs, "
            f"but {where} has {have:g}; lower num_workers or cpus_per_worker "
            f"(fractional CPUs are fine), or add nodes"
        )
    for name, amount in (cfg.worker_resources or {}).items():
        if cfg.num_workers * amount > float(resources.get(name, 0.0)) + 1e-9:
            raise ValueError(
                f"num_workers={cfg.num_workers} x {name}={amount:g} needs {cfg.num_workers * amount:g} {name}, "
                f"but {where} has {float(resources.get(name, 0.0)):g}"
            )
    if cfg.use_gpu:
        gpus = float(resources.get("GPU", 0.0))
        if cfg.num_workers > gpus:
            raise ValueError(
                f"use_gpu with num_workers={cfg.num_workers} needs {cfg.num_workers} GPUs, "
                f"but {where} has {gpus:g}"
            )


def _keep_data_stats_on_the_driver() -> None:
    """Ray Data's detached stats actor lives on the node of whoever creates it first; created from
    a training worker it pins that worker's node for good, so an autoscaler never removes it."""
    from ray.data._internal.stats import get_or_create_stats_actor

    get_or_create_stats_actor()


def _fs_and_path(uri: str):
    """(pyarrow filesystem or None, path) for RunConfig: our S3 settings (endpoint, timeouts) travel with it."""
    if storage.is_s3(uri):
        return storage.filesystem_and_path(uri)
    return None, uri


def latest_checkpoint(storage_path: str, run_name: str) -> tuple[str | None, dict | None]:
    """(URI, metrics) of the latest checkpoint Ray Train registered for this run, or (None, None)."""
    import ray.train

    run_uri = storage.join(storage_path, run_name)
    fs, path = _fs_and_path(run_uri)
    try:
        if not storage.exists(run_uri):
            return None, None
        result = ray.train.Result.from_path(path, storage_filesystem=fs)
    except RuntimeError:  # the run directory exists but has no registered checkpoint yet
        return None, None
    if result.checkpoint is None:
        return None, None
    return _to_uri(storage_path, result.checkpoint.path), dict(result.metrics or {})


def _to_uri(storage_path: str, fs_path: str) -> str:
    if storage.is_s3(storage_path):
        return "s3://" + fs_path.lstrip("/")
    return fs_path


def check_resume(cfg: TrainConfig, payload: dict, run_name: str) -> None:
    """A run resumes only with the settings it was started with (bar those in RESUMABLE_CHANGES)."""
    before = dict(payload.get("train_config") or {})
    now = cfg.to_dict()
    diffs = [
        f"{k}: {before.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and k in before and before[k] != now[k]
    ]
    if diffs:
        raise ValueError(
            f"run {run_name!r} was started with other settings ({'; '.join(diffs)}); a resumed run may only "
            f"change {', '.join(RESUMABLE_CHANGES)}. Use another run name for a new run."
        )


def train_on_ray(
    cfg: TrainConfig,
    storage_path: str | None = None,
    run_name: str | None = None,
    *,
    data: RetrievalData | None = None,
    max_failures: int = 1,
    collective_timeout_s: int = 300,
    check_resources: bool = True,
    train_loop_per_worker: Callable[[dict], Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainRunInfo:
    """Train ``cfg`` on the Ray cluster (started locally if none is connected) and return where it went.

    ``storage_path``: local path or ``s3://`` URI (default ``$QADWH_STORAGE`` or ``~/qadwh_runs``);
    ``run_name``: re-use it to resume; ``data``: the training data (default: ``cfg``'s dataset, with
    ``train_limit`` applied); ``train_loop_per_worker``: replaces the worker loop (tests wrap it);
    ``progress``: a step bar from rank 0 (per-epoch metric lines are always printed).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from qadwh_ray.data.readers import read_images
    from qadwh_ray.ray_train.input import BatchPlan, ClassBalancedDataConfig, epochs_dataset, training_source
    from qadwh_ray.ray_train.worker import train_loop_per_worker as default_loop

    t0 = time.perf_counter()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if max_failures < -1:
        raise ValueError(f"max_failures must be >= -1 (-1 = retry forever), got {max_failures}")
    storage_path = normalize_storage(storage_path or default_storage())
    run_name = run_name or default_run_name(cfg)
    if not run_name or "/" in run_name or run_name.startswith("."):
        raise ValueError(f"run name must be a non-empty name without '/', got {run_name!r}")

    # ---- fail fast: cluster, data, storage, resume — before anything is written
    if not ray.is_initialized():
        from qadwh_ray.ray_logs import init_ray

        logs = init_ray()
        log(f"Ray's own logs and the workers' output: {logs or 'the cluster head node'}")
    if check_resources:
        capacity = cluster_capacity()
        if capacity.limit() is None:
            log(f"{capacity.describe()}: the {cfg.num_workers} training worker(s) wait for the nodes it adds")
        else:
            check_cluster(cfg, capacity.limit(), capacity.describe())
    if (cfg.classes_per_batch * cfg.images_per_class) % cfg.num_workers:
        raise ValueError(
            f"the global batch ({cfg.classes_per_batch} classes x {cfg.images_per_class} images) must split "
            f"evenly over num_workers={cfg.num_workers}"
        )
    check_storage(storage_path)
    data = data or load_training_data(cfg)
    model_config = model_config_for(cfg, data)
    plan = BatchPlan.for_config(cfg, data.train_labels)  # raises on impossible class-balanced batches
    ckpt_uri, _ = latest_checkpoint(storage_path, run_name)
    start_step = 0
    if ckpt_uri:  # the workers restore through the same loader, so they start where this says
        ckpt_uri, payload = load_newest_good(*storage.filesystem_and_path(ckpt_uri), log=log)
        check_resume(cfg, payload, run_name)
        start_step = int(payload["step"])
        log(f"resuming run {run_name} from {ckpt_uri} (step {start_step} of {plan.total_steps})")
        del payload
    plan = BatchPlan.for_config(cfg, data.train_labels, start_step=start_step)

    # ---- inputs: the catalog (no pixels) in the object store once; each worker streams its slice via
    # Ray Data, whose tasks read and decode the images; validation images (a capped sample) are small
    source_ref = ray.put(training_source(data.catalog, data.train_pos, data.image_size, model_config, cfg))
    labels_ref = ray.put(np.ascontiguousarray(data.train_labels))
    val_ref = None
    if len(data.val_pos):
        db = data.train_pos
        if len(db) > VALIDATION_DATABASE_MAX:
            db = np.sort(np.random.default_rng(cfg.split_seed).choice(db, VALIDATION_DATABASE_MAX, replace=False))
        size = (data.image_size, data.image_size)
        val_ref = ray.put({
            "val_images": data.val_images, "val_labels": data.val_labels,
            "db_images": read_images(data.catalog, db, size=size)[0], "db_labels": data.catalog.labels[db],
        })
    fs, fs_path = _fs_and_path(storage_path)
    resources = {"CPU": float(cfg.cpus_per_worker), **{k: float(v) for k, v in (cfg.worker_resources or {}).items()}}
    if cfg.use_gpu:
        resources["GPU"] = 1.0
    trainer = TorchTrainer(
        train_loop_per_worker or default_loop,
        train_loop_config={
            "train_config": cfg.to_dict(),
            "plan": plan.to_dict(),
            "val": val_ref,
            "model_config": model_config.to_dict(),
            "dataset": data.info.to_dict(),
            "threads": max(1, int(cfg.cpus_per_worker)),
            "progress": progress,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo", timeout_s=int(collective_timeout_s)),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=fs_path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
        datasets={"train": epochs_dataset(plan)},
        dataset_config=ClassBalancedDataConfig(source_ref, labels_ref, plan),
    )
    log(
        f"training run {run_name}: {cfg.num_workers} worker(s) x {cfg.cpus_per_worker:g} CPU"
        f"{' + 1 GPU' if cfg.use_gpu else ''}, global batch {plan.global_batch} "
        f"({cfg.classes_per_batch} classes x {cfg.images_per_class}), {plan.total_steps} steps "
        f"({plan.steps_per_epoch}/epoch); storage {storage.join(storage_path, run_name)}"
    )
    _keep_data_stats_on_the_driver()
    result = trainer.fit()
    out = result.return_value or {}
    ckpt = _to_uri(storage_path, result.checkpoint.path) if result.checkpoint is not None else None
    history = list(out.get("history") or [])
    return TrainRunInfo(
        run_name=run_name,
        storage_path=storage_path,
        run_uri=storage.join(storage_path, run_name),
        checkpoint_uri=ckpt,
        steps=int(out.get("steps", (result.metrics or {}).get("step", 0))),
        total_steps=plan.total_steps,
        start_step=start_step,
        last_attempt_start_step=int(out.get("start_step", start_step)),
        num_workers=cfg.num_workers,
        history=history,
        metrics=dict(result.metrics or {}),
        seconds=time.perf_counter() - t0,
    )
