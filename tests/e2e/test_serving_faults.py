"""Faults and autoscaling under bounded load on 127.0.0.1.

* Every replica of a shard is killed under load: no answer is wrong or partial —
  every request either succeeds (the router retries on another or the
  restarted replica) or fails with a clear 503 JSON error. Counts are printed.
* A burst of concurrent requests scales the shard deployments up (within
  their bounds) and they scale back down afterwards.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest
import requests

import serving_support as S

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

APP = "qadwh-faults"
MAX_SHARD_REPLICAS = 3


@pytest.fixture(scope="module")
def service(ray_cluster, serving_index):
    fx = serving_index  # read-only here: shared with the API tests
    fast_metrics = {  # autoscaling metrics every 0.5 s instead of 10 s, so the test is short
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    }
    args = S.app_args(
        fx.root,
        auth_token_env=None,
        router={"max_ongoing_requests": 512, "env_vars": fast_metrics},
        shard={
            "env_vars": fast_metrics,
            "min_replicas": 1,
            "max_replicas": MAX_SHARD_REPLICAS,
            "target_ongoing_requests": 0.5,
            "upscale_delay_s": 0.5,
            "downscale_delay_s": 4.0,
            "look_back_period_s": 1.0,
        },
    )
    base = S.deploy(args, APP, "/faults")
    yield {"base": base, "fx": fx, "index": S.in_process_index(fx.root, fx.version)}
    S.teardown(APP)


def _cases(service, n=12):
    fx, idx = service["fx"], service["index"]
    rng = np.random.default_rng(0)
    out = []
    for j in rng.choice(fx.ids.size, n, replace=False):
        code = fx.codes[j]
        w = rng.uniform(0.2, 2.0, S.NBITS)
        mode = "qadwh" if j % 2 else "hamming"
        body = {"code": code.tobytes().hex(), "k": 25, "mode": mode}
        if mode == "qadwh":
            body["weights"] = w.tolist()
        d, ids = idx.search(code[None, :], 25, w[None, :] if mode == "qadwh" else None, mode=mode)
        out.append((body, ids[0].tolist(), d[0].tolist()))
    return out


def _run_load(base, cases, stop, log, threads):
    def worker(seed):
        sess = requests.Session()
        j = seed
        while not stop.is_set():
            body, ids, dist = cases[j % len(cases)]
            j += 1
            t0 = time.monotonic()
            try:
                r = sess.post(base + "/v1/search", json=body, timeout=120)
                log.append((t0, time.monotonic() - t0, r.status_code, r.json(), ids, dist))
            except (requests.RequestException, ValueError) as exc:
                log.append((t0, time.monotonic() - t0, -1, str(exc), ids, dist))

    ts = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(threads)]
    for t in ts:
        t.start()
    return ts


def _replica_actors(app: str, deployment: str):
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{app}#{deployment}#" in a["name"]]


def _running(app: str, deployment: str) -> int:
    from ray import serve

    st = serve.status().applications[app].deployments[deployment]
    return sum(n for state, n in st.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")


def test_killed_shard_replicas_under_load(service):
    import ray

    cases = _cases(service)
    stop = threading.Event()
    log: list = []
    ts = _run_load(service["base"], cases, stop, log, threads=4)
    try:
        time.sleep(3)
        victims = _replica_actors(APP, "shard-0")
        assert victims, "no shard-0 replica actor found"
        t_kill = time.monotonic()
        for v in victims:  # every replica of shard 0: the worst case (no replica left to fail over to)
            ray.kill(ray.get_actor(v["name"], namespace=v["namespace"]), no_restart=True)
        end = time.monotonic() + 90
        while time.monotonic() < end:  # until the service answers again for a while after the kill
            ok_after = [e for e in list(log) if e[0] > t_kill + 0.5 and e[2] == 200]
            if len(ok_after) >= 30:
                break
            time.sleep(0.3)
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=150)
    statuses = Counter(e[2] for e in log)
    around = [e for e in log if e[0] + e[1] >= t_kill]
    for t0, dt, status, body, ids, dist in log:
        assert status in (200, 503), (status, body)
        if status == 200:  # never a wrong or partial answer
            assert body["ids"] == [i for i in ids if i >= 0] and body["distances"] == [x for x, i in zip(dist, ids) if i >= 0]
        else:
            assert body["error"] == "unavailable" and body["detail"]
    ok_after = [e for e in log if e[0] > t_kill and e[2] == 200]
    assert len(ok_after) >= 30, f"the service did not recover after the kill: {statuses}"
    worst = max(e[1] for e in around) if around else 0.0
    print(
        f"\n{len(victims)} shard-0 replica(s) killed under load: {len(log)} requests: {statuses.get(200, 0)} succeeded, "
        f"{statuses.get(503, 0)} failed with 503; {len(around)} were in flight or started after the kill, "
        f"slowest of those {worst:.2f} s"
    )


def _wait_min_replicas(timeout=120.0):
    end = time.monotonic() + timeout
    now = {}
    while time.monotonic() < end:
        now = {f"shard-{i}": _running(APP, f"shard-{i}") for i in range(2)}
        if all(v == 1 for v in now.values()):
            return now
        time.sleep(1)
    return now


def test_shards_scale_up_under_a_burst_and_back_down(service):
    start = _wait_min_replicas()  # the kill test may have left extra replicas behind
    assert all(v == 1 for v in start.values()), start
    cases = _cases(service, 8)
    stop = threading.Event()
    log: list = []
    peak = {f"shard-{i}": 1 for i in range(2)}
    t0 = time.monotonic()
    ts = _run_load(service["base"], cases, stop, log, threads=24)
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end:
            for dep in peak:
                peak[dep] = max(peak[dep], _running(APP, dep))
            if any(v > 1 for v in peak.values()):
                break
            time.sleep(0.5)
    finally:
        t_up = time.monotonic() - t0
        stop.set()
        for t in ts:
            t.join(timeout=150)
    assert any(v > 1 for v in peak.values()), f"no shard deployment scaled up under the burst: {peak}"
    assert all(v <= MAX_SHARD_REPLICAS for v in peak.values()), peak
    bad = [e for e in log if e[2] != 200]
    assert not bad, f"{len(bad)} failed requests during the burst: {bad[:2]}"
    t1 = time.monotonic()
    now = _wait_min_replicas()
    assert all(v == 1 for v in now.values()), f"shards did not scale back down: {now}"
    print(
        f"\nburst of {len(log)} requests (24 clients): shard replicas peaked at {peak} after {t_up:.0f} s; "
        f"back to {now} {time.monotonic() - t1:.0f} s after the burst"
    )
