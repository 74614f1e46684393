"""Training throughput: the Ray Train run vs the plain single-process PyTorch loop, in one run.

Both sides train the same model on the same class-balanced batches with the
same step function (``qadwh_ray.training.loop.train_step``), the same number
of torch threads per process, and both write the same thing after every
epoch: a checkpoint (model incl. W, optimiser, schedule, step, config, split
seed, history; ``model.pt`` then its ``model.pt.sha256``, in a
``checkpoint_step<step>`` directory) and the epoch's metrics row.

- plain: ``qadwh_ray.training.local.train_local`` in this process, writing the
  checkpoint (``save_checkpoint``) and appending the row to ``metrics.jsonl``
  after each epoch;
- Ray: ``qadwh_ray.ray_train.train_on_ray`` with 1 worker x ``threads`` CPUs (the
  overhead figure), then 2 workers x ``threads`` CPUs each (the scaling
  figure, ``ray_2w_vs_1w``: twice the cores, same global batch).

An epoch's time is the wall clock between the checksum files of two
consecutive epochs' checkpoints (their modification times, on both sides):
input pipeline, steps, metrics, checkpoint writing and Ray's report all
included. The first epoch is left out on both sides (start-up: Ray's workers
and data pipeline, torch's first allocations). The plain loop runs before and
after the Ray run; ratios compare the median epoch of each side:
``ray_train_vs_plain_with_checkpoints`` = plain median epoch seconds ÷ Ray's
(target ≥ 0.9).

    .venv/bin/python benchmarks/train_bench.py            # a few minutes on 2 cores

The last printed line is one JSON object with the figures and ratios.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def epoch_seconds(run_dir: str) -> list[float]:
    """Wall clock between consecutive epochs' finished checkpoints in ``run_dir`` (the first epoch left out)."""
    from qadwh_ray.model.checkpoint import CHECKSUM_SUFFIX, FILENAME, RUN_CHECKPOINT_PREFIX

    done = sorted(glob.glob(os.path.join(run_dir, f"{RUN_CHECKPOINT_PREFIX}*", FILENAME + CHECKSUM_SUFFIX)))
    if len(done) < 2:
        raise SystemExit(f"need at least 2 epochs' checkpoints in {run_dir} to measure a steady state, found {len(done)}")
    stamps = [os.stat(p).st_mtime for p in done]  # directory names sort by step
    return [b - a for a, b in zip(stamps, stamps[1:])]


def run_plain(cfg, data, threads: int, run_dir: str) -> list[float]:
    import torch

    from qadwh_ray.training.local import train_local
    from qadwh_ray.model.checkpoint import FILENAME, checkpoint_dir_name, save_checkpoint

    def write_epoch(result, model, optimizer, scheduler):  # what the Ray worker reports every epoch
        save_checkpoint(
            os.path.join(run_dir, checkpoint_dir_name(result.steps), FILENAME), model,
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), step=result.steps,
            epoch=len(result.history), train_config=cfg.to_dict(), split_seed=cfg.split_seed,
            history=result.history, dataset=data.info.to_dict(),
        )
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(result.history[-1]) + "\n")

    torch.set_num_threads(threads)
    os.makedirs(run_dir)
    train_local(cfg, data=data, progress=False, log=lambda *_: None, epoch_end=write_epoch)
    return epoch_seconds(run_dir)


def run_ray(cfg, data, storage_path: str, name: str) -> tuple[list[float], float]:
    from qadwh_ray.ray_train import train_on_ray

    t0 = time.time()
    train_on_ray(
        cfg, storage_path, name, data=data, max_failures=0, collective_timeout_s=120, progress=False, log=lambda *_: None
    )
    seconds = epoch_seconds(os.path.join(storage_path, name))
    first_done = time.time() - t0 - sum(seconds)  # start-up + first epoch + shutdown
    return seconds, first_done


def _stats(seconds: list[float], images_per_epoch: int) -> dict:
    return {"median_epoch_s": round(statistics.median(seconds), 3),
            "median_images_per_s": round(images_per_epoch / statistics.median(seconds), 1),
            "epoch_s": [round(x, 3) for x in seconds]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads = CPUs per Ray worker (and of the plain loop)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-images", type=int, default=640, help="training images (steps/epoch = this / 64)")
    p.add_argument("--nbits", type=int, default=48)
    p.add_argument("--skip-2w", action="store_true", help="skip the 2-worker scaling run")
    args = p.parse_args(argv)

    import ray

    from qadwh_ray.training.config import TrainConfig
    from qadwh_ray.training.datasets import load_training_data

    base = TrainConfig(
        nbits=args.nbits, epochs=args.epochs, train_limit=args.train_images, val_fraction=0.0,
        classes_per_batch=8, images_per_class=8, lr_step_epochs=1000,
    )
    data = load_training_data(base)
    spe = len(data.train_images) // base.batch_size
    images = spe * base.batch_size
    ncpu = os.cpu_count() or 1
    ray.init(num_cpus=max(ncpu, 2 * args.threads), include_dashboard=False, logging_level="WARNING")
    out: dict = {
        "benchmark": "train_throughput", "device": "cpu", "cpu_count": ncpu, "threads": args.threads,
        "global_batch": base.batch_size, "steps_per_epoch": spe, "epochs": args.epochs,
        "epoch_clock": "between consecutive epochs' finished checkpoints (per-epoch checkpoint and metrics included)",
        "measured_epochs": args.epochs - 1, "nbits": args.nbits, "backbone": base.backbone,
    }
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="qadwh-train-bench-") as store:
        one = base.replace(num_workers=1, cpus_per_worker=float(args.threads))
        plain = run_plain(one, data, args.threads, os.path.join(store, "plain-before"))
        ray1, first1 = run_ray(one, data, store, "bench-1w")
        plain += run_plain(one, data, args.threads, os.path.join(store, "plain-after"))
        p, r1 = _stats(plain, images), _stats(ray1, images)
        out.update(
            plain=p, ray_1w=r1,
            ray_train_vs_plain_with_checkpoints=round(p["median_epoch_s"] / r1["median_epoch_s"], 3),
            ray_1w_startup_and_first_epoch_s=round(first1, 1),
        )
        print(f"plain median epoch {p['median_epoch_s']} s; Ray 1 worker median epoch {r1['median_epoch_s']} s "
              f"(ratio {out['ray_train_vs_plain_with_checkpoints']}; start-up and first epoch {first1:.0f} s)", flush=True)
        if not args.skip_2w:
            two = base.replace(num_workers=2, cpus_per_worker=float(args.threads))
            ray2, first2 = run_ray(two, data, store, "bench-2w")
            r2 = _stats(ray2, images)
            out.update(ray_2w=r2, ray_2w_vs_1w=round(r1["median_epoch_s"] / r2["median_epoch_s"], 3),
                       ray_2w_startup_and_first_epoch_s=round(first2, 1))
            out["scaling_efficiency_2w"] = round(out["ray_2w_vs_1w"] / 2, 3)
            print(f"Ray 2 workers median epoch {r2['median_epoch_s']} s "
                  f"({out['ray_2w_vs_1w']} x 1 worker with twice the cores)", flush=True)
    out["load_avg_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    out["targets"] = {"ray_train_vs_plain_with_checkpoints>=0.9": out["ray_train_vs_plain_with_checkpoints"] >= 0.9}
    ray.shutdown()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
