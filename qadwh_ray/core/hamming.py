"""The distances between packed codes, defined once for evaluation and search alike.

Codes are packed ``(n, nbytes)`` uint8 arrays (:mod:`qadwh_ray.core.bits`: the
padding bits of a code whose length is not a multiple of 8 are 0 and weigh 0).

* Plain Hamming: XOR + popcount on the widest unsigned word that divides the
  code length (:func:`hamming_distances`).
* Symbol Hamming (DOH's ordinal codes): the count of differing ``m``-bit
  symbols (:func:`symbol_hamming_distances`).
* Weighted Hamming (paper eq. 15), ``D(q, x) = sum_k w_k [b_qk != b_xk]``, in
  the canonical form below (:func:`weighted_hamming_distances`).

The canonical weighted Hamming distance
---------------------------------------
Floating-point sums depend on their order, so "equal to brute force, ties
included" needs a canonical distance. Weights are *snapped* onto a
fixed-point grid per query and distances are exact sums on that grid:

* ``S = 52 - ceil(log2(nbits))`` grid bits, so ``nbits * 2**S <= 2**52``;
* for a weight row ``w`` (float64, every ``w_k >= 0`` and finite) with
  ``wmax = max(w) > 0`` and ``wmax = m * 2**E`` (``0.5 <= m < 1``, i.e.
  ``E = math.frexp(wmax)[1]``): the unit is ``2**e`` with
  ``e = max(E - S, -1074)`` and the integer weights are
  ``W_k = round_half_even(w_k / 2**e)`` (so ``W_k <= 2**S``); a row of zeros
  has ``e = 0`` and ``W = 0``. (The clamp at -1074 only matters for weights
  below about 1e-292: it keeps every distance an exact float64, subnormals
  included.)
* ``D(q, x) = ldexp(sum_k W_k [b_qk != b_xk], e)``, returned as float64.

The integer sum is below ``2**53`` and is computed in int64, so every
summation order (per-byte lookup tables, the compiled scan of
:mod:`qadwh_ray.core.kernels`, a float64 matrix product on a GPU, a Python
loop) gives the same integer, and the float64 value is that integer times a
power of two, so the ordering of the distances is the ordering of the
integers. The snapping error is at most ``nbits * 2**(e-1)``, a relative
``2**-46`` of ``wmax`` for 64-bit codes. Mode ``"hamming"`` uses ``W = 1``,
``e = 0``: the integer Hamming distances as float64.

``nbits`` is the real code length (the grid ``S`` is that of the unpadded
weights; padding bits weigh 0 and never differ), so every distance is that of
the unpadded codes.

Who uses it: :class:`qadwh_ray.core.search.HashIndex` (serving) and the
evaluation's rankings (:mod:`qadwh_ray.evaluation.evaluate`) compute this same
number, so a reported MAP is the MAP of the ranking the service returns.
Ties are ordered by item id everywhere (:mod:`qadwh_ray.core.topk`).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

from qadwh_ray.core.bits import check_codes, code_bytes, pad_weights

#: How a query's bits are weighted: per query (QaDWH), one vector for all queries (DWH), or unit weights.
Mode = Literal["qadwh", "dwh", "hamming"]
MODES: tuple[str, ...] = get_args(Mode)

#: Smallest unit exponent: ``ldexp(s, e)`` with ``e >= -1074`` and ``s < 2**53`` is exact (subnormals included).
MIN_EXPONENT = -1074

#: Largest weight accepted: beyond it a distance could overflow float64.
MAX_WEIGHT = 1e300

# Target number of (query, item) cells per chunk: bounds temporaries to a few tens of MB.
_CELLS_PER_CHUNK = 1 << 21

# _BYTE_BITS[v, t] = bit t of byte value v (little-endian within the byte).
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool)


# --------------------------------------------------------------------------- weights


def grid_bits(nbits: int) -> int:
    """``S``: the number of fixed-point bits of a snapped weight (module docstring)."""
    return 52 - math.ceil(math.log2(nbits))


def snap_weights(weights: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Snap ``(nq, nbits)`` non-negative weights to integers.

    Returns ``(W, e)``: int64 ``(nq, nbits)`` integer weights and int64
    ``(nq,)`` exponents, with distances ``ldexp(sum W_k [bits differ], e)``
    (module docstring). Weights must already be validated (:func:`validated_weights`).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != nbits:
        raise ValueError(f"weights must be (nq, {nbits}), got shape {w.shape}")
    wmax = w.max(axis=1) if w.shape[0] else np.zeros(0)
    _, big_e = np.frexp(wmax)
    exps = np.where(wmax > 0, np.maximum(big_e.astype(np.int64) - grid_bits(nbits), MIN_EXPONENT), 0).astype(np.int64)
    scaled = np.ldexp(w, (-exps)[:, None].astype(np.int32))
    return np.rint(scaled).astype(np.int64), exps


def _checked_weight_array(weights, shape: tuple[int, ...], what: str) -> np.ndarray:
    if weights is None:
        raise ValueError(f"{what} requires weights of shape {shape}, got None")
    w = np.asarray(weights)
    if w.dtype == np.bool_ or not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"weights must be a real (float or integer) array, got dtype {w.dtype}")
    if w.shape != shape:
        raise ValueError(f"{what} requires weights of shape {shape}, got {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    if w.size:
        lo, hi = float(w.min()), float(w.max())  # NaN and inf show in the extremes
        if not (math.isfinite(lo) and math.isfinite(hi)):
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(w))[0])
            raise ValueError(f"weights must be finite, got {w[idx]} at index {idx}")
        if lo < 0:  # eq. 15 is a distance only for w >= 0, and the search's lower bound needs it
            idx = tuple(int(i) for i in np.argwhere(w < 0)[0])
            raise ValueError(f"weights must be non-negative, got {w[idx]} at index {idx}")
        if hi > MAX_WEIGHT:
            raise ValueError(f"weights must be at most {MAX_WEIGHT:g} (distances would overflow), got {hi}")
    return w


def validated_weights(weights, mode: str, nq: int, nbits: int) -> np.ndarray:
    """Weights for ``mode`` as a C-contiguous float64 ``(nq, nbits)`` array (``(nq, 0)`` for hamming)."""
    if mode == "hamming":
        return np.zeros((nq, 0), dtype=np.float64)
    if mode == "dwh":
        w = _checked_weight_array(weights, (nbits,), "mode='dwh' (one weight vector for every query)")
        return np.ascontiguousarray(np.broadcast_to(w, (nq, nbits)))
    if mode == "qadwh":
        return _checked_weight_array(weights, (nq, nbits), "mode='qadwh' (one weight row per query)")
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def query_weights(weights, mode: str, nq: int, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``weights`` for ``mode`` and snap them: ``(W, e)``, ``e`` int64 ``(nq,)`` and
    ``W`` int64 ``(nq, 8 * code_bytes(nbits))``, one weight per stored bit (padding bits 0)."""
    w = validated_weights(weights, mode, nq, nbits)
    if mode == "hamming":
        w_int, exps = np.ones((nq, nbits), dtype=np.int64), np.zeros(nq, dtype=np.int64)
    else:
        w_int, exps = snap_weights(w, nbits)
    return pad_weights(w_int, code_bytes(nbits)), exps


