"""Label vectors: every label set is a 0/1 matrix ``(n, c)``.

Single-label data (class indices) is turned into one-hot rows, so one code
path serves single- and multi-label data: two items are relevant to each other
when they share at least one label: the relevance rule of every metric and loss.
"""

from __future__ import annotations

import numpy as np


def as_label_matrix(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Return labels as a ``(n, c)`` uint8 0/1 matrix.

    Accepts class indices ``(n,)`` (needs ``num_classes`` or infers max+1) or a
    ``(n, c)`` 0/1 matrix. Rows with no positive label are an error: such an
    item has no defined relevance and no class-weight row.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"class indices must be integers, got dtype {labels.dtype}")
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if labels.size else 0
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0]
            raise ValueError(f"class index {int(bad)} out of range [0, {num_classes})")
        out = np.zeros((labels.shape[0], num_classes), dtype=np.uint8)
        out[np.arange(labels.shape[0]), labels.astype(np.int64)] = 1
        return out
    if labels.ndim != 2:
        raise ValueError(f"labels must be (n,) class indices or an (n, c) 0/1 matrix, got shape {labels.shape}")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"label matrix has {labels.shape[1]} columns, expected {num_classes} classes")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    elif labels.size and ((labels != 0) & (labels != 1)).any():
        raise ValueError("a label matrix must contain only 0 and 1")
    empty = np.flatnonzero(labels.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"label row {int(empty[0])} has no positive label ({empty.size} such rows)")
    return np.ascontiguousarray(labels.astype(np.uint8))


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """``(nq, n)`` bool: query i and item j share at least one label."""
    q = np.asarray(query_labels, dtype=np.float32)
    d = np.asarray(db_labels, dtype=np.float32)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"label matrices disagree: {q.shape} vs {d.shape}")
    return (q @ d.T) > 0
