"""``qadwh nightly`` (and ``jobs/nightly.py``): retrain (optional) → re-index →
verify → publish → service swap.

    qadwh nightly --out s3://b/index --source s3://b/db --checkpoint s3://b/runs/qadwh-48 \\
        --service-url http://qadwh-serve-svc:8000 --service-token-env QADWH_SERVE_TOKEN
    qadwh nightly --retrain --train-config configs/fashion-compact.yaml --train-storage s3://b/runs \\
        --run-name nightly-20261124 --out s3://b/index --source s3://b/db

The index arguments are those of ``qadwh index`` (``--out`` is the index root;
checks always run). Storage locations may come from the environment
(``QADWH_CHECKPOINT``, ``QADWH_DATA``, ``QADWH_INDEX_URI``,
``QADWH_STORAGE``, ``QADWH_SERVICE_URL``). Exit status: 0 published (and
swapped); 1 a stage failed — the previous version still serves, reason
printed; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["add_nightly_arguments", "add_nightly_parser", "cmd_nightly"]


def add_nightly_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from qadwh_ray.index_build.cli import add_build_arguments

    add_build_arguments(p)
    g = p.add_argument_group("retrain first (Ray Train)")
    g.add_argument("--retrain", action="store_true", help="train a model first and index with it")
    g.add_argument("--train-config", help="YAML training config for --retrain")
    g.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE", help="override a training config key")
    g.add_argument("--train-storage", default=os.environ.get("QADWH_STORAGE") or None,
                   help="where training runs go (local path or s3://) [$QADWH_STORAGE]")
    g.add_argument("--run-name", default=None, help="training run name (reuse it to resume)")
    g = p.add_argument_group("the running service")
    g.add_argument("--service-url", default=os.environ.get("QADWH_SERVICE_URL") or None,
                   help="the search service to swap (wait until it answers from the new version) [$QADWH_SERVICE_URL]")
    g.add_argument("--service-token-env", default="QADWH_SERVE_TOKEN",
                   help="environment variable holding the service's bearer token (if it requires one)")
    g.add_argument("--swap-timeout", type=float, default=300.0, help="seconds to wait for the service to swap")
    return p


def add_nightly_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("nightly", help="nightly pipeline: retrain (optional), re-index, verify, publish, swap")
    add_nightly_arguments(p)
    p.set_defaults(func=cmd_nightly)
    return p


def cmd_nightly(args: argparse.Namespace) -> int:
    from qadwh_ray.index.format import IndexFormatError
    from qadwh_ray.index_build.cli import _options
    from qadwh_ray.index_build.pipeline import BadInputError, IndexBuildError
    from qadwh_ray.pipelines.nightly import NightlyFailed, NightlyOptions, describe_outputs, run_nightly

    prog = "qadwh nightly"
    if not args.out:
        print(f"{prog}: error: --out (the index root, or $QADWH_INDEX_URI) is required", file=sys.stderr)
        return 2
    try:
        bopts, copts = _options(args)
        train_cfg = None
        if args.retrain:
            from qadwh_ray.training.config import load_config

            # retrain on the dataset being indexed, with the split the index build uses
            from qadwh_ray.index_build.sources import dataset_of

            train_cfg = load_config(args.train_config, args.train_set).replace(
                dataset=dataset_of(args.source), split=args.split, split_seed=args.split_seed)
        opts = NightlyOptions(
            index=args.out, source=args.source, checkpoint=args.checkpoint, incremental=args.incremental,
            retrain=args.retrain, train_config=train_cfg, train_storage=args.train_storage, run_name=args.run_name,
            service_url=args.service_url, service_token=os.environ.get(args.service_token_env) or None,
            swap_timeout_s=args.swap_timeout, build=bopts, checks=copts, ray_address=args.ray_address,
        )
        result = run_nightly(opts, log=lambda m: print(m, flush=True))
    except NightlyFailed as exc:
        print(f"{prog}: failed at {exc.stage} (the previous version still serves): {exc.reason}", file=sys.stderr)
        return 1
    except BadInputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (IndexBuildError, IndexFormatError) as exc:
        print(f"{prog}: failed (the previous version still serves): {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    for line in describe_outputs(result, args.out):
        print(line)
    print(json.dumps({"version": result.version, "previous": result.previous_version, "checkpoint": result.checkpoint,
                      "swapped": result.swapped, "train_run": result.train_run, "checks": result.checks}, default=str))
    return 0
