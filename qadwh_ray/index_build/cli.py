"""Command-line front end of the indexing pipeline.

``add_index_parser(subparsers)`` adds to the ``qadwh`` command:

- ``qadwh index --checkpoint URI --source SPEC --out URI [--shards N] [--skip-bad]
  [--reindex | --incremental] ...``: build (and publish) a new index version;
- ``qadwh index-versions --root URI``: list versions, marking the current one;
- ``qadwh index-verify --root URI [--version V]``: check every shard's checksum;
- ``qadwh index-publish --root URI --version V``: point CURRENT at a published
  version after verifying it (roll back or forward);
- ``qadwh index-gc --root URI [--keep N]``: retention clean-up.

``jobs/index.py`` runs the same ``index`` command under ``ray job submit``.
Storage locations come from the arguments or the environment
(``QADWH_CHECKPOINT``, ``QADWH_DATA``, ``QADWH_INDEX_URI``).
Exit status: 0 done; 1 the build or a re-index check failed (current version
untouched, reason printed); 2 bad arguments or bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["add_index_parser", "add_build_arguments", "build_parser", "main", "cmd_index"]


def _env_default(name: str) -> str | None:
    return os.environ.get(name) or None


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to index")
    g.add_argument("--checkpoint", default=_env_default("QADWH_CHECKPOINT"),
                   help="model checkpoint file, or a directory (re-index: the newest checkpoint below it) [$QADWH_CHECKPOINT]")
    g.add_argument("--data", "--source", dest="source", default=_env_default("QADWH_DATA") or "fashion",
                   help="the dataset: an image folder (one sub-folder per class) or Parquet URI (local or s3://), "
                        "fashion, fashion-multilabel, or fashion-augmented:N (scale tests) [$QADWH_DATA, default fashion]")
    g.add_argument("--out", default=_env_default("QADWH_INDEX_URI"), help="index root URI (local path or s3://) [$QADWH_INDEX_URI]")
    g.add_argument("--shards", type=int, default=None, help="number of shards (default: one per million items)")
    g.add_argument("--skip-bad", action="store_true", help="skip bad rows (listed in the manifest) instead of failing")
    g.add_argument("--part", default=None, choices=["database", "query", "train", "all"],
                   help="which part of the dataset's split to index (default: the database part for fashion, "
                        "fashion-multilabel or a given --split; every image of any other dataset)")
    g.add_argument("--split", default=None, help="a saved split.json (default: the dataset's seeded split)")
    g.add_argument("--image-size", type=int, default=None, help="size images are read at (default: the model's input size)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the dataset's split")

    g = p.add_argument_group("versions")
    g.add_argument("--version", default=None, help="name of the new version (default: v<UTC time>-<random>)")
    g.add_argument("--no-publish", action="store_true", help="build and verify, but leave the version staged")
    g.add_argument("--keep", type=int, default=3, help="versions kept after publishing (the current one always)")
    g.add_argument("--reindex", action="store_true", help="nightly re-index: check the new version before publishing")
    g.add_argument("--incremental", action="store_true",
                   help="append the source's items to the current version, encoded with its checkpoint (implies --reindex)")

    g = p.add_argument_group("re-index checks")
    g.add_argument("--queries", default="auto", help="query set for the MAP check: auto (the query part of the dataset's split), "
                                                     "a Parquet/image-folder URI, or none")
    g.add_argument("--map-queries", type=int, default=1000, help="at most this many queries for MAP")
    g.add_argument("--map-top-k", type=int, default=None, help="MAP@k (default: MAP over the whole index)")
    g.add_argument("--map-tolerance", type=float, default=0.01, help="allowed absolute MAP drop vs the current version")
    g.add_argument("--sample-queries", type=int, default=16, help="queries compared with brute-force search")
    g.add_argument("--max-item-drop", type=float, default=0.0, help="fraction of items a re-index may lose vs the current version")

    g = p.add_argument_group("Ray")
    g.add_argument("--ray-address", default=None, help="Ray cluster to use (default: $RAY_ADDRESS, else a local one)")
    g.add_argument("--actors", type=int, default=None, help="encoder actors (default: #GPUs, else 2)")
    g.add_argument("--encoder-cpus", type=float, default=0.5, help="CPUs reserved per encoder actor (fractional is fine)")
    g.add_argument("--gpus", type=float, default=None, help="GPUs per encoder actor (default: 1 when the cluster has GPUs; 0 = CPU)")
    g.add_argument("--threads", type=int, default=None, help="torch threads per encoder actor")
    g.add_argument("--batch-size", type=int, default=512, help="images per encoder call")
    g.add_argument("--block-rows", type=int, default=2048, help="rows per read/decode batch")


def _none(v: str | None) -> str | None:
    return None if v is None or v.lower() in ("", "none") else v


def _options(args: argparse.Namespace):
    from qadwh_ray.index_build.pipeline import BuildOptions
    from qadwh_ray.index_build.reindex import CheckOptions

    b = BuildOptions(
        shards=args.shards,
        skip_bad=args.skip_bad,
        batch_size=args.batch_size,
        block_rows=args.block_rows,
        actors=args.actors,
        encoder_cpus=args.encoder_cpus,
        encoder_gpus=args.gpus,
        threads=args.threads,
        image_size=args.image_size,
        part=args.part,
        split=args.split,
        split_seed=args.split_seed,
        version=args.version,
        publish=not args.no_publish,
        keep=args.keep,
    )
    c = CheckOptions(
        queries=_none(args.queries),
        sample_queries=args.sample_queries,
        map_queries=args.map_queries,
        map_top_k=args.map_top_k,
        map_tolerance=args.map_tolerance,
        max_item_drop=args.max_item_drop,
    )
    return b, c


def cmd_index(args: argparse.Namespace) -> int:
    from qadwh_ray.index.format import IndexFormatError
    from qadwh_ray.index_build.errors import BadInputError, IndexBuildError
    from qadwh_ray.index_build.pipeline import build_index
    from qadwh_ray.index_build.reindex import CheckFailed, reindex

    prog = "qadwh index"
    if not args.out:
        print(f"{prog}: error: --out (or $QADWH_INDEX_URI) is required", file=sys.stderr)
        return 2
    if not args.checkpoint and not args.incremental:
        print(f"{prog}: error: --checkpoint (or $QADWH_CHECKPOINT) is required", file=sys.stderr)
        return 2
    bopts, copts = _options(args)
    try:
        if args.reindex or args.incremental:
            result = reindex(args.checkpoint, args.source, args.out, bopts, copts, incremental=args.incremental, ray_address=args.ray_address)
        else:
            from qadwh_ray.index_build.reindex import newest_checkpoint

            # a checkpoint file, a directory holding model.pt, or a training run's directory (its newest checkpoint)
            result = build_index(newest_checkpoint(args.checkpoint), args.source, args.out, bopts, ray_address=args.ray_address)
    except CheckFailed as exc:
        print(f"{prog}: re-index check failed, not published (the current version is unchanged): {exc.reason}", file=sys.stderr)
        return 1
    except BadInputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (IndexBuildError, IndexFormatError) as exc:
        print(f"{prog}: failed (the current version is unchanged): {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    m = result.manifest
    print(f"manifest: {result.uri.rstrip('/')}/manifest.json")
    if result.published:
        print(f"current version pointer: {result.root.rstrip('/')}/CURRENT -> {result.version}")
    if m.checks:
        print("checks: " + json.dumps(m.checks, default=str))
    if result.bad_rows:
        print(f"bad rows skipped: {result.bad_rows} (listed in the manifest)")
    if result.deleted and any(result.deleted.values()):
        print(f"retention: deleted {json.dumps(result.deleted)}")
    return 0


def _store(args):
    from qadwh_ray.index.store import IndexStore

    return IndexStore(args.root)


def cmd_versions(args: argparse.Namespace) -> int:
    store = _store(args)
    current = store.current_version()
    for v in store.list_versions():
        m = store.read_manifest(v)
        mark = "*" if v == current else " "
        print(f"{mark} {v}  items={m.num_items} shards={m.num_shards} bits={m.code_bits} created={m.created_at} checkpoint={m.checkpoint.get('uri')}")
    for v in store.list_staged():
        print(f"  {v}  (staged, not published)")
    if current is None:
        print(f"no current version at {store.root}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from qadwh_ray.index.format import IndexFormatError
    from qadwh_ray.index.reader import IndexReader

    try:
        r = IndexReader(args.root, args.version)
        m = r.verify()
    except (IndexFormatError, FileNotFoundError) as exc:
        print(f"qadwh index-verify: {exc}", file=sys.stderr)
        return 1
    print(f"{r.version}: {m.num_items} items in {m.num_shards} shards verified")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from qadwh_ray.index.format import IndexFormatError

    try:
        p = _store(args).set_current(args.version)
    except (IndexFormatError, FileNotFoundError) as exc:
        print(f"qadwh index-publish: {exc}", file=sys.stderr)
        return 1
    print(f"CURRENT -> {p.version}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    deleted = _store(args).cleanup(keep=args.keep, stale_after_s=args.stale_hours * 3600)
    print(json.dumps(deleted))
    return 0


def add_index_parser(subparsers) -> None:
    """Register ``index``, ``index-versions``, ``index-verify``, ``index-publish`` and ``index-gc``."""
    p = subparsers.add_parser("index", help="encode an image database into a new versioned index (Ray Data)")
    add_build_arguments(p)
    p.set_defaults(func=cmd_index)

    p = subparsers.add_parser("index-versions", help="list the versions of an index")
    p.add_argument("--root", required=True)
    p.set_defaults(func=cmd_versions)

    p = subparsers.add_parser("index-verify", help="verify every shard of a version (default: the current one)")
    p.add_argument("--root", required=True)
    p.add_argument("--version", default=None)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("index-publish", help="make a published version current again (rollback)")
    p.add_argument("--root", required=True)
    p.add_argument("--version", required=True)
    p.set_defaults(func=cmd_publish)

    p = subparsers.add_parser("index-gc", help="apply retention: delete old versions and abandoned builds")
    p.add_argument("--root", required=True)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--stale-hours", type=float, default=24.0)
    p.set_defaults(func=cmd_gc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qadwh")
    add_index_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
