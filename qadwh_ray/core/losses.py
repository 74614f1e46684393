"""Training losses (torch, differentiable): weighted triplet, plain triplet, multi-label softmax.

Triplet losses take a batch of sigmoid codes ``h`` ``(N, q)`` and index tensors
``(T,)`` of anchors, positives and negatives into its rows (from
:mod:`qadwh_ray.core.triplets`). Distances are computed once per (anchor, item)
pair as a ``(U, N)`` matrix over the U distinct anchors with matrix products
and then gathered, so ~1e6 triplets of a 256-item batch cost two small matmuls,
not ``T * q`` gathered rows.

Reduction ``"mean"`` averages over *all* triplets (the inactive ones count as 0,
as in NINH). An empty triplet set gives a zero that is still connected to the
inputs' graph, so a DDP worker that happens to have no triplet still takes part
in the gradient all-reduce.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

FORMS = ("paper", "reference")
REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.mean()


def _as_index(x: Any, name: str, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D index tensor, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer indices, got dtype {t.dtype}")
    t = t.long()
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contains index {bad}, outside the batch of {n} rows")
    return t


def _empty_loss(inputs: tuple[torch.Tensor, ...], reduction: str) -> torch.Tensor:
    # 0 * sum(...) keeps a grad_fn connected to every input that requires grad.
    zero = sum((x.sum() * 0 for x in inputs if x.requires_grad), inputs[0].new_zeros(()))
    if reduction == "none":
        return inputs[0].new_zeros(0) + zero
    return zero


def _pair_distances(h: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, form: str) -> torch.Tensor:
    """``(len(rows), N)`` matrix of D(a, j) for anchors ``rows`` and every item j."""
    ha, wa = h[rows], w[rows]
    if form == "paper":
        # sum_k w_ak (h_ak - h_jk)^2 = sum_k w_ak h_ak^2 - 2 (w_a*h_a).h_j + w_a.(h_j^2)
        return (wa * ha * ha).sum(1, keepdim=True) - 2 * (wa * ha) @ h.T + wa @ (h * h).T
    # reference: || w_a*h_a - w_j*h_j ||^2
    u = w * h
    ua = u[rows]
    return (ua * ua).sum(1, keepdim=True) - 2 * ua @ u.T + (u * u).sum(1)[None, :]


def weighted_triplet_loss(
    h: torch.Tensor,
    weight_rows: torch.Tensor,
    anchors: Any,
    positives: Any,
    negatives: Any,
    margin: float = 1.0,
    form: str = "paper",
    reduction: str = "mean",
) -> torch.Tensor:
    """Weighted triplet ranking loss (paper eq. 7-10).

    ``form="paper"``: ``D_w(a, j) = sum_k w_ak (h_ak - h_jk)^2`` with the anchor's
    weight row on both distances. ``form="reference"`` (released Caffe code):
    ``D(a, j) = sum_k (w_ak h_ak - w_jk h_jk)^2``, each code scaled by its own row.
    Loss per triplet: ``max(0, margin + D(a, p) - D(a, n))``.
    """
    if form not in FORMS:
        raise ValueError(f"unknown triplet loss form {form!r}; expected one of {FORMS}")
    _check_reduction(reduction)
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or not h.dtype.is_floating_point:
        raise ValueError(f"h must be a 2-D floating tensor (N, q), got {getattr(h, 'shape', type(h))}")
    if not isinstance(weight_rows, torch.Tensor) or tuple(weight_rows.shape) != tuple(h.shape):
        raise ValueError(
            f"weight_rows must be a tensor of the same shape as h {tuple(h.shape)}, "
            f"got {tuple(getattr(weight_rows, 'shape', ()))}"
        )
    margin = float(margin)
    if margin != margin or margin in (float("inf"), float("-inf")):
        raise ValueError(f"margin must be finite, got {margin}")
    n = h.shape[0]
    a = _as_index(anchors, "anchors", n, h.device)
    p = _as_index(positives, "positives", n, h.device)
    ng = _as_index(negatives, "negatives", n, h.device)
    if not (a.numel() == p.numel() == ng.numel()):
        raise ValueError(
            f"anchors, positives and negatives differ in length: {a.numel()}, {p.numel()}, {ng.numel()}"
        )
    weight_rows = weight_rows.to(h.dtype)
    if a.numel() == 0:
        return _empty_loss((h, weight_rows), reduction)
    rows, inv = torch.unique(a, return_inverse=True)
    D = _pair_distances(h, weight_rows, rows, form)
    losses = F.relu(margin + D[inv, p] - D[inv, ng])
    return _reduce(losses, reduction)


def triplet_loss(
    h: torch.Tensor,
    anchors: Any,
    positives: Any,
    negatives: Any,
    margin: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Plain NINH triplet loss on squared Euclidean distances (all weights 1)."""
    if not isinstance(h, torch.Tensor):
        raise ValueError(f"h must be a torch tensor, got {type(h).__name__}")
    return weighted_triplet_loss(
        h, torch.ones_like(h), anchors, positives, negatives, margin=margin, form="paper", reduction=reduction
    )


def multilabel_softmax_loss(logits: torch.Tensor, label_matrix: Any, reduction: str = "mean") -> torch.Tensor:
    """Multi-label softmax loss (paper eq. 11).

    ``L_i = -sum_j (y_ij / sum_j y_ij) log softmax(z_i)_j``: cross-entropy against
    the label distribution spread evenly over the positive classes, so it equals
    the usual softmax cross-entropy for one-hot labels.
    """
    _check_reduction(reduction)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a 2-D floating tensor (N, c), got {getattr(logits, 'shape', type(logits))}")
    Y = torch.as_tensor(label_matrix, device=logits.device)
    if tuple(Y.shape) != tuple(logits.shape):
        raise ValueError(f"label matrix has shape {tuple(Y.shape)}, expected {tuple(logits.shape)} like the logits")
    Y = Y.to(logits.dtype)
    if Y.numel() and bool(((Y != 0) & (Y != 1)).any()):
        raise ValueError("label matrix must contain only 0 and 1")
    counts = Y.sum(dim=1, keepdim=True)
    empty = torch.nonzero(counts[:, 0] <= 0)
    if empty.numel():
        raise ValueError(f"label row {int(empty[0, 0])} has no positive label ({empty.numel()} such rows)")
    if logits.shape[0] == 0:
        return _empty_loss((logits,), reduction)
    per_item = -((Y / counts) * F.log_softmax(logits, dim=1)).sum(dim=1)
    return _reduce(per_item, reduction)
