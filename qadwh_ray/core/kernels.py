"""Compiled (numba) kernels behind :mod:`qadwh_ray.core.search`.

Why numba: the exact weighted top-k must stream a million codes per query at
under a nanosecond per code (FAISS ``IndexBinaryFlat`` speed). numpy cannot
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
how the per-byte lookup tables (``256 * j + value``) are indexed. The planes
present, in that order, are numbered ``0 .. nplanes-1`` (the bound masks are
indexed by plane).

The lower bound (the filter of the two-stage scan). With the query's integer
weights ``W_k`` and a unit ``u = W_max // 16 + 1``, every weight is floored to
a level ``l_k = min(W_k // u, 15)``; written in binary, ``l_k`` puts bit ``k``
into up to four masks ``M_0 .. M_3``. For an item whose bits differ from the
query's in the set ``x``,
``B = sum_i 2**i * popcount(x & M_i) = sum_{k in x} l_k <= floor(D / u)``
(a sum of floors is at most the floor of the sum), so the item can only beat
the current k-th best distance ``top`` (``D <= top - 1``) if
``B <= (top - 1) // u``. ``B`` costs four AND + POPCOUNT per 64-bit word and
no table look-up, so it vectorises; it is tight because it keeps every
weight to within ``u`` (a sixteenth of the largest), where a Hamming-count
bound assumes every differing bit is the lightest one.

Kernels work block by block (a few thousand items): one tight loop per plane
fills a small buffer of bounds (and the minimum of every 64-item sub-block),
then only the sub-blocks whose minimum passes are looked at item by item, and
only the items that pass get their exact distance. The layout branches are
taken once per block, not once per item, and no helper that takes arrays is
called per item (such calls cost more than the popcount itself).

Distances inside the kernels are int64 sums of integer ("snapped") weights;
see :mod:`qadwh_ray.core.hamming` for the definition. Top-k heaps are max-heaps
on the pair ``(distance, position)``; positions are in id order, so this is
the ``(distance, id)`` order of :mod:`qadwh_ray.core.topk`.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

#: Heap sentinel distance: larger than any real distance (< 2**53).
SENTINEL = np.int64(1 << 62)

#: Strategy codes understood by :func:`topk_serial` / :func:`topk_parallel`.
STRATEGY_AUTO = 0
STRATEGY_TWO_STAGE = 1
STRATEGY_EXHAUSTIVE = 2

#: Largest level of a floored weight: four masks, levels 0..15 (the shifts in :func:`_level_sum`).
LEVEL_MAX = 15
#: Items per sub-block of the bound pass: one minimum per sub-block decides whether its items are looked at.
SUB = 64
#: Larger than any bound (bounds are int32 sums of at most nbits levels).
_NO_BOUND = np.int32(2**31 - 1)

_M = np.uint64(0xFF)
_ZERO = np.uint64(0)
_ONE = np.uint64(1)
# Shifts and table offsets as uint64 constants: numba would turn mixed
# signed/unsigned integer arithmetic into float64.
_S1, _S2, _S3, _S4, _S5, _S6, _S7 = (np.uint64(8 * t) for t in range(1, 8))
(_O1, _O2, _O3, _O4, _O5, _O6, _O7, _O8, _O9, _O10, _O11, _O12, _O13, _O14,
 _O15) = (np.uint64(256 * j) for j in range(1, 16))


@intrinsic
def trailing_zeros(typingctx, x):
    """Index of the lowest set bit of a non-zero uint64 (LLVM ``cttz`` -> ``tzcnt``)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        (val,) = args
        return builder.cttz(val, ir.Constant(ir.IntType(1), 1))

    return types.int64(x), codegen


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
def _block_hamming_exact(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, hb):
    """``hb[:b1-b0]`` (int32) = exact Hamming distances of positions ``[b0, b1)``."""
    m = b1 - b0
    for ii in range(m):
        hb[ii] = 0
    for w in range(W.shape[0]):
        x = W[w, b0:b1]
        qv = qw[w]
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


@njit(cache=True, nogil=True, inline="always")
def _level_sum(v, m0, m1, m2, m3):
    """The bound's share of one plane value ``v`` (query XOR item): ``sum_i 2**i * popcount(v & M_i)``."""
    return np.int32(popcount(v & m0) + (popcount(v & m1) << 1) + (popcount(v & m2) << 2) + (popcount(v & m3) << 3))


