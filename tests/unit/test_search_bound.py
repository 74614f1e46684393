"""The two-stage scan's lower bound (qadwh_ray.core.kernels) against brute force.

The bound floors every integer weight to a level ``min(W_k // unit, 15)``
with ``unit = max(W) // 16 + 1`` and sums the levels of the differing bits;
these tests recompute that from unpacked bits for code lengths from 1 to 4096
bits (padded to whole bytes), check it never exceeds ``D // unit``, and run
searches whose blocks hold full 64-item sub-blocks and remainders, against the
numpy reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qadwh_ray.core import kernels
from qadwh_ray.core import search as search_mod
from qadwh_ray.core.bits import code_bytes, padding_mask
from qadwh_ray.core.hamming import query_weights, reference_distances
from qadwh_ray.core.search import HashIndex

NBITS = list(range(8, 137, 8)) + [1, 5, 12, 20, 36, 63, 100, 1000, 4096]  # any length: padded to whole bytes
WEIGHT_KINDS = ("zero", "equal", "ties", "spread", "wild", "sparse")


def make_weights(rng, kind, nq, nbits):
    if kind == "zero":
        return np.zeros((nq, nbits))
    if kind == "equal":
        return np.full((nq, nbits), 0.7)
    if kind == "ties":  # few distinct values: many tied distances
        return rng.integers(0, 3, (nq, nbits)).astype(np.float64)
    if kind == "spread":
        return rng.lognormal(0.0, 0.5, (nq, nbits))
    if kind == "wild":
        w = 10.0 ** rng.uniform(-30, 30, (nq, nbits))
        w[rng.random((nq, nbits)) < 0.2] = 0.0
        return w
    w = rng.lognormal(0.0, 1.0, (nq, nbits))  # "sparse": most weights zero
    w[rng.random((nq, nbits)) < 0.7] = 0.0
    return w


def codes_for(rng, n, nbits, tied):
    """Random packed codes (``tied``: near-copies of 3 codes), padding bits 0."""
    nbytes = code_bytes(nbits)
    if tied:
        base = rng.integers(0, 256, (3, nbytes), dtype=np.uint8)
        flips = (rng.random((n, nbytes)) < 0.1) * rng.integers(0, 256, (n, nbytes))
        codes = (base[rng.integers(0, 3, n)] ^ flips).astype(np.uint8)
    else:
        codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    codes[:, -1] &= np.uint8(0xFF ^ padding_mask(nbits))
    return codes


def brute_levels(w_int):
    unit = w_int.max(axis=1) // 16 + 1
    return unit, np.minimum(w_int // unit[:, None], 15)


def differing_bits(queries, codes):
    qb = np.unpackbits(queries, axis=1, bitorder="little").astype(np.int64)
    db = np.unpackbits(codes, axis=1, bitorder="little").astype(np.int64)
    return qb[:, None, :] ^ db[None, :, :]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nbits=st.sampled_from(NBITS), n=st.integers(1, 300), start=st.integers(0, 70),
       wkind=st.sampled_from(WEIGHT_KINDS), tied=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_block_bound_is_the_sum_of_floored_levels(nbits, n, start, wkind, tied, seed):
    rng = np.random.default_rng(seed)
    nbytes = code_bytes(nbits)
    total = start + n
    codes = codes_for(rng, total, nbits, tied)
    queries = codes_for(rng, 2, nbits, tied)
    w_int, _ = query_weights(make_weights(rng, wkind, 2, nbits), "qadwh", 2, nbits)
    masks, unit, bound_max = kernels.bound_masks(w_int, nbytes)
    want_unit, levels = brute_levels(w_int)
    np.testing.assert_array_equal(unit, want_unit)
    np.testing.assert_array_equal(bound_max, levels.sum(axis=1))

    index = HashIndex(nbits, device="cpu")
    index.add(codes, np.arange(total))
    qw, q32, q16, q8 = index._layout.query_planes(queries)
    diff = differing_bits(queries, codes[start:])
    exact = diff @ w_int[:, :, None]
    for r in range(2):
        buf = np.full(n, -7, dtype=np.int32)
        mins = np.full(n // kernels.SUB + 1, -7, dtype=np.int32)
        nsub = kernels._block_bound(start, total, index._w, index._t32, index._t16, index._t8,
                                    *index._layout.flags(), qw[r], q32[r], q16[r], q8[r], masks[r], buf, mins)
        want = diff[r] @ levels[r]
        np.testing.assert_array_equal(buf, want)
        assert (want <= exact[r, :, 0] // unit[r]).all()  # the bound never exceeds floor(D / unit)
        assert nsub == -(-n // kernels.SUB)
        for g in range(nsub):
            assert mins[g] == want[g * kernels.SUB:(g + 1) * kernels.SUB].min()


@pytest.fixture
def sub_blocks(monkeypatch):
    """Blocks of 128 items (two full sub-blocks, or one and a remainder) and parts of any size."""
    monkeypatch.setattr(search_mod, "BLOCK", 128)
    monkeypatch.setattr(search_mod, "MIN_PART", 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(
    nbits=st.sampled_from(NBITS),
    n=st.integers(1, 900),
    extra_k=st.integers(0, 300),
    mode=st.sampled_from(("qadwh", "dwh", "hamming")),
    strategy=st.sampled_from(("auto", "two_stage", "exhaustive")),
    wkind=st.sampled_from(WEIGHT_KINDS),
    tied=st.booleans(),
    nq=st.integers(1, 4),
    threads=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_over_sub_blocks_equals_numpy_reference(sub_blocks, nbits, n, extra_k, mode, strategy, wkind, tied,
                                                       nq, threads, seed):
    rng = np.random.default_rng(seed)
    codes = codes_for(rng, n, nbits, tied)
    ids = rng.choice(10**6, size=n, replace=False).astype(np.int64)
    queries = np.concatenate([codes[rng.integers(0, n, nq - 1)], codes_for(rng, 1, nbits, tied)])
    w = make_weights(rng, wkind, nq, nbits)
    weights = {"qadwh": w, "dwh": w[0], "hamming": None}[mode]
    k = 1 + extra_k % (n + 60)  # up to 60 more than the items
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    d, i = index.search(queries, k, weights, mode=mode, strategy=strategy, num_threads=threads)
    w_int, e = query_weights(weights, mode, nq, nbits)
    ref = reference_distances(queries, codes, w_int, e)
    kk = min(k, n)
    for r in range(nq):
        order = np.lexsort((ids, ref[r]))[:kk]
        np.testing.assert_array_equal(i[r, :kk], ids[order])
        np.testing.assert_array_equal(d[r, :kk], ref[r, order])
        assert (i[r, kk:] == -1).all() and np.isinf(d[r, kk:]).all()


def test_bound_prunes_spread_weights_on_random_codes():
    """Lognormal(0, 0.5) weights on uniform random codes: the exact distance of under 5% of the items is needed."""
    rng = np.random.default_rng(11)
    n = 200_000
    index = HashIndex(64, device="cpu")
    index.add(rng.integers(0, 256, (n, 8), dtype=np.uint8), np.arange(n))
    queries = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    index.search(queries, 100, rng.lognormal(0.0, 0.5, (4, 64)), strategy="two_stage", num_threads=1)
    assert index.last_search.weighted_evaluations < 0.05 * 4 * n
