"""The Python client against a real HTTP server on 127.0.0.1 that scripts the service's answers:
retries on 503 (honouring Retry-After) and lost connections, typed results, errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from qadwh_ray.client import Client, Query, QueryError, SearchResult, ServiceError

ANSWER = {"version": "v1", "log_position": 7, "mode": "qadwh", "k": 2, "radius": None, "query": {"kind": "id"},
          "ids": [5, 9], "distances": [0.0, 1.5], "labels": [[1], None],
          "results": [{"id": 5, "distance": 0.0, "labels": [1], "label_names": ["Trouser"]},
                      {"id": 9, "distance": 1.5, "labels": None, "label_names": None}]}


class Scripted:
    """Answers each request with the next (status, body, headers) of a script; records what it got."""

    def __init__(self, script):
        self.script = list(script)
        self.seen = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.seen.append((self.command, self.path, json.loads(self.rfile.read(n) or b"null"),
                                   self.headers.get("Authorization"), time.monotonic()))
                status, body, headers = outer.script.pop(0) if outer.script else (500, {"error": "internal"}, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_search_retries_503_with_retry_after_and_returns_typed_hits():
    busy = (503, {"error": "unavailable", "detail": "shard-0 is unavailable"}, {"Retry-After": "0.3"})
    srv = Scripted([busy, busy, (200, ANSWER, {})])
    try:
        r = Client(srv.url, token="tok", backoff_s=0.01).search(item=5, k=2, labels_any=["Trouser"])
        assert isinstance(r, SearchResult) and r.ids == [5, 9] and r.distances == [0.0, 1.5]
        assert (r.version, r.log_position) == ("v1", 7) and r.hits[0].label_names == ["Trouser"] and len(r) == 2
        assert [s[:3] for s in srv.seen] == [("POST", "/v1/search", {"id": 5, "k": 2, "labels_any": ["Trouser"]})] * 3
        assert all(s[3] == "Bearer tok" for s in srv.seen)
        gaps = [b[4] - a[4] for a, b in zip(srv.seen, srv.seen[1:])]
        assert min(gaps) >= 0.25  # waited as Retry-After asked, not the 0.01 s back-off
    finally:
        srv.close()


def test_other_errors_raise_at_once_and_503s_give_up_after_the_retries():
    srv = Scripted([(422, {"error": "invalid_code", "detail": "code has 3 hex digits"}, {})]
                   + [(503, {"error": "unavailable", "detail": "x"}, {})] * 3)
    try:
        c = Client(srv.url, retries=2, backoff_s=0.01)
        with pytest.raises(ServiceError) as e:
            c.search(code="abc", mode="hamming")
        assert e.value.status == 422 and e.value.error == "invalid_code" and len(srv.seen) == 1
        with pytest.raises(ServiceError) as e:
            c.index()
        assert e.value.status == 503 and "3 attempts" in str(e.value) and len(srv.seen) == 4
    finally:
        srv.close()


def test_lost_connections_are_retried():
    srv = Scripted([])
    url = srv.url
    srv.close()  # nothing listens: connection refused, retried, then given up
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as e:
        Client(url, retries=3, backoff_s=0.05).search(item=1)
    assert e.value.status is None and time.monotonic() - t0 >= 0.05 + 0.1 + 0.2


def test_batch_updates_and_query_bodies():
    batch = {"version": "v1", "log_position": 3, "results": [{"status": 200, **ANSWER},
                                                             {"status": 404, "error": "unknown_item", "detail": "no item 4"}]}
    put = {"id": 12, "op": "put", "version": "v1", "log_position": 4, "code": "00ff"}
    srv = Scripted([(200, batch, {}), (200, put, {}), (200, {**put, "op": "delete", "log_position": 5}, {})])
    try:
        c = Client(srv.url)
        b = c.search_batch([Query(item=5, k=2), Query(item=4)])
        assert isinstance(b.results[0], SearchResult) and b.results[0].ids == [5, 9]
        assert b.results[1] == QueryError(404, "unknown_item", "no item 4") and b.log_position == 3
        up = c.put_item(12, code=b"\x00\xff", labels=["Bag", 3])
        assert (up.op, up.log_position) == ("put", 4)
        assert c.delete_item(12).log_position == 5
        assert srv.seen[0][2] == {"queries": [{"id": 5, "k": 2}, {"id": 4}]}
        assert srv.seen[1][:3] == ("PUT", "/v1/items/12", {"labels": ["Bag", 3], "code": "00ff"})
        assert srv.seen[2][:2] == ("DELETE", "/v1/items/12")
    finally:
        srv.close()
    img = np.zeros((4, 4), np.uint8)
    assert Query(image=img).body()["image_base64"]  # arrays are sent as PNG
    assert Query(code=np.array([1, 255], np.uint8), weights=[1, 2]).body() == {"code": "01ff", "weights": [1.0, 2.0]}
    with pytest.raises(ValueError, match="exactly one"):
        Query(item=1, code="00").body()
