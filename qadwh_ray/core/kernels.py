"""Compiled (numba) kernels behind :mod:`qadwh_ray.core.search`.

Why numba: the exact weighted top-k must stream a million codes per query at
about one nanosecond per code (FAISS ``IndexBinaryFlat`` speed). numpy cannot
fuse "XOR, popcount, compare with a threshold that tightens as the scan
goes" into one pass without materialising n-sized temporaries, which costs
several passes over memory and n-sized allocations per query. Every kernel
here is ``@njit(cache=True)``: nothing compiles at import time, the first call
compiles (a few seconds) and the machine code is cached on disk next to this
file (or under ``NUMBA_CACHE_DIR``) for later processes.

Code layout ("planes"). A packed code of ``nbytes = 8*a + r`` bytes is stored
as four C-contiguous arrays that together hold exactly the packed bytes, so an
item costs ``nbytes`` bytes and nothing is padded or unpacked:

* ``w64``  ``(n, a)`` uint64 — bytes ``[0, 8a)`` read as little-endian words;
* ``t32``  ``(n,)`` uint32 — the next 4 bytes when ``r >= 4`` (else empty);
* ``t16``  ``(n,)`` uint16 — the next 2 bytes when ``r % 4 >= 2`` (else empty);
* ``t8``   ``(n,)`` uint8  — the last byte when ``r`` is odd (else empty).

Byte ``j`` of the packed code keeps its position ``j`` in that order, which is
how the per-byte lookup tables are indexed.

Distances inside the kernels are int64 sums of integer ("snapped") weights;
see :mod:`qadwh_ray.core.search` for the definition. Top-k heaps are max-heaps
on the pair ``(distance, position)``; positions are in id order, so this is
the ``(distance, id)`` order of DESIGN.md §3.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

#: Heap sentinel distance: larger than any real distance (< 2**53).
SENTINEL = np.int64(1 << 62)

#: Strategy codes understood by :func:`topk_kernel`.
STRATEGY_AUTO = 0
STRATEGY_TWO_STAGE = 1
STRATEGY_EXHAUSTIVE = 2

_MASK8 = np.uint64(0xFF)
_SHIFT8 = np.uint64(8)
_MASK8_32 = np.uint32(0xFF)
_SHIFT8_32 = np.uint32(8)
_MASK8_16 = np.uint16(0xFF)
_SHIFT8_16 = np.uint16(8)


@intrinsic
def popcount(typingctx, x):
    """Population count of an unsigned integer as int64 (LLVM ``ctpop`` -> ``popcnt``)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (val,) = args
        if val.type.width < 64:
            val = builder.zext(val, ir.IntType(64))
        return builder.ctpop(val)

    return types.int64(x), codegen


@njit(cache=True, nogil=True, inline="always")
def _hamming(i, w64, t32, t16, t8, a, h32, h16, h8, qw, q32, q16, q8):
    h = 0
    for w in range(a):
        h += popcount(w64[i, w] ^ qw[w])
    if h32:
        h += popcount(t32[i] ^ q32)
    if h16:
        h += popcount(t16[i] ^ q16)
    if h8:
        h += popcount(t8[i] ^ q8)
    return h


@njit(cache=True, nogil=True, inline="always")
def _weighted(i, w64, t32, t16, t8, a, h32, h16, h8, lut, q):
    """Weighted distance of item ``i`` through the per-byte lookup tables ``lut[q]``."""
    d = np.int64(0)
    base = 0
    for w in range(a):
        x = w64[i, w]
        for _ in range(8):
            d += lut[q, base + np.intp(x & _MASK8)]
            x = x >> _SHIFT8
            base += 256
    if h32:
        x32 = t32[i]
        for _ in range(4):
            d += lut[q, base + np.intp(x32 & _MASK8_32)]
            x32 = x32 >> _SHIFT8_32
            base += 256
    if h16:
        x16 = t16[i]
        for _ in range(2):
            d += lut[q, base + np.intp(x16 & _MASK8_16)]
            x16 = x16 >> _SHIFT8_16
            base += 256
    if h8:
        d += lut[q, base + np.intp(t8[i])]
    return d


@njit(cache=True, nogil=True)
def _heap_replace_top(hd, hp, q, s, k, d, p):
    """Replace the top of the max-heap ``(hd[q, s], hp[q, s])`` by ``(d, p)`` and sift down."""
    i = 0
    while True:
        c = 2 * i + 1
        if c >= k:
            break
        r = c + 1
        if r < k and (hd[q, s, r] > hd[q, s, c] or (hd[q, s, r] == hd[q, s, c] and hp[q, s, r] > hp[q, s, c])):
            c = r
        if hd[q, s, c] > d or (hd[q, s, c] == d and hp[q, s, c] > p):
            hd[q, s, i] = hd[q, s, c]
            hp[q, s, i] = hp[q, s, c]
            i = c
        else:
            break
    hd[q, s, i] = d
    hp[q, s, i] = p


