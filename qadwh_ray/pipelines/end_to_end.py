"""The main job, end to end on one Ray cluster (a local one by default):

1. **train** every method (ninh, qadwh; with ``--full`` also qadwh-ref, the reference
   form, at every code length) through Ray Train;
2. **evaluate** the checkpoints: the ablation table (with LSH and ITQ) on the
   paper split's query set and database;
3. **index** the dataset's database part (64,000 images of Fashion-MNIST by
   default) with the largest QaDWH model through Ray Data into a versioned,
   sharded index, and publish it;
4. **serve** it on Ray Serve, run sample queries over HTTP, print a working
   ``curl`` line and the search page's URL, and keep serving until interrupted
   (``exit_after_queries`` stops after the sample queries, for scripts).

Every stage writes under ``out`` (``train/``, ``checkpoints/``, ``report/``,
``index/``). Training runs are named after the method, so re-running the job
resumes an interrupted run (a finished run is reused as it is).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field

import numpy as np

from qadwh_ray import storage
from qadwh_ray.evaluation.ablation import checkpoint_name
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.serving.cluster_env import DEFAULT_INGRESS

__all__ = ["MainJobOptions", "run_main_job", "sample_queries", "curl_examples", "keep_serving", "stop_service"]


@dataclass
class MainJobOptions:
    base: TrainConfig
    bits: list[int] = field(default_factory=lambda: [48])
    methods: list[str] = field(default_factory=lambda: ["ninh", "qadwh"])
    out: str = "runs/main"
    shards: int = 2
    ray_address: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    ingress: str = DEFAULT_INGRESS  # serving/cluster_env.py: HAProxy fast path or Serve's classic proxy (local clusters)
    num_sample_queries: int = 4
    app_name: str = "qadwh"
    progress: bool = True
    export_dir: str | None = None


def _stage(log, n: int, title: str) -> float:
    log(f"\n== [{n}/4] {title}")
    return time.perf_counter()


def _init_ray(address: str | None, ingress: str = DEFAULT_INGRESS, log=print) -> None:
    import ray

    from qadwh_ray.ray_logs import init_ray
    from qadwh_ray.serving.cluster_env import local_cluster_env

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        logs = init_ray(address=address)
    else:
        # A fresh local cluster ("local": never a leftover `ray start` found on
        # this machine). More logical CPUs than cores so that the Train worker,
        # the Data actors and the Serve replicas (fractional CPUs) never wait
        # on each other.
        with local_cluster_env(ingress):
            logs = init_ray(address="local", num_cpus=max(4, os.cpu_count() or 1))
    log(f"Ray's own logs and the workers' output: {logs or 'the cluster head node'}")


def train_stage(opts: MainJobOptions, data=None, log=print) -> tuple[dict[tuple[str, int], str], list[dict]]:
    """Train every (method, bits) through Ray Train; copy each model to ``out/checkpoints/<method>-<bits>.pt``."""
    from qadwh_ray.training.datasets import limit_training
    from qadwh_ray.ray_train.trainer import train_on_ray

    ckpt_dir = storage.join(opts.out, "checkpoints")
    models: dict[tuple[str, int], str] = {}
    runs = []
    for nbits in opts.bits:
        for method in opts.methods:
            cfg = opts.base.replace(nbits=nbits, method=method)
            name = checkpoint_name(method, nbits)[: -len(".pt")]
            log(f"-- {cfg.method_spec.title} at {nbits} bits: {cfg.epochs} epochs on {cfg.num_workers} Ray Train worker(s)")
            train_data = None if data is None else limit_training(data, cfg.train_limit, cfg.split_seed)
            info = train_on_ray(cfg, storage_path=storage.join(opts.out, "train"), run_name=name, data=train_data,
                                progress=opts.progress, log=log)
            if info.steps < info.total_steps or not info.model_uri:
                raise RuntimeError(f"training run {name} stopped at step {info.steps} of {info.total_steps}")
            dest = storage.join(ckpt_dir, checkpoint_name(method, nbits))
            storage.write_bytes(dest, storage.read_bytes(info.model_uri))
            models[(method, nbits)] = dest
            last = info.history[-1] if info.history else {}
            runs.append({"method": method, "nbits": nbits, "seconds": round(info.seconds, 1),
                         "steps": info.steps, "val_map": last.get("val_map"), "checkpoint": dest})
            log(f"   {info.summary()}\n   model: {dest}")
    return models, runs


def curl_examples(base_url: str, item_id: int) -> list[str]:
    url = f"{base_url}/v1/search"
    body = shlex.quote(f'{{"id": {int(item_id)}, "k": 5, "mode": "qadwh"}}')
    return [
        f"curl -s -X POST {url} -H 'Content-Type: application/json' -d {body}",
        f"curl -s -F image=@your-image.png -F k=5 -F mode=qadwh {url}",
    ]


def sample_queries(client, images: np.ndarray, labels: np.ndarray, class_names: list[str], log=print, k: int = 10) -> list[dict]:
    """Query the service with each image (PNG over HTTP) in every mode; log the top labels and precision@k."""
    from qadwh_ray.client import png_bytes

    out = []
    for img, lab in zip(images, labels):
        want = set(np.flatnonzero(lab).tolist())
        png = png_bytes(img)
        row = {"true": sorted(want)}
        answers = {}
        for mode in ("qadwh", "dwh", "hamming"):
            t0 = time.perf_counter()
            r = answers[mode] = client.search(image=png, k=k, mode=mode)
            ms = (time.perf_counter() - t0) * 1e3
            hits = [bool(want & set(h.labels or [])) for h in r]
            row[mode] = {"ids": r.ids, "precision": float(np.mean(hits)) if hits else 0.0, "ms": ms, "version": r.version}
        top = [(h.label_names or ["?"])[0] for h in answers["qadwh"].hits[:5]]
        names = ", ".join(class_names[c] for c in row["true"])
        log(
            f"   query image of a {names}: precision@{k} qadwh {row['qadwh']['precision']:.2f} / dwh "
            f"{row['dwh']['precision']:.2f} / hamming {row['hamming']['precision']:.2f}; "
            f"{row['qadwh']['ms']:.0f} ms; QaDWH top-5: {', '.join(top)}"
        )
        out.append(row)
    return out


def serve_stage(opts: MainJobOptions, data, log=print) -> dict:
    """Deploy the service on the published index and query it over HTTP."""
    from ray import serve

    from qadwh_ray.serving.app import build_app
    from qadwh_ray.client import Client
    from qadwh_ray.ray_logs import quiet_ray_console

    index_root = storage.join(opts.out, "index")
    serve.start(http_options={"host": opts.host, "port": opts.port})
    serve.run(build_app({"index": index_root}), name=opts.app_name, route_prefix="/")
    quiet_ray_console()  # Serve set up its loggers just now
    shown_host = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
    base_url = f"http://{shown_host}:{opts.port}"
    client = Client(base_url)
    ready = client.wait_ready(timeout_s=300)
    info = client.index()
    log(f"   service ready at {base_url}: version {info['version']}, {info['items']} items in {info['num_shards']} shards, "
        f"{info['bits']}-bit codes")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(data.query_images), size=min(opts.num_sample_queries, len(data.query_images)), replace=False)
    rows = sample_queries(client, data.query_images[pick], data.query_labels[pick], data.class_names, log)
    item_id = int(data.db_ids[0])
    by_id = client.search(item=item_id, k=5)
    log(f"   query by indexed item {item_id}: ids {by_id.ids} distances {[round(d, 3) for d in by_id.distances]}")
    return {"base_url": base_url, "ready": ready, "index": info, "queries": rows, "item_id": item_id}


def run_main_job(opts: MainJobOptions, log=print) -> dict:
    """Run the four stages; returns what each produced. The service stays up (see ``keep_serving``)."""
    from qadwh_ray.index_build.pipeline import BuildOptions, build_index
    from qadwh_ray.evaluation.ablation import evaluate_checkpoints, summarize_order, write_report
    from qadwh_ray.training.datasets import load_retrieval_data
    from qadwh_ray.evaluation.evaluate import format_table

    if "qadwh" not in opts.methods:
        raise ValueError("the main job indexes and serves the QaDWH model: keep 'qadwh' in the methods")
    t_start = time.perf_counter()
    _init_ray(opts.ray_address, opts.ingress, log)
    data = load_retrieval_data(opts.base.dataset, opts.base.split_seed, opts.base.val_fraction,
                               image_size=opts.base.image_size, split_uri=opts.base.split)
    log(data.summary())
    split_uri = storage.join(opts.out, "split.json")  # evaluate and index reuse it
    data.split.save(split_uri)
    summary: dict = {"out": opts.out, "dataset": data.info.to_dict(), "split": split_uri}

    t0 = _stage(log, 1, "train on Ray Train")
    models, runs = train_stage(opts, data, log)
    summary["train"] = {"runs": runs, "seconds": round(time.perf_counter() - t0, 1)}

    t0 = _stage(log, 2, "evaluate (ablation table on the query set)")
    rows = evaluate_checkpoints(storage.join(opts.out, "checkpoints"), opts.bits, opts.methods, opts.base,
                                export_dir=opts.export_dir, log=log, data=data)
    report = storage.join(opts.out, "report")
    write_report(report, data, opts.base, rows, runs)
    log(format_table(rows))
    for line in summarize_order(rows):
        log(line)
    log(f"   report: {report}")
    summary["evaluate"] = {"maps": {f"{r.method}@{r.nbits}": r.map_all for r in rows}, "report": report,
                           "seconds": round(time.perf_counter() - t0, 1)}

    t0 = _stage(log, 3, "index the database on Ray Data")
    index_ckpt = models[("qadwh", max(opts.bits))]
    built = build_index(index_ckpt, opts.base.dataset, storage.join(opts.out, "index"),
                        BuildOptions(shards=opts.shards, split=split_uri, split_seed=opts.base.split_seed))
    log(f"   {built.summary()}")
    summary["index"] = {"version": built.version, "items": built.manifest.num_items, "root": built.root,
                        "seconds": round(time.perf_counter() - t0, 1)}

    t0 = _stage(log, 4, "serve on Ray Serve")
    served = serve_stage(opts, data, log)
    summary["serve"] = {**served, "seconds": round(time.perf_counter() - t0, 1)}
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    base = served["base_url"]
    log(f"\nmain job done in {summary['seconds']:.0f} s (train {summary['train']['seconds']:.0f} s, evaluate "
        f"{summary['evaluate']['seconds']:.0f} s, index {summary['index']['seconds']:.0f} s, serve {summary['serve']['seconds']:.0f} s)")
    log(f"search page: {base}/    API docs: {base}/docs")
    log("try it:")
    for line in curl_examples(base, served["item_id"]):
        log(f"  {line}")
    return summary


def stop_service(app_name: str = "qadwh") -> None:
    """Delete the application (other applications on a shared cluster keep running)."""
    from ray import serve

    serve.delete(app_name)


def keep_serving(log=print, app_name: str = "qadwh") -> None:
    """Block until Ctrl-C / SIGTERM, then stop the service."""
    import signal

    def _stop(signum, frame):
        raise KeyboardInterrupt

    # Both explicitly: a process started in the background by a shell inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    log("serving until interrupted (Ctrl-C)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("shutting down the service")
    finally:
        stop_service(app_name)
