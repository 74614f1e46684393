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

* ``W``    ``(a, n)`` uint64 — bytes ``[8w, 8w+8)`` of every code as the
  little-endian word ``W[w]`` (word-major, so each word is one contiguous
  stream; ``(0, n)`` and empty for codes shorter than 8 bytes);
* ``t32``  ``(n,)`` uint32 — the next 4 bytes when ``r >= 4`` (else empty);
* ``t16``  ``(n,)`` uint16 — the next 2 bytes when ``r % 4 >= 2`` (else empty);
* ``t8``   ``(n,)`` uint8  — the last byte when ``r`` is odd (else empty).

Byte ``j`` of the packed code keeps its position ``j`` in that order, which is
how the per-byte lookup tables (``256 * j + value``) are indexed.

Kernels work block by block (a few thousand items): one tight loop per plane
fills a small buffer of Hamming (or weighted) distances, then a second loop
selects. The layout branches are taken once per block, not once per item, and
no helper that takes arrays is called per item (such calls cost more than the
popcount itself).

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

_M = np.uint64(0xFF)
# Shifts and table offsets as uint64 constants: numba would turn mixed
# signed/unsigned integer arithmetic into float64.
_S1, _S2, _S3, _S4, _S5, _S6, _S7 = (np.uint64(8 * t) for t in range(1, 8))
(_O1, _O2, _O3, _O4, _O5, _O6, _O7, _O8, _O9, _O10, _O11, _O12, _O13, _O14,
 _O15) = (np.uint64(256 * j) for j in range(1, 16))


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
def _block_hamming(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, hb):
    """``hb[:b1-b0]`` = Hamming distances of positions ``[b0, b1)`` to the query."""
    m = b1 - b0
    a = W.shape[0]
    if a == 0:
        for ii in range(m):
            hb[ii] = 0
    for w in range(a):
        x = W[w, b0:b1]
        qv = qw[w]
        if w == 0:
            for ii in range(m):
                hb[ii] = popcount(x[ii] ^ qv)
        else:
            for ii in range(m):
                hb[ii] += popcount(x[ii] ^ qv)
    if h32:
        x32 = t32[b0:b1]
        for ii in range(m):
            hb[ii] += popcount(x32[ii] ^ q32)
    if h16:
        x16 = t16[b0:b1]
        for ii in range(m):
            hb[ii] += popcount(x16[ii] ^ q16)
    if h8:
        x8 = t8[b0:b1]
        for ii in range(m):
            hb[ii] += popcount(x8[ii] ^ q8)


@njit(cache=True, nogil=True)
def _block_weighted(b0, b1, W, t32, t16, t8, h32, h16, h8, L, db):
    """``db[:b1-b0]`` = weighted distances of positions ``[b0, b1)`` through the tables ``L``."""
    m = b1 - b0
    a = W.shape[0]
    for ii in range(m):
        db[ii] = 0
    for w in range(a):
        x = W[w, b0:b1]
        T = L[2048 * w:2048 * w + 2048]
        for ii in range(m):
            v = x[ii]
            db[ii] += (T[v & _M] + T[_O1 + ((v >> _S1) & _M)] + T[_O2 + ((v >> _S2) & _M)]
                       + T[_O3 + ((v >> _S3) & _M)] + T[_O4 + ((v >> _S4) & _M)]
                       + T[_O5 + ((v >> _S5) & _M)] + T[_O6 + ((v >> _S6) & _M)] + T[_O7 + (v >> _S7)])
    o = 2048 * a
    if h32:
        x32 = t32[b0:b1]
        T = L[o:o + 1024]
        for ii in range(m):
            v = np.uint64(x32[ii])
            db[ii] += T[v & _M] + T[_O1 + ((v >> _S1) & _M)] + T[_O2 + ((v >> _S2) & _M)] + T[_O3 + (v >> _S3)]
        o += 1024
    if h16:
        x16 = t16[b0:b1]
        T = L[o:o + 512]
        for ii in range(m):
            v = np.uint64(x16[ii])
            db[ii] += T[v & _M] + T[_O1 + (v >> _S1)]
        o += 512
    if h8:
        x8 = t8[b0:b1]
        T = L[o:o + 256]
        for ii in range(m):
            db[ii] += T[np.uint64(x8[ii])]


