"""Metrics against brute-force loops, with heavy ties (the id order decides) and multi-label data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadwh_ray.core import metrics
from qadwh_ray.core.bits import pack_bits
from qadwh_ray.core.hamming import hamming_distances
from qadwh_ray.core.metrics import (
    hamming_precision_recall,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
    precision_within_radius,
    rank,
)


def _rel(Q, D, i, j):
    return bool((np.asarray(Q[i]) & np.asarray(D[j])).any())


def _ref_order(d, ids, i):
    return sorted(range(d.shape[1]), key=lambda j: (d[i, j], ids[j]))


def _ref_map(d, Q, D, top_k=None, ids=None):
    nq, n = d.shape
    ids = np.arange(n) if ids is None else ids
    k = n if top_k is None else min(top_k, n)
    aps = []
    for i in range(nq):
        order = _ref_order(d, ids, i)[:k]
        hits, s = 0, 0.0
        for pos, j in enumerate(order, start=1):
            if _rel(Q, D, i, j):
                hits += 1
                s += hits / pos
        aps.append(s / hits if hits else 0.0)
    return float(np.mean(aps))


def _data(seed, nq=6, n=25, c=4, multi=False, dmax=3, float_d=False):
    rng = np.random.default_rng(seed)
    if multi:
        Q = (rng.random((nq, c)) < 0.3).astype(np.uint8)
        D = (rng.random((n, c)) < 0.3).astype(np.uint8)
        Q[np.arange(nq), rng.integers(0, c, nq)] = 1
        D[np.arange(n), rng.integers(0, c, n)] = 1
    else:
        Q = np.eye(c, dtype=np.uint8)[rng.integers(0, c, nq)]
        D = np.eye(c, dtype=np.uint8)[rng.integers(0, c, n)]
    d = rng.integers(0, dmax + 1, (nq, n)).astype(np.int32)  # few values: many ties
    if float_d:
        d = d * 0.25
    ids = rng.permutation(n * 3)[:n]
    return d, Q, D, ids


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans(), st.booleans(), st.sampled_from([None, 1, 3, 10, 25, 100]))
def test_map_matches_loop(seed, multi, use_ids, top_k):
    d, Q, D, ids = _data(seed, multi=multi, float_d=bool(seed % 2))
    ids = ids if use_ids else None
    got = mean_average_precision(d, Q, D, top_k=top_k, db_ids=ids)
    assert got == pytest.approx(_ref_map(d, Q, D, top_k, ids), abs=1e-12)
    # chunking does not change the result
    assert mean_average_precision(d, Q, D, top_k=top_k, db_ids=ids, chunk=1) == pytest.approx(got, abs=1e-12)


def test_ties_are_broken_by_id():
    d = np.zeros((1, 4), dtype=np.int32)
    Q = np.array([0])
    D = np.array([1, 0, 1, 0])  # relevant items are columns 1 and 3
    # ids make the relevant items come first -> AP 1; the reverse -> AP = (1/3 + 2/4) / 2
    assert mean_average_precision(d, Q, D, db_ids=np.array([10, 0, 11, 1])) == pytest.approx(1.0)
    assert mean_average_precision(d, Q, D) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert mean_average_precision(d, Q, D, db_ids=np.array([0, 10, 1, 11])) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # top_k=1 cut inside a tie: the smallest id wins
    assert mean_average_precision(d, Q, D, top_k=1, db_ids=np.array([5, 3, 4, 9])) == 1.0
    assert mean_average_precision(d, Q, D, top_k=1, db_ids=np.array([3, 5, 4, 9])) == 0.0


def test_rank_order():
    d, _, _, ids = _data(1, dmax=2, float_d=True)
    r = rank(d)
    r_ids = rank(d, ids)
    for i in range(d.shape[0]):
        assert r[i].tolist() == _ref_order(d, np.arange(d.shape[1]), i)
        assert r_ids[i].tolist() == _ref_order(d, ids, i)


def test_top_k_order_cut_inside_ties():
    rng = np.random.default_rng(0)
    d = rng.integers(0, 3, (20, 40))
    for k in (1, 5, 13, 39, 40):
        got = metrics._top_k_order(d, k)
        ref = np.argsort(d, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("multi", [False, True])
def test_precision_at_k_matches_loop(multi):
    d, Q, D, ids = _data(5, multi=multi)
    ks = [1, 2, 7, 25]
    got = precision_at_k(d, Q, D, ks, db_ids=ids)
    for kk, g in zip(ks, got):
        ref = np.mean([sum(_rel(Q, D, i, j) for j in _ref_order(d, ids, i)[:kk]) / kk for i in range(d.shape[0])])
        assert g == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(precision_at_k(d, Q, D, ks, db_ids=ids, chunk=2), got)
    assert precision_at_k(d, Q, D, 3).shape == (1,)


@pytest.mark.parametrize("multi", [False, True])
def test_precision_recall_curve_matches_loop(multi):
    d, Q, D, ids = _data(6, multi=multi)
    D[:, 0] = 0  # some queries (class 0 only) may have no relevant item -> recall 0
    D[D.sum(1) == 0, 1] = 1
    curve = precision_recall_curve(d, Q, D, num_points=7, db_ids=ids)
    assert curve.cutoff[0] == 1 and curve.cutoff[-1] == d.shape[1]
    for ci, k in enumerate(curve.cutoff.tolist()):
        ps, rs = [], []
        for i in range(d.shape[0]):
            top = _ref_order(d, ids, i)[:k]
            tp = sum(_rel(Q, D, i, j) for j in top)
            tot = sum(_rel(Q, D, i, j) for j in range(d.shape[1]))
            ps.append(tp / k)
            rs.append(tp / tot if tot else 0.0)
        assert curve.precision[ci] == pytest.approx(np.mean(ps), abs=1e-12)
        assert curve.recall[ci] == pytest.approx(np.mean(rs), abs=1e-12)
    assert precision_recall_curve(d, Q, D, num_points=1000).cutoff.size == d.shape[1]


@pytest.mark.parametrize("empty", ["zero", "skip"])
def test_hamming_precision_recall_matches_loop(empty):
    d, Q, D, _ = _data(7, multi=True, dmax=8, nq=8, n=30)
    curve = hamming_precision_recall(d, Q, D, nbits=8, empty=empty)
    assert curve.cutoff.tolist() == list(range(9))
    for r in range(9):
        ps, rs = [], []
        for i in range(d.shape[0]):
            ret = [j for j in range(d.shape[1]) if d[i, j] <= r]
            tp = sum(_rel(Q, D, i, j) for j in ret)
            tot = sum(_rel(Q, D, i, j) for j in range(d.shape[1]))
            if ret or empty == "zero":
                ps.append(tp / len(ret) if ret else 0.0)
            if tot or empty == "zero":
                rs.append(tp / tot if tot else 0.0)
        assert curve.precision[r] == pytest.approx(np.mean(ps) if ps else 0.0, abs=1e-12)
        assert curve.recall[r] == pytest.approx(np.mean(rs) if rs else 0.0, abs=1e-12)
    assert curve.recall[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(hamming_precision_recall(d, Q, D, nbits=8, empty=empty, chunk=3).precision,
                               curve.precision)


def _brute_radius(qc, dc, Q, D, radius):
    H = hamming_distances(qc, dc)
    out = []
    for i in range(len(qc)):
        ret = np.flatnonzero(H[i] <= radius)
        out.append(np.mean([_rel(Q, D, i, j) for j in ret]) if ret.size else np.nan)
    return np.array(out)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 3]), st.sampled_from([8, 16]), st.booleans())
def test_precision_within_radius_matches_brute_force(seed, radius, nbits, multi):
    rng = np.random.default_rng(seed)
    _, Q, D, _ = _data(seed, nq=10, n=60, multi=multi)
    # clustered codes so that lookups within small radii actually find items
    centers = rng.integers(0, 2, (3, nbits))
    flip = lambda m: (rng.random((m, nbits)) < 0.08).astype(np.uint8)  # noqa: E731
    dc = pack_bits(centers[rng.integers(0, 3, 60)] ^ flip(60))
    qc = pack_bits(centers[rng.integers(0, 3, 10)] ^ flip(10))
    ref = _brute_radius(qc, dc, Q, D, radius)
    mean, per_q = precision_within_radius(qc, dc, Q, D, radius=radius, return_per_query=True)
    np.testing.assert_allclose(per_q, np.nan_to_num(ref, nan=0.0), atol=1e-12)
    assert mean == pytest.approx(np.nan_to_num(ref, nan=0.0).mean(), abs=1e-12)
    skip = precision_within_radius(qc, dc, Q, D, radius=radius, empty="skip")
    valid = ~np.isnan(ref)
    assert skip == pytest.approx(ref[valid].mean() if valid.any() else 0.0, abs=1e-12)


def test_precision_within_radius_edge_cases():
    qc = np.array([[0b00000000]], dtype=np.uint8)
    dc = np.array([[0b00000011], [0b00000001], [0b11111111]], dtype=np.uint8)
    assert precision_within_radius(qc, dc, np.array([0]), np.array([0, 1, 0]), radius=0) == 0.0  # nothing
    assert precision_within_radius(qc, dc, np.array([0]), np.array([0, 1, 0]), radius=1) == 0.0
    assert precision_within_radius(qc, dc, np.array([0]), np.array([0, 1, 0]), radius=2) == 0.5
    assert precision_within_radius(qc, dc, np.array([0]), np.array([0, 1, 0]), radius=99) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="radius"):
        precision_within_radius(qc, dc, np.array([0]), np.array([0, 1, 0]), radius=-1)
    with pytest.raises(ValueError, match="16 bits"):
        precision_within_radius(qc, np.zeros((3, 2), np.uint8), np.array([0]), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="lookups per query"):
        precision_within_radius(np.zeros((1, 16), np.uint8), np.zeros((1, 16), np.uint8),
                                np.array([0]), np.array([0]), radius=6)


def test_errors_name_the_bad_value():
    d, Q, D, ids = _data(0)
    with pytest.raises(ValueError, match="top_k must be positive, got 0"):
        mean_average_precision(d, Q, D, top_k=0)
    with pytest.raises(ValueError, match="k must be positive, got -2"):
        precision_at_k(d, Q, D, [1, -2])
    with pytest.raises(ValueError, match="k=26 exceeds"):
        precision_at_k(d, Q, D, [26])
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.full(d.shape, np.nan), Q, D)
    with pytest.raises(ValueError, match="query_labels have 5 rows"):
        mean_average_precision(d, Q[:5], D)
    with pytest.raises(ValueError, match="db_labels have 24 rows"):
        mean_average_precision(d, Q, D[:24])
    with pytest.raises(ValueError, match="4 classes but db_labels have 5"):
        mean_average_precision(d, Q, np.pad(D, ((0, 0), (0, 1))))
    with pytest.raises(ValueError, match="label row 0"):
        mean_average_precision(d, np.zeros_like(Q), D)
    with pytest.raises(ValueError, match="db_ids must be unique"):
        mean_average_precision(d, Q, D, db_ids=np.zeros(25, dtype=np.int64))
    with pytest.raises(ValueError, match=r"db_ids must have shape \(25,\)"):
        rank(d, np.arange(3))
    with pytest.raises(ValueError, match="2-D"):
        rank(d[0])
    with pytest.raises(ValueError, match="empty must be"):
        hamming_precision_recall(d, Q, D, empty="nan")
    with pytest.raises(ValueError, match="exceeds nbits=2"):
        hamming_precision_recall(d, Q, D, nbits=2)


def test_class_index_labels_accepted():
    d, Q, D, _ = _data(2, c=4)
    # class indices: query side may infer fewer classes than the database
    qi, di = Q.argmax(1), D.argmax(1)
    assert mean_average_precision(d, qi, di) == pytest.approx(mean_average_precision(d, Q, D))


def test_large_chunked_run_is_consistent():
    """1000 x 5000 with auto chunking equals a small forced chunk (memory-bounded path)."""
    rng = np.random.default_rng(9)
    d = rng.integers(0, 49, (200, 5000)).astype(np.int32)
    Q, D = rng.integers(0, 10, 200), rng.integers(0, 10, 5000)
    a = mean_average_precision(d, Q, D, top_k=1000)
    b = mean_average_precision(d, Q, D, top_k=1000, chunk=7)
    assert a == b


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans(), st.booleans(), st.sampled_from([1, 3, 10, 25]))
def test_one_sort_summary_equals_the_metrics_one_by_one_and_the_loop(seed, multi, use_ids, map_top_k):
    from qadwh_ray.core.metrics import ranking_summary

    d, Q, D, ids = _data(seed, multi=multi, float_d=bool(seed % 2))
    ids = ids if use_ids else None
    ks = (1, 5, 25)
    s = ranking_summary(d, Q, D, ks, map_top_k=map_top_k, pr_points=7, db_ids=ids, chunk=2)
    assert s.map_all == pytest.approx(_ref_map(d, Q, D, None, ids), abs=1e-12)
    assert s.map_at_k == pytest.approx(_ref_map(d, Q, D, map_top_k, ids), abs=1e-12)
    np.testing.assert_allclose(s.precision_at, precision_at_k(d, Q, D, ks, db_ids=ids), atol=1e-12)
    pr = precision_recall_curve(d, Q, D, num_points=7, db_ids=ids)
    np.testing.assert_allclose(s.pr.precision, pr.precision, atol=1e-12)
    np.testing.assert_allclose(s.pr.recall, pr.recall, atol=1e-12)
    np.testing.assert_array_equal(s.pr.cutoff, pr.cutoff)
