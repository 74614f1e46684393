"""Ray Serve query service vs a single-process FastAPI + uvicorn server, same index, same run.

What is compared (both on 127.0.0.1, both answering ``POST /v1/search`` with
the same JSON, the same exact search over the same index version):

* **serve** — ``qadwh_ray.serving.build_app``: HTTP ingress → router (FastAPI
  ingress) → query encoder (``@serve.batch``) → 2 shard deployments searched
  concurrently → exact merge. Measured once per ``--ingress`` mode, each on a
  fresh local cluster (the mode is cluster-wide): ``haproxy`` — Serve's
  throughput-optimised path (HAProxy → the router's own HTTP server, gRPC
  between deployments), what ``qadwh serve`` deploys; ``proxy`` — Serve's
  classic HTTP proxy actor;
* **fastapi** — what a user would otherwise deploy: one uvicorn process, one
  FastAPI app holding the whole index in one ``HashIndex`` and the model, a
  plain ``def`` endpoint (FastAPI runs it in its thread pool; the search
  kernels release the GIL).

Load: a closed loop of ``--concurrency`` clients (aiohttp, one process) sends
a bounded number of requests; the two servers alternate over ``--rounds``
rounds and each figure of a run is the median over its rounds. The whole
measurement is repeated ``--runs`` times, each on a fresh local cluster, and
the headline keys (``serve_vs_fastapi_qps_median``,
``serve_vs_fastapi_p99_median``) are the medians over runs. Code queries (packed code +
query-adaptive weights, ``mode=qadwh``) and image queries (PNG in base64
JSON, encoded by the model) are measured separately; every answer of both
servers is checked against the other's (ids and distances identical).

The index: ``--items`` items in ``--shards`` shards, ``--bits``-bit codes. Its
codes are a **synthetic stand-in** built from real images: a spread untrained
model encodes ``--bases`` real Fashion-MNIST images, and item ``i`` has the
code of base ``i % bases`` with every bit flipped with probability 0.03
(clusters of near-duplicates, as augmented copies give). Queries are other
real images, encoded by the same model. Timings say nothing about retrieval
quality (see docs/results.md for trained models).

Last line: one JSON object (``serve_vs_fastapi_qps`` = serve/fastapi
throughput, ``serve_vs_fastapi_p99`` = serve/fastapi p99 latency; the worse of
code and image queries; per run in ``runs``, median over runs in the
``*_median`` keys).

    .venv/bin/python benchmarks/serve_bench.py                      # 1M items, 2 shards, 3 runs
    .venv/bin/python benchmarks/serve_bench.py --items 100000 --rounds 1 --runs 1   # quick
"""

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# --------------------------------------------------------------------- baseline server


def make_baseline_app(root: str, version: str):
    """The single-process FastAPI server a user would write around the core index."""
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    from qadwh_ray.data.transforms import ImageDecodeError, decode_image
    from qadwh_ray.index import open_index
    from qadwh_ray.model import encode, load_checkpoint

    reader = open_index(root, version)
    index = reader.load_all()
    model = load_checkpoint(reader.manifest.checkpoint["uri"])
    import torch

    torch.set_num_threads(1)
    dwh = model.dwh_weights().detach().float().numpy()
    app = FastAPI()

    class Body(BaseModel):
        image_base64: str | None = None
        code: str | None = None
        weights: list[float] | None = None
        k: int = 10
        mode: str = "qadwh"

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/search")
    def search(b: Body):
        if b.image_base64 is not None:
            try:
                img = decode_image(base64.b64decode(b.image_base64), mode="L")
            except ImageDecodeError as exc:
                raise HTTPException(422, str(exc))
            enc = encode(model, img[None], batch_size=1)
            code, w = enc.codes, enc.qadwh_weights
        else:
            code = np.frombuffer(bytes.fromhex(b.code), dtype=np.uint8).reshape(1, -1)
            w = None if b.weights is None else np.asarray(b.weights)[None, :]
        weights = {"qadwh": w, "dwh": dwh, "hamming": None}[b.mode]
        d, ids = index.search(code, b.k, weights, mode=b.mode, num_threads=1)
        keep = ids[0] >= 0
        out_ids = ids[0][keep]
        labels = index.labels_of(out_ids)
        return {
            "version": version,
            "ids": out_ids.tolist(),
            "distances": d[0][keep].tolist(),
            "labels": [np.flatnonzero(r).tolist() for r in labels],
        }

    return app


