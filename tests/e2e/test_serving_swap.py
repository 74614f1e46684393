"""Index swaps without a failed request, and pinning / rolling back to a named version.

Two versions built from *different* checkpoints and disjoint item ids (even vs
odd Fashion-MNIST rows): an answer that mixed versions — shards of both, or
the encoder of one with the index of the other — would show ids of both
parities or a query code that neither model makes, and would not equal the
in-process search of the version it names.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

import serving_support as S

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

APP = "qadwh-swap"
TOKEN = "swap-admin-token"


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("serving-swap")
    ck1 = S.make_checkpoint(str(d / "model-1.pt"), seed=0)
    ck2 = S.make_checkpoint(str(d / "model-2.pt"), seed=5)
    root = str(d / "index")
    v1 = S.build_index(root, ck1, np.arange(0, 4000, 2, dtype=np.int64))
    # the next nightly version, built and staged but not yet published (CURRENT still -> v1)
    v2 = S.build_index(root, ck2, np.arange(1, 4001, 2, dtype=np.int64), publish=False)
    tok = d / "token"
    tok.write_text(TOKEN)
    args = S.app_args(root, auth_token_file=str(tok), swap_grace_s=3.0)
    base = S.deploy(args, APP, "/swap")
    sess = requests.Session()
    sess.headers["Authorization"] = f"Bearer {TOKEN}"
    yield {"base": base, "root": root, "v1": v1, "v2": v2, "args": args, "s": sess, "ck": {v1.version: ck1, v2.version: ck2}}
    S.teardown(APP)


class Checker:
    """Expected answers per (version, query), computed in-process."""

    def __init__(self, service):
        from qadwh_ray.model import encode, load_checkpoint

        self.svc = service
        self.index = {}
        self.enc = {}
        from qadwh_ray.data.fashion import load_fashion_mnist

        images, _ = load_fashion_mnist()
        self.images = images[[10001, 10003, 10005, 10007]]  # not indexed by either version (ids < 4001)
        for fx in (service["v1"], service["v2"]):
            self.enc[fx.version] = encode(load_checkpoint(service["ck"][fx.version]), self.images)
        self.code = service["v1"].codes[5]
        self.weights = np.linspace(0.5, 2.0, S.NBITS)

    def requests(self):
        out = []
        for i in range(len(self.images)):
            out.append(("image", i, "qadwh" if i % 2 == 0 else "hamming"))
        out.append(("code", 0, "qadwh"))
        out.append(("code", 0, "hamming"))
        return out

    def send(self, sess, base, req):
        kind, i, mode = req
        if kind == "image":
            return sess.post(base + "/v1/search", files={"image": ("q.png", S.png(self.images[i]), "image/png")}, data={"k": "20", "mode": mode, "debug": "1"}, timeout=60)
        body = {"code": self.code.tobytes().hex(), "k": 20, "mode": mode, "debug": True}
        if mode == "qadwh":
            body["weights"] = self.weights.tolist()
        return sess.post(base + "/v1/search", json=body, timeout=60)

    def check(self, req, got: dict) -> None:
        kind, i, mode = req
        v = got["version"]
        assert v in self.enc, v
        if v not in self.index:  # read once the version is published
            self.index[v] = S.in_process_index(self.svc["root"], v)
        parity = {self.svc["v1"].version: 0, self.svc["v2"].version: 1}[v]
        assert all(x % 2 == parity for x in got["ids"]), f"answer mixes versions: {got['ids']}"
        if kind == "image":
            enc = self.enc[v]
            assert got["query"]["code"] == enc.codes[i].tobytes().hex(), "query encoded by another version's model"
            code = enc.codes[i]
            w = None if mode == "hamming" else np.asarray(got["debug"]["weights"])[None, :]
            if w is not None:
                np.testing.assert_allclose(w[0], enc.qadwh_weights[i], rtol=2e-4)
        else:
            code = self.code
            w = None if mode == "hamming" else self.weights[None, :]
        d, ids = self.index[v].search(code[None, :], 20, w, mode=mode)
        assert got["ids"] == ids[0][ids[0] >= 0].tolist()
        assert got["distances"] == d[0][ids[0] >= 0].tolist()


def _load(service, checker, stop: threading.Event, log: list, threads: int = 4):
    base = service["base"]
    reqs = checker.requests()

    def worker(seed):
        sess = requests.Session()
        sess.headers["Authorization"] = f"Bearer {TOKEN}"
        j = seed
        while not stop.is_set():
            req = reqs[j % len(reqs)]
            j += 1
            t0 = time.monotonic()
            try:
                r = checker.send(sess, base, req)
                log.append((t0, time.monotonic(), req, r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text))
            except requests.RequestException as exc:
                log.append((t0, time.monotonic(), req, -1, str(exc)))

    ts = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(threads)]
    for t in ts:
        t.start()
    return ts


def test_publish_under_load_has_zero_failed_requests(service):
    from qadwh_ray.index.store import IndexStore

    checker = Checker(service)
    v1, v2 = service["v1"].version, service["v2"].version
    stop = threading.Event()
    log: list = []
    ts = _load(service, checker, stop, log)
    try:
        time.sleep(3)
        t_publish = time.monotonic()
        IndexStore(service["root"]).publish(v2)  # the nightly job's publication: verify, move, then the pointer
        end = time.monotonic() + 120
        first_v2 = None
        while time.monotonic() < end:
            done_v2 = [e for e in list(log) if e[3] == 200 and e[4]["version"] == v2]
            if done_v2 and first_v2 is None:
                first_v2 = min(e[1] for e in done_v2)
            if first_v2 is not None and time.monotonic() - first_v2 > 3:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=90)
    failed = [e for e in log if e[3] != 200]
    assert not failed, f"{len(failed)} failed requests of {len(log)}: {failed[:3]}"
    assert first_v2 is not None, "the service never moved to the published version"
    versions = [e[4]["version"] for e in log]
    assert v1 in versions and v2 in versions
    for e in log:
        checker.check(e[2], e[4])
    late_v1 = [e for e in log if e[0] > first_v2 and e[4]["version"] == v1]
    assert not late_v1, "a request started after the switch was answered from the old version"
    n1, n2 = versions.count(v1), versions.count(v2)
    print(f"\nswap under load: {len(log)} requests, 0 failed; {n1} answered by {v1}, {n2} by {v2}; "
          f"switch {first_v2 - t_publish:.1f} s after publication")


def test_incompatible_version_is_refused_and_service_stays_up(service):
    """A version with more shards than shard deployments is not switched to; the old one keeps serving."""
    from qadwh_ray.index.store import IndexStore

    base, s = service["base"], service["s"]
    store = IndexStore(service["root"])
    cur = store.current_version()
    fx3 = S.build_index(service["root"], service["ck"][service["v1"].version], np.arange(0, 600, 2, dtype=np.int64), num_shards=3)
    try:
        end = time.monotonic() + 30
        info = {}
        while time.monotonic() < end:
            info = s.get(base + "/v1/index", timeout=30).json()
            if info.get("last_error"):
                break
            time.sleep(0.3)
        assert info["version"] == cur
        assert "3 shards" in (info["last_error"] or ""), info
        r = s.post(base + "/v1/search", json={"code": service["v1"].codes[0].tobytes().hex(), "mode": "hamming"}, timeout=60)
        assert r.status_code == 200 and r.json()["version"] == cur
    finally:
        store.set_current(cur)
    assert fx3.version != cur


def test_pin_and_roll_back(service):
    from qadwh_ray.index.store import IndexStore

    base, s = service["base"], service["s"]
    v1, v2 = service["v1"].version, service["v2"].version
    checker = Checker(service)
    store = IndexStore(service["root"])
    req = ("code", 0, "hamming")

    def answer():
        r = checker.send(s, base, req)
        assert r.status_code == 200, r.text
        got = r.json()
        checker.check(req, got)
        return got["version"]

    def wait_for(v, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if answer() == v:
                return
            time.sleep(0.3)
        raise AssertionError(f"service did not move to {v}")

    store.set_current(v2)
    wait_for(v2)
    # runtime pin through the admin API (token protected)
    r = s.put(base + "/v1/admin/index", json={"version": v1}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"pinned": v1, "active": v1}
    assert answer() == v1
    info = s.get(base + "/v1/index", timeout=30).json()
    assert info["following"] == "admin_pin" and info["pinned"] == v1
    r = s.put(base + "/v1/admin/index", json={"version": None}, timeout=60)
    assert r.status_code == 200 and r.json()["active"] == v2
    assert answer() == v2

    # roll back by moving the index's CURRENT pointer: the watcher follows
    store.set_current(v1)
    wait_for(v1)

    # pin through user_config. (serve.run gives every redeploy a new code version, so the
    # replicas are replaced in a rolling update; `serve deploy` of the same config with only
    # user_config changed calls reconfigure() on the running replicas instead.)
    from ray import serve

    from qadwh_ray.serving.app import build_app

    serve.run(build_app({**service["args"], "version": v2}), name=APP, route_prefix="/swap", logging_config={"enable_access_log": False})
    wait_for(v2)
    assert s.get(base + "/v1/index", timeout=30).json()["following"] == "user_config_pin"
