"""Live updates over real HTTP, with the index and its update log on the S3-compatible server.

One application serves a 1,000-item index in 2 shards from ``s3://``; updates go
through :mod:`qadwh_ray.client` (retries on 503 and lost connections). Every
search answer checked here is compared with brute force over the items *as of
the log position the answer reports*: the base version plus every logged
change up to that position, read back from the log.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest

import serving_support as S

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

APP = "qadwh-updates"
TOKEN = "updates-token-for-tests"
N_ITEMS = 1000
_S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="module")
def service(ray_cluster, s3_server, serving_index, tmp_path_factory):
    from qadwh_ray.client import Client

    bucket = s3_server.make_bucket()
    root = f"s3://{bucket}/index"
    rng = np.random.default_rng(17)
    rows = np.sort(rng.choice(70000, N_ITEMS, replace=False)).astype(np.int64)
    fx = S.build_index(root, serving_index.checkpoint, rows)
    d = tmp_path_factory.mktemp("updates")
    (d / "token").write_text(TOKEN)
    env = {k: os.environ[k] for k in _S3_ENV if k in os.environ}  # the endpoint and moto's test credentials
    args = S.app_args(root, auth_token_file=str(d / "token"), router={"env_vars": env}, shard={"env_vars": env},
                      encoder={"env_vars": env}, updates={"poll_interval_s": 0.2})
    base = S.deploy(args, APP, "/updates")
    client = Client(base, token=TOKEN, retries=20, backoff_s=0.2, max_backoff_s=3.0)
    yield {"base": base, "fx": fx, "root": root, "client": client, "bucket": bucket, "s3": s3_server}
    S.teardown(APP)


# ---------------------------------------------------------------- brute force at a log position


class States:
    """The items as of any log position: the base version plus the logged changes."""

    def __init__(self, service):
        fx = service["fx"]
        self.base = {int(i): (c.tobytes(), np.flatnonzero(lab).tolist()) for i, c, lab in zip(fx.ids, fx.codes, fx.labels)}
        self.root = service["root"]
        self.entries: list = []
        self.position = 0

    def refresh(self):
        from qadwh_ray.index.update_log import UpdateLog

        got, self.position = UpdateLog(self.root).read(self.position)
        self.entries += got

    def at(self, p: int) -> dict:
        if p > self.position:
            self.refresh()
        items = dict(self.base)
        for e in self.entries:
            if e.seq > p:
                break
            if e.op == "delete":
                items.pop(e.id, None)
            else:
                items[e.id] = (bytes.fromhex(e.code), list(e.labels or []))
        return items


def brute(items: dict, code: bytes, weights, mode: str, k: int, labels_any=None):
    from qadwh_ray.core.hamming import query_weights, reference_distances

    ids = np.asarray(sorted(items), dtype=np.int64)
    if labels_any:
        ids = np.asarray([i for i in ids.tolist() if set(items[i][1]) & set(labels_any)], dtype=np.int64)
    codes = np.frombuffer(b"".join(items[i][0] for i in ids.tolist()), np.uint8).reshape(-1, len(code))
    q = np.frombuffer(code, np.uint8)[None, :]
    d = reference_distances(q, codes, *query_weights(weights, mode, 1, len(code) * 8))[0]
    order = np.lexsort((ids, d))[:k]
    return ids[order].tolist(), d[order].tolist()


def check_answer(states: States, body: dict, answer) -> None:
    """``answer`` (a SearchResult) equals brute force over the items at its log position."""
    w = body.get("weights")
    mode = body.get("mode", "qadwh")
    weights = None if mode == "hamming" else np.asarray(w)[None, :]
    want = brute(states.at(answer.log_position), bytes.fromhex(body["code"]), weights, mode, body["k"], body.get("labels_any"))
    assert (answer.ids, answer.distances) == want, (answer.log_position, body)


def _search_body(rng, nbits=S.NBITS):
    code = rng.integers(0, 256, nbits // 8, dtype=np.uint8).tobytes().hex()
    if rng.random() < 0.5:
        return {"code": code, "mode": "hamming", "k": 15}
    body = {"code": code, "mode": "qadwh", "k": 25, "weights": rng.uniform(0.1, 2.0, nbits).tolist()}
    if rng.random() < 0.3:
        body["labels_any"] = [int(rng.integers(0, 10))]
    return body


def _query(body):
    from qadwh_ray.client import Query

    return Query(code=body["code"], mode=body["mode"], k=body["k"], weights=body.get("weights"), labels_any=body.get("labels_any"))


# ---------------------------------------------------------------- tests


def test_updates_are_durable_visible_at_once_and_searched_exactly(service):
    from PIL import Image

    from qadwh_ray.client import ServiceError
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.index.update_log import UpdateLog

    c, fx = service["client"], service["fx"]
    images, _ = load_fashion_mnist()
    free = int(np.setdiff1d(np.arange(70000), fx.ids)[5])
    img = images[free]
    up = c.put_item(800_001, image=img, labels=["Bag"])
    assert up.op == "put" and up.version == fx.version and up.log_position >= 1
    # durable before the answer: the change is in the log on S3 at that position
    entries, _ = UpdateLog(service["root"]).read(0, up.log_position)
    assert entries[-1].seq == up.log_position and entries[-1].id == 800_001 and entries[-1].labels == [8] and entries[-1].image
    # visible to the very next search (one router replica: it searches its own writes)
    code = bytes.fromhex(up.body["code"])
    r = c.search(code=code, mode="hamming", k=200)  # ties at distance 0 come in id order: room for all of them
    assert r.log_position >= up.log_position and 800_001 in r.ids and r.hits[r.ids.index(800_001)].distance == 0
    item = c.item(800_001)
    assert item["updated"] and item["labels"] == [8] and item["label_names"] == ["Bag"] and item["has_image"]
    import io
    import urllib.request

    req = urllib.request.Request(service["base"] + "/v1/items/800001/image", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.read()))), img)

    # a code, a replacement of an indexed item, a deletion
    c.put_item(800_002, code="a5c3", labels=[1, "Trouser"])
    replaced, deleted = int(fx.ids[0]), int(fx.ids[1])
    c.put_item(replaced, code="0ff0", labels=[])
    last = c.delete_item(deleted)
    got = c.item(replaced)
    assert got["code"] == "0ff0" and not got["labels"] and got["updated"]
    with pytest.raises(ServiceError) as e:
        c.item(deleted)
    assert e.value.status == 404
    with pytest.raises(ServiceError) as e:
        c.delete_item(deleted)
    assert e.value.status == 404
    r = c.search(code="a5c3", mode="hamming", k=3, labels_any=["Trouser"])
    assert r.ids[0] == 800_002 and r.log_position >= last.log_position

    # every answer equals brute force at its own log position
    states = States(service)
    rng = np.random.default_rng(3)
    for _ in range(12):
        body = _search_body(rng)
        check_answer(states, body, c.search(_query(body)))

    # bad updates: clear 4xx, nothing written
    from qadwh_ray.client import Client

    end = UpdateLog(service["root"]).end()
    for kw, status in ((dict(code="zz"), 422), (dict(code="a5c3", labels=["Spaceship"]), 422),
                       (dict(code="a5c3", labels=[10]), 422), (dict(image=b"not an image"), 422)):
        with pytest.raises(ServiceError) as e:
            c.put_item(800_003, **kw)
        assert e.value.status == status, (kw, e.value)
    with pytest.raises(ServiceError) as e:
        Client(service["base"], token="wrong").put_item(800_003, code="a5c3")
    assert e.value.status == 401
    assert UpdateLog(service["root"]).end() == end


def _writer(client, ids, rng, stop, acked, unsure, errors):
    """PUTs and DELETEs of its own ids, one at a time; records what was acknowledged."""
    from qadwh_ray.client import ServiceError

    live: set = set()
    while not stop.is_set():
        i = int(rng.choice(ids))
        try:
            if i in live and rng.random() < 0.35:
                try:
                    r = client.delete_item(i)
                    acked.append((i, "delete", None, None, r.log_position))
                except ServiceError as exc:
                    if exc.status != 404:  # 404: an earlier attempt whose answer was lost did delete it
                        raise
                    acked.append((i, "delete", None, None, None))
                live.discard(i)
            else:
                code = rng.integers(0, 256, S.NBITS // 8, dtype=np.uint8).tobytes().hex()
                labels = sorted(set(rng.integers(0, 10, 2).tolist()))
                r = client.put_item(i, code=code, labels=labels)
                acked.append((i, "put", code, labels, r.log_position))
                live.add(i)
        except ServiceError as exc:
            unsure.add(i)  # not acknowledged: it may or may not have been stored
            errors.append(str(exc))


def _searcher(client, rng, stop, answers, errors):
    from qadwh_ray.client import ServiceError

    while not stop.is_set():
        body = _search_body(rng)
        try:
            answers.append((body, client.search(_query(body))))
        except ServiceError as exc:
            errors.append(str(exc))


def _run(service, seconds_or_event, writers=2, searchers=3, during=None, client=None):
    client = client or service["client"]
    stop = threading.Event()
    acked, answers, w_err, s_err = [], [], [], []
    unsure: set = set()
    ts = []
    for n in range(writers):
        ids = np.arange(850_000 + 1000 * n, 850_000 + 1000 * n + 40)
        ts.append(threading.Thread(target=_writer, args=(client, ids, np.random.default_rng(n), stop, acked, unsure, w_err)))
    for n in range(searchers):
        ts.append(threading.Thread(target=_searcher, args=(client, np.random.default_rng(100 + n), stop, answers, s_err)))
    for t in ts:
        t.start()
    t0 = time.monotonic()
    try:
        if during is not None:
            during(acked)
        time.sleep(max(0.0, seconds_or_event - (time.monotonic() - t0)))
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=300)
    return acked, unsure, answers, w_err, s_err, time.monotonic() - t0


def _check_final_state(service, acked, unsure):
    from qadwh_ray.client import ServiceError
    from qadwh_ray.index.update_log import UpdateLog

    c = service["client"]
    final: dict = {}
    for i, op, code, labels, _ in acked:
        final[i] = (op, code, labels)
    for i, (op, code, labels) in final.items():
        if i in unsure:
            continue
        if op == "put":
            got = c.item(i)
            assert (got["code"], got["labels"] or []) == (code, labels), i
        else:
            with pytest.raises(ServiceError) as e:
                c.item(i)
            assert e.value.status == 404, i
    # every acknowledged position holds that change in the log, once
    entries, _ = UpdateLog(service["root"]).read(0)
    by_seq = {e.seq: e for e in entries}
    assert len(by_seq) == len(entries)
    for i, op, code, labels, pos in acked:
        if pos is not None:
            e = by_seq[pos]
            assert (e.id, e.op, e.code) == (i, op, code), pos
    return final


def test_killed_shards_and_router_lose_no_acknowledged_update(service):
    import ray

    def replicas(deployment):
        return [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{APP}#{deployment}#" in a["name"]]

    def kill(deployment):
        got = replicas(deployment)
        assert got, f"no {deployment} replica found"
        for a in got:
            ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)

    def chaos(acked):
        time.sleep(4)
        kill("shard-0")
        kill("shard-1")
        n = len(acked)
        end = time.monotonic() + 180
        while len(acked) < n + 10 and time.monotonic() < end:  # writes succeed again (replayed shards)
            time.sleep(0.5)
        kill("router")
        n = len(acked)
        end = time.monotonic() + 180
        while len(acked) < n + 10 and time.monotonic() < end:
            time.sleep(0.5)

    acked, unsure, answers, w_err, s_err, secs = _run(service, 8, during=chaos)
    S.wait_ready(service["base"], timeout=180)
    final = _check_final_state(service, acked, unsure)
    states = States(service)
    for body, answer in answers:
        check_answer(states, body, answer)
    print(f"\nkilled every shard replica, then the router, during {secs:.0f} s of updates and searches: "
          f"{len(acked)} updates acknowledged ({len(final)} items), {len(unsure)} unacknowledged, {len(answers)} searches "
          f"answered; client gave up on {len(w_err)} updates and {len(s_err)} searches")
    assert len(acked) > 20 and len(answers) > 20


def test_load_of_updates_and_searches_has_no_failures_and_one_position_per_answer(service):
    from qadwh_ray.client import Client

    S.wait_ready(service["base"], timeout=180)  # after the kill test: every replica back
    no_retries = Client(service["base"], token=TOKEN, retries=0, timeout_s=120)  # a 503 counts as a failure here
    acked, unsure, answers, w_err, s_err, secs = _run(service, 15, writers=2, searchers=4, client=no_retries)
    assert not w_err and not s_err and not unsure, (w_err[:2], s_err[:2])
    states = States(service)
    positions = Counter()
    for body, answer in answers:
        check_answer(states, body, answer)
        positions[answer.log_position] += 1
    _check_final_state(service, acked, unsure)
    print(f"\nload: {len(acked)} updates and {len(answers)} searches in {secs:.0f} s, 0 failed; every answer equals "
          f"brute force at its log position ({len(positions)} distinct positions)")
    assert len(positions) > 3


def test_folded_version_serves_the_same_items(service):
    """Fold the log into a new version (as an index build does), publish it: the service swaps
    to it and every item and answer is unchanged; the new version replays only what came after."""
    from qadwh_ray.index import IndexStore
    from qadwh_ray.index.update_log import UpdateLog
    from qadwh_ray.index_build.fold import fold_update_log

    c, fx, root = service["client"], service["fx"], service["root"]
    store = IndexStore(root)
    before_pos = UpdateLog(root).end()
    states = States(service)
    items = states.at(before_pos)
    v2 = S.build_index(root, fx.checkpoint, fx.ids, publish=False).version
    m = fold_update_log(store, store.read_manifest(v2, staged=True), store.read_manifest(fx.version))
    store.write_staged_manifest(m)
    store.publish(v2, m)
    assert m.log_position == before_pos and m.num_items == len(items)
    c.wait_version(v2, timeout_s=180)
    after = c.put_item(800_009, code="1234", labels=[2])  # replayed on top of v2
    rng = np.random.default_rng(9)
    for _ in range(10):
        body = _search_body(rng)
        r = c.search(_query(body))
        assert r.version == v2 and r.log_position >= after.log_position
        check_answer(states, body, r)
    info = c.index()
    assert info["log_base"] == before_pos and info["log_position"] >= after.log_position
    some = random.Random(0).sample(sorted(items), 5)
    for i in some:
        assert bytes.fromhex(c.item(i)["code"]) == items[i][0]


def test_dashboard_metrics_reach_prometheus(service, ray_cluster):
    """Every series the Grafana dashboard and the alert rules query is exported by Ray's metrics agent."""
    import sys

    import ray
    import requests

    from qadwh_ray.client import Query

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "unit"))
    from test_observability import _SERIES, queries

    c, fx = service["client"], service["fx"]
    c.search(image=fx.images[0], k=3)
    c.search_batch([Query(item=int(fx.ids[2])), Query(code="ffff", mode="hamming")])
    c.put_item(800_100, code="00ff", labels=[1])
    want = {m for e in queries() for m in _SERIES.findall(e)} - {"ray_qadwh_backend_retries_total"}  # only after a retry
    port = ray._private.worker.global_worker.node.metrics_export_port
    text, missing = "", want
    end = time.monotonic() + 90
    while time.monotonic() < end:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        except requests.RequestException:
            text = ""
        missing = {m for m in want if not re.search(rf"^{m}\{{", text, re.M)}
        if not missing:
            break
        time.sleep(3)
    if not text:
        pytest.skip(f"Ray's metrics agent does not answer on 127.0.0.1:{port} in this cluster")
    assert not missing, sorted(missing)
    assert re.search(r'^ray_qadwh_requests_total\{[^}]*application="' + APP, text, re.M)


