"""Query / train / database splits, saved with their seed (docs/architecture.md, 'Data').

The main protocol mirrors the paper's CIFAR-10 one on Fashion-MNIST: 100
queries and 500 training images per class, and the database is everything
else (64,000 of 70,000), disjoint from both. A split is a value: three sorted
int64 index arrays plus the seed and protocol that produced them, stored as
JSON through :mod:`qadwh_ray.storage` so a run can be reproduced exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qadwh_ray import storage

__all__ = ["Split", "paper_split", "multilabel_split", "validation_split", "class_split", "validation_protocol"]

_FORMAT = "qadwh-split"
_VERSION = 1


def _index_array(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"split part {name!r} must be a 1-D index array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"split part {name!r} must hold integer indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint index arrays into one dataset of ``n`` items."""

    query: np.ndarray
    train: np.ndarray
    database: np.ndarray
    seed: int
    protocol: str
    n_items: int | None = None  # size of the dataset the indices point into
    params: dict = field(default_factory=dict)  # protocol parameters, for the record

    def __post_init__(self) -> None:
        for name in ("query", "train", "database"):
            object.__setattr__(self, name, _index_array(getattr(self, name), name))

    @property
    def sizes(self) -> dict[str, int]:
        return {"query": len(self.query), "train": len(self.train), "database": len(self.database)}

    def validate(self, n: int | None = None) -> "Split":
        """Check indices are in ``[0, n)``, unique, and the parts disjoint; return self."""
        n = self.n_items if n is None else int(n)
        if self.n_items is not None and n != self.n_items:
            raise ValueError(f"split was made for {self.n_items} items, not {n}")
        parts = {"query": self.query, "train": self.train, "database": self.database}
        for name, idx in parts.items():
            if idx.size == 0:
                raise ValueError(f"split part {name!r} is empty")
            bad = idx[(idx < 0) | (idx >= n)] if n is not None else idx[idx < 0]
            if bad.size:
                raise ValueError(f"split part {name!r} holds index {int(bad[0])} outside [0, {n})")
            uniq = np.unique(idx)
            if uniq.size != idx.size:
                sorted_idx = np.sort(idx)
                dup = sorted_idx[1:][sorted_idx[1:] == sorted_idx[:-1]][0]
                raise ValueError(f"split part {name!r} holds index {int(dup)} more than once")
        names = list(parts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                common = np.intersect1d(parts[a], parts[b])
                if common.size:
                    raise ValueError(f"split parts {a!r} and {b!r} share {common.size} indices (e.g. {int(common[0])})")
        return self

    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "protocol": self.protocol,
            "seed": int(self.seed),
            "n_items": None if self.n_items is None else int(self.n_items),
            "params": self.params,
            "query": self.query.tolist(),
            "train": self.train.tolist(),
            "database": self.database.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "split") -> "Split":
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"{source} is not a qadwh split (format {d.get('format') if isinstance(d, dict) else None!r})")
        if d.get("version") != _VERSION:
            raise ValueError(f"{source} has split format version {d.get('version')!r}, this code reads {_VERSION}")
        missing = [k for k in ("query", "train", "database", "seed", "protocol") if k not in d]
        if missing:
            raise ValueError(f"{source} lacks the field(s) {missing}")
        return cls(
            query=np.asarray(d["query"], dtype=np.int64),
            train=np.asarray(d["train"], dtype=np.int64),
            database=np.asarray(d["database"], dtype=np.int64),
            seed=int(d["seed"]),
            protocol=str(d["protocol"]),
            n_items=d.get("n_items"),
            params=dict(d.get("params") or {}),
        )

    def save(self, uri: str) -> None:
        """Write the split as JSON to a local path or ``s3://`` URI (atomically)."""
        storage.write_bytes(uri, json.dumps(self.to_dict(), separators=(",", ":")).encode())

    @classmethod
    def load(cls, uri: str) -> "Split":
        """Read a split saved by :meth:`save`, validated."""
        raw = storage.read_bytes(uri)
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{uri} is not valid JSON: {exc}") from exc
        return cls.from_dict(d, source=uri).validate()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return (
            self.seed == other.seed
            and self.protocol == other.protocol
            and self.n_items == other.n_items
            and self.params == other.params
            and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ("query", "train", "database"))
        )


