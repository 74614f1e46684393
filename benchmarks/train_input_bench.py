"""The Ray Train input read from a dataset URI: its peak memory at 20k vs 200k training images, and its
throughput against the in-memory input.

Both measurements run the real training path, ``qadwh_ray.ray_train.train_on_ray``
(Ray Train V2 ``TorchTrainer``, 1 worker x 1 CPU, the compact CNN at 48 bits,
class-balanced batches of 8 x 8), whose input is the per-rank Ray Data
pipeline of ``qadwh_ray/ray_train/input.py``: Ray Data tasks read each batch's
images from the dataset (``qadwh_ray.data.readers.read_images``), decode,
normalise and augment them.

``memory``: Parquet datasets of Fashion-MNIST images (tiled to 200,000 items,
each copy mirrored and/or shifted so no two items are the same pixels; PNG,
10,000 rows per file, row groups of 256) with a split file whose training part
is 20,000 or 200,000 items. Each size trains the same number of steps in a
fresh process with its own local Ray cluster. Every 0.5 s a sampler sums the
PSS (proportional set size: shared pages, the object store's included, divided
among the processes that map them, so nothing is counted twice) of the
benchmark process and every process of its Ray cluster (GCS, raylet, Ray Train
controller and worker, Ray Data task workers), and reads the object store's
bytes in use from the raylet. Peak input cost = peak total minus the total of
the idle cluster just before the run. The ratios 200k / 20k are the result.

``throughput``: the built-in ``fashion`` dataset (the Ray Data tasks index the
Fashion-MNIST arrays each worker process loads once: no files, no decoding)
vs the same images written as a Parquet URI (ids = row numbers, so one split
file gives both the same training images and the same batches). The two alternate in one Ray cluster in the
order A B B A A B ..., so a load that rises or falls during the run favours
neither side; same config, steps and CPUs. Images/s of every epoch but each
run's first (from the epoch's first batch request to its last step, input
waits included), median per side.

    .venv/bin/python benchmarks/train_input_bench.py memory        # ~40 min on a loaded 2-core machine
    .venv/bin/python benchmarks/train_input_bench.py throughput    # ~17 min on a loaded 2-core machine

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

MIB = 1 << 20
SPLIT_QUERIES = 100
SPLIT_DATABASE = 1000


def base_config(**changes):
    from qadwh_ray.training.config import TrainConfig

    return TrainConfig(
        backbone="compact", nbits=48, classes_per_batch=8, images_per_class=8, val_fraction=0.0,
        lr_step_epochs=1000, num_workers=1, cpus_per_worker=1.0, **changes,
    )


def start_ray() -> None:
    """A local 2-CPU cluster; retried, since a raylet on a loaded machine can miss Ray's 30 s start-up wait."""
    import ray

    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
            return
        except Exception as exc:  # ray.init raises a bare Exception on that time-out
            ray.shutdown()
            if attempt == 2:
                raise
            print(f"ray.init failed ({exc}); retrying", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data
def tiled_fashion(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Fashion-MNIST items: copy ``k`` of the 70,000 images mirrored (odd k) and shifted by k // 2 pixels."""
    from qadwh_ray.data.fashion import load_fashion_mnist

    images, labels = load_fashion_mnist()
    out = np.empty((n, *images.shape[1:]), dtype=np.uint8)
    for k, start in enumerate(range(0, n, len(images))):
        m = min(len(images), n - start)
        copy = images[:m, :, ::-1] if k % 2 else images[:m]
        out[start : start + m] = np.roll(copy, k // 2, axis=(1, 2))
    return out, labels[np.arange(n) % len(labels)]


def write_split(uri: str, train: np.ndarray, query: np.ndarray, database: np.ndarray, n_items: int) -> None:
    from qadwh_ray.data.split import Split

    Split(query=query, train=train, database=database, seed=0, protocol="benchmark", n_items=n_items).save(uri)


def make_parquet(directory: str, n_train: int) -> tuple[str, str]:
    """A Parquet dataset of ``n_train`` training items (+ queries and database), and its split file."""
    from qadwh_ray.data.fashion import CLASS_NAMES
    from qadwh_ray.data.writers import write_parquet_images

    n = n_train + SPLIT_QUERIES + SPLIT_DATABASE
    images, labels = tiled_fashion(n)
    uri = os.path.join(directory, f"fashion-{n_train}")
    write_parquet_images(uri, images, labels, class_names=CLASS_NAMES, rows_per_file=10_000, row_group_size=256)
    ids = np.arange(n)
    split_uri = os.path.join(directory, f"split-{n_train}.json")
    write_split(split_uri, ids[:n_train], ids[n_train : n_train + SPLIT_QUERIES], ids[n_train + SPLIT_QUERIES :], n)
    return uri, split_uri


# ---------------------------------------------------------------- memory
class MemorySampler(threading.Thread):
    """Samples the PSS of this process and its descendants (the local Ray cluster) and the object store."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak = {"total": 0, "object_store": 0, "by_role": {}}
        self.samples = 0

    @staticmethod
    def role(proc) -> str:
        import psutil

        try:
            if proc.pid == os.getpid():
                return "driver"
            name = proc.name()
            if name in ("raylet", "gcs_server"):
                return name
            title = " ".join(proc.cmdline()[:1])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return "gone"
        if title.startswith("ray::"):
            return title.split()[0].split("(")[0]  # ray::RayTrainWorker, ray::MapBatches..., ray::IDLE
        return "other"

    def snapshot(self) -> tuple[int, dict]:
        import psutil

        me = psutil.Process()
        total, by_role = 0, {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                pss = proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            r = self.role(proc)
            total += pss
            by_role[r] = by_role.get(r, 0) + pss
        return total, by_role

    def run(self) -> None:
        while not self.stop_event.is_set():
            total, by_role = self.snapshot()
            store = object_store_bytes()
            self.samples += 1
            if total > self.peak["total"]:
                self.peak.update(total=total, by_role=by_role)
            self.peak["object_store"] = max(self.peak["object_store"], store)
            self.stop_event.wait(self.interval)

    def stop(self) -> dict:
        self.stop_event.set()
        self.join()
        return self.peak


def object_store_bytes() -> int:
    """Bytes in the local object store (the raylet's own figure, as ``ray memory --stats-only`` prints)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    try:
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return int(get_memory_info_reply(state, timeout_seconds=10).store_stats.object_store_bytes_used)
    except Exception:  # a sample lost while the cluster is busy is not an error
        return 0


def memory_child(args) -> dict:
    """One size, in a fresh process: idle-cluster baseline, then the training run under the sampler."""
    import ray

    from qadwh_ray.ray_train import train_on_ray

    start_ray()
    cfg = base_config(dataset=args.data, split=args.split, epochs=1000, max_steps=args.steps)
    time.sleep(3)  # let the cluster's processes settle before the baseline
    probe = MemorySampler()
    baseline, baseline_roles = probe.snapshot()
    sampler = MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qadwh-input-mem-") as store:
        info = train_on_ray(cfg, store, "mem", max_failures=0, collective_timeout_s=300, progress=False,
                            log=lambda *_: None)
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    ray.shutdown()
    return {
        "train_images": args.train_images, "steps": info.steps, "seconds": round(seconds, 1),
        "samples": sampler.samples,
        "baseline_mib": round(baseline / MIB, 1),
        "peak_total_mib": round(peak["total"] / MIB, 1),
        "peak_input_cost_mib": round((peak["total"] - baseline) / MIB, 1),
        "peak_object_store_mib": round(peak["object_store"] / MIB, 1),
        "peak_by_role_mib": {k: round(v / MIB, 1) for k, v in sorted(peak["by_role"].items())},
        "baseline_by_role_mib": {k: round(v / MIB, 1) for k, v in sorted(baseline_roles.items())},
    }


def run_memory(args) -> dict:
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict = {"benchmark": "train_input_memory", "steps": args.steps, "global_batch": 64, "backbone": "compact",
                 "nbits": 48, "workers": 1, "measure": "PSS of this process + its Ray cluster, sampled every 0.5 s"}
    load0 = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="qadwh-input-data-", dir=args.tmp) as tmp:
        data = {}
        for n in sizes:
            t0 = time.perf_counter()
            data[n] = make_parquet(tmp, n)
            print(f"wrote {n} training items (+{SPLIT_QUERIES + SPLIT_DATABASE}) as Parquet in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        for _ in range(args.rounds):
            for n in sizes:
                uri, split = data[n]
                cmd = [sys.executable, os.path.abspath(__file__), "memory-child", "--data", uri, "--split", split,
                       "--steps", str(args.steps), "--train-images", str(n)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                    raise SystemExit(f"memory run for {n} images failed (exit {proc.returncode})")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.append(row)
                print(f"{n} training images: peak {row['peak_total_mib']} MiB, input cost "
                      f"{row['peak_input_cost_mib']} MiB, object store peak {row['peak_object_store_mib']} MiB "
                      f"({row['steps']} steps, {row['seconds']} s)", flush=True)
    small, large = min(sizes), max(sizes)

    def worst(n: int, key: str) -> float:
        return max(r[key] for r in runs if r["train_images"] == n)

    cost_small, cost_large = worst(small, "peak_input_cost_mib"), worst(large, "peak_input_cost_mib")
    out["runs"] = runs
    out["train_input_peak_memory_200k_vs_20k"] = round(cost_large / cost_small, 3)
    out["peak_input_cost_200k_minus_20k_mib"] = round(cost_large - cost_small, 1)
    out["peak_total_200k_vs_20k"] = round(worst(large, "peak_total_mib") / worst(small, "peak_total_mib"), 3)
    out["sizes"] = sizes
    out["load_avg_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    out["flat_ok"] = out["train_input_peak_memory_200k_vs_20k"] <= 1.3
    return out


# ---------------------------------------------------------------- throughput
def per_epoch_rates(info) -> list[float]:
    """Images/s of every epoch but the first (Ray Data pipeline start-up, torch warm-up)."""
    return [row["images_per_s"] for row in info.history[1:]]


def run_throughput(args) -> dict:
    import ray

    from qadwh_ray.data.catalog import open_catalog
    from qadwh_ray.data.fashion import CLASS_NAMES, load_fashion_mnist
    from qadwh_ray.data.writers import write_parquet_images
    from qadwh_ray.training.datasets import dataset_split
    from qadwh_ray.ray_train import train_on_ray

    load0 = os.getloadavg()[0]
    rates: dict[str, list[float]] = {"in_memory": [], "ray_data_uri": []}
    runs: list[dict] = []  # per run, in the order run
    with tempfile.TemporaryDirectory(prefix="qadwh-input-tp-", dir=args.tmp) as tmp:
        images, labels = load_fashion_mnist()
        uri = os.path.join(tmp, "fashion-parquet")
        t0 = time.perf_counter()
        write_parquet_images(uri, images, labels, ids=np.arange(len(images)), class_names=CLASS_NAMES,
                             rows_per_file=10_000, row_group_size=256)
        split_uri = os.path.join(tmp, "split.json")
        dataset_split(open_catalog("fashion"), 0).save(split_uri)
        print(f"wrote Fashion-MNIST (70,000 images) as Parquet in {time.perf_counter() - t0:.0f} s", flush=True)
        cfg = base_config(dataset="fashion", split=split_uri, train_limit=args.train_images, epochs=args.epochs)
        sides = {"in_memory": cfg, "ray_data_uri": cfg.replace(dataset=uri)}
        start_ray()
        for r in range(args.rounds):
            order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]  # ABBA: no side always first
            for side, c in order:
                info = train_on_ray(c, os.path.join(tmp, "runs"), f"{side}-{r}", max_failures=0,
                                    collective_timeout_s=300, progress=False, log=lambda *_: None)
                rates[side] += per_epoch_rates(info)
                runs.append({"side": side, "median": round(statistics.median(per_epoch_rates(info)), 1)})
                print(f"round {r} {side}: " + ", ".join(f"{x:.0f}" for x in per_epoch_rates(info)) + " img/s", flush=True)
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "benchmark": "train_input_throughput", "device": "cpu", "cpu_count": os.cpu_count(), "workers": 1,
        "threads": 1, "global_batch": 64, "train_images": args.train_images, "epochs": args.epochs,
        "rounds": args.rounds, "backbone": "compact", "nbits": 48,
        "in_memory_images_per_s": {"median": round(med["in_memory"], 1), "epochs": [round(x, 1) for x in rates["in_memory"]]},
        "ray_data_uri_images_per_s": {"median": round(med["ray_data_uri"], 1),
                                      "epochs": [round(x, 1) for x in rates["ray_data_uri"]]},
        "runs_in_order": runs,
        "ray_data_input_vs_in_memory": round(med["ray_data_uri"] / med["in_memory"], 3),
        "load_avg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "target_ok": med["ray_data_uri"] / med["in_memory"] >= 0.9,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory", help="peak memory of the training input at two training-set sizes")
    m.add_argument("--sizes", default="20000,200000", help="training-set sizes (the smallest is the baseline)")
    m.add_argument("--steps", type=int, default=400, help="training steps of 64 images per size")
    m.add_argument("--rounds", type=int, default=1, help="runs per size (the worst peak of each counts)")
    m.add_argument("--tmp", default=None, help="directory for the generated datasets")
    c = sub.add_parser("memory-child", help=argparse.SUPPRESS)
    c.add_argument("--data", required=True)
    c.add_argument("--split", required=True)
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--train-images", type=int, required=True)
    t = sub.add_parser("throughput", help="Ray Data input from a Parquet URI vs the in-memory built-in dataset")
    t.add_argument("--train-images", type=int, default=1280, help="training images (steps/epoch = this / 64)")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--rounds", type=int, default=4, help="runs per side, in the order A B B A A B ...")
    t.add_argument("--tmp", default=None, help="directory for the generated dataset")
    args = p.parse_args(argv)
    if args.what == "memory-child":
        print(json.dumps(memory_child(args)))
    elif args.what == "memory":
        print(json.dumps(run_memory(args)))
    else:
        print(json.dumps(run_throughput(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
