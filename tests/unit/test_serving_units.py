"""Serving pieces that need no cluster: app args, the Serve config file, request parsing, radius search."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

from qadwh_ray.serving.api import parse_code, parse_weights
from qadwh_ray.serving.config import AppArgs, RuntimeConfig
from qadwh_ray.serving.errors import ApiError

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_file_validates(monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(cfg)
    app = cfg["applications"][0]
    assert app["import_path"] == "qadwh_ray.serving.app:build_app"
    monkeypatch.setenv("QADWH_INDEX_URI", "s3://bucket/index")  # the index root comes from the settings ConfigMap
    args = AppArgs.parse(app["args"])
    assert args.index == "s3://bucket/index"
    assert args.shard.min_replicas >= 2 and args.require_auth and args.auth_token_file


def test_app_args_are_strict():
    AppArgs.parse({"index": "/tmp/x"})
    with pytest.raises(Exception, match="unknwon_key|extra"):
        AppArgs.parse({"index": "/tmp/x", "unknwon_key": 1})
    with pytest.raises(Exception, match="max_ongoing_requests"):
        AppArgs.parse({"index": "/tmp/x", "encoder": {"max_batch_size": 32, "max_concurrent_batches": 4, "max_ongoing_requests": 64}})
    with pytest.raises(Exception, match="invalid index version name"):
        AppArgs.parse({"index": "/tmp/x", "version": "../etc"})
    with pytest.raises(Exception, match="default_k"):
        AppArgs.parse({"index": "/tmp/x", "default_k": 50, "max_k": 10})
    with pytest.raises(Exception, match="max_replicas"):
        AppArgs.parse({"index": "/tmp/x", "shard": {"min_replicas": 3, "max_replicas": 2}})
    assert AppArgs.parse({"index": "/tmp/x", "version": "current"}).version is None
    assert RuntimeConfig.parse({"version": "v1"}).version == "v1"
    with pytest.raises(Exception):
        RuntimeConfig.parse({"version": "v1", "other": 2})


def _request(body: bytes, content_type: str, query: str = ""):
    """A Starlette request over ``body`` (what the route handlers receive)."""
    from starlette.requests import Request

    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/search", "query_string": query.encode(),
             "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]}
    return Request(scope, receive)


def _parse(body: bytes, content_type: str, query: str = ""):
    import asyncio

    from qadwh_ray.serving.api import parse_search

    return asyncio.run(parse_search(_request(body, content_type, query), 10, 100))


def test_multipart_is_parsed_by_python_multipart_and_keeps_binary_bytes():
    payload = b"\x89PNG\r\n\x1a\n\r\n--notboundary\r\n\x00\xff"
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="k"\r\n\r\n'
        b"7\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="labels_any"\r\n\r\n'
        b"Sneaker, 3\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="image"; filename="a b.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + payload + b"\r\n"
        b"--XyZ--\r\n"
    )
    q = _parse(body, 'multipart/form-data; boundary="XyZ"')
    assert (q.kind, q.image, q.k, q.labels_any) == ("image", payload, 7, ["Sneaker", 3])
    for bad_body, ctype, status in (
        (body, "multipart/form-data", 400),  # no boundary
        (b"--XyZ\r\nno header end--XyZ--", "multipart/form-data; boundary=XyZ", 400),
        (body.replace(b'name="k"', b'name="bogus"'), "multipart/form-data; boundary=XyZ", 422),
        (body.replace(b'; filename="a b.png"', b""), "multipart/form-data; boundary=XyZ", 422),  # image not a file
    ):
        with pytest.raises(ApiError) as e:
            _parse(bad_body, ctype)
        assert e.value.status == status, (e.value.status, e.value.detail)


def test_deeply_nested_or_malformed_json_is_a_400():
    for body in (b"[" * 100_000, b'{"code": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b'{"code": "ab'):
        with pytest.raises(ApiError) as e:
            _parse(body, "application/json")
        assert e.value.status == 400 and e.value.error == "malformed_json"
    with pytest.raises(ApiError) as e:  # nested within Python's limits: a clear 422 from validation
        _parse(b'{"code": ' + b"[" * 500 + b"]" * 500 + b"}", "application/json")
    assert e.value.status == 422


def test_label_filters_and_batches_parse():
    import asyncio

    from qadwh_ray.serving.api import parse_batch

    q = _parse(b'{"id": 4, "labels_all": [1, "Bag"]}', "application/json", "labels_any=2,Shirt&k=3")
    assert (q.kind, q.item_id, q.k, q.labels_any, q.labels_all) == ("id", 4, 3, [2, "Shirt"], [1, "Bag"])
    with pytest.raises(ApiError) as e:
        _parse(b'{"id": 4, "labels_any": [true]}', "application/json")
    assert e.value.status == 422
    body = b'{"queries": [{"id": 1}, {"code": "zz", "k": 0}, {"id": 2, "mode": "hamming"}, 5]}'
    got = asyncio.run(parse_batch(_request(body, "application/json"), 10, 100, 8))
    assert [type(x).__name__ for x in got] == ["Query", "ApiError", "Query", "ApiError"]
    assert got[1].status == 422 and got[2].mode == "hamming"
    for bad, status in ((b'{"queries": []}', 422), (b'{"queries": [{"id": 1}], "x": 1}', 422), (b"[" * 9000, 400),
                        (b'{"queries": ' + b'[{"id": 1}' + b', {"id": 1}' * 8 + b"]}", 422)):
        with pytest.raises(ApiError) as e:
            asyncio.run(parse_batch(_request(bad, "application/json"), 10, 100, 8))
        assert e.value.status == status


def test_code_and_weight_parsing():
    assert parse_code("0A1b", 16) == b"\x0a\x1b"
    assert parse_code("0x0a1b", 16) == b"\x0a\x1b"
    for bad in ("0a1b2c", "0a", "zz1b"):
        with pytest.raises(ApiError) as e:
            parse_code(bad, 16)
        assert e.value.status == 422
    # a 12-bit code travels as its 2 packed bytes; bits 12..15 (the high nibble of byte 1) are padding
    assert parse_code("ff0f", 12) == b"\xff\x0f"
    for bad, msg in (("fff", "3 hex digits; this index uses 12-bit codes, sent as 2 bytes"), ("ff1f", "bits 12..15 pad a 12-bit code")):
        with pytest.raises(ApiError, match=msg) as e:
            parse_code(bad, 12)
        assert e.value.status == 422 and e.value.error == "invalid_code"
    assert parse_weights([1.0] * 12, 12) == [1.0] * 12
    assert parse_weights([1.0] * 16, 16) == [1.0] * 16
    for bad in ([1.0] * 15, [float("nan")] + [1.0] * 15, [-0.5] + [1.0] * 15, [float("inf")] * 16):
        with pytest.raises(ApiError):
            parse_weights(bad, 16)


def test_serve_cli_args(tmp_path):
    from qadwh_ray.serving.cli import add_serve_parser, serve_args_from_cli

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(
        ["serve", "--config", str(ROOT / "cluster" / "serve.yaml"), "--index", "/data/idx", "--set", "shard.max_replicas=3", "--set", "max_k=50"]
    )
    d = serve_args_from_cli(ns)
    assert d["index"] == "/data/idx" and d["shard"]["max_replicas"] == 3 and d["max_k"] == 50
    assert d["shard"]["min_replicas"] == 2  # from the config file
    with pytest.raises(ValueError, match="invalid serve arguments"):
        serve_args_from_cli(parser.parse_args(["serve", "--index", "/x", "--set", "shard.bogus=1"]))
    with pytest.raises(ValueError, match="--index"):
        serve_args_from_cli(parser.parse_args(["serve"]))


def test_short_searches_run_inline_long_ones_in_a_thread():
    import asyncio
    import threading

    from qadwh_ray.serving.shard import INLINE_SCAN_ITEMS, _run_search

    def where(tag):
        return tag, threading.current_thread() is threading.main_thread()

    async def both():
        short = await _run_search(where, 4, INLINE_SCAN_ITEMS // 4, "short")
        long_ = await _run_search(where, 4, INLINE_SCAN_ITEMS // 4 + 1, "long")
        return short, long_

    assert asyncio.run(both()) == (("short", True), ("long", False))


def test_class_names_come_from_the_manifest():
    from qadwh_ray.index.format import Manifest
    from qadwh_ray.serving.images import class_names, has_item_images

    def manifest(names, sources):
        return Manifest(version="v1", code_bits=12, num_items=0, shards=[], checkpoint={}, created_at="2026-01-01T00:00:00Z",
                        num_classes=5, class_names=names, sources=sources)

    folder = [{"kind": "folder", "uri": "/data/pets", "rows": 9}]
    names = ["cat", "dog", "fox", "owl", "yak"]
    assert class_names(manifest(names, folder), 5) == names and has_item_images(manifest(names, folder))
    assert class_names(manifest(names, folder), 7) is None  # a checkpoint with other classes: no names
    fashion = [{"kind": "fashion", "uri": "fashion:all"}]
    assert class_names(manifest(names, fashion), 5) == names  # the manifest's names win over the built-in ones
    old = Manifest(version="v1", code_bits=16, num_items=0, shards=[], checkpoint={}, created_at="2026-01-01T00:00:00Z",
                   num_classes=10, sources=fashion)  # written before manifests carried class names
    assert class_names(old, 10)[0] == "T-shirt/top"
    assert class_names(manifest(None, folder), 5) is None
    assert not has_item_images(manifest(names, [{"kind": "arrays", "rows": 3}]))


def test_shard_replays_the_log_and_answers_as_of_any_reached_position(tmp_path):
    """The shard deployment's body, driven directly over a real local index and update log
    (no Ray): replay at load, catching up for a request, answering as of an older position,
    a code from another model hidden; and a finished catch-up for a lower position never
    leaves a request spinning (it once blocked the replica's event loop)."""
    import asyncio
    import threading

    from qadwh_ray.core.live import LiveQuery
    from qadwh_ray.index import write_index
    from qadwh_ray.index.format import shard_of_ids
    from qadwh_ray.index.update_log import LogEntry, UpdateLog
    from qadwh_ray.serving.shard import Shard

    rng = np.random.default_rng(5)
    root = str(tmp_path / "idx")
    ids = np.arange(0, 400, dtype=np.int64) * 7
    codes = rng.integers(0, 256, (400, 2), dtype=np.uint8)
    m = write_index(root, ids, codes, np.eye(3, dtype=np.uint8)[ids % 3], code_bits=16, num_shards=2,
                    checkpoint={"uri": "model.pt", "sha256": "a" * 64})
    log = UpdateLog(root)
    mine = [int(i) for i in range(10_000, 10_400) if shard_of_ids(np.asarray([i]), 2)[0] == 0][:3]
    log.append([LogEntry(0, "put", mine[0], code="0000", labels=[1], checkpoint="a" * 64)])  # position 1
    args = {"index": root, "poll_interval_s": 60.0, "updates": {"poll_interval_s": 60.0}}
    outcome: dict = {}

    async def scenario():
        shard = Shard.__new__(Shard)
        await shard.__init__(0, args)
        await shard.reconfigure({"version": None})
        data = shard.loaded[m.version]
        assert data.live.position == 1  # replayed at load
        log.append([LogEntry(0, "put", mine[1], code="0000", labels=[2], checkpoint="b" * 64),  # another model, no image
                    LogEntry(0, "put", mine[2], code="0000", labels=[2], checkpoint="a" * 64)])  # position 3
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        shard._catching_up[m.version] = done  # a finished read for a lower position, still registered
        q = [LiveQuery(np.zeros(2, np.uint8), None, "hamming", 5)]
        now = await shard.search_many(m.version, 3, q)
        then = await shard.search_many(m.version, 1, q)
        outcome.update(now=now, then=then, stale=data.stale)
        for t in (shard._watcher, shard._follower):
            t.cancel()

    t = threading.Thread(target=lambda: asyncio.run(scenario()), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the shard never answered: a request is spinning on a finished catch-up"
    now, then = outcome["now"], outcome["then"]
    assert now["ok"] and now["position"] == 3 and then["position"] == 1
    got_now, got_then = now["results"][0][1].tolist(), then["results"][0][1].tolist()
    assert mine[0] in got_now and mine[2] in got_now and mine[1] not in got_now and outcome["stale"] == 1
    assert mine[0] in got_then and mine[2] not in got_then
