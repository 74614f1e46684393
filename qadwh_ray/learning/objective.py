"""The per-batch QaDWH objective, shared by the local trainer and Ray Train.

L = L_tri + λ L_cls (eq. 10–11). Triplets are mined over the *global* batch: a
``Gather`` collects codes, weight rows and labels from every worker with the
local part keeping its gradients, anchors are the local rows, positives and
negatives come from all rows. Sums are divided by global counts (all triplets, or with
``triplet_average: active`` those still inside the margin) and scaled by
the world size, so that DDP's gradient *averaging* reproduces exactly the
gradient of one process on the whole global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from qadwh_ray.core.losses import multilabel_softmax_loss, triplet_loss, weighted_triplet_loss
from qadwh_ray.core.triplets import all_valid_triplets, sample_triplets
from qadwh_ray.core.weights import class_weight_rows
from qadwh_ray.learning.config import TrainConfig
from qadwh_ray.model.network import HashOutput


class Gather(Protocol):
    """How a worker sees the global batch (identity in a single process)."""

    world_size: int

    def all_gather(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Concatenate ``t`` across workers keeping the local part's autograd; return (global, local offset)."""

    def all_reduce_sum(self, value: float) -> float: ...


class LocalGather:
    world_size = 1

    def all_gather(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        return t, 0

    def all_reduce_sum(self, value: float) -> float:
        return value


@dataclass
class LossParts:
    total: torch.Tensor
    triplet: float
    classification: float
    num_triplets: int
    correct: int  # top-1 hits of the classification head among local rows


def batch_objective(
    out: HashOutput,
    labels: torch.Tensor,
    W: torch.Tensor,
    cfg: TrainConfig,
    rng: np.random.Generator,
    gather: Gather | None = None,
) -> LossParts:
    """Loss of one (local part of a) batch; ``labels`` is the (n, c) 0/1 matrix."""
    gather = gather or LocalGather()
    labels = labels.to(out.h.dtype)
    h_all, offset = gather.all_gather(out.h)
    labels_all, _ = gather.all_gather(labels)
    anchors = np.arange(offset, offset + out.h.shape[0])
    label_np = labels_all.detach().cpu().numpy().astype(np.uint8)
    if cfg.triplets == "all":
        a, p, n = all_valid_triplets(label_np, anchor_index=anchors)
    else:
        a, p, n = sample_triplets(label_np, cfg.triplets_per_anchor, rng, anchor_index=anchors)
    a, p, n = (torch.as_tensor(x, device=out.h.device) for x in (a, p, n))

    world = gather.world_size
    n_rows = int(gather.all_reduce_sum(float(out.h.shape[0])))
    if cfg.triplet_form == "plain":
        per_triplet = triplet_loss(h_all, a, p, n, margin=cfg.margin, reduction="none")
    else:
        rows = class_weight_rows(labels, W)
        if cfg.uniform_weight_share:
            rows = (1 - cfg.uniform_weight_share) * rows + cfg.uniform_weight_share
        rows, _ = gather.all_gather(rows)
        per_triplet = weighted_triplet_loss(
            h_all, rows, a, p, n, margin=cfg.margin, form=cfg.triplet_form, reduction="none"
        )
    tri_sum = per_triplet.sum()
    # the divisor is a global count, so every worker divides by the same number
    counted = int((per_triplet.detach() > 0).sum()) if cfg.triplet_average == "active" else len(a)
    n_triplets = int(gather.all_reduce_sum(float(counted)))
    cls_sum = multilabel_softmax_loss(out.logits, labels, reduction="sum")
    tri = tri_sum * (world / max(n_triplets, 1))
    cls = cls_sum * (world / n_rows)
    total = tri + cfg.cls_weight * cls
    pred = out.logits.argmax(dim=1)
    correct = int(labels[torch.arange(len(pred)), pred].gt(0).sum())
    return LossParts(total, float(tri.detach()) / world, float(cls.detach()) / world, len(a), correct)


@torch.no_grad()
def project_weights_(W: torch.nn.Parameter, normalise: bool) -> None:
    """Keep W ≥ 0 (DESIGN §2) and, optionally, each class row at mean 1.

    Without the row normalisation the hinge can be met by scaling W up, which
    silently shrinks the margin; with it, W only redistributes importance
    across bits, which is all the ranking uses (rankings are scale-invariant).
    """
    W.clamp_(min=0)
    if normalise:
        mean = W.mean(dim=1, keepdim=True).clamp(min=1e-12)
        W.div_(mean)
