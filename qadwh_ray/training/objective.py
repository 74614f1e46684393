"""The per-batch objective of every method, shared by the local trainer and Ray Train.

Triplet methods (qadwh, qadwh-ref, ninh, ninh-paper): L = L_tri (+ λ L_cls with a
classification stream; eq. 10–11). ISDH, DOH and ADSQ: their pair losses
(:mod:`qadwh_ray.core.pair_losses`) over the same global batch, anchors local,
partners global, scaled the same way. Triplets are mined over the *global* batch: a
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
from qadwh_ray.core.pair_losses import adsq_loss, isdh_loss, ordinal_pair_loss
from qadwh_ray.core.triplets import all_valid_triplets, sample_triplets
from qadwh_ray.core.weights import class_weight_rows
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.model.asymmetric import AsymmetricOutput
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
    triplet: float  # the ranking term: the triplet loss, or the method's pair loss
    classification: float  # 0 for a method without a classification stream
    num_triplets: int  # triplets (or pairs) with a local anchor
    correct: int  # top-1 hits of the classification head among local rows (0 without one)


def batch_objective(
    out: HashOutput | AsymmetricOutput,
    labels: torch.Tensor,
    W: torch.Tensor | None,
    cfg: TrainConfig,
    rng: np.random.Generator,
    gather: Gather | None = None,
) -> LossParts:
    """Loss of one (local part of a) batch; ``labels`` is the (n, c) 0/1 matrix; ``out`` is what
    the method's network returned (``W``: the two-stream network's class-wise weights, else None)."""
    gather = gather or LocalGather()
    if cfg.method_spec.objective != "triplet":
        return _pair_objective(out, labels, cfg, gather)
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
    spec = cfg.method_spec
    if spec.triplet_form == "plain":
        per_triplet = triplet_loss(h_all, a, p, n, margin=cfg.margin, reduction="none")
    else:
        rows = class_weight_rows(labels, W)
        if cfg.uniform_weight_share:
            rows = (1 - cfg.uniform_weight_share) * rows + cfg.uniform_weight_share
        rows, _ = gather.all_gather(rows)
        per_triplet = weighted_triplet_loss(
            h_all, rows, a, p, n, margin=cfg.margin, form=spec.triplet_form, reduction="none"
        )
    tri_sum = per_triplet.sum()
    # the divisor is a global count, so every worker divides by the same number
    counted = int((per_triplet.detach() > 0).sum()) if cfg.triplet_average == "active" else len(a)
    n_triplets = int(gather.all_reduce_sum(float(counted)))
    tri = tri_sum * (world / max(n_triplets, 1))
    if not spec.class_stream:  # the class head stays out of the graph (DDP: find_unused_parameters)
        return LossParts(tri, float(tri.detach()) / world, 0.0, len(a), 0)
    cls_sum = multilabel_softmax_loss(out.logits, labels, reduction="sum")
    cls = cls_sum * (world / n_rows)
    total = tri + cfg.cls_weight * cls
    pred = out.logits.argmax(dim=1)
    correct = int(labels[torch.arange(len(pred)), pred].gt(0).sum())
    return LossParts(total, float(tri.detach()) / world, float(cls.detach()) / world, len(a), correct)


def _pair_objective(out: HashOutput | AsymmetricOutput, labels: torch.Tensor, cfg: TrainConfig, gather: Gather) -> LossParts:
    """ISDH, DOH and ADSQ: each pair loss returns the local anchors' share of the global
    batch's mean, so scaling by the world size makes DDP's average the global gradient."""
    world = gather.world_size
    method = cfg.method_spec.objective
    local = out.query if method == "adsq" else out.h
    labels = labels.to(local.dtype)
    labels_all, offset = gather.all_gather(labels)
    anchors = torch.arange(offset, offset + local.shape[0], device=local.device)
    if method == "isdh":
        u_all, _ = gather.all_gather(2 * out.h - 1)  # the sigmoid codes as ISDH's (-1, 1) relaxation
        loss = isdh_loss(u_all, labels_all, anchors, quantization_weight=cfg.quantization_weight).total
    elif method == "doh":
        k = 2**cfg.symbol_bits
        p_all, _ = gather.all_gather(out.h)
        loss = ordinal_pair_loss(p_all.view(p_all.shape[0], -1, k), labels_all, anchors)
    elif method == "adsq":
        w_all, _ = gather.all_gather(out.database)
        v_all, _ = gather.all_gather(out.label)
        loss = adsq_loss(out.query, w_all, v_all, labels_all, anchors, quantization_weight=cfg.quantization_weight).total
    else:
        raise ValueError(f"no pair objective for method {cfg.method!r}")
    total = loss * world
    return LossParts(total, float(loss.detach()), 0.0, int(local.shape[0]) * int(labels_all.shape[0]), 0)


@torch.no_grad()
def project_weights_(W: torch.nn.Parameter, normalise: bool) -> None:
    """Keep W ≥ 0 (weighted Hamming is a distance only then) and, optionally, each class row at mean 1.

    Without the row normalisation the hinge can be met by scaling W up, which
    silently shrinks the margin; with it, W only redistributes importance
    across bits, which is all the ranking uses (rankings are scale-invariant).
    """
    W.clamp_(min=0)
    if normalise:
        mean = W.mean(dim=1, keepdim=True).clamp(min=1e-12)
        W.div_(mean)