def run_baseline_server(root: str, version: str, port: int) -> None:
    import uvicorn

    uvicorn.run(make_baseline_app(root, version), host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)


def noop_probe_app():
    """The same topology doing no work (ingress -> 2 leaves): Serve's own floor on this machine."""
    import asyncio as _asyncio

    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    class Leaf:
        async def search(self, x):
            return {"ok": True}

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
    @serve.ingress(app)
    class Ingress:
        def __init__(self, a, b):
            self.leaves = [a, b]

        @app.post("/v1/search")
        async def search(self):
            await _asyncio.gather(*(h.search.remote(1) for h in self.leaves))
            return {"ids": [], "distances": []}

    return Ingress.bind(Leaf.options(name="leaf-0").bind(), Leaf.options(name="leaf-1").bind())


# --------------------------------------------------------------------- data


def free_port() -> int:
    """A port Serve's HTTP listener binds later (outside the ranges where it could be taken first)."""
    from qadwh_ray.serving.cluster_env import listen_port

    return listen_port()


def spread_checkpoint(path: str, nbits: int, seed: int = 0) -> str:
    """A small untrained model whose hash bits split real images about in half and
    whose class-wise weights are random positive (so QaDWH weights vary by query)."""
    import torch

    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.transforms import to_float_tensor
    from qadwh_ray.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(ModelConfig(nbits=nbits)).eval()
    images, _ = load_fashion_mnist()
    sample = images[np.random.default_rng(seed).choice(images.shape[0], 512, replace=False)]
    with torch.no_grad():
        f = model.backbone(to_float_tensor(sample, model.config.mean, model.config.std))
        model.hash_head.bias.copy_(-(f @ model.hash_head.weight.T).median(dim=0).values)
        z = f @ model.class_head.weight.T
        scale = 3.0 / (z.std(dim=0) + 1e-6)
        model.class_head.weight.mul_(scale[:, None])
        model.class_head.bias.copy_(-(z * scale).mean(dim=0))
        g = torch.Generator().manual_seed(seed + 1)
        model.W.copy_(0.2 + 1.8 * torch.rand(model.W.shape, generator=g))
    save_checkpoint(path, model)
    return path


def build_bench_index(work: str, items: int, shards: int, nbits: int, bases: int, log) -> tuple[str, str, str]:
    from qadwh_ray.data.fashion import CLASS_NAMES, load_fashion_mnist
    from qadwh_ray.model import encode, load_checkpoint
    from qadwh_ray.index import checkpoint_record, write_index
    from qadwh_ray.model.checkpoint import load_payload

    params = {"items": items, "shards": shards, "nbits": nbits, "bases": bases, "format": 1}
    marker = os.path.join(work, "bench-index.json")
    if os.path.exists(marker):  # --workdir from an earlier run with the same parameters: reuse
        with open(marker) as f:
            saved = json.load(f)
        if saved.get("params") == params:
            log(f"reusing the index in {work} ({saved['version']})")
            return saved["root"], saved["version"], saved["checkpoint"]
    ck = spread_checkpoint(os.path.join(work, "model.pt"), nbits)
    images, labels = load_fashion_mnist()
    t = time.perf_counter()
    model = load_checkpoint(ck)
    base_codes = encode(model, images[:bases], batch_size=2048).codes
    log(f"encoded {bases} base images in {time.perf_counter() - t:.1f} s")
    rng = np.random.default_rng(0)
    ids = np.arange(items, dtype=np.int64)
    bits = np.unpackbits(base_codes[ids % bases], axis=1, bitorder="little")
    flips = rng.random(bits.shape) < 0.03
    flips[:, nbits:] = False  # padding bits stay 0
    codes = np.packbits(bits ^ flips, axis=1, bitorder="little")
    lab = np.zeros((items, 10), dtype=np.uint8)
    lab[ids, labels[ids % bases]] = 1
    t = time.perf_counter()
    root = os.path.join(work, "index")
    version = write_index(
        root,
        ids,
        codes,
        lab,
        num_shards=shards,
        checkpoint=checkpoint_record(load_payload(ck)),
        sources=[{"kind": "synthetic", "uri": f"fashion:{bases}-bases+3%-bit-flips", "rows": items}],
        class_names=CLASS_NAMES,
    ).version
    log(f"wrote {items} items in {shards} shards ({version}) in {time.perf_counter() - t:.1f} s")
    with open(marker, "w") as f:
        json.dump({"params": params, "root": root, "version": version, "checkpoint": ck}, f)
    return root, version, ck


