import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadwh_ray.core import hamming
from qadwh_ray.core.bits import pack_bits, pad_weights, unpack_bits
from qadwh_ray.core.hamming import (
    byte_lookup_tables,
    hamming_distances,
    query_weights,
    reference_distances,
    snap_weights,
    snapped_distances,
    weighted_hamming_distances,
)
from qadwh_ray.core.search import HashIndex


def _brute_hamming(q, d):
    qb, db = unpack_bits(q).astype(int), unpack_bits(d).astype(int)
    return np.array([[int((qb[i] != db[j]).sum()) for j in range(len(db))] for i in range(len(qb))])


def _brute_weighted(q, d, w):
    qb, db = unpack_bits(q), unpack_bits(d)
    w = np.broadcast_to(w, qb.shape)
    return np.array([[sum(w[i, k] for k in range(qb.shape[1]) if qb[i, k] != db[j, k]) for j in range(len(db))]
                     for i in range(len(qb))])


def _codes(rng, n, nbytes):
    return rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)


@pytest.mark.parametrize("nbytes", [1, 2, 3, 4, 6, 8, 16])  # uint8 / uint16 / uint32 / uint64 word paths
def test_hamming_matches_brute_force(nbytes):
    rng = np.random.default_rng(nbytes)
    q, d = _codes(rng, 5, nbytes), _codes(rng, 9, nbytes)
    out = hamming_distances(q, d)
    assert out.dtype == np.int32 and out.shape == (5, 9)
    np.testing.assert_array_equal(out, _brute_hamming(q, d))


def test_hamming_chunked_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    q, d = _codes(rng, 13, 8), _codes(rng, 21, 8)
    full = hamming_distances(q, d)
    monkeypatch.setattr(hamming, "_CELLS_PER_CHUNK", 25)
    np.testing.assert_array_equal(hamming_distances(q, d), full)
    w = rng.random((13, 64))
    wfull = weighted_hamming_distances(q, d, w)
    np.testing.assert_array_equal(weighted_hamming_distances(q, d, w), wfull)


def test_hamming_extremes_and_empty():
    a = np.zeros((1, 8), dtype=np.uint8)
    b = np.full((1, 8), 255, dtype=np.uint8)
    assert hamming_distances(a, b)[0, 0] == 64
    assert hamming_distances(a, a)[0, 0] == 0
    assert hamming_distances(a[:0], b).shape == (0, 1)
    assert weighted_hamming_distances(a, b[:0], np.ones(64)).shape == (1, 0)


