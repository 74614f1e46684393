"""An index version plus the live updates made since it was built, searched exactly.

A :class:`LiveIndex` holds one immutable base (the items of an index version or
shard, in a :class:`~qadwh_ray.core.search.HashIndex`) and the changes applied
after it, each with its position in the update log: ``put`` (add or replace an
item: code and labels) and ``delete``. Any position it has reached can be
searched: the view *as of* position ``p`` is the base with every item touched
by a change at or before ``p`` hidden, plus the items whose latest change at
or before ``p`` is a put. Every shard of a request answers as of the same
position, so one answer reflects exactly one log position.

A search of a view is the exact top k under ``(distance, id)`` of the base's
visible items (:mod:`qadwh_ray.core.filters`) merged with the put items'
(scanned directly: they are few between two index builds), so it equals brute
force over the view's items, label filters and radius included.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np

from qadwh_ray.core.filters import LabelFilter, topk_among, topk_of_codes
from qadwh_ray.core.search import HashIndex

__all__ = ["Change", "LiveQuery", "LiveIndex", "View"]

_VIEWS_KEPT = 4


@dataclass(frozen=True)
class Change:
    """One update at log position ``seq``: a put (``code`` set) or a delete (``code`` None)."""

    seq: int
    id: int
    code: Optional[bytes] = None
    labels: Optional[tuple] = None

    @property
    def is_put(self) -> bool:
        return self.code is not None


@dataclass(frozen=True)
class LiveQuery:
    """One query: packed code, weight row (None for hamming), mode, k, radius, filter."""

    code: np.ndarray
    weights: Optional[np.ndarray]
    mode: str
    k: int
    radius: Optional[int] = None
    filter: LabelFilter = LabelFilter()


@dataclass
class View:
    """The items as of one position: the base's visible ones and the put ones."""

    position: int
    visible: Optional[np.ndarray]  # (n,) bool over base positions; None = all visible
    ids: np.ndarray  # put items, ascending
    codes: np.ndarray
    labels: list  # class-id lists of the put items (None when unlabeled)
    label_matrix: Optional[np.ndarray]

    def put_position(self, item_id: int) -> int:
        j = int(np.searchsorted(self.ids, item_id))
        return j if j < self.ids.size and self.ids[j] == item_id else -1


