"""Writing index versions: the one place that decides how shards and manifests are written.

Every writer of the format (:mod:`qadwh_ray.index.format`) goes through here:

- :func:`write_shard` serialises a shard table under its file name and returns
  its manifest entry (row count, bytes, SHA-256, id range): the Ray Data build's
  compaction (:mod:`qadwh_ray.index_build.parts`) and the update-log fold
  (:mod:`qadwh_ray.index_build.fold`) write every shard through it;
- :func:`new_manifest` makes a version's manifest once its shards are written
  (the build's, and :func:`write_index`'s);
- :func:`write_index` writes a whole version from in-memory arrays, in one
  process, for small indexes (evaluation exports, tests, benchmarks).

No Ray here; the store (:mod:`qadwh_ray.index.store`) stages, verifies and publishes.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import pyarrow as pa

from qadwh_ray import storage
from qadwh_ray.core.bits import check_codes
from qadwh_ray.index.format import Manifest, ShardInfo, class_names_for, make_shard_table, shard_file_name, shard_of_ids, shard_table_bytes
from qadwh_ray.index.store import IndexStore, utc_iso

__all__ = ["MAX_LISTED_BAD", "checkpoint_record", "write_shard", "new_manifest", "write_index"]

MAX_LISTED_BAD = 100_000  # bad rows listed one by one in a manifest (all are counted)


def checkpoint_record(payload: dict) -> dict:
    """The manifest's record of the checkpoint its codes came from, from
    :func:`qadwh_ray.model.checkpoint.load_payload`'s ``payload``."""
    return {"uri": payload["uri"], "sha256": payload["sha256"], "model_config": payload["model_config"]}


def write_shard(uri: str, table: pa.Table) -> ShardInfo:
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


def new_manifest(
    version: str,
    *,
    code_bits: int,
    shards: list[ShardInfo],
    checkpoint: dict,
    num_classes: int | None,
    class_names: list | None,
    sources: list,
    build: dict,
    bad_rows: Sequence[dict] = (),
    parent: Manifest | None = None,
    checks: dict | None = None,
) -> Manifest:
    """The manifest of a version whose ``shards`` are written, created now.

    ``bad_rows``: the rows this version skipped (all counted, the first
    :data:`MAX_LISTED_BAD` listed). A version appended to ``parent`` keeps the
    parent's sources and bad rows after its own."""
    inherited_bad = list(parent.bad_rows) if parent else []
    return Manifest(
        version=version,
        code_bits=code_bits,
        num_items=sum(s.rows for s in shards),
        shards=list(shards),
        checkpoint=dict(checkpoint),
        created_at=utc_iso(),
        num_classes=num_classes,
        class_names=class_names,
        sources=(list(parent.sources) if parent else []) + list(sources),
        bad_rows=(list(bad_rows) + inherited_bad)[:MAX_LISTED_BAD],
        bad_row_count=len(bad_rows) + (parent.bad_row_count if parent else 0),
        parent=parent.version if parent else None,
        build=dict(build),
        checks=dict(checks or {}),
    )


def write_index(
    root: str,
    ids: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    code_bits: int | None = None,
    checkpoint: dict | None = None,
    num_shards: int = 1,
    num_classes: int | None = None,
    class_names: list | None = None,
    item_sources: list | None = None,
    sources: list | None = None,
    version: str | None = None,
    publish: bool = True,
    keep: int | None = None,
) -> Manifest:
    """Write ``(ids, codes, labels)`` as a new version of the index at ``root``:
    staged, then verified and published unless ``publish=False`` (then
    ``IndexStore(root).publish(version)`` publishes it later).

    ``code_bits``: the code length (default: the checkpoint's);
    ``checkpoint``: the manifest's checkpoint record (:func:`checkpoint_record`);
    ``labels``: an ``(n, c)`` 0/1 matrix; ``class_names``: the dataset's names of
    the classes (a class without one is named by its number);
    ``item_sources``: where each item's image came from (strings or None);
    ``sources``: the manifest's source records, e.g. ``[{"kind": "fashion",
    "uri": "fashion:all", "rows": n}]`` (what lets a service show item images;
    default: one record of kind ``arrays``); ``keep``: versions kept after publishing.
    """
    store = IndexStore(root)
    checkpoint = dict(checkpoint or {})
    model_bits = (checkpoint.get("model_config") or {}).get("nbits")
    if code_bits is None:
        if model_bits is None:
            raise ValueError("write_index needs code_bits (or a checkpoint record with a model_config)")
        code_bits = int(model_bits)
    elif model_bits is not None and int(model_bits) != code_bits:
        raise ValueError(f"{code_bits}-bit codes but the checkpoint {checkpoint.get('uri')} makes {model_bits}-bit codes")
    ids = np.asarray(ids, dtype=np.int64)
    codes = check_codes(np.asarray(codes), code_bits)
    if ids.shape != (codes.shape[0],):
        raise ValueError(f"{codes.shape[0]} codes but ids of shape {ids.shape}")
    if np.unique(ids).size != ids.size:
        raise ValueError("ids must be unique")
    if labels is not None:
        labels = np.asarray(labels, dtype=np.uint8)
        num_classes = num_classes or labels.shape[1]
    if class_names is not None:
        class_names = class_names_for(num_classes or len(class_names), class_names)
    version = version or store.new_version_name()
    home = shard_of_ids(ids, num_shards)
    shards = []
    for s in range(num_shards):
        sel = np.flatnonzero(home == s)
        table = make_shard_table(
            ids[sel],
            codes[sel],
            None if labels is None else labels[sel],
            None if item_sources is None else [item_sources[i] for i in sel],
            code_bits,
        )
        shards.append(write_shard(store.shard_uri(version, shard_file_name(s), staged=True), table))
    manifest = new_manifest(
        version,
        code_bits=code_bits,
        shards=shards,
        checkpoint=checkpoint,
        num_classes=num_classes,
        class_names=class_names,
        sources=list(sources) if sources is not None else [{"kind": "arrays", "rows": int(ids.size)}],
        build={"writer": "qadwh_ray.index.writer.write_index"},
    )
    store.write_staged_manifest(manifest)
    if publish:
        store.publish(version, manifest)
        if keep:
            store.cleanup(keep=keep)
    return manifest
