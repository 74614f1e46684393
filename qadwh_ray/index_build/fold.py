"""Folding the update log into a new index version (the last step of every build).

Items added, replaced or deleted through the API live in the update log
(:mod:`qadwh_ray.index.update_log`) until an index build folds them in. A
build reads the log up to its end, position ``P``, and:

1. takes the API changes the version it replaces had folded (its
   ``updates.jsonl``) and overlays the log's changes since that version's
   position, newest per item: the *cumulative* changes. A build from the
   source carries them over, so an item put through the API stays and an item
   deleted through it stays deleted;
2. gives every put a code of the new version's model: its own code when it came
   from that model, else its image re-encoded (the log keeps the image); a put
   that came as a code from another model cannot be compared with the new
   codes: the item is left out of the new version and listed in the manifest
   with the reason (its earlier content was replaced by that put);
3. rewrites the staged shards that hold changed items, and records
   ``updates = {"log_position": P, "file": "updates.jsonl", ...}`` in the
   manifest: replicas serving the new version replay only the changes after P;
4. truncates the log up to the position of the version it replaces: those
   changes are folded into both versions, while the changes after it stay
   until the next build, so rolling back to the replaced version loses none.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import pyarrow as pa

from qadwh_ray import storage
from qadwh_ray.index.format import Manifest, ShardInfo, check_shard_bytes, make_shard_table, shard_of_ids
from qadwh_ray.index.store import IndexStore
from qadwh_ray.index.update_log import LogEntry, LogTruncated, UpdateLog
from qadwh_ray.index.writer import write_shard

__all__ = ["UPDATES_FILE", "fold_update_log", "read_folded_changes", "describe", "FoldError"]

UPDATES_FILE = "updates.jsonl"
MAX_LISTED_DROPPED = 10_000


class FoldError(RuntimeError):
    """The update log cannot be folded into the new version (the build must not publish)."""


def read_folded_changes(store: IndexStore, manifest: Manifest) -> list:
    """The cumulative API changes a published version folded in (checked against its SHA-256)."""
    rec = manifest.updates or {}
    if not rec.get("file"):
        return []
    uri = storage.join(store.version_uri(manifest.version), rec["file"])
    data = storage.read_bytes(uri)
    if hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        raise FoldError(f"{uri} does not match the SHA-256 in the manifest of version {manifest.version}: damaged or replaced")
    return [LogEntry.from_json(line, uri) for line in data.decode().splitlines() if line.strip()]


def _reencode(entries: list, checkpoint_uri: str, log: UpdateLog) -> dict:
    """Codes (hex) of the entries' logged images under the new version's model, by item id."""
    if not entries:
        return {}
    from qadwh_ray.data.transforms import decode_image
    from qadwh_ray.model import encode, load_checkpoint

    model = load_checkpoint(checkpoint_uri)
    mode = "RGB" if model.config.in_channels == 3 else "L"
    out = {}
    for e in entries:
        px = decode_image(log.read_image(e.image), mode=mode, source=f"update-log image of item {e.id}")
        out[e.id] = encode(model, px[None]).codes[0].tobytes().hex()
    return out


def fold_update_log(store: IndexStore, manifest: Manifest, previous: Optional[Manifest]) -> Manifest:
    """Fold the log into the staged ``manifest``'s version (see the module docstring); returns
    the manifest, updated (shards, item count, ``updates``), not yet written."""
    log = UpdateLog(store.root)
    start = previous.log_position if previous is not None else 0
    end = log.end()
    try:
        entries, end = log.read(start, end)
    except LogTruncated as exc:
        raise FoldError(f"cannot fold the update log into version {manifest.version}: {exc}") from exc
    carried = read_folded_changes(store, previous) if previous is not None else []
    latest: dict = {e.id: e for e in carried}
    for e in entries:
        latest[e.id] = e
    if not latest:
        manifest.updates = {"log_position": end}
        return manifest

    sha = (manifest.checkpoint or {}).get("sha256")
    foreign = [e for e in latest.values() if e.op == "put" and e.checkpoint != sha]
    to_encode = [e for e in foreign if e.image]
    codes = _reencode(to_encode, manifest.checkpoint["uri"], log)
    dropped = []
    folded: dict = {}
    for i, e in latest.items():
        if e.op == "put" and e.checkpoint != sha:
            if i not in codes:
                dropped.append({"id": i, "seq": e.seq, "reason": "a code from another model, sent without an image: put it again"})
                continue
            e = LogEntry(e.seq, "put", i, codes[i], e.labels, sha, e.image, e.at)
        folded[i] = e

    delta, removed = _apply_to_shards(store, manifest, folded, dropped)
    data = "".join(folded[i].to_json() + "\n" for i in sorted(folded)).encode()
    storage.write_bytes(storage.join(store.staging_uri(manifest.version), UPDATES_FILE), data)
    manifest.updates = {
        "log_position": end,
        "file": UPDATES_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "puts": sum(1 for e in folded.values() if e.op == "put"),
        "deletes": sum(1 for e in folded.values() if e.op == "delete"),
        "changes_read": len(entries),
        "reencoded": len(codes),
        "items_delta": delta,
        "removed": removed,
        "dropped": dropped[:MAX_LISTED_DROPPED],
        "dropped_count": len(dropped),
        "truncated_to": start,
    }
    if start > 0:
        log.truncate(start)
    return manifest


def _apply_to_shards(store: IndexStore, manifest: Manifest, folded: dict, dropped: list) -> tuple[int, int]:
    """Rewrite the staged shards holding changed items; returns the change in the item count
    and how many built items were removed (deleted or dropped, not replaced)."""
    nbits = manifest.code_bits
    touched = np.asarray(sorted(set(folded) | {d["id"] for d in dropped}), dtype=np.int64)
    home = shard_of_ids(touched, manifest.num_shards)
    delta = removed = 0
    shards = list(manifest.shards)
    for s in np.unique(home).tolist():
        ids_here = touched[home == s]
        info = shards[s]
        uri = store.shard_uri(manifest.version, info.file, staged=True)
        table = check_shard_bytes(storage.read_bytes(uri), info, nbits, uri)
        present = table.column("id").to_numpy()
        keep = ~np.isin(present, ids_here)
        table = table.filter(pa.array(keep))
        puts = [folded[i] for i in ids_here.tolist() if i in folded and folded[i].op == "put"]
        removed += int(np.isin(present[~keep], [e.id for e in puts], invert=True).sum())
        if puts:
            new = make_shard_table(
                np.asarray([e.id for e in puts], dtype=np.int64),
                np.frombuffer(b"".join(bytes.fromhex(e.code) for e in puts), dtype=np.uint8).reshape(len(puts), manifest.code_bytes),
                pa.array([list(e.labels) if e.labels else None for e in puts], type=pa.list_(pa.int32())),
                None,
                nbits,
            )
            table = pa.concat_tables([table.cast(new.schema), new])
        new_info: ShardInfo = write_shard(uri, table)
        delta += new_info.rows - info.rows
        shards[s] = new_info
    manifest.shards = shards
    manifest.num_items = sum(s.rows for s in shards)
    return delta, removed


def describe(manifest: Manifest) -> str:
    u = manifest.updates or {}
    if not u.get("file"):
        return f"update log: nothing to fold (position {u.get('log_position', 0)})"
    return (f"update log folded up to position {u['log_position']}: {u['puts']} put and {u['deletes']} deleted items "
            f"({u['reencoded']} re-encoded, {u['dropped_count']} dropped); log truncated to {u['truncated_to']}")

