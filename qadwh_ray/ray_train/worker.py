"""The Ray Train worker loop: Ray inputs in, :func:`qadwh_ray.training.loop.train_step` calls out.

Thin on purpose: the model, optimiser, schedule, objective and step are the
local trainer's; this file only adds what running on N workers needs (DDP, the
cross-rank gather, this rank's data shard, checkpoint save/restore, per-epoch
metrics reported to Ray Train).
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

import ray.train
import ray.train.torch
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.loop import make_optimizer, make_scheduler, train_step, validation_map
from qadwh_ray.model.checkpoint import FILENAME, checkpoint_bytes, checkpoint_dir_name, load_newest_good, write_with_checksum
from qadwh_ray.model.config import ModelConfig
from qadwh_ray.model.network import build_model
from qadwh_ray.ray_logs import console_print
from qadwh_ray.ray_train.input import DATASET_NAME, BatchPlan, iter_local_batches


def _triplet_rng(cfg: TrainConfig, rank: int, epoch: int) -> np.random.Generator:
    """Per (rank, epoch) triplet-sampling stream: a run resumed at an epoch boundary draws what an
    uninterrupted one would (augmentation is seeded per step in the Ray Data tasks)."""
    return np.random.default_rng([cfg.seed, rank, epoch])


def _restore(checkpoint, net, optimizer, scheduler) -> tuple[int, list[dict]]:
    if checkpoint is None:
        return 0, []
    # Read from storage, not checkpoint.as_directory(): that shares one download directory among a node's
    # workers, and a second worker's re-download truncates model.pt under the first one's torch.load.
    _, payload = load_newest_good(checkpoint.filesystem, checkpoint.path, log=lambda msg: print(msg, flush=True))
    net.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return int(payload["step"]), list(payload.get("history", []))


def _all_reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.cpu().tolist()


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point. ``config``: ``train_config`` (TrainConfig dict), ``plan`` (BatchPlan dict),
    ``val`` (object ref of the validation queries and database, or None), ``model_config`` (the network, from
    the data), ``dataset`` (the DatasetInfo dict the checkpoint records), ``threads`` and ``progress``."""
    cfg = TrainConfig.from_dict(config["train_config"])
    plan = BatchPlan(**config["plan"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config.get("threads") or max(1, int(cfg.cpus_per_worker))))
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")

    torch.manual_seed(cfg.seed)
    net = build_model(ModelConfig.from_dict(config["model_config"]), cfg.pretrained).to(device)
    optimizer = make_optimizer(net, cfg)  # freezes W where the method does not learn it: before DDP sees it
    scheduler = make_scheduler(optimizer, cfg)
    start_step, history = _restore(ray.train.get_checkpoint(), net, optimizer, scheduler)
    model, gather = net, None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from qadwh_ray.training.distributed import TorchDistributedGather

        model = DDP(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            # a method without a classification stream leaves the two-stream network's class head unused
            find_unused_parameters=not cfg.method_spec.class_stream,
        )
        gather = TorchDistributedGather()
    info = {"start_step": start_step, "steps": start_step, "history": history, "world_size": world}
    if start_step >= plan.total_steps:
        return info  # already complete: nothing to train, the latest checkpoint stands

    spe = plan.steps_per_epoch
    val = None
    if rank == 0 and config.get("val") is not None:  # validation MAP: held-out images vs the training images
        val = ray.get(config["val"])
    shard = ray.train.get_dataset_shard(DATASET_NAME)

    def new_epoch():
        return {"loss": 0.0, "triplet": 0.0, "classification": 0.0, "correct": 0.0, "seen": 0.0, "batches": 0}, time.perf_counter()

    step = start_step
    sums, t_epoch = new_epoch()
    rng = _triplet_rng(cfg, rank, plan.epoch_of(step))
    bar = _progress_bar(plan, start_step) if rank == 0 and config.get("progress") else None
    for batch in iter_local_batches(shard, plan, world, start_step, device):
        x = batch.images  # normalised and augmented by the Ray Data tasks (ray_train/input.py)
        parts = train_step(model, optimizer, x, batch.labels, cfg, rng, gather, epoch=plan.epoch_of(step))
        sums["loss"] += float(parts.total.detach()) / world  # Σ over ranks = the global batch's loss
        sums["triplet"] += parts.triplet
        sums["classification"] += parts.classification
        sums["correct"] += parts.correct
        sums["seen"] += len(batch.index)
        sums["batches"] += 1
        step += 1
        if bar is not None:
            bar.update(1)
        if step % spe and step < plan.total_steps:
            continue

        # ---- end of an epoch (or of the run): metrics, validation MAP, checkpoint
        train_seconds = time.perf_counter() - t_epoch
        if step % spe == 0:  # not at a max_steps stop mid-epoch, so a longer re-run keeps the schedule
            scheduler.step()
        loss, tri, cls, correct, seen = _all_reduce(
            [sums["loss"], sums["triplet"], sums["classification"], sums["correct"], sums["seen"]], device, world
        )
        b = max(sums["batches"], 1)
        epoch = (step - 1) // spe + 1
        row = {
            "epoch": epoch,
            "step": step,
            "loss": loss / b,
            "triplet": tri / b,
            "classification": cls / b,
            "train_accuracy": correct / max(seen, 1),
            "train_seconds": train_seconds,
            "images_per_s": seen / train_seconds if train_seconds > 0 else 0.0,
            "world_size": world,
        }
        if val is not None and len(val["val_images"]):
            row["val_map"] = validation_map(
                net, val["val_images"], val["val_labels"], val["db_images"], val["db_labels"],
                method=cfg.method,
            )
        history.append(row)
        if rank == 0:
            console_print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        _report(row, rank, net, optimizer, scheduler, cfg, step, epoch, history, config.get("dataset"))
        info.update(steps=step, history=history)
        sums, t_epoch = new_epoch()
        rng = _triplet_rng(cfg, rank, plan.epoch_of(step))
    if bar is not None:
        bar.close()
    return info


