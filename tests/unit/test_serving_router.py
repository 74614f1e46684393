"""The router's parts and the shard deployment's body, driven without Ray: plain objects with the
handles' interface stand in for the deployment handles (``handle.options()``,
``await handle.method.remote(*args)``), over a real local index and update log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from asgi_client import asgi_request

from qadwh_ray.core.live import LiveQuery
from qadwh_ray.serving.errors import ApiError
from qadwh_ray.serving.fanout import Backends, Coalescer, VersionGone

NBITS, NUM_CLASSES = 16, 3
CHECKPOINT = {"uri": "model.pt", "sha256": "a" * 64}


class Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class FakeHandle:
    """A deployment handle over a plain object: ``handle.m.remote(*a)`` awaits ``obj.m(*a)``."""

    def __init__(self, obj):
        self.obj = obj
        self.calls: list = []

    def options(self, **_):
        return self

    def __getattr__(self, name):
        fn = getattr(self.obj, name)

        async def call(*args):
            self.calls.append(name)
            out = fn(*args)
            return await out if asyncio.iscoroutine(out) else out

        return Method(call)


class FakeEncoder:
    """Stands in for the model: an image's code is a hash of its bytes; weights are fixed per image."""

    W = np.array([[1.0] * 8 + [2.0] * 8, [3.0] * 16, [0.5] * 16])

    async def describe(self, ref):
        return {"uri": ref["uri"], "sha256": ref["sha256"], "nbits": NBITS, "num_classes": NUM_CLASSES, "in_channels": 1,
                "image_size": 28, "dwh_weights": self.W.mean(axis=0)}

    async def encode(self, image, ref):
        if image == b"not an image":
            return {"ok": False, "error": "invalid_image", "detail": "the uploaded file is not a decodable image"}
        digest = hashlib.sha256(bytes(image)).digest()
        weights = 1.0 + np.frombuffer(digest[2:2 + NBITS], dtype=np.uint8) / 255.0
        return {"ok": True, "code": digest[:2], "weights": weights, "probs": np.array([0.2, 0.7, 0.1]), "batch_size": 1}

    async def label_weights(self, labels, ref):
        return {"ok": True, "weights": self.W[labels].mean(axis=0)}

    async def thumbnail(self, image, ref):
        return {"ok": True, "png": b"PNG:" + bytes(image)}


class FakeControl:
    def __init__(self):
        self.pin = None

    def get(self):
        return {"pin": self.pin}

    def set(self, pin):
        self.pin = pin
        return {"pin": pin}


@pytest.fixture()
def index(tmp_path):
    from qadwh_ray.index import write_index

    rng = np.random.default_rng(11)
    root = str(tmp_path / "idx")
    ids = np.sort(rng.choice(10_000, 300, replace=False)).astype(np.int64)
    codes = rng.integers(0, 256, (300, 2), dtype=np.uint8)
    labels = np.eye(NUM_CLASSES, dtype=np.uint8)[ids % NUM_CLASSES]
    m = write_index(root, ids, codes, labels, code_bits=NBITS, num_shards=2, num_classes=NUM_CLASSES,
                    class_names=["cat", "dog", "owl"], checkpoint=CHECKPOINT)
    return {"root": root, "ids": ids, "codes": codes, "labels": ids % NUM_CLASSES, "version": m.version}


@pytest.fixture(autouse=True)
def token_env(monkeypatch):
    monkeypatch.setenv("QADWH_TEST_TOKEN", "tok")


async def start_router(root: str, images: bool = False):
    """A router over two real shard bodies and a fake encoder, all behind fake handles (bearer token "tok")."""
    from qadwh_ray.serving.router import Router
    from qadwh_ray.serving.shard import Shard

    args = {"index": root, "poll_interval_s": 3600.0, "updates": {"poll_interval_s": 3600.0}, "images_from_sources": images,
            "auth_token_env": "QADWH_TEST_TOKEN"}
    shards = []
    for i in range(2):
        body = Shard.__new__(Shard)
        await body.__init__(i, args)
        await body.reconfigure({"version": None})
        shards.append(FakeHandle(body))
    router = Router.__new__(Router)
    await router.__init__(args, FakeHandle(FakeEncoder()), shards, FakeHandle(FakeControl()))
    await router.reconfigure({"version": None})
    return router, shards