def test_hamming_rejects_mismatch():
    with pytest.raises(ValueError, match="6 bytes.*4 bytes|4 bytes.*6 bytes"):
        hamming_distances(np.zeros((1, 6), np.uint8), np.zeros((1, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        hamming_distances(np.zeros((1, 6), np.int32), np.zeros((1, 6), np.uint8))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_weighted_matches_brute_force(nbytes, seed):
    rng = np.random.default_rng(seed)
    q, d = _codes(rng, 3, nbytes), _codes(rng, 6, nbytes)
    w = rng.random((3, nbytes * 8)) * 3
    w[rng.random(w.shape) < 0.2] = 0.0
    out = weighted_hamming_distances(q, d, w)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _brute_weighted(q, d, w), rtol=0, atol=1e-12)


def test_weighted_one_vector_and_ones():
    rng = np.random.default_rng(3)
    q, d = _codes(rng, 4, 6), _codes(rng, 7, 6)
    w = rng.random(48)
    np.testing.assert_allclose(weighted_hamming_distances(q, d, w), _brute_weighted(q, d, w), atol=1e-12)
    np.testing.assert_array_equal(weighted_hamming_distances(q, d, np.ones(48)), hamming_distances(q, d))


def test_weighted_equals_linear_form():
    """D(q,x) = sum_k w_k q_k + sum_k w_k (1 - 2 q_k) b_xk (the GPU search's form)."""
    rng = np.random.default_rng(4)
    q, d = _codes(rng, 5, 4), _codes(rng, 30, 4)
    w = rng.random((5, 32))
    qb, db = unpack_bits(q).astype(float), unpack_bits(d).astype(float)
    lin = (w * qb).sum(1)[:, None] + (w * (1 - 2 * qb)) @ db.T
    np.testing.assert_allclose(weighted_hamming_distances(q, d, w), lin, atol=1e-12)


def test_tables_definition():
    rng = np.random.default_rng(5)
    q = _codes(rng, 2, 2)
    w_int, e = snap_weights(rng.random((2, 16)), 16)
    T = byte_lookup_tables(q, w_int)
    assert T.shape == (2, 2, 256) and T.dtype == np.int64
    qb = unpack_bits(q)
    for i in range(2):
        for j in range(2):
            for v in (0, 1, 77, 255):
                vb = unpack_bits(np.array([[v]], dtype=np.uint8))[0]
                assert T[i, j, v] == sum(int(w_int[i, 8 * j + t]) for t in range(8) if vb[t] != qb[i, 8 * j + t])
    with pytest.raises(ValueError, match="one per stored bit"):
        byte_lookup_tables(q, w_int[:, :8])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([3, 8, 12, 20, 48, 64, 100]), st.integers(0, 2**32 - 1), st.sampled_from(["uniform", "wild", "ties"]))
def test_weighted_is_the_canonical_distance_bit_for_bit(nbits, seed, kind):
    """Snapped integer weights, an exact integer sum, times 2**e: every path gives the same float, bit for bit,
    within the documented snapping error of the float sum."""
    rng = np.random.default_rng(seed)
    q, d = pack_bits(rng.integers(0, 2, (3, nbits))), pack_bits(rng.integers(0, 2, (9, nbits)))
    if kind == "uniform":
        w = rng.random((3, nbits))
    elif kind == "wild":  # magnitudes over many binades, some zeros: the snap rounds
        w = np.ldexp(rng.random((3, nbits)), rng.integers(-60, 60, (3, nbits)))
        w[rng.random(w.shape) < 0.2] = 0.0
    else:  # few distinct values: many exactly tied distances
        w = rng.choice([0.0, 0.1, 0.3], (3, nbits))
    got = weighted_hamming_distances(q, d, w)
    # reference_distances is checked against a Python loop over math.frexp/ldexp in test_search.py
    w_int, e = query_weights(w, "qadwh", 3, nbits)
    assert snapped_distances(q, d, w_int, e).tolist() == reference_distances(q, d, w_int, e).tolist() == got.tolist()
    assert np.abs(got - _brute_weighted(q, d, pad_weights(w, q.shape[1]))).max() <= nbits * np.ldexp(1.0, int(e.max()) - 1)


@pytest.mark.parametrize("nbits", [12, 48])
@pytest.mark.parametrize("form", ["qadwh", "dwh", "ones"])
def test_evaluation_ranks_exactly_as_the_search_service(nbits, form):
    """The evaluation's distances, ranked by (distance, id), are HashIndex.search's answers, ties included:
    a MAP computed from weighted_hamming_distances is the MAP of what serving returns."""
    rng = np.random.default_rng(nbits)
    n, nq = 600, 7
    codes = pack_bits(rng.integers(0, 2, (n, nbits)))
    codes[rng.integers(0, n, 200)] = codes[rng.integers(0, n, 200)]  # duplicate codes: exact ties
    ids = rng.choice(10**6, n, replace=False).astype(np.int64)
    queries = codes[rng.integers(0, n, nq)]
    logits = rng.normal(size=(nq, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    w = probs @ rng.uniform(0.2, 1.8, (5, nbits))  # softmax(z) @ W, as the model gives them
    weights, mode = {"qadwh": (w, "qadwh"), "dwh": (w[0], "dwh"), "ones": (np.ones(nbits), "hamming")}[form]
    dist = weighted_hamming_distances(queries, codes, weights)
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    got_d, got_i = index.search(queries, n, None if mode == "hamming" else weights, mode=mode)
    for r in range(nq):
        order = np.lexsort((ids, dist[r]))
        assert got_i[r].tolist() == ids[order].tolist()
        assert got_d[r].tolist() == dist[r, order].tolist()


def test_identical_codes_give_identical_distances():
    """Same code in two rows -> bit-identical weighted distance (ties stay ties)."""
    rng = np.random.default_rng(6)
    q = _codes(rng, 3, 6)
    d = _codes(rng, 5, 6)
    d = np.concatenate([d, d[::-1]])
    out = weighted_hamming_distances(q, d, rng.random((3, 48)))
    np.testing.assert_array_equal(out[:, :5], out[:, 5:][:, ::-1])


@pytest.mark.parametrize(
    "w, exc, match",
    [
        (-np.ones(16), ValueError, "non-negative"),
        (np.full(16, np.nan), ValueError, "finite"),
        (np.full(16, np.inf), ValueError, "finite"),
        (np.ones(7), ValueError, "7 weights do not fit 2-byte codes"),
        (np.ones(17), ValueError, "17 weights do not fit 2-byte codes"),
        (np.ones((3, 16)), ValueError, r"\(3, 16\)"),
        (np.ones((2, 2, 16)), ValueError, "shape"),
        (np.array(["a"] * 16), TypeError, "dtype"),
    ],
)
def test_weighted_rejects_bad_weights(w, exc, match):
    q = np.zeros((2, 2), np.uint8)
    with pytest.raises(exc, match=match):
        weighted_hamming_distances(q, q, w)


def test_weights_shorter_than_the_stored_bits_need_zero_padding_bits():
    """15 weights: 15-bit codes, whose 16th bit pads and must be 0."""
    q = np.zeros((1, 2), np.uint8)
    d = np.array([[0, 0x80]], np.uint8)
    with pytest.raises(ValueError, match=r"db_codes: bits 15\.\.15 pad a 15-bit code"):
        weighted_hamming_distances(q, d, np.ones(15))
    assert weighted_hamming_distances(q, q, np.ones(15)).tolist() == [[0.0]]


def test_negative_weight_error_names_the_value():
    w = np.ones(16)
    w[5] = -0.25
    with pytest.raises(ValueError, match=r"-0.25 at index \(5,\)"):
        weighted_hamming_distances(np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.uint8), w)


@pytest.mark.parametrize("symbol_bits, nbits", [(1, 16), (2, 12), (2, 48), (4, 24), (8, 16)])
def test_symbol_hamming_counts_differing_symbols(symbol_bits, nbits):
    from qadwh_ray.core.hamming import symbol_hamming_distances

    rng = np.random.default_rng(symbol_bits * 100 + nbits)
    S = nbits // symbol_bits
    qs, ds = rng.integers(0, 2**symbol_bits, (7, S)), rng.integers(0, 2**symbol_bits, (31, S))
    ds[:5] = qs[0]  # some exact matches
    ds[5, 1:] = qs[1, 1:]  # one differing symbol

    def pack(sym):  # symbol s, bit t -> code bit s*m + t
        bits = ((sym[:, :, None] >> np.arange(symbol_bits)) & 1).reshape(len(sym), -1)
        return pack_bits(bits)

    got = symbol_hamming_distances(pack(qs), pack(ds), symbol_bits)
    want = np.array([[sum(int(a != b) for a, b in zip(q, d)) for d in ds] for q in qs])
    assert got.dtype == np.int32 and np.array_equal(got, want)
    assert (got[0, :5] == 0).all() and got[1, 5] == int(qs[1, 0] != ds[5, 0])
    with pytest.raises(ValueError, match="symbol_bits must be one of"):
        symbol_hamming_distances(pack(qs), pack(ds), 3)


def test_asymmetric_query_ranks_as_the_inner_product():
    """ADSQ: -<u, s> over s in {-1, +1} = 2 * weighted Hamming(1[u >= 0], b; |u|) - sum |u|."""
    from qadwh_ray.core.weights import asymmetric_query

    rng = np.random.default_rng(3)
    u = np.tanh(rng.normal(size=(5, 12)))
    b = rng.integers(0, 2, (40, 12))
    codes, w = asymmetric_query(u)
    dw = weighted_hamming_distances(codes, pack_bits(b), w)
    direct = np.array([[-sum(u[i, k] * (2 * b[j, k] - 1) for k in range(12)) for j in range(40)] for i in range(5)])
    assert 2 * dw - np.abs(u).sum(axis=1, keepdims=True) == pytest.approx(direct, abs=1e-12)
    assert np.array_equal(np.argsort(dw, axis=1, kind="stable"), np.argsort(direct, axis=1, kind="stable"))
