"""Reading a published index: resolve a version, verify, load shards.

>>> reader = open_index("s3://bucket/indexes/fashion")      # the current version
>>> reader.version, reader.manifest.num_items
>>> index = reader.load_all()                                # a core.search.HashIndex
>>> part = reader.load_shard(2)                              # one shard (a Serve replica)

Every shard is read once into memory and checked against the manifest before
anything is parsed from it (size, SHA-256, schema, row count, sorted unique
ids): a damaged, truncated or missing shard raises
:class:`~qadwh_ray.index.format.IndexIntegrityError` naming the shard and its
URI. The manifest of the current version is checked against the SHA-256 the
``CURRENT`` pointer recorded at publication.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from qadwh_ray import storage
from qadwh_ray.index.format import IndexIntegrityError, Manifest, ShardData, check_shard_bytes, shard_data_from_table
from qadwh_ray.index.store import IndexStore

__all__ = ["IndexReader", "open_index", "load_index", "load_manifest"]


class IndexReader:
    """One resolved, published version of an index."""

    def __init__(self, root: str | IndexStore, version: str | None = None):
        self.store = root if isinstance(root, IndexStore) else IndexStore(root)
        pointer = self.store.read_pointer() if version in (None, "current", "CURRENT") else None
        self.version = self.store.resolve(version)
        self.manifest: Manifest = self.store.read_manifest(
            self.version, expected_sha256=pointer.manifest_sha256 if pointer and pointer.version == self.version else None
        )

    def __repr__(self) -> str:
        m = self.manifest
        return f"IndexReader({self.store.root!r}, version={self.version!r}, items={m.num_items}, shards={m.num_shards}, bits={m.code_bits})"

    @property
    def num_shards(self) -> int:
        return self.manifest.num_shards

    def shard_uri(self, i: int) -> str:
        return self.store.shard_uri(self.version, self._info(i).file)

    def _info(self, i: int):
        if not 0 <= int(i) < self.manifest.num_shards:
            raise IndexError(f"index version {self.version} has {self.manifest.num_shards} shards; no shard {i}")
        return self.manifest.shards[int(i)]

    def read_shard(self, i: int) -> ShardData:
        """Shard ``i`` verified and decoded: sorted ids, packed codes, labels, sources."""
        info = self._info(i)
        uri = self.store.shard_uri(self.version, info.file)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise IndexIntegrityError(f"shard {info.file} of index version {self.version} is missing: {uri}") from None
        table = check_shard_bytes(data, info, self.manifest.code_bits, uri)
        return shard_data_from_table(table, self.manifest.code_bits, self.manifest.num_classes)

    def iter_shards(self, shards: Iterable[int] | None = None):
        for i in range(self.num_shards) if shards is None else shards:
            yield int(i), self.read_shard(i)

    def verify(self) -> Manifest:
        """Check every shard (raises on the first damaged one)."""
        return self.store.verify(self.version, manifest=self.manifest)

    def _new_index(self):
        from qadwh_ray.core.search import HashIndex

        return HashIndex(self.manifest.code_bits)

    def load_shard(self, i: int, index=None):
        """Shard ``i`` loaded into a (new, or the given) ``HashIndex``."""
        index = self._new_index() if index is None else index
        d = self.read_shard(i)
        _add(index, d)
        return index

    def load_all(self, shards: Iterable[int] | None = None, index=None):
        """Every shard (or the listed ones) loaded into one ``HashIndex``."""
        index = self._new_index() if index is None else index
        for _, d in self.iter_shards(shards):
            _add(index, d)
        return index

    def read_all(self, shards: Iterable[int] | None = None) -> ShardData:
        """Every shard (or the listed ones) concatenated, sorted by id."""
        parts = [d for _, d in self.iter_shards(shards)]
        nb = self.manifest.code_bytes
        if not parts:
            return ShardData(np.zeros(0, np.int64), np.zeros((0, nb), np.uint8), None, None)
        ids = np.concatenate([p.ids for p in parts])
        order = np.argsort(ids, kind="stable")
        labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])[order]
        sources = None
        if any(p.sources is not None for p in parts):
            flat = [s for p in parts for s in (p.sources if p.sources is not None else [None] * len(p))]
            sources = [flat[j] for j in order]
        return ShardData(ids=ids[order], codes=np.concatenate([p.codes for p in parts])[order], labels=labels, sources=sources)


def _add(index, d: ShardData) -> None:
    if len(d) == 0:
        return
    if d.labels is not None:
        index.add(d.codes, d.ids, labels=d.labels)
    else:
        index.add(d.codes, d.ids)


def open_index(root: str, version: str | None = None) -> IndexReader:
    """Resolve the current (or a named, published) version of the index at ``root``."""
    return IndexReader(root, version)


def load_manifest(root: str, version: str | None = None) -> Manifest:
    return IndexReader(root, version).manifest


def load_index(root: str, version: str | None = None, shards: Iterable[int] | None = None):
    """The current (or named) version, verified, in one ``HashIndex``."""
    return IndexReader(root, version).load_all(shards)
