"""The serving HTTP API over real HTTP on 127.0.0.1 (Ray Serve on the shared test cluster).

One application (bearer-token auth on; the ``serving_api`` fixture of
conftest.py, shared with the browser test) serves a 3,000-item Fashion-MNIST
index in 2 shards; the service's answers are compared with the in-process
search of the same index version.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

import serving_support as S

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

from conftest import SERVING_ITEMS as N_ITEMS
from conftest import SERVING_TOKEN as TOKEN


@pytest.fixture(scope="module")
def service(serving_api):
    from qadwh_ray.model import load_checkpoint

    fx = serving_api["fx"]
    return {
        **serving_api,
        "index": S.in_process_index(fx.root, fx.version),
        "model": load_checkpoint(fx.checkpoint),
        "rows": fx.ids,
    }


def _queries(service, n: int, seed: int = 3):
    """Query images that are not in the index, encoded in-process."""
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.model import encode

    images, _ = load_fashion_mnist()
    rng = np.random.default_rng(seed)
    free = np.setdiff1d(np.arange(70000), service["rows"])
    rows = rng.choice(free, n, replace=False)
    return images[rows], encode(service["model"], images[rows])


def _expect(service, code: np.ndarray, weights, mode: str, k: int):
    d, ids = service["index"].search(code[None, :], k, weights, mode=mode)
    keep = ids[0] >= 0
    return ids[0][keep].tolist(), d[0][keep].tolist()


def _check_json_error(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_health_and_index(service):
    base, s = service["base"], service["s"]
    assert requests.get(base + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(base + "/readyz", timeout=10).json()
    assert ready["version"] == service["fx"].version and ready["shards"] == 2
    info = s.get(base + "/v1/index", timeout=10).json()
    assert info["version"] == service["fx"].version
    assert info["items"] == N_ITEMS and info["bits"] == S.NBITS and info["num_shards"] == 2
    assert sum(x["rows"] for x in info["shards"]) == N_ITEMS
    assert info["following"] == "CURRENT" and info["class_names"][0] == "T-shirt/top"


def test_code_queries_equal_in_process_search(service):
    """Many code queries, every mode, several k: ids and distances identical, ties included."""
    base, s = service["base"], service["s"]
    _, enc = _queries(service, 40)
    dwh = enc.dwh_weights
    cases = []
    for i in range(len(enc.codes)):
        k = (1, 7, 25, 120)[i % 4]
        code = enc.codes[i]
        cases.append(({"code": code.tobytes().hex(), "weights": enc.qadwh_weights[i].tolist(), "k": k}, _expect(service, code, enc.qadwh_weights[i][None, :], "qadwh", k)))
        cases.append(({"code": code.tobytes().hex(), "k": k, "mode": "dwh"}, _expect(service, code, dwh, "dwh", k)))
        cases.append(({"code": code.tobytes().hex(), "k": k, "mode": "hamming"}, _expect(service, code, None, "hamming", k)))

    def run(case):
        body, want = case
        r = s.post(base + "/v1/search", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json(), want

    ties = 0
    with ThreadPoolExecutor(6) as pool:
        for got, (want_ids, want_d) in pool.map(run, cases):
            assert got["version"] == service["fx"].version
            assert got["ids"] == want_ids
            assert got["distances"] == want_d  # exact: the same canonical distances
            assert len(got["labels"]) == len(want_ids)
            ties += sum(1 for a, b in zip(want_d, want_d[1:]) if a == b)
    assert ties > 100  # 16-bit codes over 3,000 items: ties everywhere, resolved by id


def test_image_queries_equal_in_process_encoding(service):
    """Images by multipart, base64 JSON and raw body, concurrently (batched by the encoder)."""
    base, s = service["base"], service["s"]
    imgs, enc = _queries(service, 18, seed=11)

    def run(i):
        data = S.png(imgs[i])
        mode = ("qadwh", "dwh", "hamming")[i % 3]
        if i % 3 == 0:
            r = s.post(base + "/v1/search", files={"image": ("q.png", data, "image/png")}, data={"k": "15", "mode": mode, "debug": "true"}, timeout=60)
        elif i % 3 == 1:
            r = s.post(base + "/v1/search", json={"image_base64": base64.b64encode(data).decode(), "k": 15, "mode": mode, "debug": True}, timeout=60)
        else:
            r = s.post(base + f"/v1/search?k=15&mode={mode}&debug=1", data=data, headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        return i, mode, r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(len(imgs))))
    for i, mode, got in results:
        # Same model, same encode(); the batch an image lands in may move float32 weights in
        # the last bits, so the search is compared using the weights the service reports.
        assert got["query"]["code"] == enc.codes[i].tobytes().hex()
        assert got["query"]["predicted_class"] == int(np.argmax(enc.logits[i]))
        w = got["debug"]["weights"]
        if mode == "hamming":
            assert w is None
        else:
            np.testing.assert_allclose(w, enc.qadwh_weights[i] if mode == "qadwh" else enc.dwh_weights, rtol=2e-4)
            w = np.asarray(w)[None, :] if mode == "qadwh" else np.asarray(w)
        want_ids, want_d = _expect(service, enc.codes[i], w, mode, 15)
        assert got["ids"] == want_ids and got["distances"] == want_d
    dbg = results[0][2]["debug"]
    assert len(dbg["shards"]) == 2 and all(x["search_ms"] >= 0 and x["rtt_ms"] > 0 for x in dbg["shards"])
    assert dbg["encode_ms"] > 0 and dbg["total_ms"] > 0


def test_item_id_query_and_radius(service):
    from qadwh_ray.core.hamming import query_weights, reference_distances
    from qadwh_ray.model import encode

    base, s, fx = service["base"], service["s"], service["fx"]
    j = 123
    item = int(fx.ids[j])
    r = s.post(base + "/v1/search", json={"id": item, "k": 30, "debug": True}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    w = encode(service["model"], fx.images[j : j + 1]).qadwh_weights
    assert got["query"]["weights_from"] == "image"
    np.testing.assert_allclose(got["debug"]["weights"], w[0], rtol=2e-4)
    w = np.asarray(got["debug"]["weights"])[None, :]
    assert got["query"]["code"] == fx.codes[j].tobytes().hex()
    assert (got["ids"], got["distances"]) == _expect(service, fx.codes[j], w, "qadwh", 30)
    assert item in got["ids"] and got["distances"][got["ids"].index(item)] == 0.0

    # radius: only items within Hamming distance r, ranked by the mode's distance (brute force here)
    for mode, radius, k in (("qadwh", 2, 50), ("dwh", 3, 200), ("hamming", 1, 20), ("qadwh", 0, 10)):
        body = {"code": fx.codes[j].tobytes().hex(), "k": k, "mode": mode, "radius": radius}
        ww = {"qadwh": w, "dwh": encode(service["model"], fx.images[:1]).dwh_weights, "hamming": None}[mode]
        if mode == "qadwh":
            body["weights"] = w[0].tolist()
        r = s.post(base + "/v1/search", json=body, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()
        ham = reference_distances(fx.codes[j : j + 1], fx.codes, *query_weights(None, "hamming", 1, S.NBITS))[0]
        wi, e = query_weights(ww, mode, 1, S.NBITS)
        dist = reference_distances(fx.codes[j : j + 1], fx.codes, wi, e)[0]
        sel = np.flatnonzero(ham <= radius)
        order = sel[np.lexsort((fx.ids[sel], dist[sel]))][:k]
        assert got["ids"] == fx.ids[order].tolist(), (mode, radius)
        assert got["distances"] == dist[order].tolist()


def test_items_and_images(service):
    from PIL import Image

    base, s, fx = service["base"], service["s"], service["fx"]
    for j in (0, 1500, N_ITEMS - 1):
        item = int(fx.ids[j])
        r = s.get(base + f"/v1/items/{item}", timeout=30)
        assert r.status_code == 200, r.text
        info = r.json()
        assert info["code"] == fx.codes[j].tobytes().hex()
        assert info["labels"] == np.flatnonzero(fx.labels[j]).tolist()
        assert info["has_image"] and info["image_url"] == f"/v1/items/{item}/image"
        img = s.get(base + info["image_url"], timeout=30)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        px = np.asarray(Image.open(io.BytesIO(img.content)))
        np.testing.assert_array_equal(px, fx.images[j])
    r = s.get(base + "/v1/random?n=5", timeout=30)
    assert r.status_code == 200 and set(r.json()["ids"]) <= set(fx.ids.tolist())


def _big_png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_requests_are_json_4xx(service):
    base, s, fx = service["base"], service["s"], service["fx"]
    code = fx.codes[0].tobytes().hex()
    missing = int(np.setdiff1d(np.arange(70000), fx.ids)[0])
    J = "application/json"
    cases = [
        # (description, kwargs for session.post to /v1/search, status)
        ("undecodable image (multipart)", dict(files={"image": ("x.png", b"not an image at all", "image/png")}), 422),
        ("undecodable image (base64)", dict(json={"image_base64": base64.b64encode(b"\x89PNG broken").decode()}), 422),
        ("invalid base64", dict(json={"image_base64": "%%%not-base64%%%"}), 422),
        ("image over the pixel limit", dict(files={"image": ("big.png", _big_png(2500, 2000), "image/png")}), 413),
        ("wrong code length", dict(json={"code": code + "ff", "mode": "hamming"}), 422),
        ("code not hex", dict(json={"code": "zz" * (S.NBITS // 8), "mode": "hamming"}), 422),
        ("unknown mode", dict(json={"code": code, "mode": "cosine"}), 422),
        ("k = 0", dict(json={"code": code, "mode": "hamming", "k": 0}), 422),
        ("k < 0", dict(json={"code": code, "mode": "hamming", "k": -3}), 422),
        ("k > max_k", dict(json={"code": code, "mode": "hamming", "k": 100000}), 422),
        ("k not an int", dict(json={"code": code, "mode": "hamming", "k": "ten"}), 422),
        ("radius < 0", dict(json={"code": code, "mode": "hamming", "radius": -1}), 422),
        ("radius > bits", dict(json={"code": code, "mode": "hamming", "radius": 99}), 422),
        ("unknown item id", dict(json={"id": missing}), 404),
        ("negative item id", dict(json={"id": -5}), 422),
        ("malformed JSON", dict(data=b'{"code": "ab', headers={"Content-Type": J}), 400),
        ("JSON not an object", dict(data=b"[1, 2]", headers={"Content-Type": J}), 422),
        ("unknown JSON field", dict(json={"code": code, "mode": "hamming", "bogus": 1}), 422),
        ("two queries at once", dict(json={"code": code, "id": 5}), 422),
        ("no query", dict(json={"k": 5}), 422),
        ("qadwh code query without weights", dict(json={"code": code}), 422),
        ("weights with mode dwh", dict(json={"code": code, "mode": "dwh", "weights": [1.0] * S.NBITS}), 422),
        ("negative weight", dict(json={"code": code, "weights": [-1.0] + [1.0] * (S.NBITS - 1)}), 422),
        ("NaN weight", dict(data=('{"code": "%s", "weights": [NaN%s]}' % (code, ", 1" * (S.NBITS - 1))).encode(), headers={"Content-Type": J}), 422),
        ("wrong weight count", dict(json={"code": code, "weights": [1.0] * 3}), 422),
        ("unsupported content type", dict(data=b"hello", headers={"Content-Type": "text/plain"}), 415),
        ("multipart without image", dict(files={"other": ("a.txt", b"x", "text/plain")}), 422),
        ("oversized body", dict(data=b"\x00" * (300 * 1024), headers={"Content-Type": "image/png"}), 413),
        ("unknown query parameter", dict(json={"code": code, "mode": "hamming"}, params={"path": "/etc/passwd"}), 422),
    ]
    for desc, kw, status in cases:
        r = s.post(base + "/v1/search", timeout=60, **kw)
        assert r.status_code == status, (desc, r.status_code, r.text[:300])
        _check_json_error(r, status)
    _check_json_error(s.get(base + f"/v1/items/{missing}", timeout=30), 404)
    _check_json_error(s.get(base + "/v1/items/../../etc/passwd", timeout=30), 404)
    _check_json_error(s.get(base + "/v1/items/abc", timeout=30), 422)
    _check_json_error(s.get(base + "/v1/items/99999999999999999999999", timeout=30), 422)
    _check_json_error(s.get(base + "/v1/items/-1", timeout=30), 422)
    _check_json_error(s.get(base + "/v1/nope", timeout=30), 404)
    _check_json_error(s.delete(base + "/v1/search", timeout=30), 405)
    # the service still answers normally afterwards
    assert s.post(base + "/v1/search", json={"code": code, "mode": "hamming"}, timeout=30).status_code == 200


def test_auth(service):
    base, fx = service["base"], service["fx"]
    body = {"code": fx.codes[0].tobytes().hex(), "mode": "hamming"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic " + TOKEN}):
        r = requests.post(base + "/v1/search", json=body, headers=headers, timeout=30)
        _check_json_error(r, 401)
        assert r.headers.get("www-authenticate") == "Bearer"
    _check_json_error(requests.get(base + "/v1/index", timeout=30), 401)
    _check_json_error(requests.get(base + f"/v1/items/{int(fx.ids[0])}/image", timeout=30), 401)
    _check_json_error(requests.put(base + "/v1/admin/index", json={"version": None}, timeout=30), 401)
    ok = requests.post(base + "/v1/search", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert ok.status_code == 200
    # public: health, readiness, the page and the API docs
    for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
        assert requests.get(base + path, timeout=30).status_code == 200, path
    # admin input is validated: a version name is never used as a path
    s = service["s"]
    _check_json_error(s.put(base + "/v1/admin/index", json={"version": "../../etc"}, timeout=30), 422)
    _check_json_error(s.put(base + "/v1/admin/index", json={"version": "v-does-not-exist"}, timeout=30), 404)


def test_openapi_and_page(service):
    base = service["base"]
    spec = requests.get(base + "/openapi.json", timeout=30).json()
    paths = spec["paths"]
    for p in ("/v1/search", "/v1/items/{item_id}", "/v1/items/{item_id}/image", "/v1/index", "/healthz", "/readyz"):
        assert p in paths, p
    content = paths["/v1/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    html = requests.get(base + "/", timeout=30)
    assert html.headers["content-type"].startswith("text/html") and "QaDWH" in html.text
    assert "Swagger" in requests.get(base + "/docs", timeout=30).text


def test_prometheus_metrics(service, ray_cluster):
    """Request counts, latency and per-shard timings reach Ray's Prometheus endpoint."""
    import time

    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    base, s, fx = service["base"], service["s"], service["fx"]
    for _ in range(3):
        s.post(base + "/v1/search", json={"code": fx.codes[1].tobytes().hex(), "mode": "hamming"}, timeout=30)
    want = ("qadwh_requests", "qadwh_request_latency_ms", "qadwh_shard_latency_ms", "qadwh_shard_search_ms")
    text = ""
    end = time.monotonic() + 40
    while time.monotonic() < end:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        except requests.RequestException:
            text = ""
        if all(w in text for w in want):
            break
        time.sleep(2)
    if not text:
        pytest.skip(f"Ray's metrics agent does not answer on 127.0.0.1:{port} in this cluster")
    missing = [w for w in want if w not in text]
    assert not missing, missing
    assert 'endpoint="/v1/search"' in text


