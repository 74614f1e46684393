"""Indexing benchmark: the Ray Data pipeline against a plain pipeline on the same CPUs, and a scale run.

1. Throughput (one run, same machine, interleaved repeats): index ``--items`` images of
   the ``fashion-augmented`` database (the 70,000 real Fashion-MNIST images, then
   deterministic augmentations) with the same checkpoint, the same torch threads for
   the encoder and the same image-generation parallelism, end to end:
   - plain: what one would write without Ray — ``--read-tasks`` worker processes
     generate the image blocks while the main process loads the checkpoint and
     encodes them (``qadwh_ray.model.encode``), then the same index format is
     written, verified and published (``qadwh_ray.index.writer.write_index``);
   - ray:   ``build_index`` (planning → ``--read-tasks`` read/augment tasks → encoder
            actor(s) → part writers → compaction → manifest → verify → publish).
   Both sides run on the same cores: with ``--cpus LIST`` the benchmark pins itself,
   and so the Ray session it starts and the plain pipeline's workers, to those cores.
   ``ray_data_vs_plain_same_cpus`` = ray images/s ÷ plain images/s, whole builds
   timed from the call to the published version, median over the repeats (target ≥ 0.9).
2. Scale: ``build_index`` of ``--scale-items`` images (and of ``--scale-small``,
   to show memory does not grow with the database) to local storage and to a
   local S3 server (moto on 127.0.0.1), sampling the proportional set size (PSS)
   of every process of the Ray session (driver, GCS, raylet, workers; shared
   object-store pages counted once) and the driver's RSS.

Prints one JSON object as its last line. Example (what docs/benchmarks.md records)::

    python benchmarks/index_bench.py --items 60000 --repeats 3 --skip-scale --skip-s3 --checkpoint runs/qadwh48/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


# ----------------------------------------------------------------- memory


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _tree(root: int) -> list[int]:
    kids = _children_map()
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _process_kind(pid: int) -> str:
    """A short name to group processes by: the command name (Ray sets it to the task or
    actor, e.g. ``ray::MapWorker(MapBatches(Encoder))``, ``ray::IDLE``, ``raylet``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return "?"
    if not argv0:
        return "?"
    first = argv0.split()[0]
    return (first if first.startswith("ray::") else os.path.basename(first))[:60]


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak PSS of this process and all its descendants (the local Ray session)."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak_pss_kb = 0
        self.peak_driver_rss_kb = 0
        self.peak_processes = 0
        self.peak_breakdown_kb: dict[str, int] = {}  # PSS per process kind at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            pss = {p: _pss_kb(p) for p in _tree(me)}
            total = sum(pss.values())
            if total > self.peak_pss_kb:
                self.peak_pss_kb, self.peak_processes = total, sum(1 for v in pss.values() if v)
                breakdown: dict[str, int] = {}
                for pid, kb in pss.items():
                    if kb:
                        kind = "driver" if pid == me else _process_kind(pid)
                        breakdown[kind] = breakdown.get(kind, 0) + kb
                self.peak_breakdown_kb = breakdown
            self.peak_driver_rss_kb = max(self.peak_driver_rss_kb, _rss_kb(me))
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        if self.interval > 0:  # 0: off (sampling costs the driver some CPU)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


# ------------------------------------------------------------------ runs


_BASE_IMAGES = None  # the plain pipeline's worker processes: the 70,000 base images, loaded once


def _load_base_images() -> None:
    global _BASE_IMAGES
    from qadwh_ray.data.fashion import load_fashion_mnist

    _BASE_IMAGES = load_fashion_mnist()


def _generate_block(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from qadwh_ray.data.fashion import fashion_augmented_images

    ids = np.arange(*bounds, dtype=np.int64)
    images, classes = fashion_augmented_images(ids, *_BASE_IMAGES)
    return ids, images, classes


def plain_pipeline(checkpoint: str, n: int, out: str, block: int, threads: int, workers: int) -> dict:
    """Index ``fashion-augmented:n`` without Ray, timed from start to the published version (module docstring)."""
    import multiprocessing

    import torch

    from qadwh_ray.index.writer import checkpoint_record, write_index
    from qadwh_ray.index_build.pipeline import auto_num_shards
    from qadwh_ray.model import encode
    from qadwh_ray.model.checkpoint import load_payload, model_from_payload

    t = time.perf_counter()
    torch.set_num_threads(threads)
    payload = load_payload(checkpoint)
    model = model_from_payload(payload)
    nbits, classes_n = model.config.nbits, model.config.num_classes
    ids, codes, classes = [], [], []
    blocks = [(s, min(n, s + block)) for s in range(0, n, block)]
    # forkserver: the workers do not inherit this process's torch thread pools
    with multiprocessing.get_context("forkserver").Pool(workers, initializer=_load_base_images) as pool:
        for block_ids, images, block_classes in pool.imap(_generate_block, blocks):
            ids.append(block_ids)
            codes.append(encode(model, images).codes)  # the encoder actors' chunking too (encode.default_chunk)
            classes.append(block_classes)
    ids, codes, classes = np.concatenate(ids), np.concatenate(codes), np.concatenate(classes)
    labels = np.zeros((n, classes_n), dtype=np.uint8)
    labels[np.arange(n), classes] = 1
    write_index(out, ids, codes, labels, code_bits=nbits, num_shards=auto_num_shards(n), num_classes=classes_n,
                checkpoint=checkpoint_record(payload), keep=1)
    secs = time.perf_counter() - t
    return {"seconds": round(secs, 2), "images_per_s": round(n / secs, 1)}


def ray_build(checkpoint: str, n: int, out: str, args, sample_memory: bool = True,
              actors: int | None = None, threads: int | None = None, **extra) -> dict:
    from qadwh_ray.index_build import BuildOptions, build_index

    actors, threads = actors or args.actors, threads or args.threads
    opts = BuildOptions(
        shards=extra.pop("shards", None),
        block_rows=args.block_rows,
        batch_size=args.batch_size,
        actors=actors,
        threads=max(1, threads // actors),  # ``threads`` is the encoder pool's total
        encoder_cpus=float(max(1, threads // actors)),
        read_tasks=args.read_tasks,
        **extra,
    )
    t = time.perf_counter()
    with MemorySampler(interval=2.0 if sample_memory else 0) as mem:
        res = build_index(checkpoint, f"fashion-augmented:{n}", out, opts)
    secs = time.perf_counter() - t
    stages = res.manifest.build["stage_seconds"]
    return {
        "items": n,
        "seconds": round(secs, 2),
        "images_per_s": round(n / secs, 1),
        "stream_images_per_s": round(n / stages["encode_stream"], 1),
        "stage_seconds": stages,
        "shards": res.manifest.num_shards,
        "index_items": res.manifest.num_items,
        "peak_pss_mb": round(mem.peak_pss_kb / 1024, 1),
        "peak_driver_rss_mb": round(mem.peak_driver_rss_kb / 1024, 1),
        "peak_processes": mem.peak_processes,
        "peak_pss_by_process_mb": {k: round(v / 1024, 1) for k, v in sorted(mem.peak_breakdown_kb.items(), key=lambda kv: -kv[1])},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000, help="images for the throughput comparison")
    p.add_argument("--scale-items", type=int, default=1_000_000, help="images for the scale run")
    p.add_argument("--scale-small", default=None,
                   help="smaller scale build(s) that memory is compared with, comma-separated "
                        "(default: a quarter of --scale-items)")
    p.add_argument("--scale-threads", type=int, default=None, help="torch threads of the scale builds (default: --threads)")
    p.add_argument("--scale-actors", type=int, default=None, help="encoder actors of the scale builds (default: --actors)")
    p.add_argument("--scale-out", default=None,
                   help="keep the local scale indexes under this directory")
    p.add_argument("--checkpoint", default=None,
                   help="encode with this (trained) checkpoint instead of an untrained --nbits model")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads: the plain pipeline's encoder and the encoder actors' in total")
    p.add_argument("--cpus", default=None,
                   help="comma-separated cores to pin the whole benchmark to (both sides and the Ray session)")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--read-tasks", type=int, default=2,
                   help="image-generation parallelism: Ray's read tasks and the plain pipeline's worker processes")
    p.add_argument("--block-rows", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=500, help="rows per encoder actor call (Ray Data batch)")
    p.add_argument("--nbits", type=int, default=48)
    p.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray session")
    p.add_argument("--repeats", type=int, default=3, help="interleaved plain/ray repetitions (the median ratio is reported)")
    p.add_argument("--skip-s3", action="store_true")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-throughput", action="store_true", help="only the scale builds")
    args = p.parse_args(argv)
    if args.cpus:  # before Ray starts: its processes inherit the affinity
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    import torch

    from qadwh_ray.model import ModelConfig, build_model, load_checkpoint, save_checkpoint

    work = tempfile.mkdtemp(prefix="qadwh-index-bench-")
    s3 = None
    try:
        if args.checkpoint:
            checkpoint = os.path.abspath(args.checkpoint)
            model_name = f"{os.path.basename(checkpoint)} ({load_checkpoint(checkpoint).config.nbits} bits, trained)"
        else:
            torch.manual_seed(0)
            checkpoint = os.path.join(work, "model.pt")
            save_checkpoint(checkpoint, build_model(ModelConfig(nbits=args.nbits)))
            model_name = f"compact-{args.nbits}bit (untrained)"
        if not args.skip_s3:  # the S3 server and its environment exist before Ray starts, so workers inherit it
            from moto.server import ThreadedMotoServer

            s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            s3.start()
            host, port = s3.get_host_and_port()
            os.environ.update({"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"})
            import boto3

            boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket="bench")

        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False

        # warm the Ray session (worker processes, imports) so that both sides are measured warm
        ray_build(checkpoint, 2000, os.path.join(work, "warm"), args, sample_memory=False)
        result = {"benchmark": "index_build", "model": model_name}
        if not args.skip_throughput:
            plains, rays = [], []
            for rep in range(args.repeats):  # interleaved: the machine is shared, so each side sees the same noise
                plains.append(plain_pipeline(checkpoint, args.items, os.path.join(work, "plain"), args.block_rows,
                                             args.threads, args.read_tasks))
                print(f"plain pipeline #{rep}: {plains[-1]}", flush=True)
                rays.append(ray_build(checkpoint, args.items, os.path.join(work, "thr"), args, sample_memory=False, keep=1))
                print(f"ray data       #{rep}: {rays[-1]}", flush=True)
            ratio = [r["images_per_s"] / p["images_per_s"] for p, r in zip(plains, rays)]
            result.update({
                "threads": args.threads,
                "actors": args.actors,
                "read_tasks": args.read_tasks,
                "cpus": sorted(os.sched_getaffinity(0)),
                "items": args.items,
                "repeats": args.repeats,
                "plain_images_per_s": [p["images_per_s"] for p in plains],
                "ray_images_per_s": [r["images_per_s"] for r in rays],
                "ray_stage_seconds": [r["stage_seconds"] for r in rays],
                "ray_data_vs_plain_same_cpus": round(float(np.median(ratio)), 3),
                "ray_data_vs_plain_same_cpus_each_repeat": [round(x, 3) for x in ratio],
                "target_ray_data_vs_plain_same_cpus": 0.9,
            })
        if not args.skip_scale:
            scale = []
            local_root = os.path.abspath(args.scale_out) if args.scale_out else os.path.join(work, "scale")
            targets = [("local", local_root)] + ([] if args.skip_s3 else [("s3", "s3://bench/index")])
            sizes = [int(x) for x in args.scale_small.split(",")] if args.scale_small else [args.scale_items // 4]
            sizes = sorted(set(sizes + [args.scale_items]))
            for name, root in targets:
                for n in sizes:
                    # one index root per size, so the kept local indexes are the whole databases
                    r = ray_build(checkpoint, n, f"{root}/{n}", args, actors=args.scale_actors,
                                  threads=args.scale_threads, keep=1)
                    r["target"] = name
                    print(f"scale: {r}", flush=True)
                    scale.append(r)
            result["scale_encoder"] = {"actors": args.scale_actors or args.actors, "threads": args.scale_threads or args.threads}
            result["scale"] = [
                {k: r[k] for k in ("target", "items", "seconds", "images_per_s", "stream_images_per_s", "shards",
                                   "peak_pss_mb", "peak_driver_rss_mb", "peak_processes", "peak_pss_by_process_mb")}
                for r in scale
            ]
            for name, _ in targets:
                runs = [r for r in scale if r["target"] == name]  # by size, smallest first
                result[f"memory_growth_{name}"] = round(runs[-1]["peak_pss_mb"] / runs[0]["peak_pss_mb"], 3)
        result["host"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
                          "ray": ray.__version__, "torch": torch.__version__}
        print(json.dumps(result))
        return 0
    finally:
        try:
            import ray

            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
        if s3 is not None:
            s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
