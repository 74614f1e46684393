"""Triplet mining and class-balanced batches (numpy).

A triplet ``(a, p, n)``: ``p != a`` shares at least one label with ``a``, ``n``
shares none (multi-label relevance, :mod:`qadwh_ray.core.labels`). Indices are *global rows* of
the label matrix given. For distributed training the label matrix is the whole
gathered global batch and ``anchor_index`` the rows this worker owns: every
worker mines its own anchors against all candidates, and the union over workers
is exactly the single-process triplet set.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qadwh_ray.core.labels import as_label_matrix, relevance


def _anchor_rows(anchor_index: np.ndarray | None, n: int) -> np.ndarray:
    if anchor_index is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(anchor_index)
    if idx.ndim != 1:
        raise ValueError(f"anchor_index must be 1-D, got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"anchor_index must hold integer row indices, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0]
        raise ValueError(f"anchor_index contains row {int(bad)}, outside the {n} rows of the label matrix")
    idx = np.sort(idx)
    if idx.size > 1 and (np.diff(idx) == 0).any():
        dup = idx[1:][np.diff(idx) == 0][0]
        raise ValueError(f"anchor_index contains row {int(dup)} more than once")
    return idx


def _masks(label_matrix: np.ndarray, anchor_index: np.ndarray | None):
    Y = as_label_matrix(label_matrix)
    anchors = _anchor_rows(anchor_index, Y.shape[0])
    rel = relevance(Y[anchors], Y)  # (A, N)
    pos = rel.copy()
    pos[np.arange(anchors.size), anchors] = False  # an item is not its own positive
    return anchors, pos, ~rel


def _segments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column indices of a boolean matrix's True cells row by row, with row starts and counts."""
    cols = np.nonzero(mask)[1].astype(np.int64)
    counts = mask.sum(axis=1).astype(np.int64)
    starts = np.cumsum(counts) - counts
    return cols, starts, counts


def all_valid_triplets(
    label_matrix: np.ndarray, anchor_index: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every valid triplet ``(a, p, n)`` as int64 arrays, sorted by ``a``, then ``p``, then ``n``.

    ``anchor_index`` (default: every row) restricts the anchors; positives and
    negatives are drawn from all rows.
    """
    anchors, pos, neg = _masks(label_matrix, anchor_index)
    empty = np.zeros(0, dtype=np.int64)
    if anchors.size == 0:
        return empty, empty.copy(), empty.copy()
    neg_cols, neg_starts, neg_counts = _segments(neg)
    pair_rows, pair_pos = np.nonzero(pos)  # (anchor row, positive) pairs, sorted by row then column
    reps = neg_counts[pair_rows]  # each pair yields one triplet per negative of its anchor
    total = int(reps.sum())
    if total == 0:
        return empty, empty.copy(), empty.copy()
    a = np.repeat(anchors[pair_rows], reps)
    p = np.repeat(pair_pos.astype(np.int64), reps)
    # position of each triplet within its pair's run of negatives
    run_starts = np.repeat(np.cumsum(reps) - reps, reps)
    offset = np.arange(total, dtype=np.int64) - run_starts
    n = neg_cols[np.repeat(neg_starts[pair_rows], reps) + offset]
    return a, p, n


def sample_triplets(
    label_matrix: np.ndarray,
    per_anchor: int,
    rng: np.random.Generator | int | None,
    anchor_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_anchor`` random triplets for each anchor that has a positive and a negative.

    Positive and negative are drawn uniformly and independently, with
    replacement. Output is grouped by anchor in ascending order.
    """
    if isinstance(per_anchor, bool) or not isinstance(per_anchor, (int, np.integer)) or per_anchor <= 0:
        raise ValueError(f"per_anchor must be a positive integer, got {per_anchor!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    anchors, pos, neg = _masks(label_matrix, anchor_index)
    pos_cols, pos_starts, pos_counts = _segments(pos)
    neg_cols, neg_starts, neg_counts = _segments(neg)
    ok = np.flatnonzero((pos_counts > 0) & (neg_counts > 0))
    k = int(per_anchor)
    if ok.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    pi = rng.integers(0, pos_counts[ok][:, None], size=(ok.size, k))
    ni = rng.integers(0, neg_counts[ok][:, None], size=(ok.size, k))
    a = np.repeat(anchors[ok], k)
    p = pos_cols[(pos_starts[ok][:, None] + pi).ravel()]
    n = neg_cols[(neg_starts[ok][:, None] + ni).ravel()]
    return a, p, n


class ClassBalancedBatchSampler:
    """Batches of ``P`` classes x ``K`` items, so every anchor has positives in its batch.

    Each batch picks ``classes_per_batch`` (P) distinct classes among those with
    at least two items, then ``images_per_class`` (K) items of each class. An
    item counts for every class it has (multi-label); items are drawn without
    replacement within a batch, and an item already in the batch is not drawn
    again. Only when a class has fewer than K items left does it repeat some
    of its items, so the batch always has ``P * K`` indices.

    Deterministic for a given ``(seed, epoch)``; call :meth:`set_epoch` each
    epoch (as with ``DistributedSampler``). ``len`` is the number of batches per
    epoch: ``num_batches`` or ``max(1, n_items // (P * K))``.
    """

    def __init__(
        self,
        label_matrix: np.ndarray,
        classes_per_batch: int,
        images_per_class: int,
        seed: int = 0,
        num_batches: int | None = None,
    ) -> None:
        for name, v, lo in (("classes_per_batch", classes_per_batch, 1), ("images_per_class", images_per_class, 2)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                why = " (an anchor needs a positive in its batch)" if lo == 2 else ""
                raise ValueError(f"{name} must be an integer >= {lo}{why}, got {v!r}")
        if num_batches is not None and (
            isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer)) or num_batches <= 0
        ):
            raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")
        self.labels = as_label_matrix(label_matrix)
        self.P = int(classes_per_batch)
        self.K = int(images_per_class)
        self.seed = int(seed)
        self.epoch = 0
        self._num_batches = None if num_batches is None else int(num_batches)
        members = [np.flatnonzero(self.labels[:, c]) for c in range(self.labels.shape[1])]
        self.classes = np.array([c for c, m in enumerate(members) if m.size >= 2], dtype=np.int64)
        self._members = members
        if self.classes.size < self.P:
            raise ValueError(
                f"classes_per_batch={self.P} but only {self.classes.size} classes have at least 2 items"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; batches depend only on ``(seed, epoch)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self._num_batches is not None:
            return self._num_batches
        return max(1, self.labels.shape[0] // (self.P * self.K))

    def _batch(self, rng: np.random.Generator) -> np.ndarray:
        classes = rng.choice(self.classes, size=self.P, replace=False)
        chosen: list[np.ndarray] = []
        used: set[int] = set()
        for c in classes:
            items = self._members[int(c)]
            # Draw enough distinct items that K remain after dropping those already used.
            n_used = int(self.labels[list(used), c].sum()) if used else 0
            draw = rng.choice(items, size=min(items.size, self.K + n_used), replace=False)
            fresh = np.array([i for i in draw.tolist() if i not in used], dtype=np.int64)[: self.K]
            if fresh.size < self.K:  # class exhausted: repeat some of its items
                fresh = np.concatenate([fresh, rng.choice(items, size=self.K - fresh.size, replace=True)])
            used.update(fresh.tolist())
            chosen.append(fresh)
        return np.concatenate(chosen).astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(len(self)):
            yield self._batch(rng)
