"""Batch indexing on Ray Data: image database → packed codes → a versioned index.

:func:`build_index` runs these steps, one function each (everything streams;
the driver only sees small part records)::

    1. plan_build       read the checkpoint and the source's metadata; choose the shard
                        count and the version name (nothing is written yet)
    2. size_workers     encoder actors, GPUs and task concurrency for this cluster
    3. encode_to_parts  source read + decode/validate tasks (sources.py) → Encoder actor
                        pool (encoder.py; Ray Data restarts a dead actor and retries its
                        batches) → part-writer tasks (parts.py): rows grouped by home shard
                        under <root>/_staging/<version>/_parts/
    4. compact_shards   one task per shard merges its parts (+ the parent version's shard
                        when appending) into shard-NNNNN.parquet (parts.py, index/writer.py)
    5. account_rows     proves every source row landed exactly once: in a shard or as a bad row
    6. stage_version    the manifest (index/writer.py), the update log folded in (fold.py),
                        written to staging and every shard verified against it
    7. publish_version  verify, move, pointer last (index/store.py); old versions deleted

Without ``publish`` the version stays staged for the re-index checks (reindex.py).

Exactly once under retries: a part file's name is derived from the row
ordinals it holds, so a retried task rewrites the same object; the driver
uses only the part records of tasks that succeeded; compaction refuses a
row ordinal seen twice; the driver checks that the ordinals of all shards
and bad rows are disjoint and cover ``0 .. n_rows-1``.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from qadwh_ray import storage
from qadwh_ray.index.format import Manifest, ShardInfo, class_names_for, shard_file_name
from qadwh_ray.index.store import IndexStore
from qadwh_ray.index.writer import checkpoint_record, new_manifest
from qadwh_ray.index_build.encoder import Encoder
from qadwh_ray.index_build.errors import BadInputError, IndexBuildError
from qadwh_ray.index_build.faults import fault_point
from qadwh_ray.index_build.parts import PARTS_DIR, compact_shard, write_parts
from qadwh_ray.index_build.sources import SourcePlan, plan_source

if TYPE_CHECKING:
    from qadwh_ray.model.config import ModelConfig

__all__ = [
    "BuildOptions",
    "BuildResult",
    "BuildPlan",
    "Workers",
    "EncodedParts",
    "BadInputError",
    "IndexBuildError",
    "Encoder",
    "build_index",
    "plan_build",
    "size_workers",
    "encode_to_parts",
    "compact_shards",
    "account_rows",
    "stage_version",
    "publish_version",
    "auto_num_shards",
    "ITEMS_PER_SHARD",
]

ITEMS_PER_SHARD = 1_000_000  # --shards default: one shard per million items


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

    def to_record(self) -> dict:
        d = asdict(self)
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


@dataclass
class BuildPlan:
    """What a build will do, decided before any work starts."""

    checkpoint: dict  # the manifest's checkpoint record (index/writer.checkpoint_record)
    config: "ModelConfig"
    source: SourcePlan
    base: Manifest | None  # the version an incremental build appends to
    class_names: list
    num_shards: int
    version: str
    staging: str  # the version's staging directory

    @property
    def parts_uri(self) -> str:
        return storage.join(self.staging, PARTS_DIR)


@dataclass
class Workers:
    """How the pipeline's actors and tasks are sized on this cluster."""

    device: str  # "cuda" or "cpu"
    num_gpus: float  # per encoder actor
    actors: int  # encoder actor pool max size
    threads: int  # torch threads per encoder actor
    read_tasks: int  # concurrent read/decode and part-write tasks
    runtime_env: dict | None


@dataclass
class EncodedParts:
    """What the encode stream reported: part files by home shard, bad rows, rows written."""

    files: dict[int, list[str]]
    bad_rows: list[dict]
    rows: int


def auto_num_shards(n_items: int) -> int:
    return max(1, math.ceil(n_items / ITEMS_PER_SHARD))


def _bad_message(rec: dict) -> str:
    return f"bad input: {rec['reason']} (pass --skip-bad to skip and list such rows instead)"


# ------------------------------------------------------------------ 1. plan


