"""Retrieval metrics: MAP, precision@k, precision within a Hamming radius, PR curves.

Conventions, the same everywhere in the project (docs/architecture.md, 'Conventions'):

* **Tie order.** A ranking sorts items by ``(distance ascending, item id
  ascending)``. Binary codes produce many equal distances; a fixed total order
  makes every metric deterministic and identical whether the database sits in
  one shard or many. ``db_ids`` default to the column positions ``0..n-1``.
* **Relevance.** Query and item are relevant when they share at least one label
  (multi-label; one-hot labels reduce it to "same class").
* **Empty results.** A query with no relevant item in its top k has AP 0; a
  query that retrieves nothing within a Hamming radius has precision 0
  (``empty="zero"``, the usual convention, which penalises codes that scatter
  items far apart), or is left out of the average (``empty="skip"``).

Queries are processed in chunks so memory stays bounded (a few tens of MB of
temporaries) whatever ``nq * n`` is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from qadwh_ray.core.bits import check_codes, pack_bits
from qadwh_ray.core.labels import as_label_matrix

_CELLS_PER_CHUNK = 1 << 22
_EMPTY = ("zero", "skip")
_MAX_PROBES = 5_000_000


class PRCurve(NamedTuple):
    """Precision and recall averaged over queries at each ``cutoff`` (rank or radius)."""

    precision: np.ndarray
    recall: np.ndarray
    cutoff: np.ndarray


# --------------------------------------------------------------------------- checks


def _check_distances(distances: np.ndarray) -> np.ndarray:
    d = np.asarray(distances)
    if d.ndim != 2:
        raise ValueError(f"distances must be a 2-D (num_queries, num_items) array, got shape {d.shape}")
    if d.dtype == np.bool_ or not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise TypeError(f"distances must be real numbers, got dtype {d.dtype}")
    if np.issubdtype(d.dtype, np.floating) and d.size and np.isnan(d).any():
        i = np.argwhere(np.isnan(d))[0]
        raise ValueError(f"distances contain NaN (first at query {int(i[0])}, item {int(i[1])})")
    return d


def _check_labels(query_labels, db_labels, nq: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    Q = as_label_matrix(query_labels)
    D = as_label_matrix(db_labels)
    if Q.shape[0] != nq:
        raise ValueError(f"query_labels have {Q.shape[0]} rows but there are {nq} queries")
    if D.shape[0] != n:
        raise ValueError(f"db_labels have {D.shape[0]} rows but there are {n} database items")
    if Q.shape[1] != D.shape[1]:
        if np.ndim(query_labels) == 2 and np.ndim(db_labels) == 2:
            raise ValueError(f"query_labels have {Q.shape[1]} classes but db_labels have {D.shape[1]}")
        # class indices: the inferred class counts may differ by trailing unused classes
        c = max(Q.shape[1], D.shape[1])
        Q = np.pad(Q, ((0, 0), (0, c - Q.shape[1])))
        D = np.pad(D, ((0, 0), (0, c - D.shape[1])))
    return Q.astype(np.float32), D.astype(np.float32)


def _id_permutation(db_ids, n: int) -> np.ndarray | None:
    """Column permutation that sorts items by id (None when ids are 0..n-1)."""
    if db_ids is None:
        return None
    ids = np.asarray(db_ids)
    if ids.shape != (n,):
        raise ValueError(f"db_ids must have shape ({n},) to match the distances, got {ids.shape}")
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"db_ids must be integers, got dtype {ids.dtype}")
    perm = np.argsort(ids, kind="stable")
    s = ids[perm]
    if n > 1 and (s[1:] == s[:-1]).any():
        raise ValueError(f"db_ids must be unique, id {int(s[1:][s[1:] == s[:-1]][0])} repeats")
    return perm


def _check_positive_int(k, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"{name} must be positive, got {k}")
    return int(k)


def _chunk_rows(chunk: int | None, n: int) -> int:
    if chunk is None:
        return max(1, _CELLS_PER_CHUNK // max(1, n))
    return _check_positive_int(chunk, "chunk")


def _check_empty(empty: str) -> None:
    if empty not in _EMPTY:
        raise ValueError(f"empty must be one of {_EMPTY}, got {empty!r}")


# --------------------------------------------------------------------------- ranking


def _top_k_order(d: np.ndarray, k: int) -> np.ndarray:
    """``(rows, k)`` column indices of each row's k first items under (distance, column).

    ``argpartition`` finds the k-th distance ``t``; everything below ``t`` is in,
    and the remaining slots go to the items *at* ``t`` with the smallest columns,
    so ties at the cut are resolved by id exactly as a full sort would.
    """
    rows, n = d.shape
    if k >= n:
        return np.argsort(d, axis=1, kind="stable")
    part = np.argpartition(d, k - 1, axis=1)
    t = np.take_along_axis(d, part[:, k - 1 : k], axis=1)
    lt = d < t
    eq = d == t
    need = k - lt.sum(axis=1, keepdims=True)
    sel = lt | (eq & (np.cumsum(eq, axis=1, dtype=np.int32) <= need))
    cols = np.nonzero(sel)[1].reshape(rows, k)
    order = np.argsort(np.take_along_axis(d, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def rank(distances: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """``(nq, n)`` column indices of each query's ranking, by (distance, id) ascending."""
    d = _check_distances(distances)
    perm = _id_permutation(ids, d.shape[1])
    if perm is None:
        return np.argsort(d, axis=1, kind="stable")
    return perm[np.argsort(d[:, perm], axis=1, kind="stable")]


