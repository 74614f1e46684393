"""``qadwh`` — one command-line entry point with subcommands.

Every subcommand is a function taking parsed arguments; errors a user can fix
(bad config, missing file) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from qadwh_ray import storage
from qadwh_ray.data.arguments import add_data_argument
from qadwh_ray.serving.cluster_env import add_ingress_argument


DEFAULT_METHODS = "ninh,qadwh,qadwh-ref"


def _bits(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bits expects comma-separated integers, got {text!r}") from None


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML training config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    add_data_argument(p)


def load_run_config(args: argparse.Namespace, overrides: list[str] | None = None):
    """The config file + --set overrides, with --data as the dataset."""
    from qadwh_ray.training.config import load_config

    cfg = load_config(args.config, args.set if overrides is None else overrides)
    return cfg.replace(dataset=args.data) if getattr(args, "data", None) else cfg


def _add_on_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on", choices=("validation", "test"), default="validation",
                   help="rank the validation queries against the validation database (choose settings here), or the "
                        "test queries against the database (score each final setting once); default validation")


def cmd_data(args: argparse.Namespace) -> int:
    from qadwh_ray.training.datasets import load_retrieval_data

    data = load_retrieval_data(args.data, args.split_seed, args.val_fraction)
    print(data.summary())
    val = load_retrieval_data(args.data, args.split_seed, args.val_fraction, evaluate_on="validation")
    print(f"settings are chosen on {len(val.query_ids)} validation queries against a validation database of "
          f"{len(val.db_ids)} (both from the database part, disjoint from the test queries and the training images)")
    per_class = data.query_labels.sum(axis=0).tolist()
    print("query items per class: " + ", ".join(f"{n} {c}" for n, c in zip(data.class_names, per_class)))
    if args.out:
        uri = storage.join(args.out, "split.json")
        data.split.save(uri)
        print(f"split saved to {uri}")
    return 0


def cmd_train_local(args: argparse.Namespace) -> int:
    from qadwh_ray.training.local import train_local

    cfg = load_run_config(args)
    ckpt = storage.join(args.out, "model.pt")
    result = train_local(cfg, checkpoint_uri=ckpt, progress=not args.quiet)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; checkpoint: {ckpt}")
    return 0


def _methods(args: argparse.Namespace, default: str) -> list[str]:
    """``--methods``, or the former ``--forms`` (plain, paper, reference) as the methods they named."""
    from qadwh_ray.training.methods import LEGACY_TRIPLET_FORMS, get_method

    if getattr(args, "forms", None):
        bad = [f for f in args.forms.split(",") if f not in LEGACY_TRIPLET_FORMS]
        if bad:
            raise ValueError(f"--forms {bad[0]!r}: the forms were {', '.join(LEGACY_TRIPLET_FORMS)}; use --methods")
        return [LEGACY_TRIPLET_FORMS[f] for f in args.forms.split(",")]
    names = [m.strip() for m in (args.methods or default).split(",") if m.strip()]
    for m in names:
        get_method(m)
    return names


def _add_methods_argument(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    from qadwh_ray.training.methods import METHODS

    p.add_argument("--methods", default=default, help=f"{what}, comma-separated: {', '.join(METHODS)}")
    p.add_argument("--forms", help=argparse.SUPPRESS)  # the former name: plain, paper, reference


def _ablation(args: argparse.Namespace, methods: list[str]) -> int:
    from qadwh_ray.evaluation.ablation import run_ablation, summarize_order
    from qadwh_ray.evaluation.evaluate import format_table

    cfg = load_run_config(args)
    start = time.perf_counter()
    rows, runs = run_ablation(cfg, args.bits, methods, out_dir=args.out, progress=not args.quiet, export_dir=args.export,
                              on=args.on)
    print()
    print(f"Ablation on {cfg.dataset}, {args.on} queries (split seed {cfg.split_seed}, backbone {cfg.backbone}, "
          f"{cfg.epochs} epochs):")
    print(format_table(rows))
    for line in summarize_order(rows):
        print(line)
    print("training seconds: " + ", ".join(f"{r['method']}@{r['nbits']} {r['train_seconds']}" for r in runs))
    print(f"total {time.perf_counter() - start:.0f} s; report and checkpoints in {args.out}")
    return 0


def cmd_evaluate_local(args: argparse.Namespace) -> int:
    return _ablation(args, _methods(args, DEFAULT_METHODS))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The ablation table from trained checkpoints (e.g. written by `qadwh train`)."""
    from qadwh_ray.evaluation.ablation import evaluate_checkpoints, summarize_order
    from qadwh_ray.evaluation.evaluate import format_paired_table, format_table, paired_comparisons

    cfg = load_run_config(args)
    flip = {"on": True, "off": False, "checkpoint": None}[args.flip_average]
    rows = evaluate_checkpoints(args.checkpoints, args.bits, _methods(args, DEFAULT_METHODS), cfg, out_dir=args.out,
                                export_dir=args.export, flip_average=flip, on=args.on)
    print(f"On the {args.on} queries and database of {cfg.dataset} (split seed {cfg.split_seed}):")
    print(format_table(rows))
    print()
    print("Paired differences over the same queries (95% bootstrap intervals; an interval holding 0 is a tie):")
    print(format_paired_table(paired_comparisons(rows)))
    for line in summarize_order(rows):
        print(line)
    print(f"report in {args.out}" + (f"; ranked codes exported to {args.export}" if args.export else ""))
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    """Mean MAP over training seeds with 95% t intervals, and the paired differences, from several reports."""
    import json

    from qadwh_ray.evaluation.ablation import report_seed
    from qadwh_ray.evaluation.seeds import format_seed_tables, seed_differences, seed_means

    evaluations: dict[int, list[dict]] = {}
    sets = set()
    for uri in args.reports:
        try:
            report = json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            raise FileNotFoundError(f"report not found: {uri}") from None
        except ValueError as exc:
            raise ValueError(f"{uri} is not a JSON report: {exc}") from None
        seed = report_seed(report, uri)
        if seed in evaluations:
            raise ValueError(f"{uri}: a second report for training seed {seed}")
        evaluations[seed] = report["metrics"]
        sets.add((report.get("dataset"), report.get("evaluated_on")))
    if len(sets) != 1:
        raise ValueError(f"the reports rank different query sets: {sorted(map(str, sets))}")
    dataset, on = sets.pop()
    print(f"{dataset}, {on} queries; training seeds {sorted(evaluations)}:")
    print(format_seed_tables(seed_means(evaluations), seed_differences(evaluations, args.reference)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: train (Ray Train) → evaluate → index (Ray Data) → serve (Ray Serve) → sample queries."""
    from qadwh_ray.pipelines.end_to_end import MainJobOptions, keep_serving, run_main_job, stop_service

    overrides = list(args.set) if args.full else [f"epochs={args.epochs}", *args.set]
    methods = _methods(args, "ninh,qadwh,qadwh-ref" if args.full else "ninh,qadwh")
    opts = MainJobOptions(
        base=load_run_config(args, overrides), bits=args.bits, methods=methods, out=args.out, shards=args.shards,
        ray_address=args.address, host=args.host, port=args.port, ingress=args.ingress,
        progress=not args.quiet, export_dir=args.export,
    )

    def log(msg: str) -> None:
        print(msg, flush=True)

    run_main_job(opts, log)
    if args.exit_after_queries:
        stop_service(opts.app_name)
        log("service stopped (--exit-after-queries)")
    else:
        keep_serving(log, opts.app_name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qadwh", description="Query-adaptive Deep Weighted Hashing on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="describe a dataset, make its seeded split, print a summary")
    add_data_argument(p, default="fashion")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--out", help="directory or URI to save split.json in")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train-local", help="train one model in this process (no Ray)")
    _add_config_args(p)
    p.add_argument("--out", default="runs/local", help="directory or URI for model.pt")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_local)

    p = sub.add_parser("evaluate-local", help="train NINH / QaDWH (paper, reference) locally and print the ablation table")
    _add_config_args(p)
    p.add_argument("--bits", type=_bits, default=[12, 24, 32, 48])
    _add_methods_argument(p, DEFAULT_METHODS, "methods to train and rank")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--export", help="also write what was ranked (codes, weights, labels) as Parquet here")
    _add_on_argument(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate_local)

    p = sub.add_parser("evaluate", help="the ablation table (with LSH/ITQ baselines) from trained checkpoints")
    _add_config_args(p)
    p.add_argument("--checkpoints", required=True, help="directory/URI holding <method>-<bits>.pt (e.g. qadwh-48.pt)")
    p.add_argument("--bits", type=_bits, default=[12, 24, 32, 48])
    _add_methods_argument(p, DEFAULT_METHODS, "methods whose checkpoints to rank")
    p.add_argument("--out", default="runs/evaluate")
    p.add_argument("--export", help="also write what was ranked (codes, weights, labels) as Parquet here")
    p.add_argument("--flip-average", choices=("checkpoint", "on", "off"), default="checkpoint",
                   help="encode as the mean over each image and its mirror: as the checkpoint says, or on / off")
    _add_on_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("seeds", help="mean MAP over training seeds (95%% t intervals) from one evaluation report per seed")
    p.add_argument("reports", nargs="+", help="ablation.json files written by qadwh evaluate --out, one per training seed")
    p.add_argument("--reference", default="QaDWH", help="the ranking every other is paired with (default QaDWH)")
    p.set_defaults(func=cmd_seeds)

    p = sub.add_parser("run", help="the main job: train (Ray Train), evaluate, index (Ray Data), serve (Ray Serve)")
    _add_config_args(p)
    p.add_argument("--full", action="store_true",
                   help="full-length run: 12/24/32/48 bits, NINH + QaDWH + reference form, the config's epochs")
    p.add_argument("--epochs", type=int, default=8, help="epochs per model in the quick run (ignored with --full)")
    p.add_argument("--bits", type=_bits, default=None, help="code lengths (default 48; --full: 12,24,32,48)")
    _add_methods_argument(p, None, "methods to train (default ninh,qadwh; --full adds qadwh-ref)")
    p.add_argument("--out", default="runs/main", help="directory or URI for runs, checkpoints, report and index")
    p.add_argument("--shards", type=int, default=2, help="index shards (one serving deployment each)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host of the service (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the service")
    add_ingress_argument(p)
    p.add_argument("--exit-after-queries", action="store_true",
                   help="shut the service down after the sample queries instead of serving until Ctrl-C")
    p.add_argument("--export", help="also write what was ranked as Parquet here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    # The Ray stages: each package registers its own subcommands (imports stay light).
    from qadwh_ray.client import add_search_parser
    from qadwh_ray.index_build.cli import add_index_parser
    from qadwh_ray.pipelines.cli import add_nightly_parser
    from qadwh_ray.serving.cli import add_serve_parser
    from qadwh_ray.ray_train.cli import add_train_parser

    add_train_parser(sub)
    add_index_parser(sub)
    add_serve_parser(sub)
    add_nightly_parser(sub)
    add_search_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run" and args.bits is None:
        args.bits = [12, 24, 32, 48] if args.full else [48]
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"qadwh {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
