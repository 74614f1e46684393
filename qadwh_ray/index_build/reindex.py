"""Nightly re-index: build a new version, check it, and only then publish it.

``reindex`` builds a staged version (from the newest checkpoint and/or new
data; or, incrementally, appending new items encoded with the current
version's checkpoint) and runs these checks before the pointer moves:

1. item count: the shards hold exactly the items read minus the bad rows
   (plus the parent's items when appending), and a full re-index holds no
   fewer items than the current version (``max_item_drop`` tolerance);
2. checksums: every shard read back matches its size, SHA-256, schema and
   row count;
3. sample queries: the search index loaded from the shards returns exactly
   the brute-force weighted-Hamming top-k (ties ordered by id);
4. retrieval quality: MAP on the query set is not lower than the current
   version's beyond ``map_tolerance`` (the current version's figure comes from
   its manifest when it recorded one for the same query set, else it is
   recomputed with its own checkpoint).

A failed check leaves the current version untouched, keeps the staged build
with a ``FAILED.json`` naming the reason, and raises :class:`CheckFailed`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qadwh_ray import storage
from qadwh_ray.index.format import Manifest, ShardData, check_shard_bytes, shard_data_from_table
from qadwh_ray.index.store import IndexStore
from qadwh_ray.index_build.pipeline import BuildOptions, BuildResult, IndexBuildError, build_index, publish_version
from qadwh_ray.model.checkpoint import newest_checkpoint

__all__ = ["CheckOptions", "CheckFailed", "newest_checkpoint", "load_queries", "query_set", "map_of_index", "run_checks", "reindex"]


class CheckFailed(IndexBuildError):
    """A re-index check failed; the new version was not published."""

    def __init__(self, reason: str, details: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


@dataclass
class CheckOptions:
    queries: str | None = "auto"  # "auto": the query part of the indexed dataset's split; a dataset URI; None: no MAP check
    sample_queries: int = 16  # queries compared with brute force
    k: int = 100
    map_queries: int | None = 1000  # at most this many queries for MAP (a fixed, seeded subset)
    map_top_k: int | None = None  # MAP@all by default
    map_tolerance: float = 0.01  # absolute MAP drop allowed
    max_item_drop: float = 0.0  # fraction of items a full re-index may lose vs the current version
    query_seed: int = 0

    def map_key(self, queries: str) -> dict:
        return {"queries": queries, "map_queries": self.map_queries, "top_k": self.map_top_k, "weights": "qadwh", "seed": self.query_seed}


# --------------------------------------------------------------------- queries


def load_queries(spec: str, num_classes: int, split_seed: int = 0, limit: int | None = None, seed: int = 0,
                 image_size: int | None = None, split_uri: str | None = None):
    """Query images and ``(n, c)`` labels: the query part of a dataset's split (a dataset URI or built-in
    name; ``fashion:query`` is the older spelling of Fashion-MNIST's), read at ``image_size``."""
    from qadwh_ray.data.catalog import open_catalog
    from qadwh_ray.data.readers import read_images
    from qadwh_ray.data.split import Split
    from qadwh_ray.training.datasets import dataset_split

    if ":" in spec and spec.split(":", 1)[0] in ("fashion", "fashion-multilabel"):
        spec = spec.split(":", 1)[0]
    cat = open_catalog(spec, split_seed=split_seed)
    if cat.info.num_classes != num_classes:
        raise ValueError(f"the query dataset {spec} has {cat.info.num_classes} classes, the model {num_classes}")
    split = Split.load(split_uri) if split_uri else dataset_split(cat, split_seed)
    pos = np.sort(cat.positions(split.query, what="split part 'query'"))
    if limit is not None and len(pos) > limit:
        pos = np.sort(np.random.default_rng(seed).choice(pos, size=limit, replace=False))
    size = (image_size, image_size) if image_size else None
    imgs, _ = read_images(cat, pos, size=size)
    return imgs, cat.labels[pos]


