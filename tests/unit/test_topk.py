"""merge_topk / merge_range: exact k-way merge under (distance, id), -1/inf padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadwh_ray.core.topk import merge_range, merge_topk


def brute(d, i, k):
    out_d = np.full((d.shape[0], k), np.inf)
    out_i = np.full((d.shape[0], k), -1, dtype=np.int64)
    for r in range(d.shape[0]):
        rows = sorted((float(x), int(y)) for x, y in zip(d[r], i[r]) if y >= 0)[:k]
        for c, (x, y) in enumerate(rows):
            out_d[r, c], out_i[r, c] = x, y
    return out_d, out_i


def shard_result(rows, k):
    """(distances, ids) of one shard, each row sorted and padded like HashIndex.search."""
    d = np.full((len(rows), k), np.inf)
    i = np.full((len(rows), k), -1, dtype=np.int64)
    for r, items in enumerate(rows):
        items = sorted(items)[:k]
        for c, (x, y) in enumerate(items):
            d[r, c], i[r, c] = x, y
    return d, i


@settings(max_examples=150, deadline=None)
@given(
    shards=st.integers(1, 6),
    nq=st.integers(1, 4),
    k=st.integers(1, 12),
    kshard=st.integers(1, 12),
    n=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_merge_equals_sorting_the_union(shards, nq, k, kshard, n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.choice(1000, size=n, replace=False)
    owner = rng.integers(0, shards, n)
    dist = rng.integers(0, 4, (nq, n)).astype(float) * 0.25  # many ties
    results = []
    for s in range(shards):
        rows = [[(dist[r, j], int(ids[j])) for j in np.flatnonzero(owner == s)] for r in range(nq)]
        results.append(shard_result(rows, kshard))
    got_d, got_i = merge_topk(results, k)
    # Reference: each shard contributed only its own top kshard, then sort the union.
    all_d = np.concatenate([r[0] for r in results], axis=1)
    all_i = np.concatenate([r[1] for r in results], axis=1)
    want_d, want_i = brute(all_d, all_i, k)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d)
    # And when every shard returns at least k, this is the global top k.
    if kshard >= k:
        full_d, full_i = brute(np.broadcast_to(dist, (nq, n)), np.broadcast_to(ids, (nq, n)), k)
        np.testing.assert_array_equal(got_i, full_i)


def test_padding_sorts_last_and_pads_short_results():
    a = (np.array([[0.5, np.inf]]), np.array([[3, -1]]))
    b = (np.array([[0.5]]), np.array([[1]]))
    d, i = merge_topk([a, b], 4)
    assert i.tolist() == [[1, 3, -1, -1]]
    assert d[0, :2].tolist() == [0.5, 0.5] and np.isinf(d[0, 2:]).all()


def test_padding_distance_is_ignored():
    a = (np.array([[1.0, 0.0]]), np.array([[3, -1]]))  # a bogus distance on a padding slot
    d, i = merge_topk([a], 2)
    assert i.tolist() == [[3, -1]] and d[0, 0] == 1.0 and np.isinf(d[0, 1])


def test_integer_distances_accepted():
    d, i = merge_topk([(np.array([[2, 3]]), np.array([[7, 8]])), (np.array([[2]]), np.array([[1]]))], 2)
    assert i.tolist() == [[1, 7]] and d.dtype == np.float64


def test_bad_inputs():
    ok = (np.zeros((2, 3)), np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="at least one"):
        merge_topk([], 3)
    with pytest.raises(ValueError, match="positive"):
        merge_topk([ok], 0)
    with pytest.raises(TypeError, match="integer"):
        merge_topk([ok], 2.5)
    with pytest.raises(ValueError, match="queries"):
        merge_topk([ok, (np.zeros((3, 3)), np.arange(9).reshape(3, 3) + 10)], 3)
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        merge_topk([(np.zeros((2, 3)), np.zeros((2, 2), dtype=np.int64))], 3)
    with pytest.raises(ValueError, match="more than one shard"):
        merge_topk([ok, (np.zeros((2, 1)), np.array([[1], [9]]))], 3)
    with pytest.raises(ValueError, match="NaN"):
        merge_topk([(np.array([[np.nan]]), np.array([[1]]))], 1)
    with pytest.raises(TypeError, match="pair"):
        merge_topk([np.zeros((2, 3))], 1)
    with pytest.raises(TypeError, match="ids must be integers"):
        merge_topk([(np.zeros((1, 1)), np.zeros((1, 1)))], 1)


def test_merge_range():
    a = (np.array([0, 2, 2]), np.array([1, 0], dtype=np.int32), np.array([5, 9]))
    b = (np.array([0, 1, 3]), np.array([1, 0, 2], dtype=np.int32), np.array([2, 4, 1]))
    lims, d, i = merge_range([a, b])
    assert lims.tolist() == [0, 3, 5]
    assert i.tolist() == [9, 2, 5, 4, 1] and d.tolist() == [0, 1, 1, 0, 2]
    with pytest.raises(ValueError, match="queries"):
        merge_range([a, (np.array([0, 0]), np.array([], np.int32), np.array([], np.int64))])
    with pytest.raises(ValueError, match="lims"):
        merge_range([(np.array([0, 5]), np.array([1]), np.array([1]))])
    with pytest.raises(ValueError, match="at least one"):
        merge_range([])