def _class_indices(labels: np.ndarray) -> np.ndarray:
    """Class indices from ``(n,)`` ints or a one-hot ``(n, c)`` matrix."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        per_row = labels.sum(axis=1)
        if labels.size and (per_row != 1).any():
            row = int(np.flatnonzero(per_row != 1)[0])
            raise ValueError(
                f"paper_split needs single-label data; row {row} has {int(per_row[row])} labels (use multilabel_split)"
            )
        return labels.argmax(axis=1).astype(np.int64)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be (n,) class indices or a one-hot (n, c) matrix, got {labels.shape} {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"negative class index {int(labels.min())}")
    return labels.astype(np.int64)


def paper_split(
    labels: np.ndarray, seed: int = 0, queries_per_class: int = 100, train_per_class: int = 500
) -> Split:
    """The paper's protocol: per class, ``queries_per_class`` queries and
    ``train_per_class`` training items drawn at random; the database is all the
    remaining items (disjoint from both). Deterministic for a seed.

    On Fashion-MNIST with the defaults: 1,000 / 5,000 / 64,000.
    """
    y = _class_indices(labels)
    if queries_per_class < 1 or train_per_class < 1:
        raise ValueError(f"need at least one query and one training item per class, got {queries_per_class}/{train_per_class}")
    rng = np.random.default_rng(seed)
    query, train, database = [], [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        need = queries_per_class + train_per_class
        if members.size <= need:
            raise ValueError(
                f"class {int(c)} has {members.size} items, needs more than {need} "
                f"({queries_per_class} queries + {train_per_class} training + database)"
            )
        members = rng.permutation(members)
        query.append(members[:queries_per_class])
        train.append(members[queries_per_class:need])
        database.append(members[need:])
    split = Split(
        query=np.sort(np.concatenate(query)),
        train=np.sort(np.concatenate(train)),
        database=np.sort(np.concatenate(database)),
        seed=int(seed),
        protocol="paper",
        n_items=int(y.size),
        params={"queries_per_class": int(queries_per_class), "train_per_class": int(train_per_class)},
    )
    return split.validate()


def multilabel_split(label_matrix: np.ndarray, seed: int = 0, n_query: int = 2000, n_train: int = 10000) -> Split:
    """Random disjoint split for multi-label data (NUS-WIDE / MIRFLICKR style):
    ``n_query`` queries, ``n_train`` training items, the rest is the database."""
    lm = np.asarray(label_matrix)
    if lm.ndim != 2:
        raise ValueError(f"label_matrix must be (n, c), got shape {lm.shape}")
    n = lm.shape[0]
    if n_query < 1 or n_train < 1 or n_query + n_train >= n:
        raise ValueError(f"cannot take {n_query} queries + {n_train} training items from {n} items and keep a database")
    perm = np.random.default_rng(seed).permutation(n)
    return Split(
        query=np.sort(perm[:n_query]),
        train=np.sort(perm[n_query : n_query + n_train]),
        database=np.sort(perm[n_query + n_train :]),
        seed=int(seed),
        protocol="multilabel-random",
        n_items=int(n),
        params={"n_query": int(n_query), "n_train": int(n_train)},
    ).validate()


def validation_split(
    train_idx: np.ndarray, fraction: float = 0.1, seed: int = 0, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hold ``fraction`` of the training indices out for validation MAP during
    training (the query set is never used for that). Returns sorted
    ``(train_part, val_part)``. With ``labels`` (class indices over the whole
    dataset) the hold-out is stratified per class."""
    idx = _index_array(train_idx, "train")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    if idx.size < 2:
        raise ValueError(f"need at least 2 training items to hold some out, got {idx.size}")
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [idx]
    else:
        y = _class_indices(labels)[idx]
        groups = [idx[y == c] for c in np.unique(y)]
    val = []
    for g in groups:
        k = min(max(int(round(fraction * g.size)), 1), g.size - 1) if g.size > 1 else 0
        val.append(rng.permutation(g)[:k])
    val_part = np.sort(np.concatenate(val))
    train_part = np.setdiff1d(idx, val_part)
    return train_part.astype(np.int64), val_part.astype(np.int64)


def _take(count: int | float, available: int, name: str) -> int:
    """A per-class count from an int (capped by what is there) or a fraction in (0, 1)."""
    if isinstance(count, bool) or not isinstance(count, (int, float)) or count <= 0:
        raise ValueError(f"{name} must be a positive count or a fraction in (0, 1), got {count!r}")
    if isinstance(count, float) and count < 1:
        return max(1, int(round(count * available)))
    return int(count)