def test_readme_client_example_runs_as_written(service, tmp_path, monkeypatch):
    """The README's "Searching from Python" block, run against this service (its URL and
    token substituted, an item id of this index for 123, real image files)."""
    import re as _re
    from pathlib import Path

    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.transforms import encode_png

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Searching from Python", 1)[1]
    code = _re.search(r"```python\n(.*?)```", section, _re.S).group(1)
    code = code.replace('"http://127.0.0.1:8000"', repr(service["base"])).replace("token=None", f"token={TOKEN!r}")
    code = code.replace("item=123", f"item={int(service['fx'].ids[7])}")
    images, _ = load_fashion_mnist()
    for name, row in (("shoe.png", 69_001), ("bag.png", 69_002), ("new-bag.png", 69_003)):
        (tmp_path / name).write_bytes(encode_png(images[row]))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 — the documented example itself
    assert scope["hits"].version == service["client"].index()["version"] and len(scope["hits"]) == 10
    assert all(set(h.label_names) & {"Sneaker", "Sandal"} for h in scope["hits"])
    assert scope["up"].op == "put" and len(scope["batch"].results) == 2


def test_qadwh_search_command(service, capsys, monkeypatch):
    """`qadwh search` answers through the client: a table, or the JSON answer with --json."""
    from qadwh_ray.cli import main

    monkeypatch.setenv("QADWH_SERVE_TOKEN", TOKEN)
    item = int(service["fx"].ids[3])
    assert main(["search", "--url", service["base"], "--item", str(item), "--k", "4", "--mode", "hamming", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = service["client"].search(item=item, k=4, mode="hamming")
    assert [r["id"] for r in out["results"]] == want.ids and out["log_position"] >= 0
    assert main(["search", "--url", service["base"], "--code", "00ff", "--mode", "hamming", "--labels-any", "Bag,Sneaker"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("version ") and len(table) == 2 + 10 and all(("Bag" in ln or "Sneaker" in ln) for ln in table[2:])
    monkeypatch.delenv("QADWH_SERVE_TOKEN")
    assert main(["search", "--url", service["base"], "--item", str(item)]) == 2  # no token: a clear error, exit 2
    assert "401" in capsys.readouterr().err