def map_of_index(data: ShardData, qcodes: np.ndarray, qweights: np.ndarray, qlabels: np.ndarray, top_k: int | None = None, chunk: int | None = None) -> float:
    """MAP of the weighted-Hamming ranking (ties by id) over an index's items,
    ``chunk`` queries at a time (default: ~128 MB of distances per chunk)."""
    from qadwh_ray.core.hamming import weighted_hamming_distances
    from qadwh_ray.core.metrics import mean_average_precision

    if data.labels is None:
        raise ValueError("the index has no labels: MAP is undefined")
    chunk = chunk or max(1, min(64, (1 << 24) // max(1, len(data))))
    total = 0.0
    for s in range(0, len(qcodes), chunk):
        d = weighted_hamming_distances(qcodes[s : s + chunk], data.codes, qweights[s : s + chunk])
        total += mean_average_precision(d, qlabels[s : s + chunk], data.labels, top_k=top_k, db_ids=data.ids) * d.shape[0]
    return total / len(qcodes)


# ----------------------------------------------------------------------- checks


def _read_version(store: IndexStore, manifest: Manifest, staged: bool) -> ShardData:
    """Every shard verified (checksum check) and concatenated, sorted by id."""
    parts = []
    for info in manifest.shards:
        uri = store.shard_uri(manifest.version, info.file, staged)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise CheckFailed(f"checksums: shard {info.file} is missing ({uri})") from None
        try:
            table = check_shard_bytes(data, info, manifest.code_bits, uri)
        except ValueError as exc:
            raise CheckFailed(f"checksums: {exc}") from exc
        parts.append(shard_data_from_table(table, manifest.code_bits, manifest.num_classes))
    ids = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    codes = np.concatenate([p.codes for p in parts])[order] if parts else np.zeros((0, manifest.code_bytes), np.uint8)
    labels = np.concatenate([p.labels for p in parts])[order] if parts and parts[0].labels is not None else None
    return ShardData(ids=ids[order], codes=codes, labels=labels, sources=None)


def _search_vs_brute_force(manifest: Manifest, store: IndexStore, staged: bool, data: ShardData, qcodes, qweights, k: int) -> dict:
    """Load the shards into a HashIndex one by one (as readers do) and compare
    its top-k with a brute-force ranking under the same canonical distance."""
    from qadwh_ray.core.hamming import query_weights, reference_distances
    from qadwh_ray.core.search import HashIndex

    index = HashIndex(manifest.code_bits, device="cpu")
    for info in manifest.shards:
        uri = store.shard_uri(manifest.version, info.file, staged)
        d = shard_data_from_table(check_shard_bytes(storage.read_bytes(uri), info, manifest.code_bits, uri), manifest.code_bits, manifest.num_classes)
        if len(d):
            index.add(d.codes, d.ids)
    k = min(k, len(data))
    dist, ids = index.search(qcodes, k, weights=qweights, mode="qadwh")
    w_int, exps = query_weights(qweights, "qadwh", len(qcodes), manifest.code_bits)
    full = reference_distances(qcodes, data.codes, w_int, exps)
    for q in range(len(qcodes)):
        order = np.lexsort((data.ids, full[q]))[:k]
        want_d, want_i = full[q][order], data.ids[order]
        if not (np.array_equal(dist[q], want_d) and np.array_equal(ids[q], want_i)):
            bad = int(np.flatnonzero((ids[q] != want_i) | (dist[q] != want_d))[0])
            raise CheckFailed(
                f"sample queries: query {q} rank {bad}: the index returned id {int(ids[q][bad])} at distance {float(dist[q][bad]):.6g}, "
                f"brute force id {int(want_i[bad])} at {float(want_d[bad]):.6g}"
            )
    return {"queries": int(len(qcodes)), "k": int(k), "status": "identical to brute force"}


def run_checks(
    store: IndexStore,
    manifest: Manifest,
    *,
    staged: bool,
    checkpoint: str,
    current: Manifest | None,
    expected_items: int,
    incremental: bool,
    opts: CheckOptions,
    query_spec: str | None,
    split_seed: int = 0,
) -> dict:
    """Run the checks on a (staged) version; returns their figures or raises CheckFailed."""
    from qadwh_ray.model import encode, load_checkpoint

    figures: dict = {}
    # 1. item count
    if manifest.num_items != expected_items:
        raise CheckFailed(f"item count: the version holds {manifest.num_items} items, expected {expected_items}")
    if current is not None and not incremental:
        floor = int(np.ceil(current.num_items * (1.0 - opts.max_item_drop)))
        if manifest.num_items + int((manifest.updates or {}).get("removed", 0)) < floor:  # API deletions are no loss
            raise CheckFailed(
                f"item count: {manifest.num_items} items, fewer than the current version {current.version}'s {current.num_items} "
                f"(allowed drop {opts.max_item_drop:.1%})"
            )
    figures["items"] = {"count": manifest.num_items, "current": current.num_items if current else None}
    # 2. checksums (reads every shard back)
    data = _read_version(store, manifest, staged)
    if len(data) != manifest.num_items or (len(data) > 1 and not (np.diff(data.ids) > 0).all()):
        raise CheckFailed("checksums: shards hold duplicate ids or the wrong number of rows")
    figures["checksums"] = {"shards": manifest.num_shards, "status": "verified"}
    # 3. sample queries against brute force
    model = load_checkpoint(checkpoint)
    qimgs = qlabels = None
    if query_spec:
        qimgs, qlabels = load_queries(query_spec, model.config.num_classes, split_seed, opts.map_queries, opts.query_seed,
                                      model.config.image_size)
    rng = np.random.default_rng(opts.query_seed)
    if qimgs is not None and len(qimgs):
        sel = np.sort(rng.choice(len(qimgs), size=min(opts.sample_queries, len(qimgs)), replace=False))
        enc = encode(model, qimgs[sel])
        scodes, sweights = enc.codes, enc.qadwh_weights
    else:  # no query images: database codes as queries, with the model's DWH weights
        sel = np.sort(rng.choice(len(data), size=min(opts.sample_queries, len(data)), replace=False))
        scodes = data.codes[sel]
        sweights = np.tile(model.dwh_weights().detach().numpy().astype(np.float64), (len(sel), 1))
    figures["sample_queries"] = _search_vs_brute_force(manifest, store, staged, data, scodes, sweights, opts.k)
    # 4. MAP on the query set vs the current version
    if query_spec and data.labels is not None:
        enc = encode(model, qimgs)
        new_map = map_of_index(data, enc.codes, enc.qadwh_weights, qlabels, opts.map_top_k)
        key = opts.map_key(query_spec)
        figures["map"] = {**key, "value": new_map}
        if current is not None:
            base_map, how = _current_map(store, current, key, qimgs, qlabels, opts)
            figures["map"]["current"] = base_map
            figures["map"]["current_from"] = how
            figures["map"]["tolerance"] = opts.map_tolerance
            if new_map < base_map - opts.map_tolerance:
                raise CheckFailed(
                    f"MAP on the query set fell from {base_map:.4f} (current version {current.version}) to {new_map:.4f}, "
                    f"more than the tolerance {opts.map_tolerance}",
                    {"map": figures["map"]},
                )
    else:
        figures["map"] = {"status": "skipped", "why": "no query set" if not query_spec else "the index has no labels"}
    return figures


def _current_map(store: IndexStore, current: Manifest, key: dict, qimgs, qlabels, opts: CheckOptions) -> tuple[float, str]:
    rec = current.checks.get("map") if isinstance(current.checks, dict) else None
    if isinstance(rec, dict) and "value" in rec and all(rec.get(k) == v for k, v in key.items()):
        return float(rec["value"]), "manifest"
    from qadwh_ray.model import encode
    from qadwh_ray.model.checkpoint import load_payload, model_from_payload

    try:
        payload = load_payload(current.checkpoint["uri"])
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"MAP: cannot load the current version's checkpoint to compare with: {exc}") from exc
    if payload["sha256"] != current.checkpoint.get("sha256"):
        raise CheckFailed(f"MAP: the current version's checkpoint {current.checkpoint['uri']} changed since it was indexed; cannot compare")
    model = model_from_payload(payload)
    data = _read_version(store, current, staged=False)
    if data.labels is None:
        raise CheckFailed(f"MAP: the current version {current.version} has no labels to compare with")
    enc = encode(model, qimgs)
    return map_of_index(data, enc.codes, enc.qadwh_weights, qlabels, opts.map_top_k), "recomputed"


# ---------------------------------------------------------------------- reindex


def query_set(queries: str | None, source: str) -> str | None:
    """The MAP check's query set: ``auto`` is the indexed dataset's own query part; None: no MAP check."""
    if queries == "auto":  # augmented Fashion-MNIST: the real set's query part
        return "fashion" if source.startswith("fashion-augmented") else source
    return None if queries in (None, "", "none", "None") else queries


def reindex(
    checkpoint: str | None,
    source: str,
    out: str,
    build_opts: BuildOptions | None = None,
    check_opts: CheckOptions | None = None,
    *,
    incremental: bool = False,
    ray_address: str | None = None,
) -> BuildResult:
    """Build, check and publish a new version (see the module docstring).

    ``checkpoint``: a checkpoint file, or a directory searched for the newest
    one; ``None`` in incremental mode means the current version's checkpoint.
    Raises :class:`CheckFailed` (the current version untouched) when a check fails.
    """
    bopts = build_opts or BuildOptions()
    copts = check_opts or CheckOptions()
    store = IndexStore(out)
    pointer = store.read_pointer()
    current = store.read_manifest(pointer.version, expected_sha256=pointer.manifest_sha256) if pointer else None
    if incremental:
        if current is None:
            raise IndexBuildError(f"incremental re-index needs a current version at {store.root}; build one first")
        ckpt = current.checkpoint["uri"] if checkpoint is None else newest_checkpoint(checkpoint)
    else:
        if checkpoint is None:
            raise ValueError("a full re-index needs --checkpoint (a file or a directory of checkpoints)")
        ckpt = newest_checkpoint(checkpoint)

    staged_opts = BuildOptions(**{**asdict(bopts), "publish": False})
    result = build_index(ckpt, source, out, staged_opts, incremental=incremental, ray_address=ray_address)
    m = result.manifest
    expected = (current.num_items if incremental and current else 0) + result.rows_read - result.bad_rows
    expected += int((m.updates or {}).get("items_delta", 0))  # the update log folded in (index_build/fold.py)
    query_spec = query_set(copts.queries, source)
    try:
        figures = run_checks(
            store,
            m,
            staged=True,
            checkpoint=ckpt,
            current=current,
            expected_items=expected,
            incremental=incremental,
            opts=copts,
            query_spec=query_spec,
            split_seed=bopts.split_seed,
        )
    except CheckFailed as exc:
        store.mark_failed(m.version, exc.reason, exc.details)
        raise
    except Exception as exc:  # a check that could not run is a failed check
        store.mark_failed(m.version, f"{type(exc).__name__}: {exc}")
        raise CheckFailed(f"checks could not run: {type(exc).__name__}: {exc}") from exc
    m.checks = figures
    store.write_staged_manifest(m)
    if bopts.publish:
        result.deleted = publish_version(store, m, bopts.keep)
        result.published = True
        result.uri = store.version_uri(m.version)
    return result