# --------------------------------------------------------------------------- distances


def _check_pair(query_codes: np.ndarray, db_codes: np.ndarray, nbits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    query_codes = check_codes(query_codes, nbits, name="query_codes")
    db_codes = check_codes(db_codes, nbits, name="db_codes")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"query codes have {query_codes.shape[1]} bytes ({query_codes.shape[1] * 8} bits) "
            f"per code but database codes have {db_codes.shape[1]} bytes "
            f"({db_codes.shape[1] * 8} bits)"
        )
    return query_codes, db_codes


def _rows_per_chunk(n: int, cells: int = _CELLS_PER_CHUNK) -> int:
    return max(1, cells // max(1, n))


def _word_view(codes: np.ndarray) -> np.ndarray:
    """View packed codes as the widest unsigned words that tile a code exactly."""
    nbytes = codes.shape[1]
    for size, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if nbytes % size == 0:
            return codes.view(dtype)
    return codes


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """``(nq, n)`` int32 Hamming distances between packed codes (XOR + popcount)."""
    query_codes, db_codes = _check_pair(query_codes, db_codes)
    qw, dw = _word_view(query_codes), _word_view(db_codes)
    nq, n = qw.shape[0], dw.shape[0]
    out = np.zeros((nq, n), dtype=np.int32)
    if nq == 0 or n == 0:
        return out
    dcols = np.ascontiguousarray(dw.T)  # one contiguous row per code word
    step = _rows_per_chunk(n)
    for s in range(0, nq, step):
        block = out[s : s + step]
        for w in range(qw.shape[1]):
            # (chunk, 1) ^ (n,) -> (chunk, n); popcount of each word, accumulated.
            block += np.bitwise_count(qw[s : s + step, w, None] ^ dcols[w])
    return out


def byte_lookup_tables(query_codes: np.ndarray, w_int: np.ndarray) -> np.ndarray:
    """Per-byte tables ``(nq, nbytes, 256)`` int64 of snapped weights ``w_int (nq, 8 * nbytes)``:
    ``T[i, j, v] = sum_t W[i, 8j+t] * [bit_t(v) != bit_{8j+t}(query_i)]``."""
    query_codes = check_codes(query_codes, name="query_codes")
    nq, nbytes = query_codes.shape
    w = np.asarray(w_int, dtype=np.int64)
    if w.shape != (nq, 8 * nbytes):
        raise ValueError(f"integer weights have shape {w.shape}, expected ({nq}, {8 * nbytes}): one per stored bit")
    w = w.reshape(nq, nbytes, 8)
    qbits = np.unpackbits(query_codes, axis=1, bitorder="little").astype(bool).reshape(nq, nbytes, 8)
    tables = np.zeros((nq, nbytes, 256), dtype=np.int64)
    for t in range(8):  # one bit position at a time: (nq, nbytes, 256) temporaries only
        differs = qbits[:, :, t, None] != _BYTE_BITS[None, None, :, t]
        tables += np.where(differs, w[:, :, t, None], 0)
    return tables


def snapped_distances(query_codes: np.ndarray, db_codes: np.ndarray, w_int: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """``(nq, n)`` canonical distances from snapped weights (``(W, e)`` as :func:`query_weights`
    returns them), through per-byte lookup tables: exact int64 sums, then ``ldexp``."""
    query_codes, db_codes = _check_pair(query_codes, db_codes)
    nq, n = query_codes.shape[0], db_codes.shape[0]
    exps = np.asarray(exps, dtype=np.int64)
    out = np.empty((nq, n), dtype=np.float64)
    if nq == 0 or n == 0:
        return out
    dcols = np.ascontiguousarray(db_codes.T)  # byte j of every code, contiguous
    step = max(_rows_per_chunk(n), 64)  # tables are small; keep the per-chunk Python overhead low
    units = np.ldexp(1.0, exps.astype(np.int32))  # 2**e: a product with it is exact, like ldexp
    for s in range(0, nq, step):
        # integer sums below 2**53 are exact in float64, in any order (module docstring)
        tables = byte_lookup_tables(query_codes[s : s + step], w_int[s : s + step]).astype(np.float64)
        block = out[s : s + step]
        block[:] = np.take(tables[:, 0, :], dcols[0], axis=1)
        for j in range(1, tables.shape[1]):
            block += np.take(tables[:, j, :], dcols[j], axis=1)
        block *= units[s : s + step, None]
    return out


def weighted_hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(nq, n)`` float64 canonical weighted Hamming distances (paper eq. 15, module docstring).

    ``weights`` is ``(nq, nbits)`` (query-adaptive, one row per query) or
    ``(nbits,)`` (one vector for every query: DWH, or plain Hamming with ones);
    ``nbits``, the code length, is their last dimension, so the codes must be
    ``ceil(nbits / 8)`` bytes with zero padding bits. Equal to what
    :meth:`qadwh_ray.core.search.HashIndex.search` returns for the same weights.
    """
    w = np.asarray(weights)
    if w.ndim not in (1, 2):
        raise ValueError(f"weights must be (nbits,) or (nq, nbits), got shape {w.shape}")
    nbits = int(w.shape[-1])
    if nbits == 0:
        raise ValueError("weights are empty: one weight per code bit is needed")
    query_codes = check_codes(query_codes, name="query_codes")
    if not 8 * (query_codes.shape[1] - 1) < nbits <= 8 * query_codes.shape[1]:
        raise ValueError(f"{nbits} weights do not fit {query_codes.shape[1]}-byte codes (one weight per code bit)")
    query_codes, db_codes = _check_pair(query_codes, db_codes, nbits)
    w_int, exps = query_weights(w, "dwh" if w.ndim == 1 else "qadwh", query_codes.shape[0], nbits)
    return snapped_distances(query_codes, db_codes, w_int, exps)


def reference_distances(query_codes: np.ndarray, codes: np.ndarray, w_int: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """The canonical distances written directly (bits unpacked, one query at a time): the
    brute-force reference the fast paths are checked against. ``(W, e)`` as from :func:`query_weights`."""
    qb = np.unpackbits(query_codes, axis=1, bitorder="little").astype(np.int64)
    db = np.unpackbits(codes, axis=1, bitorder="little").astype(np.int64)
    out = np.empty((qb.shape[0], db.shape[0]), dtype=np.float64)
    for i in range(qb.shape[0]):
        diff = db ^ qb[i]
        out[i] = np.ldexp((diff @ w_int[i]).astype(np.float64), int(exps[i]))
    return out


SYMBOL_BITS = (1, 2, 4, 8)  # symbol widths that tile a byte, so a symbol never straddles two bytes
# _SYMBOL_LOW[m]: the lowest bit of every m-bit symbol of a byte
_SYMBOL_LOW = {1: 0xFF, 2: 0x55, 4: 0x11, 8: 0x01}


def symbol_hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray, symbol_bits: int) -> np.ndarray:
    """``(nq, n)`` int32 counts of differing ``symbol_bits``-bit symbols (DOH's ordinal codes).

    Symbol ``s`` occupies bits ``s*m .. s*m+m-1`` (little-endian, as packed). XOR
    the codes, OR each symbol's bits into its lowest bit, and popcount those low
    bits; ``symbol_bits=1`` is the plain Hamming distance.
    """
    if symbol_bits not in SYMBOL_BITS:
        raise ValueError(f"symbol_bits must be one of {SYMBOL_BITS}, got {symbol_bits!r}")
    if symbol_bits == 1:
        return hamming_distances(query_codes, db_codes)
    query_codes, db_codes = _check_pair(query_codes, db_codes)
    nq, n = query_codes.shape[0], db_codes.shape[0]
    out = np.empty((nq, n), dtype=np.int32)
    low = np.uint8(_SYMBOL_LOW[symbol_bits])
    step = _rows_per_chunk(max(1, n * query_codes.shape[1]))
    for s in range(0, nq, step):
        x = query_codes[s : s + step, None, :] ^ db_codes[None, :, :]
        folded = x.copy()
        for t in range(1, symbol_bits):
            folded |= x >> t
        out[s : s + step] = np.bitwise_count(folded & low).sum(axis=2, dtype=np.int32)
    return out
