"""Writing a small index version from arrays in one process (no Ray).

The Ray Data pipeline (:mod:`qadwh_ray.indexing`) is how databases are
indexed; this writer produces the identical format from in-memory arrays, for
small indexes (evaluation exports, tests, fixtures).
"""

from __future__ import annotations

import hashlib

import numpy as np

from qadwh_ray import storage
from qadwh_ray.core.bits import check_codes
from qadwh_ray.index.format import Manifest, ShardInfo, class_names_for, make_shard_table, shard_file_name, shard_of_ids, shard_table_bytes
from qadwh_ray.index.store import IndexStore, utc_iso

__all__ = ["write_index", "write_shard"]


def write_shard(uri: str, table) -> ShardInfo:
    """Write a shard table (sorted by id on the way) to ``uri``; returns its manifest entry."""
    data = shard_table_bytes(table)
    storage.write_bytes(uri, data)
    ids = table.column("id").to_numpy()
    return ShardInfo(
        file=uri.rstrip("/").rsplit("/", 1)[-1],
        rows=int(table.num_rows),
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        min_id=int(ids.min()) if ids.size else None,
        max_id=int(ids.max()) if ids.size else None,
    )


def write_index(
    root: str,
    ids: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    code_bits: int,
    checkpoint: dict | None = None,
    num_shards: int = 1,
    num_classes: int | None = None,
    class_names: list | None = None,
    sources: list | None = None,
    version: str | None = None,
    publish: bool = True,
    keep: int | None = None,
) -> Manifest:
    """Write ``(ids, codes, labels)`` as a new version of the index at ``root``
    (staged, verified, and published unless ``publish=False``)."""
    store = IndexStore(root)
    ids = np.asarray(ids, dtype=np.int64)
    codes = check_codes(np.asarray(codes), code_bits)
    if ids.shape != (codes.shape[0],):
        raise ValueError(f"{codes.shape[0]} codes but ids of shape {ids.shape}")
    if np.unique(ids).size != ids.size:
        raise ValueError("ids must be unique")
    if labels is not None:
        labels = np.asarray(labels, dtype=np.uint8)
        num_classes = num_classes or labels.shape[1]
    version = version or store.new_version_name()
    home = shard_of_ids(ids, num_shards)
    shards = []
    for s in range(num_shards):
        sel = np.flatnonzero(home == s)
        table = make_shard_table(
            ids[sel], codes[sel], None if labels is None else labels[sel], None if sources is None else [sources[i] for i in sel], code_bits
        )
        shards.append(write_shard(store.shard_uri(version, shard_file_name(s), staged=True), table))
    manifest = Manifest(
        version=version,
        code_bits=code_bits,
        num_items=int(ids.size),
        shards=shards,
        checkpoint=dict(checkpoint or {}),
        created_at=utc_iso(),
        num_classes=num_classes,
        class_names=None if class_names is None else class_names_for(num_classes or len(class_names), class_names),
        sources=[{"kind": "arrays", "rows": int(ids.size)}],
        build={"writer": "qadwh_ray.index.writer"},
    )
    store.write_staged_manifest(manifest)
    if publish:
        store.publish(version, manifest)
        if keep:
            store.cleanup(keep=keep)
    return manifest