def _ranked_relevance(distances, query_labels, db_labels, k, db_ids, chunk):
    """Yield ``(rel_sorted (rows, k) bool, total_relevant (rows,))`` per query chunk."""
    d = _check_distances(distances)
    nq, n = d.shape
    Q, D = _check_labels(query_labels, db_labels, nq, n)
    perm = _id_permutation(db_ids, n)
    if perm is not None:
        D = D[perm]
    step = _chunk_rows(chunk, n)
    for s in range(0, nq, step):
        dc = d[s : s + step] if perm is None else d[s : s + step][:, perm]
        rel = (Q[s : s + step] @ D.T) > 0
        cols = _top_k_order(dc, k)
        yield np.take_along_axis(rel, cols, axis=1), rel.sum(axis=1)


def average_precisions(
    distances: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    top_k: int | None = None,
    db_ids: np.ndarray | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Average precision of each query's ranking by (distance, id), float64 ``(nq,)``.

    For one query, ``AP@k = (1 / R_k) * sum_{i <= k} P@i * rel_i`` where ``R_k``
    is the number of relevant items *in the top k* (the deep-hashing convention
    of DPSH/HashNet's evaluation code), and AP is 0 when the top k holds no
    relevant item. ``top_k=None`` ranks the whole database (AP@all); a
    ``top_k`` larger than the database is the whole database. ``chunk`` queries
    are ranked at a time (default: sized from the database to bound memory).
    """
    d = _check_distances(distances)
    nq, n = d.shape
    if nq == 0:
        raise ValueError("no queries: MAP of an empty query set is undefined")
    if n == 0:
        raise ValueError("empty database: MAP is undefined")
    k = n if top_k is None else min(_check_positive_int(top_k, "top_k"), n)
    pos = np.arange(1, k + 1, dtype=np.float64)
    out = []
    for rel, _ in _ranked_relevance(d, query_labels, db_labels, k, db_ids, chunk):
        cum = np.cumsum(rel, axis=1, dtype=np.float64)
        out.append(_ap_rows((cum / pos) * rel, cum, k))
    return np.concatenate(out)


def mean_average_precision(
    distances: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    top_k: int | None = None,
    db_ids: np.ndarray | None = None,
    chunk: int | None = None,
) -> float:
    """MAP of the rankings by (distance, id): the mean of :func:`average_precisions`."""
    return float(average_precisions(distances, query_labels, db_labels, top_k, db_ids, chunk).mean())


def _check_ks(ks, n: int) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(ks))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"ks must be a non-empty 1-D sequence of ranks, got {ks!r}")
    for k in arr.tolist():
        _check_positive_int(k, "k")
        if k > n:
            raise ValueError(f"k={k} exceeds the database size {n}")
    return arr.astype(np.int64)


def precision_at_k(
    distances: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ks: Sequence[int] | int,
    db_ids: np.ndarray | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Mean precision over queries at each rank ``k`` in ``ks`` (the precision@k curve), float64."""
    d = _check_distances(distances)
    nq, n = d.shape
    if nq == 0:
        raise ValueError("no queries: precision of an empty query set is undefined")
    ks_arr = _check_ks(ks, n)
    kmax = int(ks_arr.max())
    total = np.zeros(ks_arr.size, dtype=np.float64)
    for rel, _ in _ranked_relevance(d, query_labels, db_labels, kmax, db_ids, chunk):
        cum = np.cumsum(rel, axis=1, dtype=np.float64)
        total += (cum[:, ks_arr - 1] / ks_arr).sum(axis=0)
    return total / nq


def precision_recall_curve(
    distances: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    num_points: int = 100,
    db_ids: np.ndarray | None = None,
    chunk: int | None = None,
) -> PRCurve:
    """Precision and recall of rankings at ``num_points`` rank cutoffs spread over ``1..n``.

    At cutoff k: precision = relevant in top k / k, recall = relevant in top k /
    relevant in the database (0 for a query with no relevant item), averaged
    over queries. Cutoffs are distinct integers, so fewer than ``num_points``
    come back when ``n < num_points``.
    """
    d = _check_distances(distances)
    nq, n = d.shape
    _check_positive_int(num_points, "num_points")
    if nq == 0 or n == 0:
        raise ValueError(f"a PR curve needs queries and items, got distances of shape {d.shape}")
    cutoffs = np.unique(np.round(np.linspace(1, n, int(num_points))).astype(np.int64))
    prec = np.zeros(cutoffs.size)
    rec = np.zeros(cutoffs.size)
    for rel, total_rel in _ranked_relevance(d, query_labels, db_labels, n, db_ids, chunk):
        tp = np.cumsum(rel, axis=1, dtype=np.float64)[:, cutoffs - 1]
        prec += (tp / cutoffs).sum(axis=0)
        denom = total_rel.astype(np.float64)[:, None]
        rec += np.divide(tp, denom, out=np.zeros_like(tp), where=denom > 0).sum(axis=0)
    return PRCurve(prec / nq, rec / nq, cutoffs)


def _ap_rows(terms: np.ndarray, cum: np.ndarray, top: int) -> np.ndarray:
    """AP@top of each row from ``terms = P@i * rel_i`` and the cumulative relevant counts."""
    r_k = cum[:, top - 1]
    s = terms[:, :top].sum(axis=1)
    return np.divide(s, r_k, out=np.zeros_like(s), where=r_k > 0)


class RankingSummary(NamedTuple):
    """Every rank-based metric of one set of rankings (see :func:`ranking_summary`)."""

    map_all: float
    map_at_k: float  # MAP@map_top_k
    precision_at: np.ndarray  # mean precision@k for each k of ``ks``
    pr: PRCurve
    ap_all: np.ndarray  # (nq,) each query's AP@all: map_all is their mean


def ranking_summary(
    distances: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ks: Sequence[int],
    map_top_k: int = 1000,
    pr_points: int = 100,
    db_ids: np.ndarray | None = None,
    chunk: int | None = None,
) -> RankingSummary:
    """MAP@all (and each query's AP@all), MAP@``map_top_k``, precision@``ks`` and the
    PR curve from one full sort per query chunk — the same numbers as :func:`average_precisions`,
    :func:`precision_at_k` and :func:`precision_recall_curve` called one by one
    (which sort again each time), at a fraction of the cost."""
    d = _check_distances(distances)
    nq, n = d.shape
    if nq == 0 or n == 0:
        raise ValueError(f"rankings need queries and items, got distances of shape {d.shape}")
    ks_arr = _check_ks(ks, n)
    kmap = min(_check_positive_int(map_top_k, "map_top_k"), n)
    _check_positive_int(pr_points, "pr_points")
    cutoffs = np.unique(np.round(np.linspace(1, n, int(pr_points))).astype(np.int64))
    pos = np.arange(1, n + 1, dtype=np.float64)
    ap_all = []
    map_k = 0.0
    pk = np.zeros(ks_arr.size)
    prec = np.zeros(cutoffs.size)
    rec = np.zeros(cutoffs.size)
    for rel, total_rel in _ranked_relevance(d, query_labels, db_labels, n, db_ids, chunk):
        cum = np.cumsum(rel, axis=1, dtype=np.float64)
        terms = (cum / pos) * rel
        ap_all.append(_ap_rows(terms, cum, n))
        map_k += float(_ap_rows(terms, cum, kmap).sum())
        pk += (cum[:, ks_arr - 1] / ks_arr).sum(axis=0)
        tp = cum[:, cutoffs - 1]
        prec += (tp / cutoffs).sum(axis=0)
        denom = total_rel.astype(np.float64)[:, None]
        rec += np.divide(tp, denom, out=np.zeros_like(tp), where=denom > 0).sum(axis=0)
    ap = np.concatenate(ap_all)
    return RankingSummary(float(ap.mean()), map_k / nq, pk / nq, PRCurve(prec / nq, rec / nq, cutoffs), ap)


# --------------------------------------------------------------------------- Hamming radius


def hamming_precision_recall(
    hamming_distances: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    nbits: int | None = None,
    empty: str = "zero",
    chunk: int | None = None,
) -> PRCurve:
    """Hashing PR curve: precision and recall of "retrieve every item within radius r", r = 0..nbits.

    ``nbits`` defaults to the largest distance present. Precision of a query
    that retrieves nothing and recall of a query with no relevant item are 0
    with ``empty="zero"``; with ``empty="skip"`` such queries are left out of
    that point's average (0 when no query is left).
    """
    _check_empty(empty)
    d = _check_distances(hamming_distances)
    if not np.issubdtype(d.dtype, np.integer):
        if d.size and not (d == np.round(d)).all():
            raise ValueError("Hamming distances must be whole numbers")
        d = d.astype(np.int64)
    nq, n = d.shape
    if nq == 0:
        raise ValueError("no queries: precision of an empty query set is undefined")
    if d.size and d.min() < 0:
        raise ValueError(f"Hamming distances must be non-negative, got {int(d.min())}")
    if nbits is None:
        nbits = int(d.max()) if d.size else 0
    else:
        nbits = _check_positive_int(nbits, "nbits")
        if d.size and d.max() > nbits:
            raise ValueError(f"a Hamming distance of {int(d.max())} exceeds nbits={nbits}")
    Q, D = _check_labels(query_labels, db_labels, nq, n)
    R = nbits + 1
    step = _chunk_rows(chunk, n)
    p_sum = np.zeros(R)
    r_sum = np.zeros(R)
    p_cnt = np.zeros(R)
    r_cnt = np.zeros(R)
    for s in range(0, nq, step):
        dc = d[s : s + step].astype(np.int64)
        rows = dc.shape[0]
        rel = (Q[s : s + step] @ D.T) > 0
        flat = (np.arange(rows, dtype=np.int64)[:, None] * R + dc)
        retrieved = np.cumsum(np.bincount(flat.ravel(), minlength=rows * R).reshape(rows, R), axis=1)
        tp = np.cumsum(np.bincount(flat[rel], minlength=rows * R).reshape(rows, R), axis=1)
        total_rel = rel.sum(axis=1)[:, None]
        p = np.divide(tp, retrieved, out=np.zeros(tp.shape), where=retrieved > 0)
        r = np.divide(tp, total_rel, out=np.zeros(tp.shape), where=total_rel > 0)
        p_sum += p.sum(axis=0)
        r_sum += r.sum(axis=0)
        if empty == "skip":
            p_cnt += (retrieved > 0).sum(axis=0)
            r_cnt += np.broadcast_to(total_rel > 0, tp.shape).sum(axis=0)
        else:
            p_cnt += rows
            r_cnt += rows
    precision = np.divide(p_sum, p_cnt, out=np.zeros(R), where=p_cnt > 0)
    recall = np.divide(r_sum, r_cnt, out=np.zeros(R), where=r_cnt > 0)
    return PRCurve(precision, recall, np.arange(R, dtype=np.int64))


def _flip_masks(nbits: int, radius: int) -> np.ndarray:
    """Packed XOR masks of every bit pattern with at most ``radius`` ones, by weight then position."""
    count = sum(math.comb(nbits, r) for r in range(radius + 1))
    if count > _MAX_PROBES:
        raise ValueError(
            f"radius {radius} on {nbits}-bit codes needs {count} lookups per query; "
            "use hamming_precision_recall on a distance matrix instead"
        )
    bits = np.zeros((count, nbits), dtype=np.uint8)
    row = 0
    for r in range(1, radius + 1):
        for combo in itertools.combinations(range(nbits), r):
            row += 1
            bits[row, list(combo)] = 1
    return pack_bits(bits)


def _as_keys(codes: np.ndarray) -> list[bytes]:
    """One ``bytes`` key per packed code row."""
    codes = np.ascontiguousarray(codes)
    return codes.view(np.dtype((np.void, codes.shape[1]))).ravel().tolist()


def precision_within_radius(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    radius: int = 2,
    return_per_query: bool = False,
    empty: str = "zero",
) -> float | tuple[float, np.ndarray]:
    """Mean precision of hash lookup within Hamming radius ``radius`` (the paper's protocol).

    The database goes into a hash table keyed by the packed code; each query
    probes every code within ``radius`` bit flips (``sum_r C(nbits, r)`` probes).
    Precision = relevant retrieved / retrieved. A query that retrieves nothing
    counts as 0 (``empty="zero"``, the usual convention) or is left out of the
    mean (``empty="skip"``; its per-query value is NaN). With
    ``return_per_query`` the per-query precisions come back too.
    """
    _check_empty(empty)
    query_codes = check_codes(query_codes, name="query_codes")
    db_codes = check_codes(db_codes, name="db_codes")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"query codes have {query_codes.shape[1] * 8} bits but database codes have {db_codes.shape[1] * 8} bits"
        )
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    nbits = query_codes.shape[1] * 8
    radius = min(int(radius), nbits)
    nq, n = query_codes.shape[0], db_codes.shape[0]
    if nq == 0:
        raise ValueError("no queries: precision of an empty query set is undefined")
    Q, D = _check_labels(query_labels, db_labels, nq, n)

    table: dict[bytes, list[int]] = {}
    for i, key in enumerate(_as_keys(db_codes)):
        table.setdefault(key, []).append(i)
    masks = _flip_masks(nbits, radius)

    per_query = np.zeros(nq)
    for qi in range(nq):
        hits = [table.get(key) for key in _as_keys(query_codes[qi] ^ masks)]
        found = [i for h in hits if h is not None for i in h]
        if not found:
            per_query[qi] = 0.0 if empty == "zero" else np.nan
            continue
        items = np.asarray(found, dtype=np.int64)
        per_query[qi] = float(((D[items] @ Q[qi]) > 0).mean())
    if empty == "skip":
        valid = ~np.isnan(per_query)
        mean = float(per_query[valid].mean()) if valid.any() else 0.0
    else:
        mean = float(per_query.mean())
    return (mean, per_query) if return_per_query else mean