@njit(cache=True, nogil=True)
def _gather_weighted(b0, cand, c, W, t32, t16, t8, h32, h16, h8, L, dc):
    """``dc[:c]`` = weighted distances of positions ``b0 + cand[:c]``."""
    a = W.shape[0]
    for j in range(c):
        dc[j] = 0
    for w in range(a):
        x = W[w]
        T = L[2048 * w:2048 * w + 2048]
        for j in range(c):
            v = x[b0 + cand[j]]
            dc[j] += (T[v & _M] + T[_O1 + ((v >> _S1) & _M)] + T[_O2 + ((v >> _S2) & _M)]
                      + T[_O3 + ((v >> _S3) & _M)] + T[_O4 + ((v >> _S4) & _M)]
                      + T[_O5 + ((v >> _S5) & _M)] + T[_O6 + ((v >> _S6) & _M)] + T[_O7 + (v >> _S7)])
    o = 2048 * a
    if h32:
        T = L[o:o + 1024]
        for j in range(c):
            v = np.uint64(t32[b0 + cand[j]])
            dc[j] += T[v & _M] + T[_O1 + ((v >> _S1) & _M)] + T[_O2 + ((v >> _S2) & _M)] + T[_O3 + (v >> _S3)]
        o += 1024
    if h16:
        T = L[o:o + 512]
        for j in range(c):
            v = np.uint64(t16[b0 + cand[j]])
            dc[j] += T[v & _M] + T[_O1 + (v >> _S1)]
        o += 512
    if h8:
        T = L[o:o + 256]
        for j in range(c):
            dc[j] += T[np.uint64(t8[b0 + cand[j]])]


@njit(cache=True, nogil=True)
def _scan_block(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, L, P, thr,
                hd, hp, q, s, k, mode, hb, cand, dbuf, nbits_bound):
    """Scan database positions ``[b0, b1)`` for query ``q`` into heap ``(q, s)``.

    ``mode`` 0: plain Hamming (the distance is the popcount). 1: two-stage —
    Hamming distances first, weighted re-rank only of items with ``h <= thr``.
    2: exhaustive — weighted distance of every item. Returns ``(thr, number
    of weighted evaluations)``. ``thr`` only shrinks: it is the largest ``h``
    with ``P[h] <= `` the current k-th best distance, ``P[h]`` being the sum
    of the ``h`` smallest weights (DESIGN.md §3's lower bound L(h)); no item
    farther than ``thr`` in Hamming distance can enter the top k.
    """
    m = b1 - b0
    top = hd[q, s, 0]
    # Each mode: one tight loop fills a buffer, a second one keeps the few
    # indices that can matter (a rarely taken branch), and only those touch
    # the heap, so no call sits in the per-item loops.
    if mode == 0:
        _block_hamming(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, hb)
        c = 0
        t = np.int32(min(top, nbits_bound))
        for ii in range(m):
            if hb[ii] < t:
                cand[c] = ii
                c += 1
        for j in range(c):
            h = np.int64(hb[cand[j]])
            if h < top:
                _heap_replace_top(hd, hp, q, s, k, h, b0 + cand[j])
                top = hd[q, s, 0]
        return thr, 0
    if mode == 1:
        _block_hamming(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, hb)
        c = 0
        t = np.int32(thr)
        for ii in range(m):
            if hb[ii] <= t:
                cand[c] = ii
                c += 1
        _gather_weighted(b0, cand, c, W, t32, t16, t8, h32, h16, h8, L, dbuf)
        for j in range(c):
            d = dbuf[j]
            if d < top:
                _heap_replace_top(hd, hp, q, s, k, d, b0 + cand[j])
                top = hd[q, s, 0]
                if top < SENTINEL:
                    while P[thr] > top:
                        thr -= 1
        return thr, c
    _block_weighted(b0, b1, W, t32, t16, t8, h32, h16, h8, L, dbuf)
    c = 0
    for ii in range(m):
        if dbuf[ii] < top:
            cand[c] = ii
            c += 1
    for j in range(c):
        d = dbuf[cand[j]]
        if d < top:
            _heap_replace_top(hd, hp, q, s, k, d, b0 + cand[j])
            top = hd[q, s, 0]
            if top < SENTINEL:
                while P[thr] > top:
                    thr -= 1
    return thr, m


