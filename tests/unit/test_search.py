"""Exactness of HashIndex against a brute-force Python reference, ties included.

The reference recomputes the canonical distance of qadwh_ray.core.hamming
independently: snapped integer weights from ``math.frexp``/``math.ldexp``/
``round`` and a Python loop over the bits, then a sort by (distance, id).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qadwh_ray.core import search as search_mod
from qadwh_ray.core.bits import code_bytes, pack_bits, padding_mask
from qadwh_ray.core.hamming import MODES, grid_bits, query_weights, reference_distances, snap_weights
from qadwh_ray.core.search import HashIndex
from qadwh_ray.core.search_gpu import TorchSearcher
from qadwh_ray.core.topk import merge_topk

# whole bytes, and lengths whose codes are zero-padded to whole bytes (the paper's 12 bits among them)
NBITS = list(range(8, 137, 8)) + [1, 5, 12, 12, 20, 36, 63, 100]
STRATEGIES = ("auto", "two_stage", "exhaustive")


# ----------------------------------------------------------------------------- reference


def ref_snap(row, nbits):
    s = 52 - math.ceil(math.log2(nbits))
    wmax = max(row)
    if wmax == 0:
        return [0] * nbits, 0
    e = max(math.frexp(wmax)[1] - s, -1074)
    return [round(math.ldexp(float(x), -e)) for x in row], e


def ref_weights(weights, mode, nq, nbits):
    if mode == "hamming":
        return [([1] * nbits, 0)] * nq
    if mode == "dwh":
        return [ref_snap(list(weights), nbits)] * nq
    return [ref_snap(list(weights[i]), nbits) for i in range(nq)]


def ref_distance(qcode, code, wint, nbits):
    total = 0
    for bit in range(nbits):
        byte, t = divmod(bit, 8)
        if ((int(qcode[byte]) >> t) & 1) != ((int(code[byte]) >> t) & 1):
            total += wint[bit]
    return total


def ref_search(queries, codes, ids, weights, mode, k, nbits):
    """Brute force: exact integer sums, sorted by (sum, id); -1/inf padding."""
    nq = queries.shape[0]
    out_d = np.full((nq, k), np.inf)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    for qi, (wint, e) in enumerate(ref_weights(weights, mode, nq, nbits)):
        rows = sorted((ref_distance(queries[qi], codes[j], wint, nbits), int(ids[j])) for j in range(len(ids)))
        for r, (s, i) in enumerate(rows[:k]):
            out_d[qi, r] = math.ldexp(s, e)
            out_i[qi, r] = i
    return out_d, out_i


def make_weights(rng, kind, nq, nbits):
    if kind == "zero":
        w = np.zeros((nq, nbits))
    elif kind == "equal":
        w = np.full((nq, nbits), 0.7)
    elif kind == "wild":
        w = 10.0 ** rng.uniform(-30, 30, (nq, nbits))
        w[rng.random((nq, nbits)) < 0.2] = 0.0
    elif kind == "tiny":
        w = rng.uniform(0, 1, (nq, nbits)) * 1e-310  # subnormal
    elif kind == "ints":
        w = rng.integers(0, 3, (nq, nbits)).astype(np.float64)
    else:  # "model-like"
        w = rng.lognormal(0.0, 0.3, (nq, nbits)).astype(np.float32)
    return w


def tied_codes(rng, n, nbits, pool):
    """Packed ``nbits``-bit codes around ``pool`` centres (many ties); padding bits 0."""
    nbytes = code_bytes(nbits)
    base = rng.integers(0, 256, (pool, nbytes), dtype=np.uint8)
    codes = base[rng.integers(0, pool, n)]
    flips = (rng.random((n, nbytes)) < 0.1) * rng.integers(0, 256, (n, nbytes))
    codes = (codes ^ flips.astype(np.uint8)).astype(np.uint8)
    codes[:, -1] &= ~np.uint8(padding_mask(nbits))
    return codes


def weights_for(mode, w):
    return {"qadwh": w, "dwh": w[0], "hamming": None}[mode]


# ----------------------------------------------------------------------------- exactness


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nbits=st.sampled_from(NBITS),
    n=st.integers(1, 40),
    pool=st.integers(1, 4),
    extra_k=st.integers(0, 43),
    mode=st.sampled_from(MODES),
    strategy=st.sampled_from(STRATEGIES),
    wkind=st.sampled_from(["zero", "equal", "wild", "tiny", "ints", "model"]),
    nq=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    adds=st.integers(1, 3),
)
def test_search_equals_brute_force(nbits, n, pool, extra_k, mode, strategy, wkind, nq, seed, adds):
    rng = np.random.default_rng(seed)
    codes = tied_codes(rng, n, nbits, pool)
    ids = rng.choice(10**6, size=n, replace=False).astype(np.int64)
    if rng.random() < 0.3:
        ids = ids + (1 << 60)  # large ids
    queries = np.concatenate([codes[rng.integers(0, n, nq - 1)], tied_codes(rng, 1, nbits, 1)])
    w = make_weights(rng, wkind, nq, nbits)
    k = 1 + extra_k % (n + 3)
    index = HashIndex(nbits, device="cpu")
    for part in np.array_split(rng.permutation(n), adds):  # several adds, ids in any order
        index.add(codes[part], ids[part])
    d, i = index.search(queries, k, weights_for(mode, w), mode=mode, strategy=strategy, num_threads=1)
    rd, ri = ref_search(queries, codes, ids, weights_for(mode, w), mode, k, nbits)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)
    assert d.dtype == np.float64 and i.dtype == np.int64 and d.shape == (nq, k)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 items and parts of any size: every code path on small data."""
    monkeypatch.setattr(search_mod, "BLOCK", 8)
    monkeypatch.setattr(search_mod, "MIN_PART", 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(
    nbits=st.sampled_from(NBITS),
    n=st.integers(1, 120),
    pool=st.integers(1, 5),
    extra_k=st.integers(0, 200),
    mode=st.sampled_from(MODES),
    strategy=st.sampled_from(STRATEGIES),
    wkind=st.sampled_from(["zero", "equal", "wild", "ints", "model"]),
    nq=st.integers(1, 5),
    threads=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_blocked_parallel_paths_equal_numpy_reference(small_blocks, nbits, n, pool, extra_k, mode, strategy,
                                                      wkind, nq, threads, seed):
    """Many blocks, query groups and database parts: still exact."""
    rng = np.random.default_rng(seed)
    codes = tied_codes(rng, n, nbits, pool)
    ids = rng.choice(10**6, size=n, replace=False).astype(np.int64)
    queries = codes[rng.integers(0, n, nq)]
    w = make_weights(rng, wkind, nq, nbits)
    k = 1 + extra_k % (n + 3)
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    d, i = index.search(queries, k, weights_for(mode, w), mode=mode, strategy=strategy, num_threads=threads)
    w_int, e = query_weights(weights_for(mode, w), mode, nq, nbits)
    ref = reference_distances(queries, codes, w_int, e)
    for r in range(nq):
        order = np.lexsort((ids, ref[r]))[:k]
        kk = min(k, n)
        np.testing.assert_array_equal(i[r, :kk], ids[order])
        np.testing.assert_array_equal(d[r, :kk], ref[r, order])
        assert (i[r, kk:] == -1).all() and np.isinf(d[r, kk:]).all()


@pytest.mark.parametrize("nbits", [12, 20])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_padded_lengths_equal_unpadded_float_brute_force(nbits, strategy):
    """12- and 20-bit codes, stored padded to 2 and 3 bytes: the index's ids and distances
    equal a float64 computation on the unpadded bits (weights on a 2**-10 grid, so
    snapping and float sums are exact), ties broken by id; on the torch path too."""
    rng = np.random.default_rng(nbits)
    n, nq, k = 700, 6, 40
    bits = rng.integers(0, 2, (n, nbits), dtype=np.uint8)
    bits[rng.integers(0, n, 300)] = bits[rng.integers(0, n, 300)]  # duplicate codes: ties
    qbits = np.concatenate([bits[:3], rng.integers(0, 2, (nq - 3, nbits), dtype=np.uint8)])
    ids = rng.choice(10**6, n, replace=False).astype(np.int64)
    w = rng.integers(0, 2**10, (nq, nbits)) / 2.0**10
    codes, queries = pack_bits(bits), pack_bits(qbits)
    assert codes.shape[1] == code_bytes(nbits) < nbits // 8 + 2
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    diff = (qbits[:, None, :] != bits[None, :, :]).astype(np.float64)  # (nq, n, nbits), unpadded
    for mode, wq, ref in (
        ("qadwh", w, np.einsum("qnk,qk->qn", diff, w)),
        ("dwh", w[0], diff @ w[0]),
        ("hamming", None, diff.sum(-1)),
    ):
        d, i = index.search(queries, k, wq, mode=mode, strategy=strategy, num_threads=2)
        for r in range(nq):
            order = np.lexsort((ids, ref[r]))[:k]
            np.testing.assert_array_equal(i[r], ids[order], err_msg=f"{mode} query {r}")
            np.testing.assert_array_equal(d[r], ref[r, order], err_msg=f"{mode} query {r}")
        if strategy == "auto":
            w_int, _ = query_weights(wq, mode, nq, nbits)
            dt, pt = TorchSearcher(codes[np.argsort(ids)], "cpu").topk(queries, w_int, k)
            np.testing.assert_array_equal(np.sort(ids)[pt], i)
    lims, dist, got = index.range_search(queries, 3)
    ham = diff.sum(-1)
    for r in range(nq):
        keep = np.flatnonzero(ham[r] <= 3)
        np.testing.assert_array_equal(got[lims[r]:lims[r + 1]], ids[keep[np.lexsort((ids[keep], ham[r][keep]))]])


def test_padding_bits_that_are_set_are_refused():
    index = HashIndex(12, device="cpu")
    assert index.nbytes_per_code == 2 and index.nbits == 12
    good = pack_bits(np.ones((2, 12), dtype=np.uint8))
    index.add(good, np.array([1, 2]))
    bad = good.copy()
    bad[0, 1] |= 0x80  # bit 15: padding
    with pytest.raises(ValueError, match=r"bits 12\.\.15 pad a 12-bit code to 2 bytes and must be 0"):
        index.add(bad, np.array([3, 4]))
    with pytest.raises(ValueError, match=r"query codes row 0: bits 12\.\.15"):
        index.search(bad, 1, mode="hamming")
    with pytest.raises(ValueError, match="weights of shape \\(1, 12\\)"):
        index.search(good[:1], 1, np.ones((1, 16)))
    assert len(index) == 2


def test_reference_distances_match_python_loop():
    rng = np.random.default_rng(3)
    for nbits in (8, 40, 136):
        codes = rng.integers(0, 256, (9, nbits // 8), dtype=np.uint8)
        q = rng.integers(0, 256, (2, nbits // 8), dtype=np.uint8)
        w = make_weights(rng, "wild", 2, nbits)
        w_int, e = snap_weights(w, nbits)
        got = reference_distances(q, codes, w_int, e)
        for qi in range(2):
            wi, ee = ref_snap(list(w[qi]), nbits)
            assert list(w_int[qi]) == wi and int(e[qi]) == ee
            want = [math.ldexp(ref_distance(q[qi], c, wi, nbits), ee) for c in codes]
            assert got[qi].tolist() == want


def test_snapped_distances_are_exact_sums_in_any_order():
    """The documented definition: W_k <= 2**S and sums stay below 2**53 whatever the order."""
    rng = np.random.default_rng(4)
    for nbits in (8, 64, 136):
        w = make_weights(rng, "model", 3, nbits).astype(np.float64)
        w_int, e = snap_weights(w, nbits)
        assert w_int.max() <= 2 ** grid_bits(nbits)
        assert w_int.sum(axis=1).max() < 2**53
        # relative snapping error is tiny
        back = np.ldexp(w_int.astype(np.float64), e[:, None].astype(np.int32))
        assert np.all(np.abs(back - w) <= np.ldexp(1.0, (e - 1)[:, None].astype(np.int32)))


def test_ties_break_by_id_not_insertion_order():
    index = HashIndex(16, device="cpu")
    codes = np.zeros((6, 2), dtype=np.uint8)
    index.add(codes[:3], np.array([50, 10, 30]))
    index.add(codes[3:], np.array([20, 5, 40]))
    d, i = index.search(codes[:1], 4, np.ones(16), mode="dwh")
    assert i.tolist() == [[5, 10, 20, 30]]
    assert d.tolist() == [[0.0] * 4]
    assert index.ids.tolist() == [5, 10, 20, 30, 40, 50]


def test_weights_change_the_ranking():
    """A heavy bit pushes an item down although its Hamming distance is smaller."""
    index = HashIndex(8, device="cpu")
    q = np.array([[0b00000000]], dtype=np.uint8)
    codes = np.array([[0b00000001], [0b00000110]], dtype=np.uint8)  # Hamming 1 vs 2
    index.add(codes, np.array([1, 2]))
    w = np.array([[10.0, 1, 1, 1, 1, 1, 1, 1]])
    d, i = index.search(q, 2, w)
    assert i.tolist() == [[2, 1]] and d.tolist() == [[2.0, 10.0]]
    d, i = index.search(q, 2, mode="hamming")
    assert i.tolist() == [[1, 2]] and d.tolist() == [[1.0, 2.0]]


# ----------------------------------------------------------------------------- shards


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nbits=st.sampled_from(NBITS),
    n=st.integers(1, 50),
    shards=st.integers(1, 7),
    extra_k=st.integers(0, 60),
    mode=st.sampled_from(MODES),
    wkind=st.sampled_from(["zero", "equal", "wild", "model"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sharded_index_equals_unsharded(nbits, n, shards, extra_k, mode, wkind, seed):
    rng = np.random.default_rng(seed)
    codes = tied_codes(rng, n, nbits, 3)
    ids = rng.choice(10**5, size=n, replace=False).astype(np.int64)
    queries = codes[rng.integers(0, n, 3)]
    w = make_weights(rng, wkind, 3, nbits)
    k = 1 + extra_k % (n + 3)
    whole = HashIndex(nbits, device="cpu")
    whole.add(codes, ids)
    want = whole.search(queries, k, weights_for(mode, w), mode=mode)
    assignment = rng.integers(0, shards, n)
    results = []
    for s in range(shards):
        part = np.flatnonzero(assignment == s)
        if part.size == 0:
            continue  # an empty shard holds nothing to search
        shard = HashIndex(nbits, device="cpu")
        shard.add(codes[part], ids[part])
        results.append(shard.search(queries, k, weights_for(mode, w), mode=mode))
    got = merge_topk(results, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


# ----------------------------------------------------------------------------- range search


@settings(max_examples=40, deadline=None)
@given(nbits=st.sampled_from(NBITS), n=st.integers(1, 60), radius=st.integers(0, 140),
       seed=st.integers(0, 2**32 - 1))
def test_range_search_equals_brute_force(nbits, n, radius, seed):
    rng = np.random.default_rng(seed)
    codes = tied_codes(rng, n, nbits, 3)
    ids = rng.choice(10**6, size=n, replace=False).astype(np.int64)
    queries = codes[rng.integers(0, n, 3)]
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    lims, dist, got_ids = index.range_search(queries, radius)
    ham = reference_distances(queries, codes, *query_weights(None, "hamming", 3, nbits))
    assert lims.shape == (4,) and lims[0] == 0 and lims[-1] == len(dist) == len(got_ids)
    for r in range(3):
        keep = np.flatnonzero(ham[r] <= radius)
        order = keep[np.lexsort((ids[keep], ham[r][keep]))]
        np.testing.assert_array_equal(got_ids[lims[r]:lims[r + 1]], ids[order])
        np.testing.assert_array_equal(dist[lims[r]:lims[r + 1]], ham[r][order].astype(np.int32))


@pytest.mark.parametrize("nbits", [16, 12])
@pytest.mark.parametrize("mode", MODES)
def test_search_within_radius_equals_brute_force(nbits, mode):
    """Top k under the mode's distance among the items within a Hamming radius (and a mask), ties by id."""
    rng = np.random.default_rng(nbits)
    n, nq = 1500, 3
    codes = pack_bits(rng.integers(0, 2, (n, nbits)))
    codes[rng.integers(0, n, 400)] = codes[rng.integers(0, n, 400)]  # duplicate codes: ties
    ids = rng.choice(10**6, n, replace=False).astype(np.int64)
    queries = pack_bits(rng.integers(0, 2, (nq, nbits)))
    w = weights_for(mode, rng.uniform(0.1, 2, (nq, nbits)))
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    sorted_ids = np.sort(ids)
    mask = rng.random(n) < 0.4  # over positions in id order
    dist = reference_distances(queries, codes, *query_weights(w, mode, nq, nbits))
    ham = reference_distances(queries, codes, *query_weights(None, "hamming", nq, nbits))
    allowed_by_row = np.isin(ids, sorted_ids[mask])
    for radius, k in ((0, 5), (3, 40), (6, 500), (nbits, 2000)):
        for allowed, rows_ok in ((None, np.ones(n, bool)), (mask, allowed_by_row)):
            d, got = index.search_within_radius(queries, k, radius, w, mode=mode, allowed=allowed)
            assert d.shape == got.shape == (nq, k)
            for r in range(nq):
                sel = np.flatnonzero(rows_ok & (ham[r] <= radius))
                order = sel[np.lexsort((ids[sel], dist[r, sel]))][:k]
                m = order.size
                assert got[r, :m].tolist() == ids[order].tolist()
                assert d[r, :m].tolist() == dist[r, order].tolist()
                assert (got[r, m:] == -1).all() and np.isinf(d[r, m:]).all()
    with pytest.raises(ValueError, match="bool mask of shape"):
        index.search_within_radius(queries, 3, 2, w, mode=mode, allowed=mask[:-1])
    with pytest.raises(ValueError, match="radius must be >= 0"):
        index.search_within_radius(queries, 3, -1, w, mode=mode)


def test_range_search_radius_two_counts():
    index = HashIndex(16, device="cpu")
    codes = np.array([[0, 0], [1, 0], [3, 0], [7, 0]], dtype=np.uint8)
    index.add(codes, np.arange(4))
    lims, dist, ids = index.range_search(np.zeros((1, 2), np.uint8), 2)
    assert lims.tolist() == [0, 3] and ids.tolist() == [0, 1, 2] and dist.tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- torch path (CPU tensors)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nbits=st.sampled_from(NBITS), n=st.integers(1, 60), extra_k=st.integers(0, 70),
       mode=st.sampled_from(MODES), wkind=st.sampled_from(["zero", "equal", "wild", "model"]),
       small_chunks=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_torch_linear_form_equals_cpu_kernels(nbits, n, extra_k, mode, wkind, small_chunks, seed):
    """search_gpu's code, run on CPU tensors, gives the CPU kernels' integers and positions."""
    import qadwh_ray.core.search_gpu as gpu_mod

    rng = np.random.default_rng(seed)
    codes = tied_codes(rng, n, nbits, 3)
    queries = codes[rng.integers(0, n, 4)]
    w = make_weights(rng, wkind, 4, nbits)
    k = 1 + extra_k % n
    w_int, e = query_weights(weights_for(mode, w), mode, 4, nbits)
    old = gpu_mod.CELLS_PER_CHUNK, gpu_mod.BITS_PER_CHUNK
    try:
        if small_chunks:  # several database chunks and query blocks: exercises the running merge
            gpu_mod.CELLS_PER_CHUNK, gpu_mod.BITS_PER_CHUNK = 2 * n, 8 * nbits
        d, p = TorchSearcher(codes, "cpu").topk(queries, w_int, k)
    finally:
        gpu_mod.CELLS_PER_CHUNK, gpu_mod.BITS_PER_CHUNK = old
    ids = np.arange(n)
    ref = reference_distances(queries, codes, w_int, e)
    for r in range(4):
        order = np.lexsort((ids, ref[r]))[:k]
        np.testing.assert_array_equal(p[r], order)
        np.testing.assert_array_equal(np.ldexp(d[r].astype(float), int(e[r])), ref[r, order])


def test_explicit_cuda_without_cuda_is_an_error():
    if search_mod._cuda_available():
        pytest.skip("CUDA present")
    index = HashIndex(8, device="cuda")
    index.add(np.zeros((1, 1), np.uint8), np.array([0]))
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        index.search(np.zeros((1, 1), np.uint8), 1, mode="hamming")


# ----------------------------------------------------------------------------- API details


def test_accessors_labels_and_memory():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (10, 6), dtype=np.uint8)  # 48 bits: 32+16-bit planes
    labels = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 10)]
    index = HashIndex(48, device="cpu")
    index.add(codes[5:], np.arange(5, 10), labels[5:])
    index.add(codes[:5], np.arange(5), labels[:5])  # merges before the existing ids
    assert len(index) == 10 and index.nbits == 48
    np.testing.assert_array_equal(index.codes, codes)
    np.testing.assert_array_equal(index.ids, np.arange(10))
    np.testing.assert_array_equal(index.labels, labels)
    np.testing.assert_array_equal(index.labels_of(np.array([[3, -1], [9, 0]])),
                                  np.stack([np.stack([labels[3], np.zeros(3, np.uint8)]),
                                            np.stack([labels[9], labels[0]])]))
    assert index.memory_bytes == 10 * (6 + 8 + 3)
    assert "items=10" in repr(index)


def test_append_in_many_small_adds_keeps_everything():
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, (200, 9), dtype=np.uint8)  # 72 bits: 64+8-bit planes
    index = HashIndex(72, device="cpu")
    for s in range(0, 200, 7):
        index.add(codes[s:s + 7], np.arange(s, min(s + 7, 200)))
    np.testing.assert_array_equal(index.codes, codes)
    d, i = index.search(codes[17:18], 1, mode="hamming")
    assert i.tolist() == [[17]] and d.tolist() == [[0.0]]


def test_search_info_reports_strategy():
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    index = HashIndex(64, device="cpu")
    index.add(codes, np.arange(50))
    w = rng.uniform(0.5, 1.5, (2, 64))
    index.search(codes[:2], 5, w, strategy="exhaustive")
    info = index.last_search
    assert info.strategy == "exhaustive" and info.device == "cpu"
    assert info.weighted_evaluations == 100 and info.two_stage_blocks == 0
    index.search(codes[:2], 5, w, strategy="two_stage")
    assert index.last_search.exhaustive_blocks == 0 and index.last_search.two_stage_blocks > 0


def test_empty_query_batch():
    index = HashIndex(8, device="cpu")
    index.add(np.zeros((3, 1), np.uint8), np.arange(3))
    d, i = index.search(np.zeros((0, 1), np.uint8), 5, np.zeros((0, 8)))
    assert d.shape == (0, 5) and i.shape == (0, 5)


def test_core_search_imports_neither_numba_nor_torch():
    code = ("import sys; import qadwh_ray.core.search, qadwh_ray.core.topk; "
            "print('numba' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_kernels_import_without_compiling():
    code = ("import qadwh_ray.core.kernels as k; "
            "print(sum(len(f.signatures) for f in (k.topk_serial, k.topk_parallel, k.build_luts, "
            "k.range_search_kernel)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def index():
    idx = HashIndex(16, device="cpu")
    idx.add(np.arange(10, dtype=np.uint8).reshape(5, 2), np.arange(5), np.eye(5, dtype=np.uint8))
    return idx


def test_bad_nbits_and_device():
    with pytest.raises(ValueError, match="between 1 and 4096 bits, got 4097"):
        HashIndex(4097)
    with pytest.raises(ValueError, match="between 1 and 4096 bits, got 0"):
        HashIndex(0)
    with pytest.raises(TypeError):
        HashIndex(16.0)
    with pytest.raises(ValueError, match="device"):
        HashIndex(16, device="tpu")


def test_bad_codes(index):
    with pytest.raises(TypeError, match="uint8"):
        index.add(np.zeros((2, 2), dtype=np.int64), np.array([7, 8]), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="expected 2 bytes"):
        index.add(np.zeros((2, 3), dtype=np.uint8), np.array([7, 8]), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        index.add(np.zeros(2, dtype=np.uint8), np.array([7, 8]), np.zeros((2, 5)))
    with pytest.raises(TypeError, match="numpy"):
        index.add([[0, 0]], np.array([7]), np.zeros((1, 5)))
    with pytest.raises(ValueError, match="expected 2 bytes"):
        index.search(np.zeros((1, 4), dtype=np.uint8), 1, mode="hamming")
    with pytest.raises(TypeError, match="uint8"):
        index.search(np.zeros((1, 2), dtype=np.float32), 1, mode="hamming")
    with pytest.raises(ValueError, match="expected 2 bytes"):
        index.range_search(np.zeros((1, 1), dtype=np.uint8), 1)


def test_bad_ids(index):
    c = np.zeros((2, 2), dtype=np.uint8)
    lab = np.zeros((2, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match="duplicate id 9"):
        index.add(c, np.array([9, 9]), lab)
    with pytest.raises(ValueError, match="id 3 is already in the index"):
        index.add(c, np.array([3, 11]), lab)
    with pytest.raises(ValueError, match="non-negative"):
        index.add(c, np.array([-1, 11]), lab)
    with pytest.raises(ValueError, match="one per code"):
        index.add(c, np.array([11]), lab)
    with pytest.raises(TypeError, match="integers"):
        index.add(c, np.array([11.0, 12.0]), lab)
    assert len(index) == 5  # nothing half-added


def test_bad_labels(index):
    c = np.zeros((1, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="every add must give labels"):
        index.add(c, np.array([20]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        index.add(c, np.array([20]), np.full((1, 5), 2))
    with pytest.raises(ValueError, match="5 classes|classes"):
        index.add(c, np.array([20]), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="n=1"):
        index.add(c, np.array([20]), np.zeros((2, 5)))
    plain = HashIndex(16, device="cpu")
    plain.add(c, np.array([1]))
    with pytest.raises(ValueError, match="without labels"):
        plain.add(c, np.array([2]), np.ones((1, 1)))
    with pytest.raises(ValueError, match="no labels"):
        plain.labels_of(np.array([1]))
    with pytest.raises(KeyError, match="unknown id 77"):
        index.labels_of(np.array([0, 77]))


def test_bad_k(index):
    q = np.zeros((1, 2), dtype=np.uint8)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="k must be positive"):
            index.search(q, bad, mode="hamming")
    for bad in (1.5, True, "3", None):
        with pytest.raises(TypeError, match="k must be an integer"):
            index.search(q, bad, mode="hamming")


def test_k_larger_than_index_pads(index):
    d, i = index.search(np.zeros((2, 2), dtype=np.uint8), 8, mode="hamming")
    assert d.shape == (2, 8)
    assert (i[:, 5:] == -1).all() and np.isinf(d[:, 5:]).all()
    assert (i[:, :5] >= 0).all() and np.isfinite(d[:, :5]).all()


def test_bad_weights(index):
    q = np.zeros((2, 2), dtype=np.uint8)
    good = np.ones((2, 16))
    for value, msg in ((np.nan, "finite"), (np.inf, "finite"), (-0.5, "non-negative"), (1e301, "at most")):
        w = good.copy()
        w[1, 3] = value
        with pytest.raises(ValueError, match=msg):
            index.search(q, 1, w)
        with pytest.raises(ValueError, match=msg):
            index.search(q, 1, w[1], mode="dwh")
    with pytest.raises(ValueError, match=r"shape \(2, 16\)"):
        index.search(q, 1, np.ones((1, 16)))
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        index.search(q, 1, good, mode="dwh")
    with pytest.raises(ValueError, match="requires weights"):
        index.search(q, 1)
    with pytest.raises(TypeError, match="real"):
        index.search(q, 1, np.ones((2, 16), dtype=bool))
    # hamming ignores weights
    assert index.search(q, 1, good, mode="hamming")[1].shape == (2, 1)


def test_bad_mode_strategy_threads_radius(index):
    q = np.zeros((1, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="mode"):
        index.search(q, 1, mode="weighted")
    with pytest.raises(ValueError, match="strategy"):
        index.search(q, 1, mode="hamming", strategy="fast")
    with pytest.raises(ValueError, match="num_threads"):
        index.search(q, 1, mode="hamming", num_threads=0)
    with pytest.raises(ValueError, match="num_threads"):
        index.search(q, 1, mode="hamming", num_threads=100000)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        index.range_search(q, -1)
    with pytest.raises(TypeError, match="radius"):
        index.range_search(q, 1.5)


def test_empty_index_is_an_error():
    empty = HashIndex(16, device="cpu")
    q = np.zeros((1, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="empty index"):
        empty.search(q, 1, mode="hamming")
    with pytest.raises(ValueError, match="empty index"):
        empty.range_search(q, 2)
    with pytest.raises(KeyError):
        empty.positions_of(np.array([1]))