@njit(cache=True, nogil=True)
def _heap_sort(hd, hp, q, s, k):
    """Sort a max-heap in place into ascending ``(distance, position)`` order."""
    for end in range(k - 1, 0, -1):
        d = hd[q, s, end]
        p = hp[q, s, end]
        hd[q, s, end] = hd[q, s, 0]
        hp[q, s, end] = hp[q, s, 0]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= end:
                break
            r = c + 1
            if r < end and (hd[q, s, r] > hd[q, s, c] or (hd[q, s, r] == hd[q, s, c] and hp[q, s, r] > hp[q, s, c])):
                c = r
            if hd[q, s, c] > d or (hd[q, s, c] == d and hp[q, s, c] > p):
                hd[q, s, i] = hd[q, s, c]
                hp[q, s, i] = hp[q, s, c]
                i = c
            else:
                break
        hd[q, s, i] = d
        hp[q, s, i] = p


@njit(cache=True, nogil=True)
def _scan_hamming(b0, b1, w64, t32, t16, t8, a, h32, h16, h8, qw64, qt32, qt16, qt8, q, hd, hp, s, k):
    """Plain Hamming block scan: the distance is the popcount itself."""
    qw = qw64[q]
    q32 = qt32[q] if h32 else np.uint32(0)
    q16 = qt16[q] if h16 else np.uint16(0)
    q8 = qt8[q] if h8 else np.uint8(0)
    top = hd[q, s, 0]
    for i in range(b0, b1):
        h = _hamming(i, w64, t32, t16, t8, a, h32, h16, h8, qw, q32, q16, q8)
        if h < top:
            _heap_replace_top(hd, hp, q, s, k, h, i)
            top = hd[q, s, 0]


@njit(cache=True, nogil=True)
def _scan_two_stage(b0, b1, w64, t32, t16, t8, a, h32, h16, h8, qw64, qt32, qt16, qt8, q,
                    lut, prefix, thr, hd, hp, s, k):
    """Hamming filter ``h <= thr`` then weighted re-rank; returns (thr, re-ranked count)."""
    qw = qw64[q]
    q32 = qt32[q] if h32 else np.uint32(0)
    q16 = qt16[q] if h16 else np.uint16(0)
    q8 = qt8[q] if h8 else np.uint8(0)
    top = hd[q, s, 0]
    passed = 0
    for i in range(b0, b1):
        h = _hamming(i, w64, t32, t16, t8, a, h32, h16, h8, qw, q32, q16, q8)
        if h <= thr:
            passed += 1
            d = _weighted(i, w64, t32, t16, t8, a, h32, h16, h8, lut, q)
            if d < top:
                _heap_replace_top(hd, hp, q, s, k, d, i)
                top = hd[q, s, 0]
                if top < SENTINEL:
                    while prefix[q, thr] > top:
                        thr -= 1
    return thr, passed


@njit(cache=True, nogil=True)
def _scan_exhaustive(b0, b1, w64, t32, t16, t8, a, h32, h16, h8, q, lut, prefix, thr, hd, hp, s, k):
    """Weighted distance of every item through the lookup tables; returns thr."""
    top = hd[q, s, 0]
    for i in range(b0, b1):
        d = _weighted(i, w64, t32, t16, t8, a, h32, h16, h8, lut, q)
        if d < top:
            _heap_replace_top(hd, hp, q, s, k, d, i)
            top = hd[q, s, 0]
            if top < SENTINEL:
                while prefix[q, thr] > top:
                    thr -= 1
    return thr


