"""Training throughput: the Ray Train run vs the plain single-process PyTorch loop, in one run.

Both sides train the same model on the same class-balanced batches with the
same step function (``qadwh_ray.learning.loop.train_step``) and the same
number of torch threads per process:

- plain: ``qadwh_ray.learning.local.train_local`` in this process;
- Ray: ``qadwh_ray.train.train_on_ray`` with 1 worker x ``threads`` CPUs (the
  overhead figure, ``ray_vs_plain``), then 2 workers x ``threads`` CPUs each
  (the scaling figure, ``ray_2w_vs_1w``: twice the cores, same global batch).

Throughput is images per second of each steady-state epoch (the first epoch
is warm-up on both sides: Ray's worker and data-pipeline start-up, torch's
first allocations), timed from the start of an epoch to its last step, input
pipeline included; per-epoch checkpoints and validation fall outside the
window on both sides, and Ray's one-off start-up is reported apart. The
plain loop runs before and after the 1-worker Ray run. The machines are
shared and noisy, so ratios compare the *best* epoch of each side (the least
disturbed one, as ``timeit`` takes the minimum); median ratios are printed
too.

    .venv/bin/python benchmarks/train_bench.py            # a few minutes on 2 cores

The last printed line is one JSON object with the figures and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _per_epoch(seconds: list[float], images_per_epoch: int) -> list[float]:
    """Images/s of every epoch but the first (warm-up on both sides)."""
    if len(seconds) < 2:
        raise SystemExit("need at least 2 epochs to measure a steady state")
    return [images_per_epoch / s for s in seconds[1:]]


def run_plain(cfg, data, threads: int) -> list[float]:
    import torch

    from qadwh_ray.learning.local import train_local

    torch.set_num_threads(threads)
    res = train_local(cfg, data=data, progress=False, log=lambda *_: None)
    cumulative = [0.0] + [row["seconds"] for row in res.history]  # seconds since the start of training
    seconds = [b - a for a, b in zip(cumulative, cumulative[1:])]
    return _per_epoch(seconds, cfg.batch_size * (res.steps // len(res.history)))


def run_ray(cfg, data, storage_path: str, name: str) -> tuple[list[float], float]:
    from qadwh_ray.train import train_on_ray

    t0 = time.perf_counter()
    info = train_on_ray(
        cfg, storage_path, name, data=data, max_failures=0, collective_timeout_s=120, progress=False, log=lambda *_: None
    )
    wall = time.perf_counter() - t0
    seconds = [row["train_seconds"] for row in info.history]
    startup = wall - sum(seconds)
    return _per_epoch(seconds, cfg.batch_size * (info.total_steps // len(info.history))), startup


def _stats(ips: list[float]) -> dict:
    return {"best": round(max(ips), 1), "median": round(statistics.median(ips), 1), "epochs": [round(x, 1) for x in ips]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads = CPUs per Ray worker (and of the plain loop)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-images", type=int, default=640, help="training images (steps/epoch = this / 64)")
    p.add_argument("--nbits", type=int, default=48)
    p.add_argument("--skip-2w", action="store_true", help="skip the 2-worker scaling run")
    args = p.parse_args(argv)

    import ray

    from qadwh_ray.learning.config import TrainConfig
    from qadwh_ray.learning.datasets import load_training_data

    base = TrainConfig(
        nbits=args.nbits, epochs=args.epochs, train_limit=args.train_images, val_fraction=0.0,
        classes_per_batch=8, images_per_class=8, lr_step_epochs=1000,
    )
    data = load_training_data(base)
    spe = len(data.train_images) // base.batch_size
    ncpu = os.cpu_count() or 1
    ray.init(num_cpus=max(ncpu, 2 * args.threads), include_dashboard=False, logging_level="WARNING")
    out: dict = {
        "benchmark": "train_throughput", "device": "cpu", "cpu_count": ncpu, "threads": args.threads,
        "global_batch": base.batch_size, "steps_per_epoch": spe, "epochs": args.epochs, "ratios_from": "best epoch",
        "measured_epochs": args.epochs - 1, "nbits": args.nbits, "backbone": base.backbone,
    }
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="qadwh-train-bench-") as store:
        one = base.replace(num_workers=1, cpus_per_worker=float(args.threads))
        plain = run_plain(one, data, args.threads)
        ray1, startup1 = run_ray(one, data, store, "bench-1w")
        plain += run_plain(one, data, args.threads)
        p, r1 = _stats(plain), _stats(ray1)
        out.update(
            plain_images_per_s=p, ray_1w_images_per_s=r1,
            ray_vs_plain=round(r1["best"] / p["best"], 3),
            ray_vs_plain_median=round(r1["median"] / p["median"], 3),
            ray_1w_startup_s=round(startup1, 1),
        )
        print(f"plain best {p['best']} median {p['median']} img/s; Ray 1 worker best {r1['best']} median {r1['median']} "
              f"img/s (ratio {out['ray_vs_plain']}, median ratio {out['ray_vs_plain_median']}, start-up {startup1:.0f} s)",
              flush=True)
        if not args.skip_2w:
            two = base.replace(num_workers=2, cpus_per_worker=float(args.threads))
            ray2, startup2 = run_ray(two, data, store, "bench-2w")
            r2 = _stats(ray2)
            out.update(
                ray_2w_images_per_s=r2, ray_2w_vs_1w=round(r2["best"] / r1["best"], 3),
                ray_2w_vs_1w_median=round(r2["median"] / r1["median"], 3),
                ray_2w_startup_s=round(startup2, 1),
            )
            out["scaling_efficiency_2w"] = round(out["ray_2w_vs_1w"] / 2, 3)
            print(f"Ray 2 workers best {r2['best']} median {r2['median']} img/s "
                  f"({out['ray_2w_vs_1w']} x 1 worker with twice the cores)", flush=True)
    out["load_avg_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    out["overhead_ok"] = out["ray_vs_plain"] >= 0.9
    ray.shutdown()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