def class_split(
    label_matrix: np.ndarray,
    ids: np.ndarray,
    seed: int = 0,
    queries: int | float = 0.1,
    train: int | float = 0.5,
    max_queries: int = 100,
    max_train: int = 500,
) -> Split:
    """The paper's protocol for any labelled collection: per class, ``queries`` query items and
    ``train`` training items (counts, or fractions of the class), capped at ``max_queries`` /
    ``max_train``; the database is everything else. Each item is drawn for its first class
    (multi-label items too), so every class has queries, training items and database items.

    The parts hold item *ids* (``ids``), so a split file stays valid when the collection grows.
    Defaults work from a few hundred images (5 classes x 60 images: 6 / 30 / 24 per class) up to
    the paper's 100 / 500 per class. Deterministic for a seed.
    """
    lm = np.asarray(label_matrix)
    ids = np.asarray(ids, dtype=np.int64)
    if lm.ndim != 2 or lm.shape[0] != ids.shape[0]:
        raise ValueError(f"label_matrix must be ({ids.shape[0]}, c), got {lm.shape}")
    first = lm.argmax(axis=1)
    rng = np.random.default_rng(seed)
    query, training, database = [], [], []
    for c in np.unique(first):
        members = rng.permutation(np.flatnonzero(first == c))
        nq = min(_take(queries, members.size, "queries"), max_queries)
        nt = min(_take(train, members.size, "train"), max_train)
        if members.size < nq + nt + 1:
            raise ValueError(
                f"class {int(c)} has {members.size} items: too few for {nq} queries + {nt} training items + a database "
                f"(give smaller per-class counts, or more images)"
            )
        query.append(members[:nq])
        training.append(members[nq : nq + nt])
        database.append(members[nq + nt :])
    return Split(
        query=np.sort(ids[np.concatenate(query)]),
        train=np.sort(ids[np.concatenate(training)]),
        database=np.sort(ids[np.concatenate(database)]),
        seed=int(seed),
        protocol="per-class",
        params={"queries": queries, "train": train, "max_queries": max_queries, "max_train": max_train},
    ).validate()


def validation_protocol(
    split: Split, labels: np.ndarray, ids: np.ndarray | None = None, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validation queries and validation database for choosing settings, as sorted
    arrays of the split's item ids ``(val_query, val_database)``.

    Both come out of ``split.database``, so they are disjoint from the test queries
    and from the training items by construction (and from each other); the
    validation database is the rest of the database, so validation MAP is measured
    the way test MAP is. There are as many validation queries as test queries:
    for single-label data (class indices, or one label per row) the same number per
    class as the test queries have, otherwise drawn at random. ``labels`` has a row
    per item of ``ids`` (default: ids are the row numbers). ``seed`` defaults to the
    split's; the draw uses its own stream, so it does not disturb the split's."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if ids is None:
        if split.n_items is not None and n != split.n_items:
            raise ValueError(f"labels have {n} rows but the split was made for {split.n_items} items")
        ids = np.arange(n, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have one entry per label row ({n}), got shape {ids.shape}")
    order = np.argsort(ids, kind="stable")

    def rows(part: np.ndarray) -> np.ndarray:  # label rows of a part's item ids
        at = np.clip(np.searchsorted(ids, part, sorter=order), 0, n - 1)
        r = order[at]
        missing = part[ids[r] != part]
        if missing.size:
            raise ValueError(f"split item id {int(missing[0])} has no label row")
        return r

    db = split.database
    if db.size <= split.query.size:
        raise ValueError(
            f"the database part ({db.size} items) is too small to hold {split.query.size} validation queries and a database"
        )
    rng = np.random.default_rng([split.seed if seed is None else int(seed), 0x5A1])
    single = labels.ndim == 1 or (labels.ndim == 2 and (labels.sum(axis=1) == 1).all())
    if single:
        y = _class_indices(labels)
        yq, ydb = y[rows(split.query)], y[rows(db)]
        picked = []
        for c in np.unique(yq):
            want = int((yq == c).sum())
            members = db[ydb == c]
            if members.size <= want:
                raise ValueError(
                    f"class {int(c)} has {members.size} database items, needs more than {want} for validation queries"
                )
            picked.append(rng.permutation(members)[:want])
        val_query = np.sort(np.concatenate(picked))
    else:
        val_query = np.sort(rng.permutation(db)[: split.query.size])
    return val_query.astype(np.int64), np.setdiff1d(db, val_query).astype(np.int64)