def stop(router, shards):
    router.close()
    for h in shards:
        h.obj._watcher.cancel()
        h.obj._follower.cancel()


def brute_force(index, code: bytes, weights, mode: str, k: int, keep=None):
    """The exact top k over the whole index (ties by id), canonical distances."""
    from qadwh_ray.core.hamming import query_weights, reference_distances

    w = None if mode == "hamming" else np.asarray(weights, np.float64) if mode == "dwh" else np.asarray(weights, np.float64)[None, :]
    w_int, e = query_weights(w, mode, 1, NBITS)
    d = reference_distances(np.frombuffer(code, np.uint8)[None, :], index["codes"], w_int, e)[0]
    rows = np.arange(len(d)) if keep is None else np.flatnonzero(keep)
    order = rows[np.lexsort((index["ids"][rows], d[rows]))][:k]
    return index["ids"][order].tolist(), d[order].tolist()


def test_http_answers_equal_brute_force_over_the_whole_index(index):
    """Search by code (three modes, a label filter), by item id (weights of its labels) and a batch
    with a failing query: every answer is the exact top k of one search over the whole index."""
    auth = {"authorization": "Bearer tok"}

    async def scenario():
        router, shards = await start_router(index["root"])
        app = router.__serve_build_asgi_app__()

        async def post(path, body):
            r = await asgi_request(app, "POST", path, json.dumps(body).encode(), headers=auth)
            return r.status_code, r.json()

        out = {}
        code = index["codes"][5].tobytes()
        w = list(np.linspace(0.5, 2.0, NBITS))
        out["hamming"] = await post("/v1/search", {"code": code.hex(), "mode": "hamming", "k": 9})
        out["dwh"] = await post("/v1/search", {"code": code.hex(), "mode": "dwh", "k": 9})
        out["qadwh"] = await post("/v1/search", {"code": code.hex(), "mode": "qadwh", "k": 9, "weights": w})
        out["filtered"] = await post("/v1/search", {"code": code.hex(), "mode": "hamming", "k": 6, "labels_any": ["owl"]})
        out["id"] = await post("/v1/search", {"id": int(index["ids"][7]), "k": 5})
        out["batch"] = await post("/v1/search/batch", {"queries": [{"code": code.hex(), "mode": "hamming", "k": 4},
                                                                   {"id": 10_001}, {"code": "zz"}]})
        out["noauth"] = (await asgi_request(app, "POST", "/v1/search", b'{"id": 1}')).status_code
        out["calls"] = [len(h.calls) for h in shards]
        stop(router, shards)
        return out

    out = asyncio.run(scenario())
    code = index["codes"][5].tobytes()
    dwh = FakeEncoder.W.mean(axis=0)
    w = np.linspace(0.5, 2.0, NBITS)
    for key, weights, mode, k in (("hamming", None, "hamming", 9), ("dwh", dwh, "dwh", 9), ("qadwh", w, "qadwh", 9)):
        status, got = out[key]
        assert status == 200, got
        assert (got["ids"], got["distances"]) == brute_force(index, code, weights, mode, k), key
    status, got = out["filtered"]
    assert (got["ids"], got["distances"]) == brute_force(index, code, None, "hamming", 6, keep=index["labels"] == 2)
    assert all(r["label_names"] == ["owl"] for r in got["results"])
    status, got = out["id"]
    row = 7
    label_w = FakeEncoder.W[[index["labels"][row]]].mean(axis=0)
    assert got["query"]["weights_from"] == "labels"
    assert (got["ids"], got["distances"]) == brute_force(index, index["codes"][row].tobytes(), label_w, "qadwh", 5)
    status, got = out["batch"]
    assert status == 200 and [r["status"] for r in got["results"]] == [200, 404, 422]
    assert got["results"][0]["ids"] == brute_force(index, code, None, "hamming", 4)[0]
    assert out["noauth"] == 401


