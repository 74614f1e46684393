"""Drives an ASGI app in-process, one request at a time (no HTTP client library, no server)."""

from __future__ import annotations

import asyncio
import json


class Reply:
    def __init__(self, status, headers, body):
        self.status_code, self.headers, self.content = status, headers, body
        self.text = body.decode(errors="replace")

    def json(self):
        return json.loads(self.content)


async def asgi_request(app, method: str, path: str, body: bytes = b"", content_type: str = "application/json",
                       headers: dict | None = None, root_path: str = "", query: str = "") -> Reply:
    hdrs = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": root_path, "query_string": query.encode(),
        "headers": hdrs, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    sent = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    got = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return Reply(start["status"], got, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


class Client:
    """Synchronous requests, each in its own event loop (for apps that keep no loop-bound state)."""

    def __init__(self, app, root_path=""):
        self.app, self.root_path = app, root_path

    def request(self, method, path, body=b"", content_type="application/json"):
        return asyncio.run(asgi_request(self.app, method, path, body, content_type, root_path=self.root_path))

    def post(self, path, json_body=None, content=None):
        return self.request("POST", path, content if content is not None else json.dumps(json_body).encode())

    def get(self, path):
        return self.request("GET", path)