def _filtered_brute(service, code, weights, mode, k, allowed, radius=None):
    """Brute force over the items ``allowed`` selects (ties by id), canonical distances."""
    from qadwh_ray.core.hamming import query_weights, reference_distances

    fx = service["fx"]
    wi, e = query_weights(weights, mode, 1, S.NBITS)
    dist = reference_distances(code[None, :], fx.codes, wi, e)[0]
    ok = allowed.copy()
    if radius is not None:
        ham = reference_distances(code[None, :], fx.codes, *query_weights(None, "hamming", 1, S.NBITS))[0]
        ok &= ham <= radius
    sel = np.flatnonzero(ok)
    order = sel[np.lexsort((fx.ids[sel], dist[sel]))][:k]
    return fx.ids[order].tolist(), dist[order].tolist()


def _filter_cases(service, n=6, seed=5):
    """(request body, expected ids, expected distances) for filtered queries of every kind."""
    from qadwh_ray.data.fashion import CLASS_NAMES

    fx = service["fx"]
    _, enc = _queries(service, n, seed=seed)
    lab = fx.labels.astype(bool)
    filters = [
        ({"labels_any": [7]}, lab[:, 7]),  # one class: selective
        ({"labels_any": ["Sneaker", "Bag", 0]}, lab[:, [7, 8, 0]].any(axis=1)),  # names and ids
        ({"labels_any": list(range(9))}, lab[:, :9].any(axis=1)),  # broad: most items match
        ({"labels_all": ["Bag"], "labels_any": [8, 9]}, lab[:, 8]),
        ({"labels_all": [1, 2]}, np.zeros(len(lab), bool)),  # single-label data: nothing matches
    ]
    cases = []
    for i in range(n):
        code = enc.codes[i]
        for j, (flt, allowed) in enumerate(filters):
            mode = ("qadwh", "dwh", "hamming")[(i + j) % 3]
            k = (1, 9, 40, 150)[(i + j) % 4]
            radius = 5 if (i + j) % 5 == 0 else None
            body = {"code": code.tobytes().hex(), "k": k, "mode": mode, **flt}
            w = {"qadwh": enc.qadwh_weights[i][None, :], "dwh": enc.dwh_weights, "hamming": None}[mode]
            if mode == "qadwh":
                body["weights"] = enc.qadwh_weights[i].tolist()
            if radius is not None:
                body["radius"] = radius
            cases.append((body, *_filtered_brute(service, code, w, mode, k, allowed, radius)))
    assert CLASS_NAMES[7] == "Sneaker" and CLASS_NAMES[8] == "Bag"
    return cases