def test_updates_are_searched_and_uploads_are_encoded_by_the_encoder(index):
    """PUT with an image (encoded by the encoder handle), DELETE: the next search sees them; the put
    item's image comes back through the encoder's thumbnail (made once, then cached) and gives its weights."""
    import base64

    auth = {"authorization": "Bearer tok"}
    new_id = 20_001

    async def scenario():
        router, shards = await start_router(index["root"], images=True)
        app = router.__serve_build_asgi_app__()
        image = b"\x89PNG fake image bytes"
        put = await asgi_request(app, "PUT", f"/v1/items/{new_id}",
                                 json.dumps({"image_base64": base64.b64encode(image).decode(), "labels": ["dog"]}).encode(),
                                 headers=auth)
        bad = await asgi_request(app, "PUT", "/v1/items/5", json.dumps({"image_base64": base64.b64encode(b"not an image").decode()}).encode(),
                                 headers=auth)
        code = put.json()["code"]
        found = await asgi_request(app, "POST", "/v1/search", json.dumps({"code": code, "mode": "hamming", "k": 1}).encode(), headers=auth)
        thumbs = [await asgi_request(app, "GET", f"/v1/items/{new_id}/image", headers=auth) for _ in range(2)]
        by_id = await asgi_request(app, "POST", "/v1/search", json.dumps({"id": new_id, "k": 3}).encode(), headers=auth)
        encoder_calls = list(router.backends.encoder.calls)
        gone = int(index["ids"][0])
        deleted = await asgi_request(app, "DELETE", f"/v1/items/{gone}", headers=auth)
        after = await asgi_request(app, "GET", f"/v1/items/{gone}", headers=auth)
        stop(router, shards)
        return image, put, bad, found, deleted, after, thumbs, by_id, encoder_calls

    image, put, bad, found, deleted, after, thumbs, by_id, encoder_calls = asyncio.run(scenario())
    assert put.status_code == 200, put.text
    assert put.json()["code"] == hashlib.sha256(image).digest()[:2].hex() and put.json()["label_names"] == ["dog"]
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_image"
    assert found.json()["ids"] == [new_id] and found.json()["distances"] == [0.0]
    assert deleted.status_code == 200 and deleted.json()["log_position"] == put.json()["log_position"] + 1
    assert after.status_code == 404 and after.json()["error"] == "unknown_item"
    assert [t.content for t in thumbs] == [b"PNG:" + image] * 2 and thumbs[0].headers["content-type"] == "image/png"
    assert by_id.json()["query"]["weights_from"] == "image" and by_id.json()["ids"][0] == new_id
    assert encoder_calls.count("thumbnail") == 1


class GatedShard:
    """Answers every query with one item, ``10 * its first code byte + shard``; holds each call until released."""

    def __init__(self, shard: int):
        self.shard = shard
        self.batches: list = []
        self.gate = asyncio.Event()

    async def search_many(self, version, position, queries):
        self.batches.append([int(q.code[0]) for q in queries])
        await self.gate.wait()
        return {"ok": True, "version": version, "position": position, "shard": self.shard, "search_ms": 0.1,
                "results": [(np.array([float(q.code[0])]), np.array([10 * int(q.code[0]) + self.shard]), [[0]]) for q in queries]}


def _q(i: int) -> LiveQuery:
    return LiveQuery(np.array([i, 0], np.uint8), None, "hamming", 1)


def test_coalescer_sends_waiting_units_together_and_never_splits_one():
    async def scenario():
        shards = [GatedShard(0), GatedShard(1)]
        backends = Backends(None, [FakeHandle(s) for s in shards], None, 5.0, 30.0)
        seen = []
        co = Coalescer(backends, max_batch=4, max_inflight=1, observe=seen.append)
        dl = backends.deadline()
        first = co.submit("v1", 2, 0, [_q(1)], dl)
        await asyncio.sleep(0)
        waiting = [co.submit("v1", 2, 0, [_q(10 + i)], dl) for i in range(3)]
        big = co.submit("v1", 2, 0, [_q(20 + i) for i in range(3)], dl)  # does not fit beside the three
        other = co.submit("v1", 2, 7, [_q(30)], dl)  # another log position: never in the same call
        for s in shards:
            s.gate.set()
        got = await asyncio.gather(first, *waiting, big, other)
        return shards, got, seen

    shards, got, seen = asyncio.run(scenario())
    assert shards[0].batches == [[1], [10, 11, 12], [20, 21, 22], [30]] == shards[1].batches
    for fut_result, want in zip(got, [[1], [10], [11], [12], [20, 21, 22], [30]]):
        per_query, meta = fut_result
        assert [[int(ids[0]) for _, ids, _ in per_shard] for per_shard in per_query] == [[10 * w, 10 * w + 1] for w in want]
        assert len(meta) == 2
    assert len(seen) == 4  # observed once per shard call, not once per query