def _progress_bar(plan: BatchPlan, start_step: int):
    """A step bar shown by the driver (Ray relays it from the worker)."""
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(desc="train steps", total=plan.total_steps, unit="step")
    if start_step:
        bar.update(start_step)
    return bar


def _report(row, rank, net, optimizer, scheduler, cfg, step, epoch, history, dataset=None) -> None:
    """Rank 0 reports the metrics with a checkpoint (model incl. W, optimiser, schedule, step, config,
    split seed); the other ranks report the same metrics without one."""
    name = checkpoint_dir_name(step)
    if rank != 0:
        ray.train.report(row, checkpoint=None, checkpoint_dir_name=name)
        return
    data = checkpoint_bytes(
        net,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        step=step,
        epoch=epoch,
        train_config=cfg.to_dict(),
        split_seed=cfg.split_seed,
        history=history,
        dataset=dataset,
    )
    with tempfile.TemporaryDirectory(prefix="qadwh-ckpt-") as d:
        with open(os.path.join(d, FILENAME), "wb") as f:
            f.write(data)
        ray.train.report(
            row, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name,
            checkpoint_upload_fn=_upload_checkpoint,
        )


def _upload_checkpoint(local, dir_name: str):
    """Ray Train's upload step for rank 0's checkpoint: model.pt, then its checksum file last, so a
    directory that has the checksum file is complete (Ray's own copy writes the files in any order)."""
    store = ray.train.get_context().get_storage()  # DeveloperAPI: the run's pyarrow filesystem and path
    path = posixpath.join(store.experiment_fs_path, dir_name)
    with open(os.path.join(local.path, FILENAME), "rb") as f:
        write_with_checksum(store.storage_filesystem, posixpath.join(path, FILENAME), f.read())
    return ray.train.Checkpoint(path, filesystem=store.storage_filesystem)
