"""Cluster operations on a real multi-node Ray cluster on 127.0.0.1.

``ray start --head`` (no CPUs: like ray-cluster.yaml's head, it runs job
drivers and Serve's proxy, no training work) plus a second node joined with
``ray start --address`` that carries the CPUs and a custom ``accelerator``
resource standing in for the GPU worker type. Jobs go through
``JobSubmissionClient`` exactly as ``ray job submit --working-dir .`` sends
them: train → index → evaluate → serve → nightly (retrain, re-index, verify,
publish, swap), each awaited to SUCCEEDED, with the service answering before
and after the nightly swap. Jobs with bad arguments end FAILED with a clear
message and publish nothing. The cluster's processes are stopped at the end,
also when a test fails (the session's own Ray cluster is left alone).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from serving_support import free_port
from qadwh_ray.serving.cluster_env import HAPROXY_ENV, HAPROXY_PORT_VARS

pytestmark = pytest.mark.timeout(1500)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
TRAIN_SETTINGS = ["nbits=16", "epochs=1", "max_steps=4", "train_limit=2000", "worker_resources={accelerator: 1}"]


def _ray_start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground; stopping its process group stops that node only
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *args],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _temp_dir(node: str, made: list[str]) -> str:
    # One per node: nodes sharing a host would otherwise share a session directory, and one
    # node's runtime-env agent re-extracting the job's working_dir pulls it from under the other.
    # Short paths: Ray's Unix socket paths must stay under ~100 characters.
    made.append(tempfile.mkdtemp(prefix=f"qadwh-{node}-", dir="/tmp"))
    return made[-1]


def _kill_session(sid: int) -> None:
    """Processes a node started in their own process group (HAProxy under its manager
    actor) outlive the node's group; they still carry its session id."""
    import psutil

    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                p.kill()
        except (OSError, psutil.Error):
            pass


def _stop(proc: subprocess.Popen) -> None:
    try:
        _stop_group(proc)
    finally:
        _kill_session(proc.pid)  # start_new_session=True: the node's session id is its pid


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _alive_nodes(dash: str, headers: dict) -> list[dict]:
    """The cluster's alive nodes; none while the dashboard does not answer (it drops connections on a loaded machine)."""
    try:
        r = requests.get(f"{dash}/api/v0/nodes", params={"limit": 100}, headers=headers, timeout=10)
        r.raise_for_status()
        nodes = r.json()["data"]["result"]["result"]
    except (requests.RequestException, ValueError, KeyError):
        return []
    return [n for n in nodes if n.get("state") == "ALIVE"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.job_submission import JobSubmissionClient

    d = tmp_path_factory.mktemp("multinode")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # Ray's token authentication on, as docs/operations.md asks of real clusters: the nodes and
    # the job drivers get the token from the environment, the test's HTTP clients send it.
    token = secrets.token_hex(32)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    env.update(HAPROXY_ENV)  # Serve's fast ingress, as ray-cluster.yaml starts its nodes
    env.update({var: str(free_port()) for var in HAPROXY_PORT_VARS})  # not the fixed ports other clusters here use
    headers = {"Authorization": f"Bearer {token}"}
    gcs, dash_port = free_port(), free_port()
    procs, temp_dirs = [], []
    try:
        procs.append(_ray_start([
            "--head", f"--port={gcs}", "--num-cpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}", f"--dashboard-agent-listen-port={free_port()}",
            "--object-store-memory=300000000", "--disable-usage-stats", f"--temp-dir={_temp_dir('head', temp_dirs)}",
        ], d / "head.log", env))
        dash = f"http://127.0.0.1:{dash_port}"
        deadline = time.monotonic() + 180
        client = None
        while time.monotonic() < deadline:
            try:
                client = JobSubmissionClient(dash, headers=headers)
                client.list_jobs()
                break
            except Exception:  # noqa: BLE001 — not up yet
                client = None
                time.sleep(2)
        assert client is not None, (d / "head.log").read_text()[-3000:]
        procs.append(_ray_start([
            f"--address=127.0.0.1:{gcs}", "--num-cpus=6", '--resources={"accelerator": 2}',
            f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=600000000", "--disable-usage-stats",
            f"--temp-dir={_temp_dir('worker', temp_dirs)}",
        ], d / "worker.log", env))
        while time.monotonic() < deadline and len(_alive_nodes(dash, headers)) < 2:
            time.sleep(2)
        nodes = _alive_nodes(dash, headers)
        assert len(nodes) == 2, (d / "worker.log").read_text()[-3000:]
        yield {"client": client, "dash": dash, "dir": d, "env": env}
    finally:
        for p in reversed(procs):
            _stop(p)
        for t in temp_dirs:
            shutil.rmtree(t, ignore_errors=True)


def _submit(cluster, entrypoint: list[str], timeout_s: float = 600) -> tuple[str, str]:
    """Submit like `ray job submit --working-dir .`; wait for a terminal status; (status, logs)."""
    client = cluster["client"]
    job = client.submit_job(
        entrypoint=" ".join(entrypoint),
        runtime_env={"working_dir": str(REPO), "excludes": [".venv", "runs", ".git", ".hypothesis", "artifacts", "*.egg-info"]},
    )
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job).value)
        if status in TERMINAL:
            break
        time.sleep(2)
    logs = client.get_job_logs(job)
    if status not in TERMINAL:
        client.stop_job(job)
    return status, logs