def test_a_shard_answering_from_another_version_fails_the_whole_unit():
    class Stale(GatedShard):
        async def search_many(self, version, position, queries):
            return {"ok": False, "error": "version_unavailable", "detail": "v1 was dropped"}

    async def scenario():
        shards = [GatedShard(0), Stale(1)]
        shards[0].gate.set()
        backends = Backends(None, [FakeHandle(s) for s in shards], None, 5.0, 30.0)
        co = Coalescer(backends, 8, 1)
        return await asyncio.gather(co.submit("v1", 2, 0, [_q(1)], backends.deadline()), return_exceptions=True)

    (err,) = asyncio.run(scenario())
    assert isinstance(err, VersionGone)


class Flaky:
    def __init__(self, failures: int, exc: Exception):
        self.failures, self.exc, self.calls = failures, exc, 0

    async def status(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return {"ok": True}


def test_backend_calls_retry_until_the_deadline_then_answer_503():
    async def call(target, failures, exc, deadline_s):
        retried = []
        b = Backends(None, [], None, 1.0, deadline_s, retried.append)
        flaky = Flaky(failures, exc)
        try:
            return await b.call(target, FakeHandle(flaky).status), flaky.calls, retried
        except Exception as e:  # noqa: BLE001
            return e, flaky.calls, retried

    got, calls, retried = asyncio.run(call("shard-0", 2, TimeoutError("slow"), 30.0))
    assert got == {"ok": True} and calls == 3 and retried == ["shard-0", "shard-0"]
    got, calls, retried = asyncio.run(call("encoder", 10**6, TimeoutError("slow"), 0.3))
    assert isinstance(got, ApiError) and got.status == 503 and got.error == "unavailable" and "encoder" in got.detail
    assert calls > 1 and got.headers["Retry-After"] == "1"
    got, calls, retried = asyncio.run(call("shard-1", 1, KeyError("a bug"), 30.0))
    assert isinstance(got, KeyError) and calls == 1 and retried == []  # not a transport failure: no retry


def test_a_request_restarts_whole_on_the_new_version_when_a_shard_lost_its_own():
    from qadwh_ray.serving.searcher import Searcher

    class Versions:
        def __init__(self):
            self.active = _version("v1")

        def require_active(self):
            return self.active

    class Resolver:
        async def resolve(self, st, q, position, deadline, timings):
            return _q(3), {"kind": "code"}

    class Swapped(GatedShard):
        """Lost v1 (the router has meanwhile switched to v2)."""

        async def search_many(self, version, position, queries):
            if version == "v1":
                versions.active = _version("v2")
                return {"ok": False, "error": "version_unavailable", "detail": "gone"}
            return await super().search_many(version, position, queries)

    versions = Versions()
    shards = [Swapped(0), Swapped(1)]
    for s in shards:
        s.gate.set()
    backends = Backends(None, [FakeHandle(s) for s in shards], None, 5.0, 30.0)

    class Position:
        value = 0

    async def scenario():
        searcher = Searcher(backends, versions, Resolver(), Coalescer(backends, 8, 1), Position())
        q = type("Q", (), {"k": 1, "mode": "hamming", "radius": None})()
        return await searcher.answer([q], [{}])

    (out,) = asyncio.run(scenario())
    assert out["version"] == "v2" and out["ids"] == [30]  # ties by id


def _version(name: str):
    from qadwh_ray.serving.versions import ActiveVersion

    return ActiveVersion(version=name, num_shards=2, code_bits=NBITS, num_items=2, shard_rows=(1, 1), checkpoint=CHECKPOINT,
                         in_channels=1, num_classes=NUM_CLASSES, dwh_weights=np.ones(NBITS), class_names=None, image_kind=None,
                         created_at="2026-01-01T00:00:00Z")


def _imports(modules: list, names: tuple) -> list:
    code = f"import sys; import {', '.join(modules)}; print([n for n in {names!r} if n in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().replace("'", '"'))


def test_the_router_imports_no_torch_and_its_parts_no_ray():
    assert _imports(["qadwh_ray.serving.app", "qadwh_ray.serving.router"], ("torch",)) == []
    parts = [f"qadwh_ray.serving.{m}" for m in ("answers", "auth", "fanout", "metrics", "queries", "routes", "searcher",
                                                "updates", "versions")]
    assert _imports(parts, ("ray", "torch")) == []


def test_uploads_are_decoded_with_clear_errors():
    import io

    from PIL import Image

    from qadwh_ray.serving.encoder import ImageRejected, decode_upload

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 10, 3), 200, np.uint8)).save(buf, format="PNG")
    px = decode_upload(buf.getvalue(), "L", 400)
    assert px.shape == (20, 10) and px.dtype == np.uint8
    with pytest.raises(ImageRejected, match="20 = 200 pixels; the limit is 199") as e:
        decode_upload(buf.getvalue(), "L", 199)
    assert e.value.error == "image_too_large"
    with pytest.raises(ImageRejected, match="not a decodable image") as e:
        decode_upload(b"GIF89a garbage", "RGB", 400)
    assert e.value.error == "invalid_image"


