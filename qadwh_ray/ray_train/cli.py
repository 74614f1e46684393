"""``qadwh train``: a Ray Train run from the command line (also used by ``jobs/train.py``).

Wire it into the main CLI with ``add_train_parser(subparsers)``. Exit status:
0 on success, 2 for a mistake the user can fix (bad config key or value,
cluster too small, unreachable storage, incompatible resume), 1 when training
itself failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from qadwh_ray.data.arguments import add_data_argument


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", help="YAML training config (see configs/); unknown keys are errors")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    add_data_argument(p)
    p.add_argument(
        "--storage",
        default=None,
        help="where runs and checkpoints go: a local path or s3://bucket/prefix (default: $QADWH_STORAGE or ~/qadwh_runs)",
    )
    p.add_argument("--name", default=None, help="run name; re-run with the same name to resume from its latest checkpoint")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures to recover from (from the latest checkpoint)")
    p.add_argument("--timeout", type=int, default=300, help="seconds before a stuck collective (all-gather, all-reduce) fails")
    p.add_argument(
        "--no-resource-check",
        action="store_true",
        help="skip the up-front check that the workers fit on the cluster (for autoscaling clusters)",
    )
    return p


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to the ``qadwh`` subcommands."""
    p = subparsers.add_parser("train", help="train on the Ray cluster (Ray Train, DDP over the configured workers)")
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from qadwh_ray.storage import StorageError
    from qadwh_ray.training.config import load_config

    try:
        cfg = load_config(args.config, args.set)
        cfg = cfg.replace(dataset=args.data) if args.data else cfg
        from qadwh_ray.ray_train.trainer import train_on_ray

        info = train_on_ray(
            cfg,
            storage_path=args.storage,
            run_name=args.name,
            max_failures=args.max_failures,
            collective_timeout_s=args.timeout,
            check_resources=not args.no_resource_check,
        )
    except (ValueError, FileNotFoundError, StorageError) as exc:
        print(f"qadwh train: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failed run (ray.train.TrainingFailedError and friends)
        import traceback

        traceback.print_exc()  # an unexpected failure: the operator needs the whole story in the job logs
        print(f"qadwh train: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(info.summary())
    print(f"run directory: {info.run_uri}")
    print(f"model checkpoint: {info.model_uri}")
    print(json.dumps({
        "run": info.run_name,
        "run_uri": info.run_uri,
        "checkpoint_uri": info.checkpoint_uri,
        "model_uri": info.model_uri,
        "steps": info.steps,
        "total_steps": info.total_steps,
        "start_step": info.start_step,
        "metrics": {k: v for k, v in info.metrics.items() if isinstance(v, (int, float, str))},
    }))
    return 0 if info.steps >= info.total_steps else 1