@njit(cache=True, nogil=True, parallel=True)
def topk_kernel(W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8,
                lut, prefix, hamming, k, groups, nparts, strategy, block):
    """Exact top-k of every query over position ranges of the database.

    ``qw, qt32, qt16, qt8``: the query planes, ``(nq, a)`` and ``(nq,)`` each
    (zeros where the layout has no such plane). ``lut`` ``(nq, 256*nbytes)``
    and ``prefix`` ``(nq, nbits+1)``: per-query lookup tables and lower bounds
    (unused when ``hamming``). ``groups`` is ``(G, 5)`` int64: ``start, stop``
    (database positions), ``q0, q1`` (query range), ``part`` (slot in the
    output). Each group scans its database range block by block, every query
    of the group per block, so a block is read from cache by all of them.
    Returns ``hd, hp`` ``(nq, nparts, k)`` sorted ascending by ``(distance,
    position)`` per part (position -1 and distance ``SENTINEL`` pad missing
    entries) and ``stats`` ``(nq, nparts, 3)``: weighted evaluations,
    two-stage blocks, exhaustive blocks.
    """
    nq = qt8.shape[0]
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
        hb = np.empty(block, dtype=np.int32)
        cand = np.empty(block, dtype=np.int64)
        dbuf = np.empty(block, dtype=np.int64)
        for b0 in range(start, stop, block):
            b1 = min(b0 + block, stop)
            for q in range(q0, q1):
                j = q - q0
                if hamming:
                    mode = 0
                elif strategy == STRATEGY_TWO_STAGE:
                    mode = 1
                elif strategy == STRATEGY_EXHAUSTIVE:
                    mode = 2
                elif thr[j] >= nbits:
                    # The bound admits every distance: nothing to prune yet.
                    mode = 2
                elif skip[j] > 0:
                    skip[j] -= 1
                    mode = 2
                else:
                    mode = 1
                t, evals = _scan_block(b0, b1, W, t32, t16, t8, h32, h16, h8, qw[q], qt32[q], qt16[q], qt8[q],
                                       lut[q], prefix[q], thr[j], hd, hp, q, s, k, mode, hb, cand, dbuf, nbits + 1)
                thr[j] = t
                stats[q, s, 0] += evals
                if mode == 2:
                    stats[q, s, 2] += 1
                else:
                    stats[q, s, 1] += 1
                    # After a block where the filter let most items through,
                    # the exhaustive scan is cheaper: use it for a few blocks
                    # before probing the filter again.
                    if mode == 1 and strategy == STRATEGY_AUTO and 4 * evals > (b1 - b0):
                        skip[j] = 7
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
def range_search_kernel(W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8, radius, block):
    """Items within Hamming ``radius`` of every query, in ``(distance, position)`` order.

    Two passes: a histogram by distance per query, then a counting-sort fill,
    so no comparison sort is needed. Returns ``(lims, positions, distances)``
    with query ``q``'s results in ``[lims[q], lims[q+1])``.
    """
    nq = qt8.shape[0]
    n = W.shape[1]
    hist = np.zeros((nq, radius + 1), dtype=np.int64)
    for q in prange(nq):
        hb = np.empty(block, dtype=np.int32)
        for b0 in range(0, n, block):
            b1 = min(b0 + block, n)
            _block_hamming(b0, b1, W, t32, t16, t8, h32, h16, h8, qw[q], qt32[q], qt16[q], qt8[q], hb)
            for ii in range(b1 - b0):
                h = hb[ii]
                if h <= radius:
                    hist[q, h] += 1
    lims = np.zeros(nq + 1, dtype=np.int64)
    offsets = np.empty((nq, radius + 1), dtype=np.int64)
    total = 0
    for q in range(nq):
        lims[q] = total
        for h in range(radius + 1):
            offsets[q, h] = total
            total += hist[q, h]
    lims[nq] = total
    out_p = np.empty(total, dtype=np.int64)
    out_h = np.empty(total, dtype=np.int32)
    for q in prange(nq):
        hb = np.empty(block, dtype=np.int32)
        cur = offsets[q].copy()
        for b0 in range(0, n, block):
            b1 = min(b0 + block, n)
            _block_hamming(b0, b1, W, t32, t16, t8, h32, h16, h8, qw[q], qt32[q], qt16[q], qt8[q], hb)
            for ii in range(b1 - b0):
                h = hb[ii]
                if h <= radius:
                    out_p[cur[h]] = b0 + ii
                    out_h[cur[h]] = h
                    cur[h] += 1
    return lims, out_p, out_h