def test_the_encoder_body_decodes_uploads_and_weights_labels_with_the_model(tmp_path):
    """The real encoder body (no Ray): bytes are decoded in the model's mode and encoded exactly as
    the pixels would be; a label set's weights are the mean of its classes' rows of ``W``."""
    import io

    import torch
    from PIL import Image

    from qadwh_ray.model import ModelConfig, build_model, encode, save_checkpoint
    from qadwh_ray.serving.encoder import QueryEncoder

    torch.manual_seed(0)
    model = build_model(ModelConfig(nbits=NBITS)).eval()
    with torch.no_grad():
        model.W.copy_(torch.rand_like(model.W) + 0.1)
    uri = str(tmp_path / "model.pt")
    save_checkpoint(uri, model)
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(buf, format="PNG")  # RGB upload, grayscale model

    async def scenario():
        enc = QueryEncoder({"index": str(tmp_path), "max_image_pixels": 28 * 28})

        async def one_at_a_time(item):  # @serve.batch needs a replica: call the batch body with one item
            return (await enc._encode_many([item]))[0]

        enc._batched = one_at_a_time
        ref = {"uri": uri, "sha256": None}
        return (await enc.encode(buf.getvalue(), ref), await enc.encode(b"garbage", ref),
                await enc.label_weights([0, 2], ref), await enc.thumbnail(buf.getvalue(), ref))

    got, bad, lw, thumb = asyncio.run(scenario())
    want = encode(model, pixels[None], batch_size=1)
    assert got["ok"] and got["code"] == want.codes[0].tobytes()
    np.testing.assert_allclose(got["weights"], want.qadwh_weights[0], rtol=1e-6)
    assert bad == {"ok": False, "error": "invalid_image", "detail": bad["detail"]} and "not a decodable image" in bad["detail"]
    W = model.W.detach().double().numpy()
    np.testing.assert_allclose(lw["weights"], (W[0] + W[2]) / 2, rtol=1e-6)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(thumb["png"]))), pixels)