@njit(cache=True, nogil=True, parallel=True)
def topk_kernel(w64, t32, t16, t8, a, h32, h16, h8, qw64, qt32, qt16, qt8,
                lut, prefix, hamming, k, groups, nparts, strategy, block):
    """Exact top-k of every query over position ranges of the database.

    ``groups`` is ``(G, 5)`` int64: ``start, stop`` (database positions),
    ``q0, q1`` (query range), ``part`` (slot in the output). Each group scans
    its database range block by block, every query of the group per block, so
    a block is read from cache by all of them. Returns ``hd, hp`` ``(nq, nparts,
    k)`` sorted ascending by ``(distance, position)`` per part (position -1 and
    distance ``SENTINEL`` pad missing entries) and ``stats`` ``(nq, nparts, 3)``:
    weighted evaluations, two-stage blocks, exhaustive blocks.
    """
    nq = qw64.shape[0]
    nbits = prefix.shape[1] - 1
    hd = np.full((nq, nparts, k), SENTINEL, dtype=np.int64)
    hp = np.full((nq, nparts, k), -1, dtype=np.int64)
    stats = np.zeros((nq, nparts, 3), dtype=np.int64)
    ngroups = groups.shape[0]
    for g in prange(ngroups):
        start = groups[g, 0]
        stop = groups[g, 1]
        q0 = groups[g, 2]
        q1 = groups[g, 3]
        s = groups[g, 4]
        thr = np.full(q1 - q0, nbits, dtype=np.int64)
        skip = np.zeros(q1 - q0, dtype=np.int64)
        for b0 in range(start, stop, block):
            b1 = min(b0 + block, stop)
            for q in range(q0, q1):
                j = q - q0
                if hamming:
                    _scan_hamming(b0, b1, w64, t32, t16, t8, a, h32, h16, h8, qw64, qt32, qt16, qt8, q, hd, hp, s, k)
                    stats[q, s, 1] += 1
                    continue
                use_two = strategy == STRATEGY_TWO_STAGE
                if strategy == STRATEGY_AUTO:
                    # Nothing to prune while the bound admits every distance;
                    # after a block where the filter let most items through,
                    # run the branch-free exhaustive scan for a few blocks
                    # before probing the filter again.
                    if thr[j] >= nbits:
                        use_two = False
                    elif skip[j] > 0:
                        skip[j] -= 1
                        use_two = False
                    else:
                        use_two = True
                if use_two:
                    t, passed = _scan_two_stage(b0, b1, w64, t32, t16, t8, a, h32, h16, h8,
                                                qw64, qt32, qt16, qt8, q, lut, prefix, thr[j], hd, hp, s, k)
                    thr[j] = t
                    stats[q, s, 0] += passed
                    stats[q, s, 1] += 1
                    if 4 * passed > (b1 - b0):
                        skip[j] = 7
                else:
                    thr[j] = _scan_exhaustive(b0, b1, w64, t32, t16, t8, a, h32, h16, h8, q, lut,
                                              prefix, thr[j], hd, hp, s, k)
                    stats[q, s, 0] += b1 - b0
                    stats[q, s, 2] += 1
        for q in range(q0, q1):
            _heap_sort(hd, hp, q, s, k)
    return hd, hp, stats


@njit(cache=True, nogil=True, parallel=True)
def build_luts(qbytes, weights):
    """Per-byte lookup tables: ``lut[q, 256*j + v] = sum_t W[q, 8j+t] * [bit_t(v) != bit_t(qbytes[q, j])]``."""
    nq, nbytes = qbytes.shape
    lut = np.empty((nq, nbytes * 256), dtype=np.int64)
    for q in prange(nq):
        sums = np.empty(256, dtype=np.int64)
        for j in range(nbytes):
            sums[0] = 0
            for v in range(1, 256):
                low = v & (-v)
                t = 0
                while (1 << t) != low:
                    t += 1
                sums[v] = sums[v & (v - 1)] + weights[q, 8 * j + t]
            qb = np.intp(qbytes[q, j])
            for v in range(256):
                lut[q, 256 * j + v] = sums[v ^ qb]
    return lut


@njit(cache=True, nogil=True, parallel=True)
def range_count(w64, t32, t16, t8, a, h32, h16, h8, qw64, qt32, qt16, qt8, radius):
    """``(nq, radius+1)`` counts of items at each Hamming distance ``<= radius``."""
    nq = qw64.shape[0]
    n = w64.shape[0]
    hist = np.zeros((nq, radius + 1), dtype=np.int64)
    for q in prange(nq):
        qw = qw64[q]
        q32 = qt32[q] if h32 else np.uint32(0)
        q16 = qt16[q] if h16 else np.uint16(0)
        q8 = qt8[q] if h8 else np.uint8(0)
        for i in range(n):
            h = _hamming(i, w64, t32, t16, t8, a, h32, h16, h8, qw, q32, q16, q8)
            if h <= radius:
                hist[q, h] += 1
    return hist


@njit(cache=True, nogil=True, parallel=True)
def range_fill(w64, t32, t16, t8, a, h32, h16, h8, qw64, qt32, qt16, qt8, radius, offsets, total):
    """Positions and distances of items within ``radius``, in ``(distance, position)`` order.

    ``offsets[q, h]`` is where query ``q``'s items at distance ``h`` start in
    the flat output (a counting sort, so the order needs no comparison sort).
    """
    nq = qw64.shape[0]
    n = w64.shape[0]
    out_p = np.empty(total, dtype=np.int64)
    out_h = np.empty(total, dtype=np.int32)
    for q in prange(nq):
        qw = qw64[q]
        q32 = qt32[q] if h32 else np.uint32(0)
        q16 = qt16[q] if h16 else np.uint16(0)
        q8 = qt8[q] if h8 else np.uint8(0)
        cur = offsets[q].copy()
        for i in range(n):
            h = _hamming(i, w64, t32, t16, t8, a, h32, h16, h8, qw, q32, q16, q8)
            if h <= radius:
                out_p[cur[h]] = i
                out_h[cur[h]] = h
                cur[h] += 1
    return out_p, out_h