def plan_build(checkpoint: str, source: str, store: IndexStore, opts: BuildOptions, incremental: bool) -> BuildPlan:
    """Step 1: read the checkpoint and the source's metadata; choose shards and the version name (nothing written)."""
    from qadwh_ray.model.checkpoint import load_payload
    from qadwh_ray.model.config import ModelConfig

    ckpt = checkpoint_record(load_payload(checkpoint))
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    cfg.require_searchable(f"checkpoint {checkpoint}")
    base = _incremental_base(store, ckpt, cfg) if incremental else None
    plan = plan_source(
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
    return BuildPlan(ckpt, cfg, plan, base, names, num_shards, version, staging)


def _incremental_base(store: IndexStore, ckpt: dict, cfg: "ModelConfig") -> Manifest:
    """The current version an incremental build appends to: its codes must come from the same checkpoint."""
    from qadwh_ray.index.reader import IndexReader

    base = IndexReader(store).manifest
    if base.checkpoint.get("sha256") != ckpt["sha256"]:
        raise IndexBuildError(
            f"incremental build: checkpoint {ckpt['uri']} (SHA-256 {ckpt['sha256'][:12]}…) is not the one version "
            f"{base.version} was encoded with ({base.checkpoint.get('uri')}, {str(base.checkpoint.get('sha256'))[:12]}…); "
            "run a full re-index to change the model"
        )
    if base.code_bits != cfg.nbits:
        raise IndexBuildError(f"incremental build: {cfg.nbits}-bit model but version {base.version} holds {base.code_bits}-bit codes")
    return base


# ------------------------------------------------------------ 2. workers


def _ensure_ray(address: str | None = None) -> None:
    import ray

    if not ray.is_initialized():
        from qadwh_ray.ray_logs import init_ray

        logs = init_ray(address=address or os.environ.get("RAY_ADDRESS") or None)
        print(f"Ray's own logs and the workers' output: {logs or 'the cluster head node'}", flush=True)


def size_workers(opts: BuildOptions) -> Workers:
    """Step 2: size the encoder pool and the task concurrency for the connected cluster."""
    import ray

    from qadwh_ray.capacity import cluster_capacity

    gpus = cluster_capacity().reachable("GPU")  # counts GPUs an autoscaler can add (a GPU group scaled to zero)
    # GPUs asked for explicitly are requested even where none exist yet: the actors wait for them
    use_gpu = (opts.encoder_gpus or 0) > 0 or (opts.encoder_gpus is None and gpus > 0)
    return Workers(
        device="cuda" if use_gpu else "cpu",
        num_gpus=(opts.encoder_gpus if opts.encoder_gpus else 1.0) if use_gpu else 0.0,
        actors=opts.actors or (max(1, int(gpus)) if use_gpu else 2),
        threads=opts.threads or max(1, round(opts.encoder_cpus)),
        read_tasks=opts.read_tasks or max(2, int(ray.cluster_resources().get("CPU", 2)) // 2),
        runtime_env={"env_vars": dict(opts.worker_env)} if opts.worker_env else None,
    )


# ------------------------------------------------------------- 3. encode


def encode_to_parts(plan: BuildPlan, opts: BuildOptions, workers: Workers) -> EncodedParts:
    """Step 3: stream the source through the encoder actors into part files, collecting their records."""
    import ray

    ds = plan.source.dataset(
        block_rows=opts.block_rows, decode_cpus=opts.decode_cpus, runtime_env=workers.runtime_env, tasks=workers.read_tasks
    )
    # Ray Data's defaults (max_restarts=-1, max_task_retries=-1) restart a dead actor and retry its batches
    ds = ds.map_batches(
        Encoder,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers.actors),
        batch_size=opts.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs=dict(
            checkpoint_uri=plan.checkpoint["uri"],
            checkpoint_sha256=plan.checkpoint["sha256"],
            threads=workers.threads,
            device=workers.device,
        ),
        num_cpus=opts.encoder_cpus,
        num_gpus=workers.num_gpus,
        runtime_env=workers.runtime_env,
    )
    ds = ds.map_batches(
        write_parts,
        compute=ray.data.TaskPoolStrategy(size=workers.read_tasks),
        batch_size=None,
        batch_format="numpy",
        fn_kwargs=dict(parts_uri=plan.parts_uri, num_shards=plan.num_shards, nbits=plan.config.nbits, labeled=plan.source.labeled),
        num_cpus=opts.decode_cpus,
        runtime_env=workers.runtime_env,
    )
    out = EncodedParts(files={s: [] for s in range(plan.num_shards)}, bad_rows=[], rows=0)
    stream = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for b in stream:
            for rec in b.to_pylist():
                if rec["kind"] == "part":
                    out.files[rec["shard"]].append(rec["file"])
                    out.rows += rec["rows"]
                else:
                    r = {"row": rec["_row"], "id": rec["id"], "source": rec["source"], "reason": rec["reason"]}
                    if not opts.skip_bad:
                        raise BadInputError(_bad_message(r))
                    out.bad_rows.append(r)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # on an early exit: shut the pipeline down before the staging area is discarded
    return out


# ------------------------------------------------------------ 4. compact


def compact_shards(store: IndexStore, plan: BuildPlan, opts: BuildOptions, workers: Workers, parts: EncodedParts) -> list[dict]:
    """Step 4: one compaction task per shard writes its final shard file; returns their records by shard."""
    import ray

    compact = ray.remote(compact_shard).options(
        num_cpus=opts.decode_cpus, max_retries=opts.max_retries, **({"runtime_env": workers.runtime_env} if workers.runtime_env else {})
    )
    refs = []
    for s in range(plan.num_shards):
        base_arg = None
        if plan.base is not None:
            info = plan.base.shards[s]
            base_arg = {"uri": store.shard_uri(plan.base.version, info.file), "info": info.to_dict()}
        out_uri = storage.join(plan.staging, shard_file_name(s))
        refs.append(compact.remote(s, sorted(set(parts.files[s])), out_uri, plan.config.nbits, plan.source.n_rows, base_arg))
    return sorted(ray.get(refs), key=lambda r: r["shard"])


# ------------------------------------------------------------ 5. account


def account_rows(plan: BuildPlan, parts: EncodedParts, compacted: list[dict], skip_bad: bool) -> tuple[list[ShardInfo], list[dict]]:
    """Step 5: prove every source row landed exactly once (in a shard or as a bad row);
    returns the shards' manifest entries and all bad rows (duplicate ids included), by row."""
    n_rows = plan.source.n_rows
    rows_compacted = sum(r["new_rows"] + len(r["duplicates"]) for r in compacted)
    if rows_compacted != parts.rows:
        raise IndexBuildError(f"the part files hold {rows_compacted} rows but the pipeline reported {parts.rows}; not publishing")
    seen = np.zeros(n_rows, dtype=bool)
    for r in compacted:
        bm = np.unpackbits(r["bitmap"], count=n_rows).astype(bool)
        if (seen & bm).any():
            raise IndexBuildError(f"source row {int(np.flatnonzero(seen & bm)[0])} landed in two shards")
        seen |= bm
    bad_rows = list(parts.bad_rows)
    bad_idx = np.asarray([r["row"] for r in bad_rows], dtype=np.int64)
    if bad_idx.size:
        if np.unique(bad_idx).size != bad_idx.size or seen[bad_idx].any():
            raise IndexBuildError("a bad source row was reported twice or also encoded")
        seen[bad_idx] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise IndexBuildError(
            f"{missing.size} of {n_rows} source rows never reached the index (first: row {int(missing[0])}); not publishing"
        )
    duplicates = [d for r in compacted for d in r["duplicates"]]
    if duplicates and not skip_bad:
        raise BadInputError(_bad_message(min(duplicates, key=lambda d: d["row"])))
    bad_rows.extend(duplicates)
    bad_rows.sort(key=lambda r: r["row"])
    shards = [ShardInfo(**r["info"]) for r in compacted]
    n_items = sum(s.rows for s in shards)
    expected = (plan.base.num_items if plan.base else 0) + n_rows - len(bad_rows)
    if n_items != expected:
        raise IndexBuildError(f"the shards hold {n_items} items, expected {expected}; not publishing")
    return shards, bad_rows


# -------------------------------------------------------------- 6. stage


def stage_version(store: IndexStore, plan: BuildPlan, shards: list[ShardInfo], bad_rows: list[dict], build: dict,
                  checks: dict | None) -> Manifest:
    """Step 6: write the manifest, with the update log folded in, into staging and verify every shard against it."""
    from qadwh_ray.index_build.fold import FoldError, fold_update_log

    added = plan.source.n_rows - len(bad_rows)
    manifest = new_manifest(
        plan.version,
        code_bits=plan.config.nbits,
        shards=shards,
        checkpoint=plan.checkpoint,
        num_classes=plan.config.num_classes if plan.source.labeled else None,
        class_names=plan.class_names,
        sources=[{**plan.source.describe(), "bad_rows": len(bad_rows), "added": added}],
        build=build,
        bad_rows=bad_rows,
        parent=plan.base,
        checks=checks,
    )
    storage.delete(plan.parts_uri, recursive=True, missing_ok=True)
    pointer = store.read_pointer()
    previous = store.read_manifest(pointer.version, expected_sha256=pointer.manifest_sha256) if pointer else None
    try:
        manifest = fold_update_log(store, manifest, previous)
    except FoldError as exc:
        raise IndexBuildError(str(exc)) from exc
    store.write_staged_manifest(manifest)
    store.verify(plan.version, staged=True, manifest=manifest)
    return manifest


# ------------------------------------------------------------ 7. publish


def publish_version(store: IndexStore, manifest: Manifest, keep: int) -> dict:
    """Step 7: make a staged, verified version current (verify, move, pointer last);
    returns the old versions deleted beyond ``keep``."""
    fault_point("before-publish")
    store.publish(manifest.version, manifest)
    return store.cleanup(keep=keep)


# ------------------------------------------------------------------ build


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
    verified; otherwise it stays staged (see :mod:`qadwh_ray.index_build.reindex`).
    """
    opts = options or BuildOptions()
    t0 = time.perf_counter()
    store = IndexStore(out)
    plan = plan_build(checkpoint, source, store, opts, incremental)
    _ensure_ray(ray_address)
    workers = size_workers(opts)
    ok = False
    try:
        t_encode = time.perf_counter()
        parts = encode_to_parts(plan, opts, workers)
        t_compact = time.perf_counter()
        compacted = compact_shards(store, plan, opts, workers, parts)
        t_done = time.perf_counter()
        shards, bad_rows = account_rows(plan, parts, compacted, opts.skip_bad)
        stage_seconds = {"plan": t_encode - t0, "encode_stream": t_compact - t_encode, "compact": t_done - t_compact}
        build = _build_record(opts, workers, plan, incremental, time.perf_counter() - t0, stage_seconds)
        manifest = stage_version(store, plan, shards, bad_rows, build, checks)
        deleted = publish_version(store, manifest, opts.keep) if opts.publish else {}
        ok = True
        return BuildResult(
            version=plan.version,
            manifest=manifest,
            published=opts.publish,
            root=store.root,
            uri=store.version_uri(plan.version) if opts.publish else plan.staging,
            seconds=time.perf_counter() - t0,
            rows_read=plan.source.n_rows,
            bad_rows=len(bad_rows),
            deleted=deleted,
        )
    finally:
        if not ok:
            try:
                store.discard_staged(plan.version)
            except Exception:  # noqa: BLE001 — keep the original error; cleanup() removes it later
                pass


def _build_record(opts: BuildOptions, workers: Workers, plan: BuildPlan, incremental: bool, seconds: float, stage_seconds: dict) -> dict:
    """The manifest's ``build`` field: how long, with what, where."""
    import ray

    return {
        "seconds": round(seconds, 3),
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
        "incremental": bool(incremental),
        "rows_read": plan.source.n_rows,
        "actors": workers.actors,
        "read_tasks": workers.read_tasks,
        "threads_per_actor": workers.threads,
        "device": workers.device,
        "options": opts.to_record(),
        "ray": ray.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
