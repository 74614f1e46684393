"""Autoscaling exercised for real: Ray's autoscaler adding and removing nodes of a local cluster.

Ray's fake multi-node provider (``provider: type: fake_multinode``, what Ray's own autoscaler
tests and ``ray.cluster_utils.AutoscalingCluster`` use) starts each node the autoscaler
launches as a real raylet on this host, so Serve replicas, Train workers and the autoscaler
behave as on a cloud, minus the machines. The node types are ray-cluster.yaml's, scaled down:

    head        0 CPUs (no work lands on it)                 ray-cluster.yaml: head, 0 CPUs
    cpu-worker  2 CPUs, 1 to 3 nodes        (serving)                          cpu-worker, 16 CPUs, 1-12
    gpu-worker  1 CPU + 1 GPU + 1 "accelerator", 0 to 2 (training)             gpu-worker, 8 CPUs + 1 GPU, 0-8

(Training asks for ``accelerator``, standing in for the GPU: a fake node has no CUDA device to
train on. The GPU resource is there so that, as on a cloud, the autoscaler keeps CPU-only work
off GPU nodes.)

1. **Serve**: the query service (``qadwh_ray.serving.build_app``) over a small index, its router
   (the HTTP ingress) autoscaling 1 → 4 replicas of 1 CPU. A burst of concurrent queries makes Serve
   add replicas, the replicas that do not fit make the autoscaler add cpu-worker nodes; every
   query of the burst must answer 200; after the burst the replicas and then the nodes go away.
2. **Train**: ``jobs/train.py`` as its own driver (as ``ray job submit`` runs it), its 2 Ray Train
   workers each needing an ``accelerator`` while no gpu-worker node exists: the job waits
   (qadwh_ray.capacity: on an autoscaling cluster the missing workers are not an error), the
   autoscaler adds the nodes, the run finishes, and once the job has ended the nodes go away.

Autoscaler v1 (Ray 2.60's default outside KubeRay): v2 needs the fake provider's defaults file
that the ray wheel does not ship. The cluster runs on free ports with its own temp dir, so it
does not meet other Ray clusters on the host, and is stopped (its whole process session) at the
end. Prints one JSON line last: the timings and counts (docs/operations.md).

    python benchmarks/autoscaling_bench.py [--burst-s 60] [--clients 12]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IDLE_TIMEOUT_MIN = 0.25  # ray-cluster.yaml: 10 minutes
NODE_TYPES = {
    "cpu-worker": {"resources": {"CPU": 2, "object_store_memory": 150_000_000}, "node_config": {}, "min_workers": 1, "max_workers": 3},
    "gpu-worker": {"resources": {"CPU": 1, "GPU": 1, "accelerator": 1, "object_store_memory": 150_000_000}, "node_config": {},
                   "min_workers": 0, "max_workers": 2},
}
# The router is the deployment that sees the burst's concurrency (it coalesces the queries into
# one shard call at a time), so it is the one that scales: 1 -> 4 replicas of 1 CPU.
ROUTER = {"num_cpus": 1, "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2, "max_ongoing_requests": 32,
          "upscale_delay_s": 2, "downscale_delay_s": 10, "look_back_period_s": 15}  # > Serve's 10 s metrics interval
SCALED = "router"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ip() -> str:
    import ray._private.services as services

    return services.get_node_ip_address()


def autoscaling_config(gcs_address: str) -> dict:
    """A launcher config for the fake provider: every key the v1 autoscaler reads."""
    return {
        "cluster_name": "qadwh-fake",
        "max_workers": sum(t["max_workers"] for t in NODE_TYPES.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "launch_multiple": True, "gcs_address": gcs_address},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                                 **NODE_TYPES},
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class FakeCluster:
    """Head + autoscaler started with ``ray start --head --autoscaling-config``; the autoscaler starts the rest."""

    def __init__(self, workdir: str, token: str):
        self.dir = workdir
        self.port = _free_port()
        self.address = f"{_node_ip()}:{self.port}"
        cfg = os.path.join(workdir, "autoscaling.json")
        with open(cfg, "w") as f:
            json.dump(autoscaling_config(self.address), f)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        # `python -m` (not the `ray` script): every node's workers run this interpreter and this checkout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={self.port}",
             "--num-cpus=0", f"--autoscaling-config={cfg}", f"--temp-dir={workdir}/ray",
             "--include-dashboard=false", f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
             f"--ray-client-server-port={_free_port()}", "--object-store-memory=150000000", "--disable-usage-stats"],
            stdout=open(os.path.join(workdir, "head.log"), "w"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True, cwd=str(REPO),
        )

    def log_tail(self, n: int = 3000) -> str:
        try:
            return Path(self.dir, "head.log").read_text()[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop every process of the cluster's session (the autoscaler's nodes are in it too)."""
        sid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(sid, sig)
            except ProcessLookupError:
                pass
            end = time.monotonic() + wait
            while time.monotonic() < end and _session_pids(sid):
                time.sleep(0.5)
        for pid in _session_pids(sid):  # processes that made their own process group in the session
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