class LiveIndex:
    """``base`` items (ids ascending, their codes and 0/1 labels) at log position
    ``base_position``, plus changes applied in log order."""

    def __init__(self, nbits: int, ids: np.ndarray, codes: np.ndarray, labels: Optional[np.ndarray],
                 base_position: int = 0, num_classes: Optional[int] = None, device: str = "cpu",
                 threads: Optional[int] = None):
        self.nbits = int(nbits)
        self.threads = threads  # numba threads per search (None: numba's default)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self.labels = labels
        self.num_classes = num_classes if num_classes is not None else (None if labels is None else labels.shape[1])
        self.base_position = int(base_position)
        self.position = int(base_position)
        self.index: Optional[HashIndex] = None
        if self.ids.size:
            self.index = HashIndex(self.nbits, device=device)
            if labels is not None:
                self.index.add(self.codes, self.ids, labels=labels)
            else:
                self.index.add(self.codes, self.ids)
        self._changes: list[Change] = []
        self._views: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return int(self.ids.size)

    # ------------------------------------------------------------ updates
    def apply(self, changes: list, position: int) -> None:
        """Apply ``changes`` (those past the current position, in log order) and move to ``position``."""
        if position < self.position:
            raise ValueError(f"log position {position} is behind this index's {self.position}")
        for c in changes:
            if c.seq <= self.position:
                continue  # already applied (a re-read segment)
            if self._changes and c.seq <= self._changes[-1].seq:
                raise ValueError(f"changes out of log order: {c.seq} after {self._changes[-1].seq}")
            if c.code is not None and len(c.code) != self.codes.shape[1]:
                raise ValueError(f"change {c.seq} (item {c.id}): a {len(c.code)}-byte code for {self.codes.shape[1]}-byte codes")
            self._changes.append(c)
        self.position = int(position)

    @property
    def changes(self) -> list:
        return list(self._changes)

    def view(self, position: Optional[int] = None) -> View:
        """The items as of ``position`` (default: the newest), which this index must have reached."""
        p = self.position if position is None else int(position)
        if p > self.position:
            raise ValueError(f"log position {p} not reached yet (at {self.position})")
        if p < self.base_position:
            raise ValueError(f"log position {p} is older than this version (built at {self.base_position})")
        got = self._views.get(p)
        if got is not None:
            self._views.move_to_end(p)
            return got
        latest: dict = {}
        for c in self._changes:
            if c.seq > p:
                break
            latest[c.id] = c
        visible = None
        if latest and self.ids.size:
            touched = np.fromiter(latest, dtype=np.int64, count=len(latest))
            pos = np.searchsorted(self.ids, touched)
            hit = pos < self.ids.size
            hit[hit] = self.ids[pos[hit]] == touched[hit]
            if hit.any():
                visible = np.ones(self.ids.size, dtype=bool)
                visible[pos[hit]] = False
        puts = sorted((c for c in latest.values() if c.is_put), key=lambda c: c.id)
        nb = self.codes.shape[1]
        ids = np.asarray([c.id for c in puts], dtype=np.int64)
        codes = np.frombuffer(b"".join(c.code for c in puts), dtype=np.uint8).reshape(len(puts), nb) if puts else np.zeros((0, nb), np.uint8)
        lab_lists = [None if c.labels is None else list(c.labels) for c in puts]
        matrix = None
        if self.num_classes:
            matrix = np.zeros((len(puts), self.num_classes), dtype=np.uint8)
            for j, lab in enumerate(lab_lists):
                if lab:
                    matrix[j, [x for x in lab if 0 <= x < self.num_classes]] = 1
        v = View(p, visible, ids, codes, lab_lists, matrix)
        self._views[p] = v
        while len(self._views) > _VIEWS_KEPT:
            self._views.popitem(last=False)
        return v

    # ------------------------------------------------------------ reading
    def count(self, view: View) -> int:
        hidden = 0 if view.visible is None else int((~view.visible).sum())
        return len(self) - hidden + int(view.ids.size)

    def item(self, item_id: int, view: View) -> Optional[dict]:
        """``{"id", "code", "labels", "base_row" (or None for a put item)}`` or None when absent."""
        j = view.put_position(item_id)
        if j >= 0:
            return {"id": int(item_id), "code": view.codes[j].tobytes(), "labels": view.labels[j], "base_row": None}
        if not self.ids.size:
            return None
        p = int(np.searchsorted(self.ids, item_id))
        if p >= self.ids.size or self.ids[p] != item_id or (view.visible is not None and not view.visible[p]):
            return None
        labels = None if self.labels is None else np.flatnonzero(self.labels[p]).tolist()
        return {"id": int(item_id), "code": self.codes[p].tobytes(), "labels": labels, "base_row": p}

    def labels_of(self, ids: np.ndarray, view: View) -> list:
        """Class-id lists of result ids (None when unlabeled or unknown)."""
        ids = np.asarray(ids, dtype=np.int64)
        out: list = [None] * ids.size
        if self.labels is not None and self.ids.size:
            pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
            for j in np.flatnonzero(self.ids[pos] == ids).tolist():
                out[j] = np.flatnonzero(self.labels[pos[j]]).tolist()
        if view.ids.size:
            pos = np.minimum(np.searchsorted(view.ids, ids), view.ids.size - 1)
            for j in np.flatnonzero(view.ids[pos] == ids).tolist():
                out[j] = view.labels[pos[j]]
        return out

    def sample_ids(self, view: View, n: int, rng: np.random.Generator) -> list:
        pool = self.ids if view.visible is None else self.ids[view.visible]
        pool = np.concatenate([pool, view.ids]) if view.ids.size else pool
        if pool.size == 0:
            return []
        return pool[rng.integers(0, pool.size, size=int(n))].tolist()

    # ------------------------------------------------------------ search
    def search_many(self, queries: list, view: View) -> list:
        """``(distances (k,), ids (k,))`` per :class:`LiveQuery`, padded with inf / -1.

        Queries without a radius that share a filter and a weighting (weighted or
        plain Hamming) are answered by one scan of the base with the largest k of
        the group; each keeps its own k first results (a prefix of the same order).
        """
        out: list = [None] * len(queries)
        groups: dict = {}
        for j, q in enumerate(queries):
            if q.radius is not None and q.radius < self.nbits:
                out[j] = self._one_radius(q, view)
            else:
                groups.setdefault((q.mode == "hamming", q.filter), []).append(j)
        for (hamming, flt), idx in groups.items():
            codes = np.stack([queries[j].code for j in idx])
            kmax = max(queries[j].k for j in idx)
            mode = "hamming" if hamming else "qadwh"
            w = None if hamming else np.stack([np.asarray(queries[j].weights, dtype=np.float64) for j in idx])
            d, ids = self._base_topk(codes, w, mode, kmax, view, flt)
            if view.ids.size:
                d2, i2 = self._puts_topk(codes, w, mode, kmax, view, flt, None)
                d, ids = _merge(d, ids, d2, i2, kmax)
            for row, j in enumerate(idx):
                k = queries[j].k
                out[j] = (d[row, :k], ids[row, :k])
        return out

    def _visible_and_matching(self, view: View, flt: LabelFilter) -> Optional[np.ndarray]:
        if flt.empty:
            return view.visible
        m = flt.matches(self.labels, len(self))
        return m if view.visible is None else (m & view.visible)

    def _base_topk(self, codes, w, mode, k, view: View, flt: LabelFilter, radius: Optional[int] = None):
        nq = codes.shape[0]
        if self.index is None:
            return np.full((nq, k), np.inf), np.full((nq, k), -1, dtype=np.int64)
        allowed = self._visible_and_matching(view, flt)
        if radius is not None:
            return self.index.search_within_radius(codes, k, radius, w, mode=mode, allowed=allowed)
        if allowed is None:
            return self.index.search(codes, k, w, mode=mode, num_threads=self.threads)
        return topk_among(self.index, self.codes, codes, w, mode, k, allowed, self.threads)

    def _put_mask(self, view: View, flt: LabelFilter) -> Optional[np.ndarray]:
        if flt.empty:
            return None
        return flt.matches(view.label_matrix, int(view.ids.size))

    def _puts_topk(self, codes, w, mode, k, view: View, flt: LabelFilter, radius: Optional[int]):
        mask = self._put_mask(view, flt)
        sel = np.arange(view.ids.size) if mask is None else np.flatnonzero(mask)
        return topk_of_codes(codes, view.codes[sel], view.ids[sel], w, mode, k, self.nbits, radius)

    def _one_radius(self, q: LiveQuery, view: View):
        mode = "hamming" if q.mode == "hamming" else "qadwh"
        w = None if mode == "hamming" else np.asarray(q.weights, dtype=np.float64)[None, :]
        code = q.code[None, :]
        d, ids = self._base_topk(code, w, mode, q.k, view, q.filter, q.radius)
        if view.ids.size:
            d2, i2 = self._puts_topk(code, w, mode, q.k, view, q.filter, q.radius)
            d, ids = _merge(d, ids, d2, i2, q.k)
        return d[0], ids[0]


def _merge(d1, i1, d2, i2, k: int):
    from qadwh_ray.core.topk import merge_topk

    return merge_topk([(d1, i1), (d2, i2)], k)
