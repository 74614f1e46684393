"""Single-process training (no Ray): the same step function Ray Train runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from qadwh_ray.core.triplets import ClassBalancedBatchSampler
from qadwh_ray.data.transforms import resize, to_float_tensor, train_augment
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.datasets import RetrievalData, load_training_data, model_config_for
from qadwh_ray.training.loop import make_optimizer, make_scheduler, train_step, validation_map
from qadwh_ray.model.checkpoint import save_checkpoint
from qadwh_ray.model.network import build_model


@dataclass
class TrainResult:
    model: torch.nn.Module
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    checkpoint: str | None = None


def train_local(
    cfg: TrainConfig,
    data: RetrievalData | None = None,
    checkpoint_uri: str | None = None,
    progress: bool = True,
    log=print,
    epoch_end=None,
) -> TrainResult:
    """Train ``cfg`` in this process. ``epoch_end(result, model, optimizer, scheduler)``, when given, runs
    after every epoch's metrics row (e.g. to write a per-epoch checkpoint, as a Ray Train run does)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = data or load_training_data(cfg)
    model = build_model(model_config_for(cfg, data), cfg.pretrained)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    sampler = ClassBalancedBatchSampler(data.train_labels, cfg.classes_per_batch, cfg.images_per_class, seed=cfg.seed)
    mc = model.config
    x_all = to_float_tensor(data.train_images, mean=mc.mean, std=mc.std)
    y_all = torch.as_tensor(data.train_labels, dtype=torch.float32)
    aug_gen = torch.Generator().manual_seed(cfg.seed)

    result = TrainResult(model, cfg)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        sums = {"loss": 0.0, "triplet": 0.0, "classification": 0.0, "correct": 0, "seen": 0, "batches": 0}
        batches = tqdm(sampler, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        for idx in batches:
            x = x_all[idx]
            if cfg.augment:
                x = train_augment(x, aug_gen, erase=cfg.erase_probability)
            if x.shape[-1] != mc.image_size:
                x = resize(x, mc.image_size)
            parts = train_step(model, optimizer, x, y_all[idx], cfg, rng, epoch=epoch)
            sums["loss"] += float(parts.total.detach())
            sums["triplet"] += parts.triplet
            sums["classification"] += parts.classification
            sums["correct"] += parts.correct
            sums["seen"] += len(idx)
            sums["batches"] += 1
            result.steps += 1
            if cfg.max_steps and result.steps >= cfg.max_steps:
                break
        scheduler.step()
        b = max(sums["batches"], 1)
        row = {
            "epoch": epoch + 1,
            "step": result.steps,
            "loss": sums["loss"] / b,
            "triplet": sums["triplet"] / b,
            "classification": sums["classification"] / b,
            "train_accuracy": sums["correct"] / max(sums["seen"], 1),
            "seconds": time.perf_counter() - start,
        }
        if len(data.val_images):
            row["val_map"] = validation_map(
                model, data.val_images, data.val_labels, data.train_images, data.train_labels,
                method=cfg.method,
            )
        result.history.append(row)
        log("  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if epoch_end is not None:
            epoch_end(result, model, optimizer, scheduler)
        if cfg.max_steps and result.steps >= cfg.max_steps:
            break
    result.seconds = time.perf_counter() - start
    if checkpoint_uri:
        result.checkpoint = checkpoint_uri
        save_checkpoint(
            checkpoint_uri, model, train_config=cfg.to_dict(), step=result.steps, epoch=len(result.history),
            split_seed=cfg.split_seed, history=result.history, train_seconds=result.seconds,
            dataset=data.info.to_dict(),
        )
    return result