class Timeline:
    """Worker nodes alive (by type) and shard replicas, sampled every second."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append({"t": time.monotonic() - self.t0, **nodes_by_type(), "replicas": replicas()})
            except Exception:  # noqa: BLE001 — a sample missed while the controller is busy
                pass
            self._stop.wait(1.0)

    def first(self, pred, after: float = 0.0) -> float | None:
        return next((s["t"] for s in self.samples if s["t"] >= after and pred(s)), None)

    def peak(self, key: str) -> int:
        return max((s.get(key, 0) for s in self.samples), default=0)


def nodes_by_type() -> dict:
    import ray

    counts = {name: 0 for name in NODE_TYPES}
    for n in ray.nodes():
        if not n["Alive"]:
            continue
        res = n["Resources"]
        if "accelerator" in res:
            counts["gpu-worker"] += 1
        elif res.get("CPU", 0) > 0:
            counts["cpu-worker"] += 1
    return counts


def replicas() -> int:
    """Running replicas of the autoscaled deployment."""
    from ray import serve

    app = serve.status().applications.get("qadwh")
    if app is None:
        return 0
    dep = app.deployments.get(SCALED)
    if dep is None:
        return 0
    return int(sum(n for state, n in dep.replica_states.items() if str(state).endswith("RUNNING")))


def wait_until(pred, timeout: float, what: str, poll: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_index(root: str, workdir: str, items: int = 2000) -> str:
    """An untrained 16-bit model and an index of ``items`` Fashion-MNIST images in one shard."""
    import torch

    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.model import ModelConfig, build_model, encode, load_checkpoint, save_checkpoint
    from qadwh_ray.index import checkpoint_record, write_index
    from qadwh_ray.model.checkpoint import load_payload

    torch.manual_seed(0)
    ckpt = os.path.join(workdir, "model.pt")
    save_checkpoint(ckpt, build_model(ModelConfig(nbits=16)).eval())
    images, labels = load_fashion_mnist()
    rows = np.arange(items, dtype=np.int64)
    codes = encode(load_checkpoint(ckpt), images[rows]).codes
    lab = np.zeros((items, 10), np.uint8)
    lab[np.arange(items), labels[rows]] = 1
    return write_index(root, rows, codes, lab, num_shards=1, checkpoint=checkpoint_record(load_payload(ckpt)),
                       sources=[{"kind": "fashion", "uri": "fashion:all", "rows": items}]).version


def serve_phase(index_root: str, burst_s: float, clients: int) -> dict:
    import requests
    from ray import serve

    from qadwh_ray.serving.app import build_app

    port = _free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    args = {
        "index": index_root, "poll_interval_s": 2.0, "request_deadline_s": 30.0, "attempt_timeout_s": 15.0,
        "router": ROUTER,
        "encoder": {"num_cpus": 0.25, "min_replicas": 1, "max_replicas": 1},
        "shard": {"num_cpus": 0.5, "min_replicas": 1, "max_replicas": 1},
    }
    tl = Timeline().start()
    t_deploy = time.monotonic()
    serve.run(build_app(args), name="qadwh", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(base), 600, "the service to answer /readyz")
    deployed_s = time.monotonic() - t_deploy
    nodes_before = nodes_by_type()["cpu-worker"]

    # the burst: closed-loop clients, each query a code lookup by id; every answer must be 200
    codes: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    t_burst = time.monotonic() - tl.t0

    def client(seed: int):
        rng = np.random.default_rng(seed)
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(f"{base}/v1/search", json={"id": int(rng.integers(0, 2000)), "k": 10}, timeout=60)
                code = r.status_code
            except requests.RequestException:
                code = -1
            with lock:
                codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
    time.sleep(burst_s)
    stop.set()
    for th in threads:
        th.join(timeout=90)
    t_end = time.monotonic() - tl.t0

    # after the burst: replicas back to 1, then the extra nodes idle out
    wait_until(lambda: replicas() == 1, 600, f"the {SCALED} replicas to scale back to 1")
    t_replicas_down = time.monotonic() - tl.t0
    wait_until(lambda: nodes_by_type()["cpu-worker"] <= nodes_before, 600, "the extra cpu-worker nodes to go")
    t_nodes_down = time.monotonic() - tl.t0
    r = requests.post(f"{base}/v1/search", json={"id": 7, "k": 10}, timeout=60)
    tl.stop()
    serve.shutdown()
    up = tl.first(lambda s: s["cpu-worker"] > nodes_before, after=t_burst)
    more = tl.first(lambda s: s["replicas"] > 1, after=t_burst)
    return {
        "deploy_s": round(deployed_s, 1),
        "cpu_nodes_before": nodes_before,
        "cpu_nodes_peak": tl.peak("cpu-worker"),
        "scaled_deployment": SCALED,
        "replicas_peak": tl.peak("replicas"),
        "requests": int(sum(codes.values())),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "first_extra_replica_s": None if more is None else round(more - t_burst, 1),
        "first_extra_node_s": None if up is None else round(up - t_burst, 1),
        "replicas_back_to_1_s": round(t_replicas_down - t_end, 1),
        "nodes_back_s": round(t_nodes_down - t_end, 1),
        "answers_after": r.status_code,
    }


def _ready(base: str) -> bool:
    import requests

    try:
        return requests.get(base + "/readyz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def train_phase(workdir: str, address: str) -> dict:
    """jobs/train.py as its own driver, as ``ray job submit`` runs it: its workers need 2 gpu-worker
    nodes that do not exist yet; when the job ends, its actors go and so do the nodes."""
    from qadwh_ray.capacity import cluster_capacity
    from qadwh_ray.training.config import TrainConfig
    from qadwh_ray.ray_train.trainer import check_cluster

    settings = ["nbits=16", "epochs=1", "max_steps=4", "train_limit=2000", "num_workers=2", "cpus_per_worker=1",
                "worker_resources={accelerator: 1}"]
    gpu_nodes_before = nodes_by_type()["gpu-worker"]
    capacity = cluster_capacity()
    refused_on_current = None
    try:  # what a check against the current resources alone (the old behaviour) says
        check_cluster(TrainConfig(num_workers=2, cpus_per_worker=1, worker_resources={"accelerator": 1}), capacity.now)
    except ValueError as exc:
        refused_on_current = str(exc)
    tl = Timeline().start()
    t0 = time.monotonic()
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(REPO / "configs" / "fashion-compact.yaml"),
           *[a for kv in settings for a in ("--set", kv)], "--storage", os.path.join(workdir, "runs"), "--name", "autoscale"]
    env = dict(os.environ, RAY_ADDRESS=address)
    job = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=1800)
    trained_s = time.monotonic() - t0
    if job.returncode != 0:
        raise RuntimeError(f"jobs/train.py failed ({job.returncode}): {job.stdout[-2000:]}{job.stderr[-3000:]}")
    result = json.loads(job.stdout.strip().splitlines()[-1])
    waited = next((line for line in job.stdout.splitlines() if "wait for the nodes" in line), None)
    wait_until(lambda: nodes_by_type()["gpu-worker"] == 0, 600, "the gpu-worker nodes to go")
    gone_s = time.monotonic() - t0 - trained_s
    tl.stop()
    up = tl.first(lambda s: s["gpu-worker"] >= 2)
    return {
        "gpu_nodes_before": gpu_nodes_before,
        "capacity": capacity.describe(),
        "current_resources_would_refuse": refused_on_current,
        "job_said": waited,
        "gpu_nodes_peak": tl.peak("gpu-worker"),
        "both_workers_nodes_up_s": None if up is None else round(up, 1),
        "train_job_s": round(trained_s, 1),
        "steps": result.get("steps"),
        "total_steps": result.get("total_steps"),
        "checkpoint": bool(result.get("model_uri") or result.get("checkpoint")),
        "nodes_gone_after_s": round(gone_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--burst-s", type=float, default=60.0, help="seconds of query burst")
    ap.add_argument("--clients", type=int, default=12, help="concurrent query clients in the burst")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark stops its cluster (finally below)
    # token auth on, as on KubeRay, for the nodes and this driver; set before Ray reads its config,
    # and explicit, so that no ~/.ray/auth_token of another cluster on the host applies
    token = secrets.token_hex(32)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    import ray

    workdir = tempfile.mkdtemp(prefix="qadwh-as-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    cluster = FakeCluster(workdir, token)
    out: dict = {"node_types": NODE_TYPES, "idle_timeout_s": IDLE_TIMEOUT_MIN * 60}
    try:
        t0 = time.monotonic()
        index_root = os.path.join(workdir, "index")
        make_index(index_root, workdir)
        wait_until(lambda: _connect(cluster.address), 180, f"the head at {cluster.address}\n{cluster.log_tail()}", poll=2)
        wait_until(lambda: nodes_by_type()["cpu-worker"] >= 1, 300, "the min_workers cpu-worker node")
        out["cluster_start_s"] = round(time.monotonic() - t0, 1)
        out["serve"] = serve_phase(index_root, args.burst_s, args.clients)
        if not args.skip_train:
            out["train"] = train_phase(workdir, cluster.address)
        out["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        try:
            ray.shutdown()
        finally:
            cluster.stop()
            out["leftover_processes"] = len(_session_pids(cluster.proc.pid))
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, default=str))
    return 0


def _connect(address: str) -> bool:
    import ray

    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        return True
    except Exception:  # noqa: BLE001 — the head is not up yet
        return False


if __name__ == "__main__":
    sys.exit(main())