@njit(cache=True, nogil=True)
def _bound_plane(x, b0, nsub, qv, mk, buf, mins, first, last):
    """Add plane ``x``'s share of the bound of positions ``b0 + [0, SUB*nsub)`` to ``buf`` (``first``: assign).

    With ``last`` (the last plane), also write the minimum of every sub-block
    to ``mins``. Each sub-block is a fixed-length loop over slices, which
    LLVM unrolls and vectorises (vector popcounts, no index wrap-around checks).
    """
    m0 = mk[0]
    m1 = mk[1]
    m2 = mk[2]
    m3 = mk[3]
    if last:
        for g in range(nsub):
            o = g * SUB
            xs = x[b0 + o:b0 + o + SUB]
            bs = buf[o:o + SUB]
            lo = _NO_BOUND
            if first:
                for i in range(SUB):
                    d = _level_sum(xs[i] ^ qv, m0, m1, m2, m3)
                    bs[i] = d
                    lo = min(lo, d)
            else:
                for i in range(SUB):
                    d = bs[i] + _level_sum(xs[i] ^ qv, m0, m1, m2, m3)
                    bs[i] = d
                    lo = min(lo, d)
            mins[g] = lo
    elif first:
        for g in range(nsub):
            o = g * SUB
            xs = x[b0 + o:b0 + o + SUB]
            bs = buf[o:o + SUB]
            for i in range(SUB):
                bs[i] = _level_sum(xs[i] ^ qv, m0, m1, m2, m3)
    else:
        for g in range(nsub):
            o = g * SUB
            xs = x[b0 + o:b0 + o + SUB]
            bs = buf[o:o + SUB]
            for i in range(SUB):
                bs[i] += _level_sum(xs[i] ^ qv, m0, m1, m2, m3)


@njit(cache=True, nogil=True)
def _bound_plane_tail(x, b0, count, qv, mk, bs, first):
    """``bs[:count]`` (+)= plane ``x``'s share of the bound of positions ``[b0, b0 + count)`` (a short remainder)."""
    m0 = mk[0]
    m1 = mk[1]
    m2 = mk[2]
    m3 = mk[3]
    xs = x[b0:b0 + count]
    for i in range(count):
        d = _level_sum(xs[i] ^ qv, m0, m1, m2, m3)
        if first:
            bs[i] = d
        else:
            bs[i] += d


