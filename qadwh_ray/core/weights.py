"""Bit weights: class-wise weight rows, query-adaptive and DWH weights (docs/architecture.md, 'The method').

``W`` is the ``(c, nbits)`` class-wise weight matrix, non-negative, initialised
to ones. Three ways of turning it into bit weights:

* :func:`class_weight_rows` (training, torch): an item's row is the mean of the
  rows of its positive classes (multi-label images).
* :func:`query_adaptive_weights` (search, QaDWH, eq. 14): ``softmax(z_q) @ W``.
* :func:`dwh_weights` (search, DWH ablation): one vector, the mean of the class rows.

And :func:`asymmetric_query`: ADSQ's real-valued query as a code plus bit weights.

torch is imported lazily, so numpy-only users (search, serving) do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from qadwh_ray.core.bits import pack_bits

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return arr


def _check_class_matrix(W: np.ndarray) -> np.ndarray:
    if W.ndim != 2 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"W must be a non-empty (num_classes, nbits) matrix, got shape {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError("W contains NaN or infinite values")
    if (W < 0).any():
        i = np.argwhere(W < 0)[0]
        raise ValueError(
            f"W must be non-negative (it is clamped after every step), got {W[tuple(i)]} "
            f"at index {tuple(int(v) for v in i)}"
        )
    return W


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (max subtracted before exp)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def query_adaptive_weights(logits: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Query-adaptive bit weights ``softmax(logits) @ W`` (paper eq. 14), float64.

    ``logits`` is ``(n, c)`` (or ``(c,)`` for one query, giving ``(nbits,)``);
    ``W`` is ``(c, nbits)``. Numpy or torch inputs; the result is numpy.
    """
    z = _to_numpy(logits, "logits")
    Wn = _check_class_matrix(_to_numpy(W, "W").astype(np.float64))
    if z.ndim not in (1, 2):
        raise ValueError(f"logits must be (c,) or (n, c), got shape {z.shape}")
    if z.shape[-1] != Wn.shape[0]:
        raise ValueError(f"logits have {z.shape[-1]} classes but W has {Wn.shape[0]} rows")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    return softmax(z) @ Wn


def query_adaptive_weights_torch(logits: "torch.Tensor", W: "torch.Tensor") -> "torch.Tensor":
    """Differentiable ``softmax(logits) @ W`` (eq. 14) for torch tensors."""
    import torch

    if logits.dim() not in (1, 2):
        raise ValueError(f"logits must be (c,) or (n, c), got shape {tuple(logits.shape)}")
    if W.dim() != 2 or logits.shape[-1] != W.shape[0]:
        raise ValueError(
            f"logits have shape {tuple(logits.shape)} but W has shape {tuple(W.shape)}; "
            "expected (..., c) and (c, nbits)"
        )
    return torch.softmax(logits.to(W.dtype), dim=-1) @ W


def dwh_weights(W: np.ndarray) -> np.ndarray:
    """DWH ablation weights: the mean of the class rows, one ``(nbits,)`` vector for all queries."""
    Wn = _check_class_matrix(_to_numpy(W, "W").astype(np.float64))
    return Wn.mean(axis=0)


def class_weight_rows(label_matrix: Any, W: "torch.Tensor") -> "torch.Tensor":
    """Per-item weight rows ``(Y / Y.sum(1)) @ W`` (torch, differentiable in ``W``).

    For a single-label item this is its class row; for a multi-label item the mean
    of the rows of its positive classes. An item with no label has no row: error.
    """
    import torch

    if W.dim() != 2:
        raise ValueError(f"W must be (num_classes, nbits), got shape {tuple(W.shape)}")
    Y = torch.as_tensor(label_matrix, device=W.device)
    if Y.dim() != 2 or Y.shape[1] != W.shape[0]:
        raise ValueError(
            f"label matrix has shape {tuple(Y.shape)}, expected (n, {W.shape[0]}) to match W"
        )
    Y = Y.to(W.dtype)
    counts = Y.sum(dim=1, keepdim=True)
    empty = torch.nonzero(counts[:, 0] <= 0)
    if empty.numel():
        raise ValueError(f"label row {int(empty[0, 0])} has no positive label ({empty.numel()} such rows)")
    return (Y / counts) @ W


def clamp_nonnegative_(W: "torch.Tensor") -> "torch.Tensor":
    """Project ``W`` onto ``W >= 0`` in place (call after each optimizer step); returns ``W``."""
    import torch

    with torch.no_grad():
        W.clamp_(min=0)
    return W


def asymmetric_query(query_real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ADSQ's asymmetric distance as a weighted Hamming distance: ``(codes, weights)``.

    For a real query ``u`` and a database code ``s`` in ``{-1, +1}^q``,
    ``-<u, s> = 2 * sum_k |u_k| [s_k != sign(u_k)] - sum_k |u_k|``: the weighted Hamming
    distance between the query code ``1[u >= 0]`` and the item's code with weights
    ``|u|``, times 2, minus a per-query constant. The ranking is the same, exactly,
    and it is computed by the same kernels as QaDWH's (weights float64)."""
    u = _to_numpy(query_real, "query_real").astype(np.float64)
    if u.ndim != 2:
        raise ValueError(f"query_real must be (n, nbits), got shape {u.shape}")
    if not np.isfinite(u).all():
        raise ValueError("query_real contains NaN or infinite values")
    return pack_bits(u >= 0), np.abs(u)