def make_queries(ck: str, n: int, bases: int):
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.transforms import encode_png
    from qadwh_ray.model import encode, load_checkpoint

    images, _ = load_fashion_mnist()
    rows = np.random.default_rng(1).choice(np.arange(bases, images.shape[0]), n, replace=False)
    enc = encode(load_checkpoint(ck), images[rows])
    code_q = [{"code": c.tobytes().hex(), "weights": w.tolist(), "k": 10, "mode": "qadwh"} for c, w in zip(enc.codes, enc.qadwh_weights)]
    img_q = [{"image_base64": base64.b64encode(encode_png(im)).decode(), "k": 10, "mode": "qadwh"} for im in images[rows]]
    return code_q, img_q


# --------------------------------------------------------------------- load


async def run_load(url: str, bodies: list, n: int, concurrency: int) -> dict:
    import aiohttp

    lat: list = []
    errors: list = []
    answers: dict = {}
    todo = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as sess:

        async def worker():
            for i in todo:
                body = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    async with sess.post(url, json=body) as r:
                        data = await r.read()
                        status = r.status
                except Exception as exc:  # noqa: BLE001 — counted as an error
                    errors.append(str(exc)[:200])
                    continue
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"{status}: {data[:200]!r}")
                    continue
                if i < len(bodies):
                    got = json.loads(data)
                    answers[i] = (got["ids"], got["distances"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat_ms = np.asarray(lat) * 1e3
    return {
        "qps": len(lat) / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(lat_ms, 50)) if lat else None,
        "p99_ms": float(np.percentile(lat_ms, 99)) if lat else None,
        "errors": len(errors),
        "error_examples": errors[:3],
        "answers": answers,
    }


def wait_http(url: str, timeout: float = 300.0) -> None:
    import requests

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


# --------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--bases", type=int, default=20_000, help="real images whose codes seed the synthetic database")
    ap.add_argument("--queries", type=int, default=200, help="distinct queries of each kind")
    ap.add_argument("--code-requests", type=int, default=600, help="requests per server per round (code queries)")
    ap.add_argument("--image-requests", type=int, default=300, help="requests per server per round (image queries)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="whole measurements, each on a fresh local cluster")
    ap.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    ap.add_argument("--ingress", default="haproxy",
                    help="Serve ingress modes to measure, comma-separated (serving/cluster_env.py); the first gives the headline keys")
    ap.add_argument("--no-noop-probe", dest="noop_probe", action="store_false", help="skip measuring a no-op Serve app of the same topology")
    ap.add_argument("--workdir", help="keep the index here and reuse it on the next run with the same sizes (default: a temporary directory, deleted)")
    ap.add_argument("--baseline-server", nargs=3, metavar=("ROOT", "VERSION", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.baseline_server:
        run_baseline_server(a.baseline_server[0], a.baseline_server[1], int(a.baseline_server[2]))
        return 0

    def log(msg):
        print(f"[serve_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    from qadwh_ray.serving.cluster_env import check_ingress

    modes = [check_ingress(m.strip()) for m in a.ingress.split(",")]
    work = a.workdir or tempfile.mkdtemp(prefix="qadwh-serve-bench-")
    os.makedirs(work, exist_ok=True)
    baseline = None
    phases: dict = {}
    try:
        root, version, ck = build_bench_index(work, a.items, a.shards, a.bits, a.bases, log)
        code_q, img_q = make_queries(ck, a.queries, a.bases)

        fport = free_port()
        baseline = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--baseline-server", root, version, str(fport)],
            env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"},
        )
        wait_http(f"http://127.0.0.1:{fport}/healthz")
        for run in range(a.runs):
            for mode in modes:  # the ingress is a cluster-wide setting: one fresh local cluster per mode and run
                log(f"run {run + 1} of {a.runs}, ingress {mode}")
                phases.setdefault(mode, []).append(
                    measure_mode(a, mode, root, code_q, img_q, f"http://127.0.0.1:{fport}/v1/search", log))
    finally:
        if baseline is not None:
            baseline.terminate()
            try:
                baseline.wait(timeout=20)
            except subprocess.TimeoutExpired:
                baseline.kill()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    out = {
        "benchmark": "serve_vs_fastapi",
        "items": a.items,
        "shards": a.shards,
        "bits": a.bits,
        "codes": "synthetic stand-in (real-image codes + 3% bit flips)",
        "concurrency": a.concurrency,
        "rounds": a.rounds,
        "runs_requested": a.runs,
        "requests_per_round": {"code": a.code_requests, "image": a.image_requests},
        "ingress_modes": modes,
        "headline_ingress": modes[0],
        "load_avg_end": round(os.getloadavg()[0], 2),
    }
    for n, mode in enumerate(modes):
        prefix = "" if n == 0 else f"{mode}_"  # the first mode (the default deployment) has the plain key names
        runs = [run_figures(ph, mode) for ph in phases[mode]]
        out[f"{prefix}runs"] = runs
        for key in ("serve_vs_fastapi_qps", "serve_vs_fastapi_p99", "code_serve_vs_fastapi_qps",
                    "code_serve_vs_fastapi_p99", "image_serve_vs_fastapi_qps", "image_serve_vs_fastapi_p99"):
            out[f"{prefix}{key}_median"] = round(statistics.median(r[key] for r in runs), 3)
        out[f"{prefix}errors"] = sum(r["errors"] for r in runs)
        out[f"{prefix}answer_mismatches"] = sum(r["answer_mismatches"] for r in runs)
    if len(modes) > 1:  # the fast ingress against the classic proxy, each against the same baseline server
        for kind in ("code", "image"):
            a_, b_ = (statistics.median(r[f"{kind}_serve_qps"] for r in out[f"{p}runs"]) for p in ("", f"{modes[1]}_"))
            out[f"{kind}_{modes[0]}_vs_{modes[1]}_qps"] = round(a_ / b_, 3)
    out["targets"] = {
        "serve_vs_fastapi_qps_median>=0.6": out["serve_vs_fastapi_qps_median"] >= 0.6,
        "serve_vs_fastapi_p99_median<=2.0": out["serve_vs_fastapi_p99_median"] <= 2.0,
        "no_errors_no_mismatches": out["errors"] == 0 and out["answer_mismatches"] == 0,
    }
    print(json.dumps(out))
    return 0


def run_figures(ph: dict, mode: str) -> dict:
    """One run's figures: per kind of query, each server's medians over rounds and the serve/fastapi ratios."""
    out: dict = {}
    ratios_qps, ratios_p99 = [], []
    for kind, r in ph["results"].items():
        s, f = r["serve"], r["fastapi"]
        q = s["qps"] / f["qps"] if f["qps"] else None
        p = s["p99_ms"] / f["p99_ms"] if f["p99_ms"] else None
        ratios_qps.append(q)
        ratios_p99.append(p)
        print(
            f"[{mode:7s}] {kind:5s} queries  serve {s['qps']:7.1f} q/s p50 {s['p50_ms']:6.1f} ms p99 {s['p99_ms']:6.1f} ms | "
            f"fastapi {f['qps']:7.1f} q/s p50 {f['p50_ms']:6.1f} ms p99 {f['p99_ms']:6.1f} ms | qps x{q:.2f} p99 x{p:.2f}"
        )
        for name in ("serve", "fastapi"):
            for key in ("qps", "p50_ms", "p99_ms", "errors"):
                v = r[name][key]
                out[f"{kind}_{name}_{key}"] = round(v, 2) if isinstance(v, float) else v
        out[f"{kind}_serve_vs_fastapi_qps"] = round(q, 3)
        out[f"{kind}_serve_vs_fastapi_p99"] = round(p, 3)
    out["serve_vs_fastapi_qps"] = round(min(ratios_qps), 3)
    out["serve_vs_fastapi_p99"] = round(max(ratios_p99), 3)
    if ph["noop"] is not None:
        out["serve_noop_qps"] = round(ph["noop"], 1)  # Serve's floor: ingress + 2 leaf calls doing nothing
        out["code_serve_vs_noop_qps"] = round(ph["results"]["code"]["serve"]["qps"] / ph["noop"], 3)
    if ph.get("cpu_ms_per_code_query"):
        out["cpu_ms_per_code_query"] = ph["cpu_ms_per_code_query"]
    out["errors"] = sum(r[nm]["errors"] for r in ph["results"].values() for nm in ("serve", "fastapi"))
    out["answer_mismatches"] = ph["mismatches"]
    out["image_answer_differences"] = ph["image_diffs"]
    out["load_avg_end"] = ph["load_avg_end"]
    return out


def cpu_by_process() -> dict:
    """CPU seconds so far of every process on the machine, by command line (for where-the-time-goes figures)."""
    import psutil

    got = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            t = p.cpu_times()
            got[p.info["pid"]] = (t.user + t.system, " ".join(p.info["cmdline"] or [])[:60])
        except (psutil.Error, OSError):
            pass
    return got


def measure_mode(a, mode: str, root: str, code_q: list, img_q: list, fastapi_url: str, log) -> dict:
    """Start a local cluster with ``mode``'s ingress, deploy the service, run the alternating rounds."""
    import ray
    from ray import serve

    from qadwh_ray.serving.app import build_app
    from qadwh_ray.serving.cluster_env import local_cluster_env

    with local_cluster_env(mode):  # set for this cluster's start only: the next phase starts clean
        ray.init(address="local", num_cpus=a.ray_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        sport = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": sport})
        args = {
            "index": root,
            "poll_interval_s": 30.0,
            "max_k": 100,
            "router": {"num_cpus": 0.25, "min_replicas": 1, "max_replicas": 1},
            "encoder": {"num_cpus": 0.25, "min_replicas": 1, "max_replicas": 1, "max_batch_size": 8, "batch_wait_timeout_s": 0.002},
            "shard": {"num_cpus": 0.25, "min_replicas": 1, "max_replicas": 1, "search_threads": 1},
        }
        t = time.perf_counter()
        serve.run(build_app(args), name="bench", route_prefix="/", logging_config={"enable_access_log": False, "log_level": "WARNING"})
        wait_http(f"http://127.0.0.1:{sport}/readyz")
        log(f"[{mode}] service up ({time.perf_counter() - t:.0f} s); load: {a.concurrency} concurrent clients")
        urls = {"serve": f"http://127.0.0.1:{sport}/v1/search", "fastapi": fastapi_url}

        for url in urls.values():  # warm-up (kernels, first batches)
            asyncio.run(run_load(url, code_q, 40, a.concurrency))
            asyncio.run(run_load(url, img_q, 40, a.concurrency))

        import requests

        for body in (code_q[0], img_q[0]):  # where the time goes, one request at a time
            t0 = time.perf_counter()
            dbg = requests.post(urls["serve"], json={**body, "debug": True}, timeout=60).json().get("debug", {})
            dbg.pop("weights", None)
            log(f"[{mode}] serve breakdown ({(time.perf_counter() - t0) * 1e3:.1f} ms at the client): {json.dumps(dbg)}")

        # CPU per code query, by process (which hop costs what), outside the timed rounds.
        before = cpu_by_process()
        asyncio.run(run_load(urls["serve"], code_q, a.code_requests, a.concurrency))
        after = cpu_by_process()
        per = sorted(((after[p][0] - before[p][0], after[p][1]) for p in after if p in before), reverse=True)[:6]
        cpu_ms = {name.split()[0] if not name.startswith("ray::") else name.strip(): round(c / a.code_requests * 1e3, 2) for c, name in per}
        log(f"[{mode}] CPU ms per code query by process: {json.dumps(cpu_ms)}")

        results: dict = {}
        mismatches = 0
        image_diffs = 0
        for kind, bodies, n in (("code", code_q, a.code_requests), ("image", img_q, a.image_requests)):
            per_server = {"serve": [], "fastapi": []}
            for r in range(a.rounds):
                order = ["serve", "fastapi"] if r % 2 == 0 else ["fastapi", "serve"]
                for name in order:
                    res = asyncio.run(run_load(urls[name], bodies, n, a.concurrency))
                    per_server[name].append(res)
                    log(f"[{mode}] {kind} round {r + 1} {name:7s}: {res['qps']:7.1f} q/s  p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  errors {res['errors']}")
            s_ans, f_ans = per_server["serve"][-1]["answers"], per_server["fastapi"][-1]["answers"]
            diff = sum(1 for i in s_ans.keys() & f_ans.keys() if s_ans[i] != f_ans[i])
            if kind == "code":
                mismatches += diff  # exact inputs: answers must be identical
            else:
                image_diffs = diff  # batched vs single-image float32 encoding may move weights in the last bits
            results[kind] = {
                name: {
                    "qps": statistics.median(x["qps"] for x in per_server[name]),
                    "p50_ms": statistics.median(x["p50_ms"] for x in per_server[name]),
                    "p99_ms": statistics.median(x["p99_ms"] for x in per_server[name]),
                    "errors": sum(x["errors"] for x in per_server[name]),
                    "error_examples": [e for x in per_server[name] for e in x["error_examples"]][:3],
                }
                for name in per_server
            }
        noop = None
        if a.noop_probe:
            serve.run(noop_probe_app(), name="noop", route_prefix="/noop", logging_config={"enable_access_log": False, "log_level": "WARNING"})
            nurl = f"http://127.0.0.1:{sport}/noop/v1/search"
            wait_http_post(nurl)
            asyncio.run(run_load(nurl, [{}], 40, a.concurrency))
            noop = statistics.median(asyncio.run(run_load(nurl, code_q, a.code_requests, a.concurrency))["qps"] for _ in range(a.rounds))
            log(f"[{mode}] no-op Serve app, same topology and load: {noop:.1f} q/s")
        serve.shutdown()
    finally:
        ray.shutdown()
    return {"results": results, "noop": noop, "mismatches": mismatches, "image_diffs": image_diffs, "cpu_ms_per_code_query": cpu_ms,
            "load_avg_end": round(os.getloadavg()[0], 2)}


def wait_http_post(url: str, timeout: float = 120.0) -> None:
    """Wait until a freshly added route answers (the fast ingress learns new routes asynchronously)."""
    import requests

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if requests.post(url, json={}, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


if __name__ == "__main__":
    sys.exit(main())
