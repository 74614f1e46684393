"""Exact query-adaptive weighted-Hamming search over packed binary codes.

:class:`HashIndex` holds packed codes (``ceil(nbits / 8)`` bytes per item), int64
ids and optional 0/1 labels, and answers exact top-k queries under the plain
Hamming distance, one weight vector for all queries (DWH) or one weight vector
per query (QaDWH, paper eq. 15), plus Hamming-radius lookups: every item within a
radius (:meth:`HashIndex.range_search`), or the top k among them under the
mode's distance (:meth:`HashIndex.search_within_radius`).

Distances are the canonical weighted Hamming distances of
:mod:`qadwh_ray.core.hamming` (weights snapped to a per-query fixed-point grid,
exact int64 sums), so every path and every shard gives the same number, and
the evaluation's rankings are those of this search.

Results are ordered by ``(distance, id)`` — the one total order of :mod:`qadwh_ray.core.topk` —
so they are deterministic and identical whether the database is one index or
many shards merged with :func:`qadwh_ray.core.topk.merge_topk`. When ``k``
exceeds the number of items, rows are padded with distance ``inf`` and id
``-1`` (FAISS's convention).

How it is fast (CPU, :mod:`qadwh_ray.core.kernels`)
---------------------------------------------------
Items are stored sorted by id, so the scan position order is the id order and
a later item never wins a tie. Per query, a max-heap holds the k best
``(distance, position)`` pairs. Strategies:

* ``"two_stage"`` — the paper's "Hamming first, then weighted re-rank" made
  exact with a tighter filter: a vectorised pass over each block computes a
  lower bound of every item's distance from the query's weights floored to
  16 levels (four AND + POPCOUNT per 64-bit word, no table look-up; the
  derivation is in :mod:`qadwh_ray.core.kernels`), and only items whose bound
  can still beat the current k-th best distance get their exact distance
  (per-byte lookup tables).
* ``"exhaustive"`` — the exact distance of every item through the per-byte
  lookup tables.
* ``"auto"`` (default) — per query and per block: exhaustive while the bound
  cannot prune (the threshold admits every item) or after a block where the
  filter let more than 30% of the items through (for the next 7 blocks),
  two-stage otherwise.

Once k items at distance 0 are found the heap is final and the rest of the
scan is skipped (``SearchInfo.final_heap_blocks``).

``index.last_search`` reports what ran (:class:`SearchInfo`). With CUDA
(``device="auto"`` and torch sees a GPU) the search runs as a float64 matrix
product on the GPU (:mod:`qadwh_ray.core.search_gpu`) with identical results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qadwh_ray.core.bits import check_code_length, check_codes, code_bytes, pad_weights
from qadwh_ray.core.hamming import MIN_EXPONENT, MODES, Mode, grid_bits, query_weights, snapped_distances, validated_weights
from qadwh_ray.core.topk import check_k, smallest_k

Strategy = Literal["auto", "two_stage", "exhaustive"]

_STRATEGY_CODES = {"auto": 0, "two_stage": 1, "exhaustive": 2}

#: Database positions per block of the CPU scan (a multiple of 8).
BLOCK = 4096
#: A single query is split over threads only for parts of at least this many items.
MIN_PART = 1 << 16
#: Codes converted to planes per step of add() (bounds its transient memory).
_ADD_CHUNK = 1 << 14


# --------------------------------------------------------------------------- layout


class _Layout:
    """How ``nbytes`` splits into planes (see :mod:`qadwh_ray.core.kernels`)."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.a = nbytes // 8
        r = nbytes - 8 * self.a
        self.h32 = r >= 4
        self.h16 = (r % 4) >= 2
        self.h8 = r % 2 == 1
        self.o32 = 8 * self.a
        self.o16 = self.o32 + 4 * self.h32
        self.o8 = self.o16 + 2 * self.h16

    def db_planes(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(W (a, n), t32, t16, t8)`` copies of ``codes``; absent planes are empty."""
        n = codes.shape[0]
        if self.a:
            words = np.ascontiguousarray(codes[:, : self.o32]).view("<u8").astype(np.uint64, copy=False)
            w = np.ascontiguousarray(words.T)
        else:
            w = np.empty((0, n), dtype=np.uint64)
        t32 = (np.ascontiguousarray(codes[:, self.o32:self.o32 + 4]).view("<u4").reshape(n).astype(np.uint32)
               if self.h32 else np.empty(0, dtype=np.uint32))
        t16 = (np.ascontiguousarray(codes[:, self.o16:self.o16 + 2]).view("<u2").reshape(n).astype(np.uint16)
               if self.h16 else np.empty(0, dtype=np.uint16))
        t8 = np.ascontiguousarray(codes[:, self.o8]) if self.h8 else np.empty(0, dtype=np.uint8)
        return w, t32, t16, t8

    def query_planes(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(qw (nq, a), qt32, qt16, qt8)``, every plane of length nq (zeros where absent)."""
        nq = codes.shape[0]
        if self.a:
            qw = np.ascontiguousarray(codes[:, : self.o32]).view("<u8").astype(np.uint64)
            qw = np.ascontiguousarray(qw)
        else:
            qw = np.zeros((nq, 0), dtype=np.uint64)
        qt32 = (np.ascontiguousarray(codes[:, self.o32:self.o32 + 4]).view("<u4").reshape(nq).astype(np.uint32)
                if self.h32 else np.zeros(nq, dtype=np.uint32))
        qt16 = (np.ascontiguousarray(codes[:, self.o16:self.o16 + 2]).view("<u2").reshape(nq).astype(np.uint16)
                if self.h16 else np.zeros(nq, dtype=np.uint16))
        qt8 = np.ascontiguousarray(codes[:, self.o8]) if self.h8 else np.zeros(nq, dtype=np.uint8)
        return qw, qt32, qt16, qt8

    def flags(self) -> tuple[bool, bool, bool]:
        return bool(self.h32), bool(self.h16), bool(self.h8)


# --------------------------------------------------------------------------- index


@dataclass
class SearchInfo:
    """What the last :meth:`HashIndex.search` ran (for benchmarks and diagnostics)."""

    mode: str
    strategy: str
    device: str
    threads: int = 1
    parts: int = 1
    #: weighted (lookup-table) distance evaluations, summed over queries
    weighted_evaluations: int = 0
    #: blocks scanned two-stage (lower-bound filter first) / exhaustively, summed over queries
    two_stage_blocks: int = 0
    exhaustive_blocks: int = 0
    #: blocks not scanned because k items at distance 0 were already found, summed over queries
    final_heap_blocks: int = 0
    per_query_evaluations: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class HashIndex:
    """In-memory exact search over packed binary codes (no Ray).

    Parameters
    ----------
    nbits:
        Code length in bits (1 to 4096; codes are ``ceil(nbits / 8)`` bytes, zero-padded).
    device:
        ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``.

    Memory: per item the packed code (``ceil(nbits / 8)`` bytes, stored as 64/32/16/8-bit
    planes with no padding) and an int64 id, plus the labels when given.
    Items are kept sorted by id (``codes``/``ids`` come back in that order).
    """

    def __init__(self, nbits: int, device: str = "auto"):
        self._nbits = check_code_length(nbits)
        self._layout = _Layout(code_bytes(self._nbits))
        if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        self._device = device
        self._n = 0
        self._cap = 0
        self._w, self._t32, self._t16, self._t8 = self._layout.db_planes(np.zeros((0, self._layout.nbytes), np.uint8))
        self._ids = np.empty(0, dtype=np.int64)
        self._labels: np.ndarray | None = None
        self._gpu = None
        self.last_search: SearchInfo | None = None

    # ------------------------------------------------------------- accessors
    @property
    def nbits(self) -> int:
        return self._nbits

    @property
    def nbytes_per_code(self) -> int:
        return self._layout.nbytes

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        lab = "none" if self._labels is None else f"{self._labels.shape[1]} classes"
        return f"HashIndex(nbits={self._nbits}, items={self._n}, labels={lab}, device={self._device!r})"

    @property
    def ids(self) -> np.ndarray:
        """The ids, ascending (a read-only view)."""
        v = self._ids[: self._n]
        v.flags.writeable = False
        return v

    @property
    def codes(self) -> np.ndarray:
        """The packed codes ``(n, ceil(nbits / 8))`` uint8 in id order (a new array)."""
        return self._codes_at(slice(0, self._n))

    def _codes_at(self, sel) -> np.ndarray:
        """Packed codes of the positions ``sel`` (a slice or an index array), as a new array."""
        lay = self._layout
        ids = self._ids[sel]
        m = ids.shape[0]
        out = np.empty((m, lay.nbytes), dtype=np.uint8)
        if lay.a:
            out[:, : lay.o32] = np.ascontiguousarray(self._w[:, sel].T).view(np.uint8)
        if lay.h32:
            out[:, lay.o32:lay.o32 + 4] = self._t32[sel].astype("<u4").view(np.uint8).reshape(m, 4)
        if lay.h16:
            out[:, lay.o16:lay.o16 + 2] = self._t16[sel].astype("<u2").view(np.uint8).reshape(m, 2)
        if lay.h8:
            out[:, lay.o8] = self._t8[sel]
        return out

    @property
    def labels(self) -> np.ndarray | None:
        """The ``(n, c)`` 0/1 uint8 labels in id order (read-only view), or None."""
        if self._labels is None:
            return None
        v = self._labels[: self._n]
        v.flags.writeable = False
        return v

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the index arrays (codes, ids, labels), allocated capacity included."""
        total = self._w.nbytes + self._t32.nbytes + self._t16.nbytes + self._t8.nbytes + self._ids.nbytes
        return total + (self._labels.nbytes if self._labels is not None else 0)

    def positions_of(self, ids) -> np.ndarray:
        """Positions (id order) of ``ids``; an unknown id is a KeyError."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if self._n == 0:
            if ids.size:
                raise KeyError(f"unknown id {int(ids.ravel()[0])} (the index is empty)")
            return np.zeros(ids.shape, dtype=np.int64)
        known = self._ids[: self._n]
        pos = np.searchsorted(known, ids)
        bad = known[np.minimum(pos, self._n - 1)] != ids
        if np.any(bad):
            raise KeyError(f"unknown id {int(ids[bad].ravel()[0])} ({int(np.count_nonzero(bad))} unknown)")
        return pos

    def labels_of(self, ids) -> np.ndarray:
        """Labels of ``ids`` (shape ``ids.shape + (c,)``); id -1 (padding) gives a row of zeros."""
        if self._labels is None:
            raise ValueError("this index holds no labels (add them with add(codes, ids, labels))")
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        pad = ids == -1
        out = np.zeros(ids.shape + (self._labels.shape[1],), dtype=np.uint8)
        out[~pad] = self._labels[self.positions_of(ids[~pad])]
        return out

    # ------------------------------------------------------------------- add
    def add(self, codes: np.ndarray, ids, labels=None) -> None:
        """Add packed codes with unique non-negative int64 ids (and ``(n, c)`` 0/1 labels).

        Ids must be unique within the call and not already in the index.
        Labels are all-or-nothing: given on the first add, required on every
        later one (same number of classes), and refused if the first add had none.
        """
        codes = check_codes(codes, self._nbits)
        m = codes.shape[0]
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != m:
            raise ValueError(f"ids must be a 1-D array of {m} ids (one per code), got shape {ids.shape}")
        if m and (ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.dtype == np.uint64 and m and ids.max() > np.iinfo(np.int64).max:
            raise ValueError(f"id {int(ids.max())} does not fit in int64")
        ids = ids.astype(np.int64, copy=False)  # add() copies what it keeps
        if m and ids.min() < 0:
            raise ValueError(f"ids must be non-negative (-1 marks padding in results), got {int(ids.min())}")
        labels = self._check_labels(labels, m)
        if m == 0:
            return
        order = None
        if m > 1 and not np.all(ids[1:] > ids[:-1]):
            order = np.argsort(ids, kind="stable")
            ids = ids[order]
            dup = np.flatnonzero(ids[1:] == ids[:-1])
            if dup.size:
                raise ValueError(f"duplicate id {int(ids[dup[0]])} in this add ({dup.size} duplicates)")
            codes = codes[order]
            if labels is not None:
                labels = labels[order]
        n = self._n
        if n:
            known = self._ids[:n]
            pos = np.searchsorted(known, ids)
            hit = pos < n
            clash = np.flatnonzero(known[pos[hit]] == ids[hit])
            if clash.size:
                raise ValueError(f"id {int(ids[hit][clash[0]])} is already in the index ({clash.size} such ids)")
        if n == 0 or ids[0] > self._ids[n - 1]:
            self._append(codes, ids, labels)
        else:
            self._merge(self._layout.db_planes(codes), ids, labels, pos)
        self._gpu = None

    def _check_labels(self, labels, m: int) -> np.ndarray | None:
        if labels is None:
            if self._labels is not None:
                raise ValueError("this index holds labels: every add must give labels too")
            return None
        if self._n and self._labels is None:
            raise ValueError("this index was built without labels: labels cannot be added later")
        lab = np.asarray(labels)
        if lab.ndim != 2 or lab.shape[0] != m:
            raise ValueError(f"labels must be an (n, c) 0/1 matrix with n={m}, got shape {lab.shape}")
        if lab.dtype != np.bool_:
            if not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.floating)):
                raise TypeError(f"labels must be a numeric 0/1 matrix, got dtype {lab.dtype}")
            if lab.size and ((lab != 0) & (lab != 1)).any():
                raise ValueError("labels must contain only 0 and 1")
        if self._labels is not None and lab.shape[1] != self._labels.shape[1]:
            raise ValueError(f"labels have {lab.shape[1]} classes, the index has {self._labels.shape[1]}")
        return np.ascontiguousarray(lab.astype(np.uint8))

    def _append(self, codes: np.ndarray, ids: np.ndarray, labels) -> None:
        n, m = self._n, ids.shape[0]
        if n + m > self._cap:
            cap = n + m if n == 0 else max(n + m, int(self._cap * 1.5))
            self._reserve(cap, labels.shape[1] if labels is not None else None)
        lay = self._layout
        for s in range(0, m, _ADD_CHUNK):  # planes chunk by chunk: small transient memory
            e = min(s + _ADD_CHUNK, m)
            w, t32, t16, t8 = lay.db_planes(codes[s:e])
            self._w[:, n + s:n + e] = w
            if lay.h32:
                self._t32[n + s:n + e] = t32
            if lay.h16:
                self._t16[n + s:n + e] = t16
            if lay.h8:
                self._t8[n + s:n + e] = t8
        self._ids[n:n + m] = ids
        if labels is not None:
            self._labels[n:n + m] = labels
        self._n = n + m

    def _reserve(self, cap: int, nclasses: int | None) -> None:
        n, lay = self._n, self._layout

        def grow(old: np.ndarray, shape, dtype):
            new = np.empty(shape, dtype=dtype)
            if old is not None and n:
                new[..., :n] = old[..., :n]
            return new

        self._w = grow(self._w, (lay.a, cap), np.uint64)
        if lay.h32:
            self._t32 = grow(self._t32, (cap,), np.uint32)
        if lay.h16:
            self._t16 = grow(self._t16, (cap,), np.uint16)
        if lay.h8:
            self._t8 = grow(self._t8, (cap,), np.uint8)
        self._ids = grow(self._ids, (cap,), np.int64)
        if nclasses is not None:
            lab = np.empty((cap, nclasses), dtype=np.uint8)
            if self._labels is not None and n:
                lab[:n] = self._labels[:n]
            self._labels = lab
        self._cap = cap

    def _merge(self, planes, ids: np.ndarray, labels, pos: np.ndarray) -> None:
        n, m, lay = self._n, ids.shape[0], self._layout
        total = n + m
        is_new = np.zeros(total, dtype=bool)
        is_new[pos + np.arange(m)] = True
        old = ~is_new

        def merged(old_arr: np.ndarray, new_arr: np.ndarray, axis_last: bool):
            shape = (old_arr.shape[0], total) if axis_last else (total,) + old_arr.shape[1:]
            out = np.empty(shape, dtype=old_arr.dtype)
            if axis_last:
                out[:, old] = old_arr[:, :n]
                out[:, is_new] = new_arr
            else:
                out[old] = old_arr[:n]
                out[is_new] = new_arr
            return out

        w, t32, t16, t8 = planes
        self._w = merged(self._w, w, True)
        if lay.h32:
            self._t32 = merged(self._t32, t32, False)
        if lay.h16:
            self._t16 = merged(self._t16, t16, False)
        if lay.h8:
            self._t8 = merged(self._t8, t8, False)
        self._ids = merged(self._ids, ids, False)
        if labels is not None:
            self._labels = merged(self._labels, labels, False)
        self._n = self._cap = total

    # ---------------------------------------------------------------- search
    def search(
        self,
        query_codes: np.ndarray,
        k: int,
        weights: np.ndarray | None = None,
        *,
        mode: Mode = "qadwh",
        strategy: Strategy = "auto",
        num_threads: int | None = None,
        device: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of every query under ``(distance, id)`` order.

        ``weights``: ``(nq, nbits)`` for ``mode="qadwh"``, ``(nbits,)`` for
        ``mode="dwh"``, ignored for ``mode="hamming"``; finite and ``>= 0``.
        Returns ``(distances float64 (nq, k), ids int64 (nq, k))``; when ``k``
        exceeds the number of items the rows end with ``inf`` / ``-1``.
        ``strategy`` picks the CPU path (module docstring); ``num_threads``
        defaults to numba's thread count; ``device`` overrides the index's.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if strategy not in _STRATEGY_CODES:
            raise ValueError(f"strategy must be one of {tuple(_STRATEGY_CODES)}, got {strategy!r}")
        q = check_codes(query_codes, self._nbits, name="query codes")
        k = check_k(k)
        nq = q.shape[0]
        w = validated_weights(weights, mode, nq, self._nbits)
        if mode != "hamming":
            w = pad_weights(w, self._layout.nbytes)
        if self._n == 0:
            raise ValueError("cannot search an empty index: add codes first")
        dev = _resolve_device(self._device if device is None else device)
        kk = min(k, self._n)
        if nq == 0:
            self.last_search = SearchInfo(mode=mode, strategy=strategy, device=dev)
            return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
        from qadwh_ray.core import kernels

        prepared = kernels.prepare_queries(q, w, mode == "hamming", grid_bits(self._nbits), MIN_EXPONENT)
        if dev == "cpu":
            d, p = self._search_cpu(prepared, kk, mode, strategy, num_threads)
        else:
            d, p = self._search_gpu(q, prepared[0], kk, mode, dev)
        return self._finish(d, p, prepared[1], k)

    def _finish(self, d: np.ndarray, p: np.ndarray, exps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq, kk = d.shape
        e = exps[:, None].astype(np.int32)
        if kk == k:  # k <= n: every slot holds an item
            return np.ldexp(d.astype(np.float64), e), self._ids[p]
        dist = np.full((nq, k), np.inf, dtype=np.float64)
        ids = np.full((nq, k), -1, dtype=np.int64)
        dist[:, :kk] = np.ldexp(d.astype(np.float64), e)
        ids[:, :kk] = self._ids[p]
        return dist, ids

    def _search_cpu(self, prepared, k, mode, strategy, num_threads):
        from qadwh_ray.core import kernels

        threads = _thread_count(num_threads)
        _, _, lut, masks, unit, bound_max, qw, qt32, qt16, qt8 = prepared
        n, nq = self._n, qw.shape[0]
        groups, nparts = _plan(n, nq, threads)
        args = (self._w, self._t32, self._t16, self._t8, *self._layout.flags(), qw, qt32, qt16, qt8, lut, masks,
                unit, bound_max, k, groups, nparts, _STRATEGY_CODES[strategy], BLOCK)
        if groups.shape[0] > 1 and threads > 1:
            import numba

            before = numba.get_num_threads()
            numba.set_num_threads(threads)
            try:
                hd, hp, stats = kernels.topk_parallel(*args)
            finally:
                numba.set_num_threads(before)
        else:
            hd, hp, stats = kernels.topk_serial(*args)
        if nparts == 1:
            d, p = hd[:, 0, :], hp[:, 0, :]
        else:
            d, p = _merge_parts(hd.reshape(nq, -1), hp.reshape(nq, -1), k)
        per_query = stats.sum(axis=1)
        evals, two_stage, exhaustive, final = (int(x) for x in per_query.sum(axis=0))
        self.last_search = SearchInfo(
            mode=mode, strategy=strategy, device="cpu", threads=threads, parts=nparts,
            weighted_evaluations=evals, two_stage_blocks=two_stage, exhaustive_blocks=exhaustive,
            final_heap_blocks=final, per_query_evaluations=per_query[:, 0],
        )
        return d, p

    def _search_gpu(self, q, w_int, k, mode, dev):
        from qadwh_ray.core.search_gpu import TorchSearcher

        if self._gpu is None or self._gpu.device_name != dev:
            self._gpu = TorchSearcher(self.codes, dev)
        d, p = self._gpu.topk(q, w_int, k)
        self.last_search = SearchInfo(mode=mode, strategy="gpu_linear_form", device=dev,
                                      weighted_evaluations=q.shape[0] * self._n)
        return d, p

    # ---------------------------------------------------------- range search
    def range_search(self, query_codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items within Hamming distance ``radius`` (inclusive) of every query.

        Returns FAISS-style ``(lims, distances, ids)``: query ``i``'s results
        are ``distances[lims[i]:lims[i+1]]`` (int32 Hamming distances) and
        ``ids[lims[i]:lims[i+1]]``, ordered by ``(distance, id)``.
        """
        q = check_codes(query_codes, self._nbits, name="query codes")
        lims, pos, dist = self._within_radius(q, radius)
        return lims, dist, self._ids[pos]

    def search_within_radius(
        self,
        query_codes: np.ndarray,
        k: int,
        radius: int,
        weights: np.ndarray | None = None,
        *,
        mode: Mode = "qadwh",
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k under ``mode``'s distance among the items within Hamming ``radius``
        (inclusive) of each query, and where ``allowed`` (bool ``(len(index),)``, id order) is set.

        ``weights`` and ``mode`` as for :meth:`search`. Returns ``(distances float64 (nq, k),
        ids int64 (nq, k))`` in ``(distance, id)`` order, rows padded with ``inf`` / ``-1``.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        q = check_codes(query_codes, self._nbits, name="query codes")
        k = check_k(k)
        nq = q.shape[0]
        w_int, exps = query_weights(weights, mode, nq, self._nbits)
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != np.bool_ or allowed.shape != (self._n,):
                raise ValueError(f"allowed must be a bool mask of shape ({self._n},), got {allowed.dtype} {allowed.shape}")
        dist = np.full((nq, k), np.inf, dtype=np.float64)
        out = np.full((nq, k), -1, dtype=np.int64)
        lims, pos_all, _ = self._within_radius(q, radius)
        for i in range(nq):
            pos = np.sort(pos_all[lims[i] : lims[i + 1]])  # id order, so ties stay in (distance, id) order
            if allowed is not None:
                pos = pos[allowed[pos]]
            if pos.size == 0:
                continue
            d = snapped_distances(q[i : i + 1], self._codes_at(pos), w_int[i : i + 1], exps[i : i + 1])[0]
            order = smallest_k(d, k)
            dist[i, : order.size] = d[order]
            out[i, : order.size] = self._ids[pos[order]]
        return dist, out

    def _within_radius(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lims, positions, Hamming distances)`` of the items within ``radius`` of each query."""
        from qadwh_ray.core import kernels

        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)):
            raise TypeError(f"radius must be an integer number of bits, got {radius!r}")
        radius = int(radius)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        if self._n == 0:
            raise ValueError("cannot search an empty index: add codes first")
        radius = min(radius, self._nbits)
        lay = self._layout
        qw, qt32, qt16, qt8 = lay.query_planes(q)
        return kernels.range_search_kernel(self._n, self._w, self._t32, self._t16, self._t8, *lay.flags(),
                                           qw, qt32, qt16, qt8, radius, BLOCK)


# --------------------------------------------------------------------------- helpers


def _thread_count(num_threads: int | None) -> int:
    import numba

    if num_threads is None:
        return int(numba.get_num_threads())
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an integer, got {num_threads!r}")
    limit = int(numba.config.NUMBA_NUM_THREADS)
    if not 1 <= int(num_threads) <= limit:
        raise ValueError(f"num_threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {num_threads}")
    return int(num_threads)


def _plan(n: int, nq: int, threads: int) -> tuple[np.ndarray, int]:
    """Groups ``(start, stop, q0, q1, part)`` for the kernels, and the number of parts.

    One thread: one group (every query, every item: each block is read once
    for all queries). Several threads and at least as many queries: queries
    split into contiguous groups. Fewer queries than threads: the database is
    split into parts (of at least ``MIN_PART`` items) searched separately and
    merged.
    """
    if threads <= 1:
        return np.array([[0, n, 0, nq, 0]], dtype=np.int64), 1
    if nq >= threads:
        bounds = np.linspace(0, nq, threads + 1).round().astype(np.int64)
        rows = [[0, n, bounds[i], bounds[i + 1], 0] for i in range(threads) if bounds[i + 1] > bounds[i]]
        return np.array(rows, dtype=np.int64), 1
    nparts = max(1, min(-(-threads // nq), n // MIN_PART))
    edges = np.linspace(0, n, nparts + 1).round().astype(np.int64)
    rows = [[edges[s], edges[s + 1], qi, qi + 1, s] for s in range(nparts) for qi in range(nq)]
    return np.array(rows, dtype=np.int64), nparts


def _merge_parts(d: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k of each row under ``(d, p)``; padding (p = -1) carries the sentinel distance, so it sorts last."""
    order = np.lexsort((p, d), axis=-1)[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(p, order, axis=1)


_CUDA: bool | None = None


def _cuda_available() -> bool:
    global _CUDA
    if _CUDA is None:
        try:
            import torch

            _CUDA = bool(torch.cuda.is_available())
        except Exception:  # torch missing or broken: CPU only
            _CUDA = False
    return _CUDA


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if not (device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not _cuda_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device
