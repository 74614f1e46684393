"""Batch indexing on Ray Data: image database → packed codes → a versioned index.

The pipeline (everything streams; the driver only sees small part records)::

    source read + decode/validate     map_batches (tasks, fractional CPU)        sources.py
      → Encoder                       map_batches (callable class on an ActorPoolStrategy;
                                      the checkpoint is loaded once per actor; num_gpus when
                                      the cluster has GPUs; actor restarts + task retries)
      → part writer                   map_batches (tasks): rows grouped by home shard
                                      (splitmix64(id) % S) and written as part files under
                                      <root>/_staging/<version>/_parts/
    driver: collects part records and bad-row records from the stream
      → one compaction task per shard: reads its parts (+ the parent version's shard in
        incremental mode), checks row ordinals and ids, sorts by id, writes
        shard-NNNNN.parquet with its SHA-256
      → proves every source row was seen exactly once (ordinal bitmaps), writes the
        manifest, and publishes (verify, move, pointer last) — or leaves it staged for
        the re-index checks.

Exactly once under retries: a part file's name is derived from the row
ordinals it holds, so a retried task rewrites the same object; the driver
uses only the part records of tasks that succeeded; compaction refuses a
row ordinal seen twice; the driver checks that the ordinals of all shards
and bad rows are disjoint and cover ``0 .. n_rows-1``.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadwh_ray import storage
from qadwh_ray.core.bits import code_bytes
from qadwh_ray.index.format import (
    Manifest,
    ShardInfo,
    check_shard_bytes,
    class_names_for,
    make_shard_table,
    shard_file_name,
    shard_of_ids,
    shard_table_bytes,
)
from qadwh_ray.index.store import IndexStore, utc_iso
from qadwh_ray.indexing.sources import SourcePlan, plan_source

__all__ = [
    "BuildOptions",
    "BuildResult",
    "BadInputError",
    "IndexBuildError",
    "Encoder",
    "build_index",
    "auto_num_shards",
    "ITEMS_PER_SHARD",
]

ITEMS_PER_SHARD = 1_000_000  # --shards default: one shard per million items
PARTS_DIR = "_parts"
MAX_LISTED_BAD = 100_000  # bad rows listed one by one in the manifest (all are counted)


class IndexBuildError(RuntimeError):
    """The build could not produce a complete, consistent version."""


class BadInputError(IndexBuildError, ValueError):
    """A source row (or file) is unusable and --skip-bad was not given."""


@dataclass
class BuildOptions:
    shards: int | None = None  # None: ceil(items / ITEMS_PER_SHARD)
    skip_bad: bool = False
    batch_size: int = 512  # rows per encoder call (the model runs them in chunks of encode.default_chunk)
    block_rows: int = 2048  # rows per read/decode batch
    actors: int | None = None  # encoder actor pool max size (default: #GPUs, else 2)
    encoder_cpus: float = 0.5
    encoder_gpus: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    threads: int | None = None  # torch threads per encoder actor (default: max(1, round(encoder_cpus)))
    decode_cpus: float = 0.25
    read_tasks: int | None = None  # concurrent read/decode (and part-write) tasks (default: half the cluster's CPUs, at least 2)
    max_retries: int = 3  # retries of a compaction task whose worker died
    image_size: int | None = None  # size images are read at (default: the model's input size)
    part: str | None = None  # which part of the dataset's split to index; default: sources.plan_source
    split: str | None = None  # a saved split.json (default: the dataset's seeded split)
    split_seed: int = 0
    version: str | None = None
    publish: bool = True
    keep: int = 3
    worker_env: dict | None = None  # environment variables for the pipeline's workers (e.g. an S3 endpoint; no secrets: they show in the dashboard)
    fault_marker: str | None = None  # testing hook: see Encoder

    def to_record(self) -> dict:
        d = asdict(self)
        d.pop("fault_marker", None)
        d["worker_env"] = sorted(self.worker_env or {})  # names only
        return d


@dataclass
class BuildResult:
    version: str
    manifest: Manifest
    published: bool
    root: str
    uri: str  # where the version lives now (versions/<v> when published, else _staging/<v>)
    seconds: float
    rows_read: int
    bad_rows: int
    deleted: dict = field(default_factory=dict)

    def summary(self) -> str:
        m = self.manifest
        state = "published (current)" if self.published else "staged (not published)"
        return (
            f"index version {self.version}: {m.num_items} items, {m.num_shards} shards, {m.code_bits}-bit codes, "
            f"{self.bad_rows} bad rows skipped, {self.seconds:.1f} s; {state} at {self.uri}"
        )


def auto_num_shards(n_items: int) -> int:
    return max(1, math.ceil(n_items / ITEMS_PER_SHARD))


# ------------------------------------------------------------------ encoder


class Encoder:
    """Ray Data callable class: loads the checkpoint once per actor and turns
    decoded image batches into packed codes with :func:`qadwh_ray.model.encode`
    (the same function local code uses, so codes match byte for byte).

    ``fault_marker`` is a fault-injection hook for tests: the first call, in
    any actor, that finds no file at that path creates it and kills its own
    process (``os._exit``), as a crashed node would.
    """

    def __init__(
        self,
        checkpoint_uri: str,
        checkpoint_sha256: str,
        threads: int = 1,
        device: str = "cpu",
        fault_marker: str | None = None,
    ):
        import torch

        from qadwh_ray.model.checkpoint import load_payload, model_from_payload

        payload = load_payload(checkpoint_uri)
        if payload["sha256"] != checkpoint_sha256:
            raise IndexBuildError(
                f"checkpoint {checkpoint_uri} changed during the build (SHA-256 {payload['sha256']}, expected {checkpoint_sha256})"
            )
        if device == "cpu":
            torch.set_num_threads(max(1, int(threads)))
        self.device = device
        self.model = model_from_payload(payload).to(device)
        self.nbytes = code_bytes(self.model.config.nbits)
        self.fault_marker = fault_marker

    def _maybe_crash(self) -> None:
        if not self.fault_marker:
            return
        try:
            fd = os.open(self.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        os._exit(1)

    def __call__(self, batch: dict) -> dict:
        from qadwh_ray.model.encode import encode

        self._maybe_crash()
        bad = np.asarray(batch["bad"], dtype=object)
        good = np.flatnonzero(bad == "")
        n = bad.shape[0]
        codes = np.zeros((n, self.nbytes), dtype=np.uint8)
        if good.size:
            images = np.asarray(batch["image"])
            sel = images if good.size == n else images[good]
            codes[good] = encode(self.model, sel, device=self.device).codes
        return {
            "_row": batch["_row"],
            "id": batch["id"],
            "code": codes,
            "labels": batch["labels"],
            "source": batch["source"],
            "bad": bad,
        }


# -------------------------------------------------------------- part writer

_PART_SCHEMA_EXTRA = pa.field("_row", pa.int64(), nullable=False)


def _write_parts(batch: dict, parts_uri: str, num_shards: int, nbits: int, labeled: bool) -> dict:
    """Write the good rows of a batch as one part file per home shard and
    return one record per part and one per bad row."""
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
        table = table.append_column(_PART_SCHEMA_EXTRA, pa.array(rows[g]))
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


# -------------------------------------------------------------- compaction


def compact_shard(
    shard: int,
    part_uris: list[str],
    out_uri: str,
    nbits: int,
    n_rows: int,
    base: dict | None = None,
) -> dict:
    """Merge one shard's part files (and, incrementally, the parent version's
    shard) into a final shard file sorted by id. Duplicate ids are dropped
    (keeping the parent's item, else the lowest source row) and reported.
    Returns the shard's manifest entry, a bitmap of the source rows it holds
    and the duplicates."""
    tables = []
    for uri in part_uris:
        with storage.open_input(uri) as f:
            tables.append(pq.read_table(f))
    schema = make_shard_table(np.zeros(0, np.int64), np.zeros((0, code_bytes(nbits)), np.uint8), None, None, nbits).schema
    new = pa.concat_tables(tables) if tables else schema.empty_table().append_column(_PART_SCHEMA_EXTRA, pa.array([], pa.int64()))
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
    data = shard_table_bytes(merged)
    storage.write_bytes(out_uri, data)
    ids_out = merged.column("id").to_numpy()
    info = ShardInfo(
        file=out_uri.rstrip("/").rsplit("/", 1)[-1],
        rows=merged.num_rows,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        min_id=int(ids_out.min()) if ids_out.size else None,
        max_id=int(ids_out.max()) if ids_out.size else None,
    )
    return {
        "shard": shard,
        "info": info.to_dict(),
        "bitmap": np.packbits(bitmap),
        "new_rows": int(rows.size - drop.sum()),
        "duplicates": duplicates,
    }


# ------------------------------------------------------------------ driver


def _cluster_gpus() -> float:
    """GPUs the encoders can count on: those an autoscaler can add too (a GPU group scaled to zero)."""
    from qadwh_ray.capacity import cluster_capacity

    return cluster_capacity().reachable("GPU")


def _ensure_ray(address: str | None = None) -> None:
    import ray

    if not ray.is_initialized():
        from qadwh_ray.ray_logs import init_ray

        logs = init_ray(address=address or os.environ.get("RAY_ADDRESS") or None)
        print(f"Ray's own logs and the workers' output: {logs or 'the cluster head node'}", flush=True)


def _pause_before_publish() -> None:
    """Fault-injection hook for tests: with $QADWH_FAULT_PAUSE_BEFORE_PUBLISH
    set to a path, write that file and sleep (so a test can kill the build
    between writing its version and publishing it)."""
    marker = os.environ.get("QADWH_FAULT_PAUSE_BEFORE_PUBLISH")
    if marker:
        storage.write_bytes(marker, f"{os.getpid()}\n".encode())
        time.sleep(float(os.environ.get("QADWH_FAULT_PAUSE_SECONDS", "600")))


def _fold_update_log(store: IndexStore, manifest: Manifest) -> Manifest:
    """The API's live updates folded into the new version (indexing/fold.py)."""
    from qadwh_ray.indexing.fold import FoldError, fold_update_log

    pointer = store.read_pointer()
    previous = store.read_manifest(pointer.version, expected_sha256=pointer.manifest_sha256) if pointer else None
    try:
        return fold_update_log(store, manifest, previous)
    except FoldError as exc:
        raise IndexBuildError(str(exc)) from exc


def _checkpoint_record(payload: dict) -> dict:
    return {"uri": payload["uri"], "sha256": payload["sha256"], "model_config": payload["model_config"]}


def _bad_message(rec: dict) -> str:
    return f"bad input: {rec['reason']} (pass --skip-bad to skip and list such rows instead)"


def build_index(
    checkpoint: str,
    source: str,
    out: str,
    options: BuildOptions | None = None,
    *,
    incremental: bool = False,
    ray_address: str | None = None,
    checks: dict | None = None,
) -> BuildResult:
    """Encode ``source`` with ``checkpoint`` into a new version of the index at ``out``.

    ``incremental``: append the source's items to the current version (encoded
    with the same checkpoint, which must match the current version's) without
    re-encoding it. With ``options.publish`` the version becomes current once
    verified; otherwise it stays staged (see :mod:`qadwh_ray.indexing.reindex`).
    """
    import ray

    from qadwh_ray.model.checkpoint import load_payload
    from qadwh_ray.model.config import ModelConfig

    opts = options or BuildOptions()
    t0 = time.perf_counter()
    store = IndexStore(out)
    payload = load_payload(checkpoint)
    cfg = ModelConfig.from_dict(payload["model_config"])
    ckpt = _checkpoint_record(payload)
    del payload
    cfg.require_searchable(f"checkpoint {checkpoint}")

    base = None
    if incremental:
        from qadwh_ray.index.reader import IndexReader

        base_reader = IndexReader(store)
        base = base_reader.manifest
        if base.checkpoint.get("sha256") != ckpt["sha256"]:
            raise IndexBuildError(
                f"incremental build: checkpoint {ckpt['uri']} (SHA-256 {ckpt['sha256'][:12]}…) is not the one version "
                f"{base.version} was encoded with ({base.checkpoint.get('uri')}, {str(base.checkpoint.get('sha256'))[:12]}…); "
                "run a full re-index to change the model"
            )
        if base.code_bits != cfg.nbits:
            raise IndexBuildError(f"incremental build: {cfg.nbits}-bit model but version {base.version} holds {base.code_bits}-bit codes")

    plan: SourcePlan = plan_source(
        source,
        num_classes=cfg.num_classes,
        in_channels=cfg.in_channels,
        image_size=opts.image_size or cfg.image_size,
        split_seed=opts.split_seed,
        part=opts.part,
        split_uri=opts.split,
    )
    if plan.n_rows == 0:
        raise IndexBuildError(f"source {source} holds no rows")
    if base is not None and base.class_names is not None:
        names = list(base.class_names)  # the same checkpoint, so the same classes as the version appended to
    else:
        try:
            names = class_names_for(cfg.num_classes, plan.class_names)
        except ValueError as exc:
            raise IndexBuildError(f"source {source}: {exc} (the model has {cfg.num_classes} classes)") from None
    if base is not None:
        num_shards = base.num_shards
        if opts.shards is not None and opts.shards != num_shards:
            raise IndexBuildError(f"incremental build keeps the {num_shards} shards of version {base.version}; got --shards {opts.shards}")
    else:
        num_shards = int(opts.shards) if opts.shards else auto_num_shards(plan.n_rows)
    if num_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {num_shards}")
    version = opts.version or store.new_version_name()
    staging = store.staging_uri(version)
    if storage.exists(staging) or storage.exists(store.version_uri(version)):
        raise IndexBuildError(f"index version {version} already exists under {store.root}")
    parts_uri = storage.join(staging, PARTS_DIR)

    _ensure_ray(ray_address)
    gpus = _cluster_gpus()
    # GPUs asked for explicitly are requested even where none exist yet: the actors wait for them
    use_gpu = (opts.encoder_gpus or 0) > 0 or (opts.encoder_gpus is None and gpus > 0)
    num_gpus = (opts.encoder_gpus if opts.encoder_gpus else 1.0) if use_gpu else 0.0
    actors = opts.actors or (max(1, int(gpus)) if use_gpu else 2)
    threads = opts.threads or max(1, round(opts.encoder_cpus))
    read_tasks = opts.read_tasks or max(2, int(ray.cluster_resources().get("CPU", 2)) // 2)
    runtime_env = {"env_vars": dict(opts.worker_env)} if opts.worker_env else None
    ok = False
    try:
        ds = plan.dataset(block_rows=opts.block_rows, decode_cpus=opts.decode_cpus, runtime_env=runtime_env, tasks=read_tasks)
        ds = ds.map_batches(
            Encoder,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            batch_size=opts.batch_size,
            batch_format="numpy",
            fn_constructor_kwargs=dict(
                checkpoint_uri=ckpt["uri"],
                checkpoint_sha256=ckpt["sha256"],
                threads=threads,
                device="cuda" if use_gpu else "cpu",
                fault_marker=opts.fault_marker,
            ),
            num_cpus=opts.encoder_cpus,
            num_gpus=num_gpus,
            runtime_env=runtime_env,
            # Ray Data's defaults restart a dead encoder actor and retry its
            # batches (max_restarts=-1, max_task_retries=-1); read/write tasks
            # are retried by Ray core when their worker dies.
        )
        ds = ds.map_batches(
            _write_parts,
            compute=ray.data.TaskPoolStrategy(size=read_tasks),
            batch_size=None,
            batch_format="numpy",
            fn_kwargs=dict(parts_uri=parts_uri, num_shards=num_shards, nbits=cfg.nbits, labeled=plan.labeled),
            num_cpus=opts.decode_cpus,
            runtime_env=runtime_env,
        )
        t_pipe = time.perf_counter()
        parts: dict[int, list[str]] = {s: [] for s in range(num_shards)}
        bad_rows: list[dict] = []
        rows_in_parts = 0
        stream = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            for b in stream:
                for rec in b.to_pylist():
                    if rec["kind"] == "part":
                        parts[rec["shard"]].append(rec["file"])
                        rows_in_parts += rec["rows"]
                    else:
                        r = {"row": rec["_row"], "id": rec["id"], "source": rec["source"], "reason": rec["reason"]}
                        if not opts.skip_bad:
                            raise BadInputError(_bad_message(r))
                        bad_rows.append(r)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # on an early exit: shut the pipeline down before the staging area is discarded

        t_compact = time.perf_counter()
        # one compaction task per shard
        compact = ray.remote(compact_shard).options(
            num_cpus=opts.decode_cpus, max_retries=opts.max_retries, **({"runtime_env": runtime_env} if runtime_env else {})
        )
        refs = []
        for s in range(num_shards):
            base_arg = None
            if base is not None:
                info = base.shards[s]
                base_arg = {"uri": store.shard_uri(base.version, info.file), "info": info.to_dict()}
            refs.append(
                compact.remote(s, sorted(set(parts[s])), storage.join(staging, shard_file_name(s)), cfg.nbits, plan.n_rows, base_arg)
            )
        results = ray.get(refs)
        t_done = time.perf_counter()
        compacted = sum(r["new_rows"] + len(r["duplicates"]) for r in results)
        if compacted != rows_in_parts:
            raise IndexBuildError(f"the part files hold {compacted} rows but the pipeline reported {rows_in_parts}; not publishing")

        # exactly once: shard rows and bad rows are disjoint and cover every source row
        seen = np.zeros(plan.n_rows, dtype=bool)
        for r in results:
            bm = np.unpackbits(r["bitmap"], count=plan.n_rows).astype(bool)
            if (seen & bm).any():
                raise IndexBuildError(f"source row {int(np.flatnonzero(seen & bm)[0])} landed in two shards")
            seen |= bm
        bad_idx = np.asarray([r["row"] for r in bad_rows], dtype=np.int64)
        if bad_idx.size:
            if np.unique(bad_idx).size != bad_idx.size or seen[bad_idx].any():
                raise IndexBuildError("a bad source row was reported twice or also encoded")
            seen[bad_idx] = True
        if not seen.all():
            missing = np.flatnonzero(~seen)
            raise IndexBuildError(
                f"{missing.size} of {plan.n_rows} source rows never reached the index (first: row {int(missing[0])}); not publishing"
            )
        duplicates = [d for r in results for d in r["duplicates"]]
        if duplicates and not opts.skip_bad:
            raise BadInputError(_bad_message(min(duplicates, key=lambda d: d["row"])))
        bad_rows.extend(duplicates)
        bad_rows.sort(key=lambda r: r["row"])

        shards = [ShardInfo(**r["info"]) for r in sorted(results, key=lambda r: r["shard"])]
        n_items = sum(s.rows for s in shards)
        expected = (base.num_items if base else 0) + plan.n_rows - len(bad_rows)
        if n_items != expected:
            raise IndexBuildError(f"the shards hold {n_items} items, expected {expected}; not publishing")
        src_record = {**plan.describe(), "bad_rows": len(bad_rows), "added": plan.n_rows - len(bad_rows)}
        manifest = Manifest(
            version=version,
            code_bits=cfg.nbits,
            num_items=n_items,
            shards=shards,
            checkpoint=ckpt,
            created_at=utc_iso(),
            num_classes=cfg.num_classes if plan.labeled else None,
            class_names=names,
            sources=(list(base.sources) if base else []) + [src_record],
            bad_rows=bad_rows[:MAX_LISTED_BAD] + (list(base.bad_rows) if base else [])[: max(0, MAX_LISTED_BAD - len(bad_rows))],
            bad_row_count=len(bad_rows) + (base.bad_row_count if base else 0),
            parent=base.version if base else None,
            build={
                "seconds": round(time.perf_counter() - t0, 3),
                "stage_seconds": {
                    "plan": round(t_pipe - t0, 3),
                    "encode_stream": round(t_compact - t_pipe, 3),
                    "compact": round(t_done - t_compact, 3),
                },
                "incremental": bool(incremental),
                "rows_read": plan.n_rows,
                "actors": actors,
                "read_tasks": read_tasks,
                "threads_per_actor": threads,
                "device": "cuda" if use_gpu else "cpu",
                "options": opts.to_record(),
                "ray": ray.__version__,
                "python": platform.python_version(),
                "host": platform.node(),
            },
            checks=dict(checks or {}),
        )
        storage.delete(parts_uri, recursive=True, missing_ok=True)
        manifest = _fold_update_log(store, manifest)
        store.write_staged_manifest(manifest)
        store.verify(version, staged=True, manifest=manifest)
        deleted: dict = {}
        if opts.publish:
            _pause_before_publish()
            store.publish(version, manifest)
            deleted = store.cleanup(keep=opts.keep)
        ok = True
        return BuildResult(
            version=version,
            manifest=manifest,
            published=opts.publish,
            root=store.root,
            uri=store.version_uri(version) if opts.publish else staging,
            seconds=time.perf_counter() - t0,
            rows_read=plan.n_rows,
            bad_rows=len(bad_rows),
            deleted=deleted,
        )
    finally:
        if not ok:
            try:
                store.discard_staged(version)
            except Exception:  # noqa: BLE001 — keep the original error; cleanup() removes it later
                pass


def encode_images_locally(checkpoint: str, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Codes of ``images`` from a plain local encode (for comparisons)."""
    from qadwh_ray.model import encode, load_checkpoint

    return encode(load_checkpoint(checkpoint), images, batch_size=batch_size).codes

