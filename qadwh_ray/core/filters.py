"""Exact top-k over part of an index: label filters and hidden items.

Every function here answers "the top k under ``(distance, id)`` among the
items allowed by a boolean mask over the index's positions (id order)", with
the canonical distances of :mod:`qadwh_ray.core.hamming`, so a restricted
answer equals brute force over the allowed items, ties included, and merges
across shards with :func:`qadwh_ray.core.topk.merge_topk` like any other.
(A Hamming radius, with or without a mask, is
:meth:`qadwh_ray.core.search.HashIndex.search_within_radius`.)

Two ways to get there, both exact:

* a selective mask (few allowed items) scans only the allowed codes through
  per-byte tables (:func:`~qadwh_ray.core.hamming.snapped_distances`);
* a broad mask asks the index's fast scan for a larger top-k' and keeps the
  allowed items: the top-k' is a prefix of the total order, so the allowed
  items in it are the allowed items' own prefix; k' grows until k of them are
  found or k' covers the whole index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from qadwh_ray.core.hamming import hamming_distances, query_weights, snapped_distances
from qadwh_ray.core.search import HashIndex
from qadwh_ray.core.topk import smallest_k

__all__ = ["LabelFilter", "topk_among", "topk_of_codes", "SUBSET_SCAN_FRACTION"]

#: Masks allowing at most this fraction of the items are scanned directly; above it an
#: enlarged search through the compiled scan costs less (docs/benchmarks.md, filters).
SUBSET_SCAN_FRACTION = 0.125


@dataclass(frozen=True)
class LabelFilter:
    """Items having at least one class of ``any_of`` and every class of ``all_of`` (class ids)."""

    any_of: tuple = ()
    all_of: tuple = ()

    @property
    def empty(self) -> bool:
        return not self.any_of and not self.all_of

    def matches(self, labels: Optional[np.ndarray], n: int) -> np.ndarray:
        """``(n,)`` bool over rows of the 0/1 label matrix ``labels (n, c)``; an index
        without labels matches no non-empty filter."""
        if self.empty:
            return np.ones(n, dtype=bool)
        if labels is None or n == 0:
            return np.zeros(n, dtype=bool)
        c = labels.shape[1]
        ok = np.ones(n, dtype=bool)
        if self.any_of:
            cols = [x for x in self.any_of if 0 <= x < c]
            ok &= labels[:, cols].any(axis=1) if cols else False
        for x in self.all_of:
            if not 0 <= x < c:
                return np.zeros(n, dtype=bool)
            ok &= labels[:, x] != 0
        return ok


def _padded(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), np.inf), np.full((nq, k), -1, dtype=np.int64)


def topk_of_codes(query_codes, codes, ids, weights, mode: str, k: int, nbits: int, radius: Optional[int] = None):
    """Top k of every query among ``codes``/``ids`` (ids ascending) by direct scan; with
    ``radius``, only codes within that Hamming distance. Returns padded ``(d, ids)``."""
    nq = query_codes.shape[0]
    dist, out = _padded(nq, k)
    if codes.shape[0] == 0 or nq == 0:
        return dist, out
    w_int, exps = query_weights(weights, mode, nq, nbits)
    for i in range(nq):
        d = snapped_distances(query_codes[i : i + 1], codes, w_int[i : i + 1], exps[i : i + 1])[0]
        sel = None
        if radius is not None and radius < nbits:
            sel = np.flatnonzero(hamming_distances(query_codes[i : i + 1], codes)[0] <= radius)
            d = d[sel]
        order = smallest_k(d, k)
        pick = order if sel is None else sel[order]
        dist[i, : order.size] = d[order]
        out[i, : order.size] = ids[pick]
    return dist, out


def topk_among(index: HashIndex, codes: np.ndarray, query_codes, weights, mode: str, k: int, allowed: np.ndarray,
               num_threads: Optional[int] = None):
    """Top k of every query among the index's items where ``allowed`` (bool, id order) is set.

    ``codes`` are the index's codes in id order (``index.codes``, held by the caller
    so it is not rebuilt per call); ``weights`` and ``num_threads`` as for
    :meth:`HashIndex.search`.
    """
    nq = query_codes.shape[0]
    n = len(index)
    m = int(allowed.sum())
    if m == n:
        return index.search(query_codes, k, weights, mode=mode, num_threads=num_threads)
    if m == 0 or nq == 0:
        return _padded(nq, k)
    ids = index.ids
    if m <= SUBSET_SCAN_FRACTION * n or m <= k:
        pos = np.flatnonzero(allowed)
        return topk_of_codes(query_codes, codes[pos], ids[pos], weights, mode, k, index.nbits)
    dist, out = _padded(nq, k)
    todo = np.arange(nq)
    kk = min(n, math.ceil(k * n / m * 1.25) + 8)
    while todo.size:
        w = weights
        if mode == "qadwh":
            w = np.asarray(weights)[todo]
        d, got = index.search(query_codes[todo], kk, w, mode=mode, num_threads=num_threads)
        keep = allowed[np.searchsorted(ids, np.maximum(got, 0))] & (got >= 0)
        done = (keep.sum(axis=1) >= k) | (kk >= n)
        for row in np.flatnonzero(done):
            sel = np.flatnonzero(keep[row])[:k]
            dist[todo[row], : sel.size] = d[row, sel]
            out[todo[row], : sel.size] = got[row, sel]
        todo = todo[~done]
        kk = min(n, kk * 4)
    return dist, out
