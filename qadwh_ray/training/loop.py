"""Optimiser, schedule, one training step and validation MAP: the pieces both
the local trainer and the Ray Train worker loop are made of."""

from __future__ import annotations

import numpy as np
import torch

from qadwh_ray.core.metrics import mean_average_precision
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.objective import Gather, LossParts, batch_objective, project_weights_


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """W gets no weight decay (its scale is fixed by the projection, not by decay) and
    its own rate, ``lr × weight_lr_scale``; the schedule scales both groups alike."""
    net = unwrap(model)
    W = getattr(net, "W", None)  # the two-stream network's class-wise bit weights
    if W is not None and not cfg.method_spec.learns_weights:
        W.requires_grad_(False)  # NINH, ISDH: every bit weighs 1, frozen
    decayed = [p for name, p in net.named_parameters() if p.requires_grad and name != "W"]
    groups = [{"params": decayed, "weight_decay": cfg.weight_decay}]
    if W is not None and W.requires_grad:
        groups.append({"params": [W], "weight_decay": 0.0, "lr": cfg.lr * cfg.weight_lr_scale})
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch. ``step``: the paper's decay (the rate divided by 10 at
    fixed steps); ``cosine``: annealed to 0 at the last epoch (for long runs)."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    rng: np.random.Generator,
    gather: Gather | None = None,
    *,
    epoch: int,
) -> LossParts:
    """Forward, joint loss, backward, update, then keep W feasible.

    ``epoch`` (0-based) decides whether W is still in its warm-up
    (``cfg.weight_warmup_epochs``): then its gradient is dropped, so the
    optimiser leaves it at its initial 1s and the loss is NINH's. Required,
    not defaulted: a caller that forgot it would freeze W for good."""
    model.train()
    spec = cfg.method_spec
    # ADSQ's LabelNet reads the labels inside the one forward, so DDP sees all its parameters used
    out = model(x, labels) if spec.architecture == "asymmetric" else model(x)
    W = getattr(unwrap(model), "W", None)
    parts = batch_objective(out, labels, W, cfg, rng, gather)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    if W is not None and epoch < cfg.weight_warmup_epochs:
        W.grad = None  # the optimisers skip a parameter without a gradient
    optimizer.step()
    if spec.learns_weights:
        project_weights_(W, cfg.weight_norm)
    return parts


def validation_map(
    model: torch.nn.Module,
    query_images: np.ndarray,
    query_labels: np.ndarray,
    db_images: np.ndarray,
    db_labels: np.ndarray,
    method: str,
) -> float:
    """MAP of held-out training images against the rest of the training set, ranked as
    ``method``'s evaluation ranks (its main ranking).

    Encoded without flip averaging even where the model's config asks for it:
    this is a per-epoch screen, and averaging would double its cost."""
    from qadwh_ray.evaluation.evaluate import distances_for
    from qadwh_ray.evaluation.rankings import main_ranking

    r = main_ranking(method, unwrap(model), query_images, db_images, flip_average=False)
    dist = distances_for(r, slice(0, len(query_images)))
    return float(mean_average_precision(dist, query_labels, db_labels))
