"""The one total order of results, ``(distance, id)``: checking k, picking and merging top k.

Every shard returns its exact top k under ``(distance, id)`` (docs/architecture.md,
'Search'), so the global top k is the k smallest of the union under the same order: the
merge is exact and the result is identical to searching one unsharded index.
Padding follows FAISS: id ``-1`` with distance ``inf``; padding always sorts
after real items, and rows with fewer than k real items come back padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_k(k) -> int:
    """``k`` as an int after checking it is a positive integer (a bool is not)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}")
    if int(k) <= 0:
        raise ValueError(f"k must be positive, got {int(k)}")
    return int(k)


def smallest_k(d: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest of the 1-D ``d`` under ``(value, position)``; with
    positions in id order, this is the ``(distance, id)`` order."""
    if d.size > 4 * k:
        kth = np.partition(d, k - 1)[k - 1]
        cand = np.flatnonzero(d <= kth)  # every item that can be in the top k, ties at the k-th included
        return cand[np.argsort(d[cand], kind="stable")[:k]]
    return np.argsort(d, kind="stable")[:k]


def merge_topk(
    results: Sequence[tuple[np.ndarray, np.ndarray]], k: int, *, check_duplicates: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Global top ``k`` of per-shard ``(distances (nq, k_i), ids (nq, k_i))`` results.

    Distances are floats (float64 from :class:`~qadwh_ray.core.search.HashIndex`),
    ids int64 with ``-1`` marking padding (its distance is ignored). Returns
    ``(distances float64 (nq, k), ids int64 (nq, k))`` ordered by
    ``(distance, id)``. With ``check_duplicates`` an id returned by two shards
    for the same query is an error (shards must hold disjoint ids).
    """
    k = check_k(k)
    if len(results) == 0:
        raise ValueError("merge_topk needs at least one shard result")
    dists, idss = [], []
    nq = None
    for i, pair in enumerate(results):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"shard result {i} must be a (distances, ids) pair")
        d = np.asarray(pair[0])
        ids = np.asarray(pair[1])
        if d.ndim != 2 or ids.shape != d.shape:
            raise ValueError(f"shard result {i}: distances {d.shape} and ids {ids.shape} must be equal 2-D shapes")
        if d.dtype.kind not in "fiu":
            raise TypeError(f"shard result {i}: distances must be numeric, got dtype {d.dtype}")
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"shard result {i}: ids must be integers, got dtype {ids.dtype}")
        if nq is None:
            nq = d.shape[0]
        elif d.shape[0] != nq:
            raise ValueError(f"shard result {i} has {d.shape[0]} queries, shard 0 has {nq}")
        dists.append(d)
        idss.append(ids)
    # One concatenation, then every check and the sort on the merged rows (the router
    # merges every query: this runs per request, so it is kept to a few array passes).
    d = np.concatenate(dists, axis=1).astype(np.float64, copy=False)
    ids = np.concatenate(idss, axis=1).astype(np.int64, copy=False)
    pad = ids < 0
    nan = np.isnan(d)
    if nan.any() and (nan & ~pad).any():
        row = int(np.argwhere(nan & ~pad)[0][0])
        raise ValueError(f"NaN distance for a real item (query {row})")
    if pad.any():
        d = np.where(pad, np.inf, d)
        ids = np.where(pad, -1, ids)
        # Padding sorts after every real item, an infinite distance included.
        order = np.lexsort((ids, pad, d), axis=-1)[:, :k]
    else:
        order = np.lexsort((ids, d), axis=-1)[:, :k]
    if check_duplicates and ids.shape[1] > 1:
        s = np.sort(ids, axis=1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if dup.any():
            row, col = (int(x) for x in np.argwhere(dup)[0])
            raise ValueError(f"id {int(s[row, col])} returned by more than one shard for query {row}")
    rows = np.arange(nq)[:, None]
    out_d = d[rows, order]
    out_i = ids[rows, order]
    width = out_d.shape[1]
    if width < k:
        out_d = np.concatenate([out_d, np.full((nq, k - width), np.inf)], axis=1)
        out_i = np.concatenate([out_i, np.full((nq, k - width), -1, dtype=np.int64)], axis=1)
    return np.ascontiguousarray(out_d), np.ascontiguousarray(out_i)


def merge_range(
    results: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-shard FAISS-style range results ``(lims, distances, ids)``.

    Each query's merged results are ordered by ``(distance, id)``, as
    :meth:`~qadwh_ray.core.search.HashIndex.range_search` orders one shard's.
    """
    if len(results) == 0:
        raise ValueError("merge_range needs at least one shard result")
    nq = None
    for i, (lims, d, ids) in enumerate(results):
        lims = np.asarray(lims)
        if lims.ndim != 1 or lims.shape[0] < 1 or lims[0] != 0 or lims[-1] != len(d) or len(d) != len(ids):
            raise ValueError(f"shard result {i}: lims must run from 0 to len(distances) == len(ids)")
        if nq is None:
            nq = lims.shape[0] - 1
        elif lims.shape[0] - 1 != nq:
            raise ValueError(f"shard result {i} has {lims.shape[0] - 1} queries, shard 0 has {nq}")
    qs, ds, is_ = [], [], []
    for lims, d, ids in results:
        lims = np.asarray(lims, dtype=np.int64)
        qs.append(np.repeat(np.arange(nq), np.diff(lims)))
        ds.append(np.asarray(d))
        is_.append(np.asarray(ids, dtype=np.int64))
    q = np.concatenate(qs)
    d = np.concatenate(ds)
    ids = np.concatenate(is_)
    order = np.lexsort((ids, d, q))
    lims = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(q, minlength=nq), out=lims[1:])
    return lims, d[order], ids[order]