@njit(cache=True, nogil=True)
def _block_bound(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, mk, buf, mins):
    """``buf[:b1-b0]`` (int32) = lower bounds of positions ``[b0, b1)``; ``mins[g]`` = minimum of sub-block ``g``.

    ``mk`` ``(nplanes, 4)`` holds the query's masks (module docstring).
    Returns the number of sub-blocks (the last one may be shorter than SUB).
    """
    m = b1 - b0
    nsub = m // SUB
    full = nsub * SUB
    rem = m - full
    last = W.shape[0] + np.int64(h32) + np.int64(h16) + np.int64(h8) - 1
    p = 0
    for w in range(W.shape[0]):
        _bound_plane(W[w], b0, nsub, qw[w], mk[p], buf, mins, p == 0, p == last)
        if rem:
            _bound_plane_tail(W[w], b0 + full, rem, qw[w], mk[p], buf[full:m], p == 0)
        p += 1
    if h32:
        _bound_plane(t32, b0, nsub, q32, mk[p], buf, mins, p == 0, p == last)
        if rem:
            _bound_plane_tail(t32, b0 + full, rem, q32, mk[p], buf[full:m], p == 0)
        p += 1
    if h16:
        _bound_plane(t16, b0, nsub, q16, mk[p], buf, mins, p == 0, p == last)
        if rem:
            _bound_plane_tail(t16, b0 + full, rem, q16, mk[p], buf[full:m], p == 0)
        p += 1
    if h8:
        _bound_plane(t8, b0, nsub, q8, mk[p], buf, mins, p == 0, p == last)
        if rem:
            _bound_plane_tail(t8, b0 + full, rem, q8, mk[p], buf[full:m], p == 0)
    if rem:
        lo = buf[full]
        for i in range(full + 1, m):
            lo = min(lo, buf[i])
        mins[nsub] = lo
        return nsub + 1
    return nsub


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
def _scan_block(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, L, mk, unit, thr,
                hd, hp, q, s, k, mode, buf, mins, cand, dbuf):
    """Scan database positions ``[b0, b1)`` for query ``q`` into heap ``(q, s)``.

    ``mode`` 1: two-stage — the lower bound of every item first (module
    docstring), then the exact distance only of items with bound ``<= thr``.
    2: exhaustive — the exact distance of every item. Returns ``(thr, number
    of exact evaluations)``.

    ``thr`` is the largest bound an item can have and still matter: at most
    ``(top - 1) // unit``, ``top`` being the current k-th best distance (items
    come in increasing position, so one that ties the k-th best loses on
    position and only a distance *strictly* below ``top`` enters the heap).
    ``thr`` only shrinks as the scan goes; below 0 the heap is final.

    Each mode runs tight loops that fill buffers, a loop that keeps the few
    indices that can matter, and only those touch the heap: no call sits in a
    per-item loop.
    """
    m = b1 - b0
    top = hd[q, s, 0]
    if mode == 1:
        nsub = _block_bound(b0, b1, W, t32, t16, t8, h32, h16, h8, qw, q32, q16, q8, mk, buf, mins)
        c = 0
        t = np.int32(min(thr, _NO_BOUND))
        for g in range(nsub):
            if mins[g] <= t:
                o = g * SUB
                bs = buf[o:min(o + SUB, m)]
                hits = _ZERO
                for i in range(bs.shape[0]):
                    hits |= np.uint64(bs[i] <= t) << np.uint64(i)
                while hits != _ZERO:
                    cand[c] = o + trailing_zeros(hits)
                    c += 1
                    hits &= hits - _ONE
        _gather_weighted(b0, cand, c, W, t32, t16, t8, h32, h16, h8, L, dbuf)
        for j in range(c):
            d = dbuf[j]
            if d < top:
                _heap_replace_top(hd, hp, q, s, k, d, b0 + cand[j])
                top = hd[q, s, 0]
                thr = min(thr, (top - 1) // unit)
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
            thr = min(thr, (top - 1) // unit)
    return thr, m


@njit(cache=True, nogil=True)
def _topk_group(g, W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8, lut, masks, unit, bound_max, k, groups,
                strategy, block, hd, hp, stats):
    """Run one group of :func:`topk_serial` / :func:`topk_parallel` (see there)."""
    start = groups[g, 0]
    stop = groups[g, 1]
    q0 = groups[g, 2]
    q1 = groups[g, 3]
    s = groups[g, 4]
    thr = bound_max[q0:q1].copy()
    skip = np.zeros(q1 - q0, dtype=np.int64)
    buf = np.empty(block, dtype=np.int32)
    mins = np.empty(block // SUB + 1, dtype=np.int32)
    cand = np.empty(block, dtype=np.int64)
    dbuf = np.empty(block, dtype=np.int64)
    for b0 in range(start, stop, block):
        b1 = min(b0 + block, stop)
        for q in range(q0, q1):
            j = q - q0
            if thr[j] < 0:
                stats[q, s, 3] += 1
                continue  # k items at distance 0 already: the heap is final
            if strategy == STRATEGY_TWO_STAGE:
                mode = 1
            elif strategy == STRATEGY_EXHAUSTIVE:
                mode = 2
            elif thr[j] >= bound_max[q]:
                mode = 2  # the bound admits every item: nothing to prune yet
            elif skip[j] > 0:
                skip[j] -= 1
                mode = 2
            else:
                mode = 1
            t, evals = _scan_block(b0, b1, W, t32, t16, t8, h32, h16, h8, qw[q], qt32[q], qt16[q], qt8[q],
                                   lut[q], masks[q], unit[q], thr[j], hd, hp, q, s, k, mode, buf, mins, cand, dbuf)
            thr[j] = t
            stats[q, s, 0] += evals
            if mode == 2:
                stats[q, s, 2] += 1
            else:
                stats[q, s, 1] += 1
                # the filter let over 30% through: the exhaustive scan is cheaper for the next few blocks
                if strategy == STRATEGY_AUTO and 10 * evals > 3 * (b1 - b0):
                    skip[j] = 7
    for q in range(q0, q1):
        _heap_sort(hd, hp, q, s, k)


@njit(cache=True, nogil=True)
def topk_serial(W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8, lut, masks, unit, bound_max, k, groups, nparts,
                strategy, block):
    """Exact top-k of every query over position ranges of the database, in one thread.

    ``qw, qt32, qt16, qt8``: the query planes, ``(nq, a)`` and ``(nq,)`` each
    (zeros where the layout has no such plane). ``lut`` ``(nq, 256*nbytes)``:
    per-query lookup tables; ``masks`` ``(nq, nplanes, 4)``, ``unit`` and
    ``bound_max`` ``(nq,)``: the lower bound's masks, unit and largest value
    (:func:`prepare_queries`). ``groups`` is ``(G, 5)`` int64: ``start,
    stop`` (database positions), ``q0, q1`` (query range), ``part`` (slot in
    the output). Each group scans its database range block by block
    (``block`` items), every query of the group per block, so a block is read
    from cache by all of them. Returns ``hd, hp`` ``(nq, nparts, k)`` sorted
    ascending by ``(distance, position)`` per part (position -1 and distance
    ``SENTINEL`` pad missing entries) and ``stats`` ``(nq, nparts, 4)``:
    exact evaluations, two-stage blocks, exhaustive blocks, blocks skipped
    because the heap was final.
    """
    nq = qt8.shape[0]
    hd = np.full((nq, nparts, k), SENTINEL, dtype=np.int64)
    hp = np.full((nq, nparts, k), -1, dtype=np.int64)
    stats = np.zeros((nq, nparts, 4), dtype=np.int64)
    for g in range(groups.shape[0]):
        _topk_group(g, W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8, lut, masks, unit, bound_max, k, groups,
                    strategy, block, hd, hp, stats)
    return hd, hp, stats


@njit(cache=True, nogil=True, parallel=True)
def topk_parallel(W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8, lut, masks, unit, bound_max, k, groups, nparts,
                  strategy, block):
    """:func:`topk_serial` with the groups spread over numba's threads (groups write disjoint slots)."""
    nq = qt8.shape[0]
    hd = np.full((nq, nparts, k), SENTINEL, dtype=np.int64)
    hp = np.full((nq, nparts, k), -1, dtype=np.int64)
    stats = np.zeros((nq, nparts, 4), dtype=np.int64)
    for g in prange(groups.shape[0]):
        _topk_group(g, W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8, lut, masks, unit, bound_max, k, groups,
                    strategy, block, hd, hp, stats)
    return hd, hp, stats


@njit(cache=True, nogil=True)
def build_luts(qbytes, weights):
    """Per-byte lookup tables: ``lut[q, 256*j + v] = sum_t W[q, 8j+t] * [bit_t(v) != bit_t(qbytes[q, j])]``."""
    nq, nbytes = qbytes.shape
    lut = np.empty((nq, nbytes * 256), dtype=np.int64)
    sums = np.empty(256, dtype=np.int64)
    for q in range(nq):
        for j in range(nbytes):
            sums[0] = 0
            for t in range(8):  # values with highest set bit t: the same sums plus bit t's weight
                wt = weights[q, 8 * j + t]
                for v in range(1 << t, 2 << t):
                    sums[v] = sums[v - (1 << t)] + wt
            qb = np.intp(qbytes[q, j])
            for v in range(256):
                lut[q, 256 * j + v] = sums[v ^ qb]
    return lut


@njit(cache=True, nogil=True)
def _byte_plane(j, a, h32, h16):
    """``(plane, bit offset in the plane)`` of byte ``j`` of a packed code (module docstring)."""
    if j < 8 * a:
        return j // 8, 8 * (j % 8)
    o = 8 * a
    p = a
    if h32:
        if j < o + 4:
            return p, 8 * (j - o)
        o += 4
        p += 1
    if h16:
        if j < o + 2:
            return p, 8 * (j - o)
        p += 1
    return p, 0


@njit(cache=True, nogil=True)
def bound_masks(w_int, nbytes):
    """The lower bound of every query (module docstring) from its integer weights ``w_int`` ``(nq, nbits)``.

    Returns ``(masks (nq, nplanes, 4) uint64, unit (nq,), bound_max (nq,))``:
    bit ``b`` of ``masks[q, p, i]`` is set when bit ``i`` of the level of the
    code bit stored at bit ``b`` of plane ``p`` is; ``bound_max`` is the sum
    of the levels (the bound of an item that differs in every bit).
    """
    nq = w_int.shape[0]
    a = nbytes // 8
    r = nbytes - 8 * a
    h32 = r >= 4
    h16 = r % 4 >= 2
    nplanes = a + np.int64(h32) + np.int64(h16) + np.int64(r % 2 == 1)
    masks = np.zeros((nq, nplanes, 4), dtype=np.uint64)
    unit = np.ones(nq, dtype=np.int64)
    bound_max = np.zeros(nq, dtype=np.int64)
    for q in range(nq):
        u = w_int[q].max() // (LEVEL_MAX + 1) + 1
        unit[q] = u
        for j in range(nbytes):
            p, base = _byte_plane(j, a, h32, h16)
            for t in range(8):
                level = min(w_int[q, 8 * j + t] // u, LEVEL_MAX)
                bound_max[q] += level
                for i in range(4):
                    if (level >> i) & 1:
                        masks[q, p, i] |= np.uint64(1) << np.uint64(base + t)
    return masks, unit, bound_max


@njit(cache=True, nogil=True)
def prepare_queries(qbytes, weights, hamming, grid_bits, min_exp):
    """Everything a search needs per query, in one call (no per-query numpy overhead).

    ``weights`` ``(nq, nbits)`` float64, validated (finite, >= 0); ignored when
    ``hamming`` (unit weights). Returns ``(w_int, exps, lut, masks, unit,
    bound_max, qw, qt32, qt16, qt8)``: the snapped integer weights and
    exponents (definition in :mod:`qadwh_ray.core.hamming`), the lookup tables,
    the lower bound (:func:`bound_masks`) and the query planes.
    """
    nq, nbytes = qbytes.shape
    nbits = 8 * nbytes
    w_int = np.empty((nq, nbits), dtype=np.int64)
    exps = np.zeros(nq, dtype=np.int64)
    for q in range(nq):
        if hamming:
            for j in range(nbits):
                w_int[q, j] = 1
            continue
        wmax = 0.0
        for j in range(nbits):
            wmax = max(wmax, weights[q, j])
        if wmax == 0.0:
            for j in range(nbits):
                w_int[q, j] = 0
            continue
        e = max(math.frexp(wmax)[1] - grid_bits, min_exp)
        exps[q] = e
        for j in range(nbits):
            w_int[q, j] = np.int64(np.rint(math.ldexp(weights[q, j], -e)))
    lut = build_luts(qbytes, w_int)
    masks, unit, bound_max = bound_masks(w_int, nbytes)
    a = nbytes // 8
    r = nbytes - 8 * a
    qw = np.zeros((nq, a), dtype=np.uint64)
    qt32 = np.zeros(nq, dtype=np.uint32)
    qt16 = np.zeros(nq, dtype=np.uint16)
    qt8 = np.zeros(nq, dtype=np.uint8)
    for q in range(nq):
        for w in range(a):
            x = np.uint64(0)
            for b in range(8):
                x |= np.uint64(qbytes[q, 8 * w + b]) << np.uint64(8 * b)
            qw[q, w] = x
        o = 8 * a
        if r >= 4:
            qt32[q] = (np.uint32(qbytes[q, o]) | (np.uint32(qbytes[q, o + 1]) << np.uint32(8))
                       | (np.uint32(qbytes[q, o + 2]) << np.uint32(16))
                       | (np.uint32(qbytes[q, o + 3]) << np.uint32(24)))
            o += 4
        if r % 4 >= 2:
            qt16[q] = np.uint16(np.uint16(qbytes[q, o]) | (np.uint16(qbytes[q, o + 1]) << np.uint16(8)))
            o += 2
        if r % 2 == 1:
            qt8[q] = qbytes[q, o]
    return w_int, exps, lut, masks, unit, bound_max, qw, qt32, qt16, qt8


@njit(cache=True, nogil=True)
def range_search_kernel(n, W, t32, t16, t8, h32, h16, h8, qw, qt32, qt16, qt8, radius, block):
    """Items within Hamming ``radius`` of every query, in ``(distance, position)`` order.

    Positions ``[0, n)`` of the planes are searched. Two passes: a histogram
    by distance per query, then a counting-sort fill, so no comparison sort
    is needed. Returns ``(lims, positions, distances)``
    with query ``q``'s results in ``[lims[q], lims[q+1])``.
    """
    nq = qt8.shape[0]
    hist = np.zeros((nq, radius + 1), dtype=np.int64)
    for q in range(nq):
        hb = np.empty(block, dtype=np.int32)
        for b0 in range(0, n, block):
            b1 = min(b0 + block, n)
            _block_hamming_exact(b0, b1, W, t32, t16, t8, h32, h16, h8, qw[q], qt32[q], qt16[q], qt8[q], hb)
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
    for q in range(nq):
        hb = np.empty(block, dtype=np.int32)
        cur = offsets[q].copy()
        for b0 in range(0, n, block):
            b1 = min(b0 + block, n)
            _block_hamming_exact(b0, b1, W, t32, t16, t8, h32, h16, h8, qw[q], qt32[q], qt16[q], qt8[q], hb)
            for ii in range(b1 - b0):
                h = hb[ii]
                if h <= radius:
                    out_p[cur[h]] = b0 + ii
                    out_h[cur[h]] = h
                    cur[h] += 1
    return lims, out_p, out_h
