"""Serving pieces that need no cluster: app args, the Serve config file, request parsing, radius search."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

from qadwh_ray.serving.api import parse_code, parse_multipart, parse_weights
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


def test_multipart_parser_keeps_binary_bytes():
    payload = b"\x89PNG\r\n\x1a\n\r\n--notboundary\r\n\x00\xff"
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="k"\r\n\r\n'
        b"7\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="image"; filename="a b.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + payload + b"\r\n"
        b"--XyZ--\r\n"
    )
    fields, files = parse_multipart(body, 'multipart/form-data; boundary="XyZ"')
    assert fields == {"k": "7"} and files == {"image": payload}
    for bad_body, ctype in (
        (body, "multipart/form-data"),  # no boundary
        (body[: body.rindex(b"--XyZ--")], "multipart/form-data; boundary=XyZ"),  # not closed
        (b"--XyZ\r\nno header end--XyZ--", "multipart/form-data; boundary=XyZ"),
    ):
        with pytest.raises(ApiError) as e:
            parse_multipart(bad_body, ctype)
        assert e.value.status == 400


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


@pytest.mark.parametrize("nbits", [16, 12])
def test_radius_search_matches_brute_force(nbits):
    from qadwh_ray.core.bits import pack_bits
    from qadwh_ray.core.search import HashIndex, query_weights, reference_distances
    from qadwh_ray.serving.shard import LoadedShard, search_loaded

    rng = np.random.default_rng(0)
    n = 700
    ids = np.sort(rng.choice(10_000, n, replace=False)).astype(np.int64)
    codes = pack_bits(rng.integers(0, 2, (n, nbits)))
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    data = LoadedShard("v1", 0, nbits, ids, codes, None, None, index)
    q = pack_bits(rng.integers(0, 2, (3, nbits)))
    w = rng.uniform(0.1, 2.0, (3, nbits))
    ham = reference_distances(q, codes, *query_weights(None, "hamming", 3, nbits))
    for mode, weights in (("qadwh", w), ("dwh", w[0]), ("hamming", None)):
        wi, e = query_weights(weights, mode, 3, nbits)
        dist = reference_distances(q, codes, wi, e)
        for radius, k in ((0, 5), (3, 20), (5, 400)):
            d, got = search_loaded(data, q, weights, mode, k, radius)
            for i in range(3):
                sel = np.flatnonzero(ham[i] <= radius)
                order = sel[np.lexsort((ids[sel], dist[i, sel]))][:k]
                m = order.size
                assert got[i, :m].tolist() == ids[order].tolist()
                assert d[i, :m].tolist() == dist[i, order].tolist()
                assert (got[i, m:] == -1).all() and np.isinf(d[i, m:]).all()
    # a radius at the code length is a plain top-k search
    d1, i1 = search_loaded(data, q, w, "qadwh", 10, nbits)
    d2, i2 = index.search(q, 10, w, mode="qadwh")
    assert (i1 == i2).all() and (d1 == d2).all()


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


@pytest.mark.parametrize("nbits", [24, 20])
def test_coalesced_search_equals_one_query_at_a_time(nbits):
    """search_many (the router's coalesced shard call) answers each query exactly as alone."""
    from qadwh_ray.core.bits import pack_bits
    from qadwh_ray.core.search import HashIndex
    from qadwh_ray.serving.shard import LoadedShard, search_loaded, search_many

    rng = np.random.default_rng(1)
    n = 900
    ids = np.sort(rng.choice(50_000, n, replace=False)).astype(np.int64)
    codes = pack_bits(rng.integers(0, 2, (n, nbits)))
    labels = np.eye(10, dtype=np.uint8)[rng.integers(0, 10, n)]
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids, labels=labels)
    data = LoadedShard("v1", 0, nbits, ids, codes, labels, None, index)
    dwh = rng.uniform(0.1, 2.0, nbits)
    queries = []
    for j in range(40):
        mode = ("qadwh", "dwh", "hamming")[j % 3]
        w = rng.uniform(0.1, 2.0, nbits) if mode == "qadwh" else (dwh if mode == "dwh" else None)
        queries.append((pack_bits(rng.integers(0, 2, (1, nbits)))[0], w, mode, int(rng.integers(1, 60)), 4 if j % 7 == 0 else None))
    got = search_many(data, queries)
    for (code, w, mode, k, radius), (d, i) in zip(queries, got):
        wq = None if mode == "hamming" else (w[None, :] if mode == "qadwh" else w)
        d1, i1 = search_loaded(data, code[None, :], wq, mode, k, radius)
        assert i.tolist() == i1[0].tolist() and d.tolist() == d1[0].tolist()


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
