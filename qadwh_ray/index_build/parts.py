"""The build's part files and their compaction into shards: how every source row lands exactly once.

Encoded rows are written as *part files*, grouped by home shard, under
``<staging>/_parts/shard-NNNNN/``; a part file is named after the source-row
ordinals it holds, so a retried task rewrites the same object. One compaction
per shard merges its parts (and, incrementally, the parent version's shard),
refuses an ordinal seen twice, drops duplicate ids, and writes the final shard
through :func:`qadwh_ray.index.writer.write_shard`. Both run as Ray tasks but
are plain functions (no Ray here).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadwh_ray import storage
from qadwh_ray.core.bits import code_bytes
from qadwh_ray.index.format import ShardInfo, check_shard_bytes, make_shard_table, shard_of_ids
from qadwh_ray.index.writer import write_shard
from qadwh_ray.index_build.errors import IndexBuildError

__all__ = ["PARTS_DIR", "write_parts", "compact_shard"]

PARTS_DIR = "_parts"
_ROW_FIELD = pa.field("_row", pa.int64(), nullable=False)  # a part row's source ordinal, dropped at compaction


def write_parts(batch: dict, parts_uri: str, num_shards: int, nbits: int, labeled: bool) -> dict:
    """Write the good rows of an encoded batch as one part file per home shard
    and return one record per part and one per bad row."""
    rows = np.asarray(batch["_row"], dtype=np.int64)
    ids = np.asarray(batch["id"], dtype=np.int64)
    bad = np.asarray(batch["bad"], dtype=object)
    sources = np.asarray(batch["source"], dtype=object)
    good = bad == ""
    rec = {k: [] for k in ("kind", "shard", "file", "rows", "_row", "id", "reason", "source")}

    def add(kind, shard=-1, file="", nrows=0, row=-1, id_=-1, reason="", source=""):
        for k, v in zip(rec, (kind, shard, file, nrows, row, id_, reason, source)):
            rec[k].append(v)

    for i in np.flatnonzero(~good).tolist():
        add("bad", row=int(rows[i]), id_=int(ids[i]), reason=str(bad[i]), source=str(sources[i] or ""))
    g = np.flatnonzero(good)
    if g.size:
        codes = np.asarray(batch["code"], dtype=np.uint8)[g]
        labels = np.asarray(batch["labels"], dtype=np.uint8)[g] if labeled else None
        src = [s if s else None for s in sources[g].tolist()]
        table = make_shard_table(ids[g], codes, labels, src, nbits)
        table = table.append_column(_ROW_FIELD, pa.array(rows[g]))
        home = shard_of_ids(ids[g], num_shards)
        for s in np.unique(home).tolist():
            sel = np.flatnonzero(home == s)
            part_rows = rows[g][sel]
            digest = hashlib.sha1(np.sort(part_rows).tobytes()).hexdigest()[:16]  # name = the rows it holds
            name = f"shard-{s:05d}/part-{int(part_rows.min()):012d}-{digest}.parquet"
            uri = storage.join(parts_uri, name)
            with storage.open_output(uri) as f:
                pq.write_table(table.take(pa.array(sel)), f, compression="zstd")
            add("part", shard=int(s), file=uri, nrows=int(sel.size))
    return {
        "kind": np.asarray(rec["kind"], dtype=object),
        "shard": np.asarray(rec["shard"], dtype=np.int64),
        "file": np.asarray(rec["file"], dtype=object),
        "rows": np.asarray(rec["rows"], dtype=np.int64),
        "_row": np.asarray(rec["_row"], dtype=np.int64),
        "id": np.asarray(rec["id"], dtype=np.int64),
        "reason": np.asarray(rec["reason"], dtype=object),
        "source": np.asarray(rec["source"], dtype=object),
    }


def compact_shard(
    shard: int,
    part_uris: list[str],
    out_uri: str,
    nbits: int,
    n_rows: int,
    base: dict | None = None,
) -> dict:
    """Merge one shard's part files (and, incrementally, the parent version's
    shard ``base = {"uri", "info"}``) into a final shard file sorted by id.
    Duplicate ids are dropped (keeping the parent's item, else the lowest
    source row) and reported. Returns the shard's manifest entry, a bitmap of
    the source rows it holds and the duplicates."""
    tables = []
    for uri in part_uris:
        with storage.open_input(uri) as f:
            tables.append(pq.read_table(f))
    schema = make_shard_table(np.zeros(0, np.int64), np.zeros((0, code_bytes(nbits)), np.uint8), None, None, nbits).schema
    new = pa.concat_tables(tables) if tables else schema.empty_table().append_column(_ROW_FIELD, pa.array([], pa.int64()))
    rows = new.column("_row").to_numpy()
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise IndexBuildError(f"shard {shard}: source row {int(rows.max())} outside [0, {n_rows})")
    uniq, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise IndexBuildError(
            f"shard {shard}: source row {int(uniq[counts > 1][0])} was encoded more than once (parts overlap: {len(part_uris)} parts)"
        )
    bitmap = np.zeros(n_rows, dtype=bool)
    bitmap[rows] = True
    new = new.drop_columns(["_row"]).cast(schema)
    duplicates = []
    base_table = None
    if base is not None:
        data = storage.read_bytes(base["uri"])
        base_table = check_shard_bytes(data, ShardInfo(**base["info"]), nbits, base["uri"])
    # duplicates among the new rows: keep the lowest source row
    ids = new.column("id").to_numpy()
    order = np.lexsort((rows, ids))
    sorted_ids = ids[order]
    dup_mask_sorted = np.zeros(ids.size, dtype=bool)
    if ids.size > 1:
        dup_mask_sorted[1:] = sorted_ids[1:] == sorted_ids[:-1]
    drop = np.zeros(ids.size, dtype=bool)
    drop[order[dup_mask_sorted]] = True
    for j in order[dup_mask_sorted].tolist():
        first = order[np.searchsorted(sorted_ids, ids[j])]
        duplicates.append(
            {"row": int(rows[j]), "id": int(ids[j]), "source": new.column("source")[j].as_py() or "",
             "reason": f"id {int(ids[j])} appears more than once in the source (first at row {int(rows[first])})"}
        )
    if base_table is not None:
        in_base = np.isin(ids, base_table.column("id").to_numpy())
        for j in np.flatnonzero(in_base & ~drop).tolist():
            duplicates.append(
                {"row": int(rows[j]), "id": int(ids[j]), "source": new.column("source")[j].as_py() or "",
                 "reason": f"id {int(ids[j])} is already in the index (version being appended to)"}
            )
        drop |= in_base
    if drop.any():
        new = new.filter(pa.array(~drop))
    merged = pa.concat_tables([base_table.select(schema.names).cast(schema), new]) if base_table is not None else new
    info = write_shard(out_uri, merged)
    return {
        "shard": shard,
        "info": info.to_dict(),
        "bitmap": np.packbits(bitmap),
        "new_rows": int(rows.size - drop.sum()),
        "duplicates": duplicates,
    }
