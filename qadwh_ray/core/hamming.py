"""Hamming and weighted Hamming distances on packed codes (DESIGN.md §2, §3).

Codes are packed ``(n, nbytes)`` uint8 arrays and weights cover every stored bit
(``8 * nbytes``; padding bits weigh 0, see :mod:`qadwh_ray.core.bits`).

* Plain Hamming: XOR + popcount (``np.bitwise_count``) on the widest unsigned
  word that divides the code length (uint64 for 64/128-bit codes, ...).
* Weighted Hamming (paper eq. 15), ``D(q, x) = sum_k w_k [b_qk != b_xk]``: per-byte
  lookup tables ``T_j[v] = sum_t w_{8j+t} [bit_t(v) != q_{8j+t}]``, so one code costs
  ``nbytes`` look-ups. The summation order is fixed and documented (table
  entries over ``t = 0..7`` ascending, then bytes ``j = 0..`` ascending, in
  float64) so every search path that reuses :func:`byte_lookup_tables` gets
  bit-identical distances, and ties are ties everywhere.

Work is done in query chunks so that the ``(chunk, n)`` temporaries stay small
whatever the database size.
"""

from __future__ import annotations

import numpy as np

from qadwh_ray.core.bits import check_codes

# Target number of (query, item) cells per chunk: bounds temporaries to a few tens of MB.
_CELLS_PER_CHUNK = 1 << 21

# _BYTE_BITS[v, t] = bit t of byte value v (little-endian within the byte).
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")


def _check_pair(query_codes: np.ndarray, db_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query_codes = check_codes(query_codes, name="query_codes")
    db_codes = check_codes(db_codes, name="db_codes")
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


def check_weights(weights: np.ndarray, nq: int, nbits: int) -> np.ndarray:
    """Return bit weights as a float64 ``(nq, nbits)`` array (broadcasting a ``(nbits,)``).

    Weights must be finite and non-negative: eq. 15 is a distance only then, and
    the exact two-stage search (DESIGN.md §3) relies on ``w >= 0``.
    """
    w = np.asarray(weights)
    if w.dtype == np.bool_ or not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"weights must be real numbers, got dtype {w.dtype}")
    w = w.astype(np.float64, copy=False)
    if w.ndim == 1:
        if w.shape[0] != nbits:
            raise ValueError(f"weights have length {w.shape[0]}, expected one weight per bit ({nbits})")
        w = np.broadcast_to(w, (nq, nbits))
    elif w.ndim == 2:
        if w.shape != (nq, nbits):
            raise ValueError(f"weights have shape {w.shape}, expected ({nq}, {nbits}) or ({nbits},)")
    else:
        raise ValueError(f"weights must be (nbits,) or (nq, nbits), got shape {w.shape}")
    if w.size:
        bad = ~np.isfinite(w)
        if bad.any():
            i = np.argwhere(bad)[0]
            raise ValueError(f"weights must be finite, got {w[tuple(i)]} at index {tuple(int(x) for x in i)}")
        neg = w < 0
        if neg.any():
            i = np.argwhere(neg)[0]
            raise ValueError(f"weights must be non-negative, got {w[tuple(i)]} at index {tuple(int(x) for x in i)}")
    return w


def byte_lookup_tables(query_codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-byte tables ``(nq, nbytes, 256)`` float64 for the weighted Hamming distance.

    ``T[i, j, v] = sum_{t=0..7} w[i, 8j+t] * [bit_t(v) != bit_{8j+t}(query_i)]``,
    summed over ``t`` in ascending order (a fixed order so that results are
    reproducible bit for bit).
    """
    query_codes = check_codes(query_codes, name="query_codes")
    nq, nbytes = query_codes.shape
    w = check_weights(weights, nq, nbytes * 8).reshape(nq, nbytes, 8)
    qbits = np.unpackbits(query_codes, axis=1, bitorder="little").reshape(nq, nbytes, 8)
    tables = np.zeros((nq, nbytes, 256), dtype=np.float64)
    for t in range(8):
        differs = qbits[:, :, t, None] != _BYTE_BITS[None, None, :, t]  # (nq, nbytes, 256)
        tables += np.where(differs, w[:, :, t, None], 0.0)
    return tables


def weighted_hamming_from_tables(tables: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """``(nq, n)`` float64 distances from :func:`byte_lookup_tables` (bytes summed in order)."""
    db_codes = check_codes(db_codes, name="db_codes")
    if tables.ndim != 3 or tables.shape[2] != 256 or tables.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"lookup tables have shape {tables.shape}, expected (nq, {db_codes.shape[1]}, 256)"
        )
    nq, nbytes = tables.shape[0], tables.shape[1]
    n = db_codes.shape[0]
    out = np.zeros((nq, n), dtype=np.float64)
    if nq == 0 or n == 0:
        return out
    dcols = np.ascontiguousarray(db_codes.T)  # byte j of every code, contiguous
    step = _rows_per_chunk(n)
    for s in range(0, nq, step):
        block = out[s : s + step]
        for j in range(nbytes):
            block += np.take(tables[s : s + step, j, :], dcols[j], axis=1)
    return out


def weighted_hamming_distances(
    query_codes: np.ndarray, db_codes: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``(nq, n)`` float64 weighted Hamming distances (paper eq. 15).

    ``weights`` is ``(nq, nbits)`` (query-adaptive, one row per query) or
    ``(nbits,)`` (one vector for every query, e.g. DWH or plain Hamming with ones).
    """
    query_codes, db_codes = _check_pair(query_codes, db_codes)
    nq, nbytes = query_codes.shape
    step = _rows_per_chunk(max(db_codes.shape[0], 1), _CELLS_PER_CHUNK)
    step = max(step, 64)  # tables are small; keep the per-chunk Python overhead low
    w = check_weights(weights, nq, nbytes * 8)
    out = np.empty((nq, db_codes.shape[0]), dtype=np.float64)
    for s in range(0, nq, step):
        tables = byte_lookup_tables(query_codes[s : s + step], w[s : s + step])
        out[s : s + step] = weighted_hamming_from_tables(tables, db_codes)
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