def _search(base: str, item_id: int) -> dict:
    r = requests.post(f"{base}/v1/search", json={"id": item_id, "k": 5}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_jobs_train_index_evaluate_serve_and_nightly_swap(cluster):
    from qadwh_ray.index.store import IndexStore

    d = cluster["dir"]
    runs, index, report = d / "runs", d / "index", d / "eval"
    sets = [f"--set '{s}'" for s in TRAIN_SETTINGS]

    status, logs = _submit(cluster, ["python jobs/train.py --config configs/fashion-compact.yaml", *sets,
                                     f"--storage {runs} --name qadwh-16"])
    assert status == "SUCCEEDED", logs[-4000:]
    assert "model checkpoint:" in logs and str(runs) in logs

    status, logs = _submit(cluster, [f"python jobs/index.py --checkpoint {runs / 'qadwh-16'} --source fashion:train",
                                     f"--out {index} --shards 2"])
    assert status == "SUCCEEDED", logs[-4000:]
    store = IndexStore(str(index))
    v1 = store.current_version()
    assert v1 and f"CURRENT -> {v1}" in logs
    assert store.read_manifest(v1).num_items == 5000  # the paper split's training part

    status, logs = _submit(cluster, [f"python jobs/evaluate.py --checkpoints {runs} --bits 16 --methods qadwh",
                                     f"--out {report}"])
    assert status == "SUCCEEDED", logs[-4000:]
    methods = {m["method"] for m in json.loads((report / "ablation.json").read_text())["metrics"]}
    assert {"QaDWH", "DWH", "LSH (features)", "ITQ (features)"} <= methods

    # the service, deployed by a job; it keeps running after the job's driver exits
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    status, logs = _submit(cluster, [
        f"python -m qadwh_ray.cli serve --index {index} --address auto --no-block --port {port} --proxy-location HeadOnly",
        "--set poll_interval_s=0.5",
    ])
    assert status == "SUCCEEDED", logs[-4000:]
    from qadwh_ray.index.reader import IndexReader

    item = int(IndexReader(str(index)).read_shard(0).ids[0])
    before = _search(base, item)
    assert before["version"] == v1 and len(before["ids"]) == 5

    # nightly: retrain, re-index, verify, publish, and the service swaps
    status, logs = _submit(cluster, [
        "python jobs/nightly.py --retrain --train-config configs/fashion-compact.yaml",
        *[f"--train-set '{s}'" for s in TRAIN_SETTINGS], f"--train-storage {runs} --run-name nightly-1",
        f"--out {index} --source fashion:train --shards 2 --map-queries 200 --map-tolerance 1.0",
        f"--service-url {base} --swap-timeout 120",
    ])
    assert status == "SUCCEEDED", logs[-4000:]
    v2 = store.current_version()
    assert v2 != v1 and f"now answers from version {v2}" in logs
    assert "manifest:" in logs
    after = _search(base, item)
    assert after["version"] == v2
    cluster["published"] = sorted(store.list_versions())
    cluster["index"] = index
    cluster["runs"] = runs


def test_jobs_with_bad_arguments_fail_with_a_clear_message_and_publish_nothing(cluster, tmp_path):
    from qadwh_ray.index.store import IndexStore
    from qadwh_ray.model import ModelConfig, build_model, save_checkpoint

    index = cluster.get("index") or tmp_path / "index"
    store = IndexStore(str(index))
    current, versions = store.current_version(), sorted(store.list_versions())
    ck16 = tmp_path / "m16.pt"
    save_checkpoint(str(ck16), build_model(ModelConfig(nbits=16)))
    # an S3 endpoint nobody listens on: unreachable storage
    dead = f"AWS_ENDPOINT_URL=http://127.0.0.1:{free_port()} AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_DEFAULT_REGION=us-east-1"
    cases = [
        ([f"python jobs/index.py --checkpoint {tmp_path / 'missing.pt'} --source fashion:query --out {index}"],
         "no checkpoint at"),
        ([f"python jobs/index.py --checkpoint {ck16} --data {tmp_path / 'nowhere'} --out {index}"], "no dataset at"),
        ([f"python jobs/nightly.py --checkpoint {tmp_path / 'missing'} --source fashion:query --out {index}"],
         "no checkpoint at"),
        ([f"env {dead} python jobs/train.py --set nbits=16 --storage s3://qadwh-nowhere/runs --name bad"],
         "s3://qadwh-nowhere/runs"),
        (["python jobs/train.py --set nbits=0 --name bad"], "between 1 and 4096 bits"),
    ]
    for entrypoint, message in cases:
        status, logs = _submit(cluster, entrypoint, timeout_s=300)
        assert status == "FAILED", (entrypoint, logs[-3000:])
        assert message in logs and "Traceback" not in logs, (entrypoint, logs[-3000:])
    assert store.current_version() == current and sorted(store.list_versions()) == versions