def test_label_filters_equal_brute_force(service):
    """labels_any / labels_all (ids or names): the exact top k among matching items, every mode, ties included."""
    base, s, fx = service["base"], service["s"], service["fx"]
    cases = _filter_cases(service)

    def run(case):
        r = s.post(base + "/v1/search", json=case[0], timeout=60)
        assert r.status_code == 200, r.text
        return r.json(), case

    ties = 0
    with ThreadPoolExecutor(6) as pool:
        for got, (body, want_ids, want_d) in pool.map(run, cases):
            assert got["ids"] == want_ids, body
            assert got["distances"] == want_d, body
            if "labels_all" not in body:  # fewer than k only when fewer match
                assert len(got["ids"]) == min(body["k"], len(want_ids))
            ties += sum(1 for a, b in zip(want_d, want_d[1:]) if a == b)
    assert ties > 50
    # an image query and an item query with a filter, as multipart and JSON
    j = 321
    img = S.png(fx.images[j])
    r = s.post(base + "/v1/search", files={"image": ("q.png", img, "image/png")},
               data={"k": "12", "labels_any": "Sneaker,Sandal", "debug": "1"}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    w = np.asarray(got["debug"]["weights"])[None, :]
    allowed = fx.labels[:, [5, 7]].any(axis=1)
    assert (got["ids"], got["distances"]) == _filtered_brute(service, fx.codes[j], w, "qadwh", 12, allowed)
    assert all(set(x["label_names"]) & {"Sneaker", "Sandal"} for x in got["results"])
    r = s.post(base + "/v1/search", json={"id": int(fx.ids[j]), "k": 5, "mode": "hamming", "labels_all": ["Bag"]}, timeout=60)
    assert r.status_code == 200 and r.json()["ids"] == _filtered_brute(service, fx.codes[j], None, "hamming", 5, fx.labels[:, 8].astype(bool))[0]
    for bad in ({"labels_any": ["Spaceship"]}, {"labels_all": [10]}, {"labels_any": [-1]}, {"labels_any": "Bag"}):
        r = s.post(base + "/v1/search", json={"code": fx.codes[0].tobytes().hex(), "mode": "hamming", **bad}, timeout=30)
        _check_json_error(r, 422)


def test_batch_queries_equal_single_answers_with_errors_per_query(service):
    base, s, fx = service["base"], service["s"], service["fx"]
    cases = _filter_cases(service, n=3, seed=9)[:12]
    imgs, enc = _queries(service, 2, seed=13)
    queries = [c[0] for c in cases]
    queries += [
        {"image_base64": base64.b64encode(S.png(imgs[0])).decode(), "k": 7, "debug": True},
        {"id": int(fx.ids[10]), "k": 20, "mode": "dwh"},
        {"code": "zz", "mode": "hamming"},  # bad code: fails alone
        {"id": int(np.setdiff1d(np.arange(70000), fx.ids)[0])},  # unknown item: 404 alone
        {"image_base64": base64.b64encode(b"not an image").decode()},  # undecodable: 422 alone
        {"code": fx.codes[3].tobytes().hex(), "k": 0},
    ]
    r = s.post(base + "/v1/search/batch", json={"queries": queries}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == fx.version and len(out["results"]) == len(queries)
    res = out["results"]
    for (body, want_ids, want_d), got in zip(cases, res):
        assert got["status"] == 200 and got["ids"] == want_ids and got["distances"] == want_d, body
    single = s.post(base + "/v1/search", json=queries[len(cases) + 1], timeout=60).json()
    assert res[len(cases) + 1]["ids"] == single["ids"] and res[len(cases) + 1]["distances"] == single["distances"]
    img_answer = res[len(cases)]
    assert img_answer["status"] == 200 and img_answer["query"]["code"] == enc.codes[0].tobytes().hex()
    # one pass per shard carried every valid query of the batch
    valid = len(cases) + 2
    assert len(img_answer["debug"]["shards"]) == 2 and all(x["batch"] >= valid for x in img_answer["debug"]["shards"])
    assert [x["status"] for x in res[-4:]] == [422, 404, 422, 422]
    assert all(set(x) == {"status", "error", "detail"} for x in res[-4:])
    assert all(x["log_position"] == out["log_position"] for x in res if x["status"] == 200)
    # the envelope itself
    for kw, status in ((dict(json={"queries": []}), 422), (dict(json={"queries": [{"id": 1}] * 65}), 422),
                       (dict(json=[{"id": 1}]), 422), (dict(data=b"[" * 50000, headers={"Content-Type": "application/json"}), 400),
                       (dict(data=b"x", headers={"Content-Type": "text/plain"}), 415)):
        _check_json_error(s.post(base + "/v1/search/batch", timeout=30, **kw), status)


def test_hardening_nested_oversized_and_malformed_bodies(service):
    base, s = service["base"], service["s"]
    J = {"Content-Type": "application/json"}
    for path in ("/v1/search", "/v1/search/batch"):
        _check_json_error(s.post(base + path, data=b"[" * 200_000, headers=J, timeout=30), 400)
        _check_json_error(s.post(base + path, data=b'{"queries": ' + b"[" * 100_000, headers=J, timeout=30), 400)
        _check_json_error(s.post(base + path, data=b'{"a": "' + b"x" * (300 * 1024) + b'"}', headers=J, timeout=30), 413)
    _check_json_error(s.put(base + "/v1/admin/index", data=b"[" * 100_000, headers=J, timeout=30), 400)
    _check_json_error(s.put(base + "/v1/items/5", data=b"{" * 100_000, headers=J, timeout=30), 400)
    M = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    for body in (b"--XyZ\r\nno header end--XyZ--", b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n", b"garbage"):
        r = s.post(base + "/v1/search", data=body, headers=M, timeout=30)
        assert r.status_code in (400, 422), (body, r.status_code, r.text)
        _check_json_error(r, r.status_code)
    assert s.post(base + "/v1/search", json={"code": service["fx"].codes[0].tobytes().hex(), "mode": "hamming"}, timeout=30).status_code == 200


def test_12_bit_rgb_index_with_its_own_class_names(serving_rgb12):
    """A 12-bit RGB index: /v1/index reports 12 bits and the folder's class names, a code
    query is its 2 packed bytes (padding bits 0) and equals the in-process search in every
    mode, an uploaded RGB image is answered with those names, items come back as RGB PNGs."""
    from PIL import Image

    from qadwh_ray.core.bits import unpack_bits
    from qadwh_ray.model import encode, load_checkpoint

    fx = serving_rgb12
    base, names = fx["base"], fx["names"]
    info = requests.get(base + "/v1/index", timeout=30).json()
    assert info["bits"] == 12 and info["class_names"] == names and info["has_images"] is True
    index = S.in_process_index(fx["root"], fx["version"])
    enc = encode(load_checkpoint(fx["checkpoint"]), fx["pixels"][:4])
    bits = unpack_bits(fx["codes"], 12).astype(np.int64)
    for j in range(4):
        code = fx["codes"][j]
        assert len(code.tobytes().hex()) == 4 and code[1] & 0xF0 == 0
        for mode, body_w, w in (("qadwh", enc.qadwh_weights[j].tolist(), enc.qadwh_weights[j][None, :]),
                                ("dwh", None, enc.dwh_weights), ("hamming", None, None)):
            body = {"code": code.tobytes().hex(), "k": 15, "mode": mode, **({"weights": body_w} if body_w else {})}
            r = requests.post(base + "/v1/search", json=body, timeout=60)
            assert r.status_code == 200, r.text
            got = r.json()
            d, ids = index.search(code[None, :], 15, w, mode=mode)
            assert got["ids"] == ids[0].tolist() and got["distances"] == d[0].tolist(), mode
            assert all(res["label_names"] == [names[int(fx["labels"][res["id"]].argmax())]] for res in got["results"])
            if mode == "hamming":  # the distances of the unpadded 12 bits
                assert got["distances"] == sorted(int(x) for x in (bits[j] != bits[got["ids"]]).sum(-1))
    # a padding bit set, or weights for the padded width, are refused with the reason
    r = requests.post(base + "/v1/search", json={"code": "ff1f", "mode": "hamming"}, timeout=30)
    _check_json_error(r, 422)
    assert "bits 12..15 pad a 12-bit code" in r.json()["detail"]
    r = requests.post(base + "/v1/search", json={"code": "ff0f", "weights": [1.0] * 16}, timeout=30)
    _check_json_error(r, 422)
    assert "12-bit codes" in r.json()["detail"]
    r = requests.post(base + "/v1/search", json={"code": "ff0", "mode": "hamming"}, timeout=30)
    _check_json_error(r, 422)

    # an uploaded RGB image: its own code, a predicted label from the dataset's names
    j = 7
    r = requests.post(base + "/v1/search", files={"image": ("q.png", S.png(fx["pixels"][j]), "image/png")}, data={"k": "5"}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["query"]["code"] == fx["codes"][j].tobytes().hex() and got["results"][0]["distance"] == 0.0
    assert got["query"]["predicted_label"] in names
    assert all(res["label_names"][0] in names for res in got["results"])

    item = requests.get(base + f"/v1/items/{j}", timeout=30).json()
    assert item["bits"] == 12 and item["code"] == fx["codes"][j].tobytes().hex()
    assert item["label_names"] == [names[int(fx["labels"][j].argmax())]] and item["has_image"]
    png = requests.get(base + item["image_url"], timeout=30)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    px = np.asarray(Image.open(io.BytesIO(png.content)))
    assert px.shape == fx["pixels"][j].shape == (32, 32, 3)
    np.testing.assert_array_equal(px, fx["pixels"][j])  # the file's pixels, in colour
