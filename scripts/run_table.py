"""The comparison table, resumably: every method, both datasets, 12/24/32/48 bits, 3-5 seeds, one budget.

    nice -n 15 .venv/bin/python scripts/run_table.py --out runs/table > runs/table.log 2>&1 &

Cells run in order of importance (Fashion-MNIST before the multi-label set; 12 and 48
bits with seeds 0-2 first, then 24 and 32 bits, then seeds 3-4 of QaDWH and both
NINHs at 12 and 48 bits). Each model is written once to
``<out>/<dataset>/<bits>b/seed<s>/<method>-<bits>.pt`` and each evaluation to
``.../seed<s>/{validation,test}/ablation.{json,md}`` (the test one with its Parquet
export of codes, weights and per-query AP); whatever exists is skipped, so
running the command again resumes where a killed run stopped (a model killed
mid-training is retrained). After each cell the over-seed tables are rewritten
to ``<out>/summary-<dataset>-<on>.md``. One torch thread throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402

from qadwh_ray.evaluation.ablation import checkpoint_name, evaluate_checkpoints  # noqa: E402
from qadwh_ray.training.config import load_config  # noqa: E402
from qadwh_ray.training.datasets import limit_training, load_retrieval_data  # noqa: E402
from qadwh_ray.training.local import train_local  # noqa: E402
from qadwh_ray.evaluation.seeds import format_seed_tables, seed_differences, seed_means  # noqa: E402

ALL = ["qadwh", "ninh", "ninh-paper", "isdh", "doh", "adsq"]
CORE = ["qadwh", "ninh", "ninh-paper"]  # the five-seed methods at 12 and 48 bits


def plan(datasets: list[str], bits: list[int]) -> list[tuple[str, int, int, list[str]]]:
    """(dataset, bits, seed, methods) cells in the order they run."""
    cells = []
    for ds in datasets:
        ends = [b for b in bits if b in (12, 48)]
        middle = [b for b in bits if b not in (12, 48)]
        cells += [(ds, b, s, ALL) for b in ends for s in range(3)]
        cells += [(ds, b, s, ALL) for b in middle for s in range(3)]
        cells += [(ds, b, s, CORE) for b in ends for s in (3, 4)]
    return cells


def log(out: Path, msg: str) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(out / "progress.log", "a") as f:
        f.write(line + "\n")


def summarize(out: Path, dataset: str, on: str) -> None:
    """Over-seed tables of every code length evaluated so far, for one dataset and query set."""
    parts = []
    for bdir in sorted((out / dataset).glob("*b"), key=lambda p: int(p.name[:-1])):
        ev = {}
        for rep in sorted(bdir.glob(f"seed*/{on}/ablation.json")):
            ev[int(rep.parent.parent.name[4:])] = json.loads(rep.read_text())["metrics"]
        if ev:
            parts.append(f"### {bdir.name[:-1]} bits ({len(ev)} seeds evaluated: {sorted(ev)})\n\n"
                         + format_seed_tables(seed_means(ev), seed_differences(ev)))
    (out / f"summary-{dataset}-{on}.md").write_text(
        f"# {dataset}, {on} queries: MAP over training seeds (95% t intervals)\n\n" + "\n\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/table-budget.yaml")
    p.add_argument("--out", default="runs/table")
    p.add_argument("--datasets", default="fashion,fashion-multilabel")
    p.add_argument("--bits", default="12,24,32,48")
    p.add_argument("--max-cells", type=int, default=None, help="stop after this many cells (smoke runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (smoke runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = plan(args.datasets.split(","), [int(b) for b in args.bits.split(",")])[: args.max_cells]
    log(out, f"{len(cells)} cells, {sum(len(c[3]) for c in cells)} models; config {args.config} {args.set}")
    data: dict = {}
    for dataset, nbits, seed, methods in cells:
        base = load_config(args.config, [f"dataset={dataset}", f"nbits={nbits}", f"seed={seed}", *args.set])
        cell = out / dataset / f"{nbits}b" / f"seed{seed}"
        cell.mkdir(parents=True, exist_ok=True)
        for method in methods:
            ck = cell / checkpoint_name(method, nbits)
            if ck.exists():
                continue
            if ("train", dataset) not in data:
                full = load_retrieval_data(dataset, base.split_seed, base.val_fraction)
                data[("train", dataset)] = limit_training(full, base.train_limit, base.split_seed)
            cfg = base.replace(method=method)
            t0 = time.perf_counter()
            tmp = cell / f".{ck.name}.partial"  # renamed when complete: a killed run leaves no half model
            result = train_local(cfg, data[("train", dataset)], checkpoint_uri=str(tmp), progress=False,
                                 log=lambda *_: None)
            tmp.rename(ck)
            last = result.history[-1] if result.history else {}
            log(out, f"trained {dataset} {nbits}b seed {seed} {method}: {result.steps} steps, "
                     f"{time.perf_counter() - t0:.0f} s, final loss {last.get('loss', float('nan')):.4f}")
        for on in ("validation", "test"):
            report = cell / on / "ablation.json"
            if report.exists():
                continue
            if (on, dataset) not in data:
                data[(on, dataset)] = load_retrieval_data(dataset, base.split_seed, base.val_fraction, evaluate_on=on)
            t0 = time.perf_counter()
            rows = evaluate_checkpoints(str(cell), [nbits], methods, base, out_dir=str(cell / on),
                                        export_dir=str(cell / on / "export") if on == "test" else None,
                                        data=data[(on, dataset)], log=lambda *_: None)
            log(out, f"evaluated {dataset} {nbits}b seed {seed} on {on} in {time.perf_counter() - t0:.0f} s: "
                     + ", ".join(f"{r.method} {r.map_all:.4f}" for r in rows))
            summarize(out, dataset, on)
    log(out, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