def test_admin_pin_switches_every_answer_to_the_pinned_version_and_back(index):
    """Two published versions: the router follows CURRENT, serves a pinned older version whole,
    then follows CURRENT again after unpinning; the control object holds the pin."""
    from qadwh_ray.index import write_index

    rng = np.random.default_rng(12)
    codes2 = rng.integers(0, 256, (300, 2), dtype=np.uint8)
    labels = np.eye(NUM_CLASSES, dtype=np.uint8)[index["ids"] % NUM_CLASSES]
    m2 = write_index(index["root"], index["ids"], codes2, labels, code_bits=NBITS, num_shards=2, num_classes=NUM_CLASSES,
                     checkpoint=CHECKPOINT)
    auth = {"authorization": "Bearer tok"}
    code = codes2[3].tobytes().hex()

    async def scenario():
        router, shards = await start_router(index["root"])
        app = router.__serve_build_asgi_app__()

        async def call(method, path, body=None):
            r = await asgi_request(app, method, path, json.dumps(body).encode() if body is not None else b"", headers=auth)
            return r.status_code, r.json()

        seen = [await call("GET", "/v1/index")]
        seen.append(await call("PUT", "/v1/admin/index", {"version": index["version"]}))
        seen.append(await call("POST", "/v1/search", {"code": code, "mode": "hamming", "k": 5}))
        seen.append(await call("GET", "/v1/index"))
        seen.append(await call("PUT", "/v1/admin/index", {"version": "v-never-published"}))
        seen.append(await call("PUT", "/v1/admin/index", {"version": None}))
        seen.append(await call("POST", "/v1/search", {"code": code, "mode": "hamming", "k": 5}))
        control = router.backends.control.obj.pin
        stop(router, shards)
        return seen, control

    seen, control = asyncio.run(scenario())
    (_, first), (_, pinned), (_, old), (_, info), (unknown, _), (_, unpinned), (_, new) = seen
    assert first["version"] == m2.version and first["following"] == "CURRENT"
    assert pinned == {"pinned": index["version"], "active": index["version"]}
    assert old["version"] == index["version"]
    assert (old["ids"], old["distances"]) == brute_force(index, codes2[3].tobytes(), None, "hamming", 5)
    assert info["following"] == "admin_pin" and info["swaps"] == 2
    assert unknown in (404, 422)
    assert unpinned["active"] == m2.version and control is None
    assert (new["ids"], new["distances"]) == brute_force({**index, "codes": codes2}, codes2[3].tobytes(), None, "hamming", 5)


def test_a_shard_reencodes_a_logged_image_put_by_another_model_through_the_encoder_handle(index):
    """A put whose code came from another checkpoint is re-encoded from its stored image bytes by
    this version's model (the encoder handle); one without an image stays hidden."""
    from qadwh_ray.index.format import shard_of_ids
    from qadwh_ray.index.update_log import LogEntry, UpdateLog
    from qadwh_ray.serving.shard import Shard

    log = UpdateLog(index["root"])
    mine = [i for i in range(30_000, 30_100) if shard_of_ids(np.asarray([i]), 2)[0] == 1][:2]
    image = b"\x89PNG an image put through a router serving another model"
    sha = log.put_image(image)
    log.append([LogEntry(0, "put", mine[0], code="ffff", labels=[1], checkpoint="b" * 64, image=sha),
                LogEntry(0, "put", mine[1], code="ffff", labels=[1], checkpoint="b" * 64)])
    encoder = FakeHandle(FakeEncoder())

    async def scenario():
        shard = Shard.__new__(Shard)
        await shard.__init__(1, {"index": index["root"], "poll_interval_s": 3600.0, "updates": {"poll_interval_s": 3600.0}},
                             encoder)
        await shard.reconfigure({"version": None})
        code = hashlib.sha256(image).digest()[:2]
        q = [LiveQuery(np.frombuffer(code, np.uint8), None, "hamming", 1), LiveQuery(np.array([255, 255], np.uint8), None, "hamming", 300)]
        out = await shard.search_many(index["version"], 2, q)
        shard._watcher.cancel()
        shard._follower.cancel()
        return out, shard.loaded[index["version"]].stale

    out, stale = asyncio.run(scenario())
    (d0, ids0, _), (_, ids1, _) = out["results"]
    assert ids0.tolist() == [mine[0]] and d0.tolist() == [0.0]
    assert mine[1] not in ids1.tolist() and stale == 1
    assert encoder.calls == ["encode"]
