"""The Python client of the search service (standard library only)::

    from qadwh_ray.client import Client, Query

    c = Client("http://127.0.0.1:8000", token="...")          # token: only for a service that has one
    c.wait_ready()
    hits = c.search(image="shoe.png", k=10, labels_any=["Sneaker", "Sandal"])
    for h in hits:
        print(h.id, h.distance, h.label_names)
    hits.version, hits.log_position                           # what the answer reflects

    c.search(item=123, mode="dwh")                            # an indexed item as the query
    c.search(code="0f3a", mode="hamming")                     # a packed code (hex)
    batch = c.search_batch([Query(item=1), Query(image="a.png", k=5)])
    batch.results[0].ids                                      # a SearchResult, or a QueryError for a bad query

    up = c.put_item(900001, image="new.png", labels=["Bag"])  # durable when it returns
    c.delete_item(900001)
    c.wait_position(up.log_position)                          # until this service searches it

Every call retries a ``503`` (a backend restarting, an index swap) and a lost
connection with exponential back-off, honouring ``Retry-After``, until
``retries`` are spent; every call is safe to repeat (searches read, and an
update names its item). Other errors raise :class:`ServiceError` with the
service's ``error`` code and ``detail``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

import numpy as np

__all__ = [
    "Client",
    "Query",
    "Hit",
    "SearchResult",
    "QueryError",
    "BatchResult",
    "UpdateResult",
    "ServiceError",
    "png_bytes",
    "add_search_parser",
]

ImageLike = Union[bytes, str, os.PathLike, np.ndarray]


class ServiceError(RuntimeError):
    """The service answered with an error (``status``, ``error`` code, ``detail``) or not at all (``status`` None)."""

    def __init__(self, message: str, status: Optional[int] = None, body: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}
        self.error = self.body.get("error")
        self.detail = self.body.get("detail")


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 3) image as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _image_bytes(image: ImageLike) -> bytes:
    if isinstance(image, np.ndarray):
        return png_bytes(image)
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    with open(image, "rb") as f:
        return f.read()


def _code_hex(code: Union[bytes, str, np.ndarray]) -> str:
    if isinstance(code, str):
        return code
    return bytes(np.asarray(code, dtype=np.uint8).reshape(-1).tobytes() if isinstance(code, np.ndarray) else code).hex()


@dataclass
class Query:
    """One search: exactly one of ``image`` (bytes, a file path or a uint8 array), ``item``
    (an indexed id) or ``code`` (packed bytes or hex; ``weights`` for mode qadwh)."""

    image: Optional[ImageLike] = None
    item: Optional[int] = None
    code: Optional[Union[bytes, str, np.ndarray]] = None
    weights: Optional[list] = None
    k: Optional[int] = None
    mode: Optional[str] = None
    radius: Optional[int] = None
    labels_any: Optional[list] = None
    labels_all: Optional[list] = None
    debug: bool = False

    def body(self) -> dict:
        given = [n for n in ("image", "item", "code") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image, item or code (got {', '.join(given) or 'none'})")
        b: dict = {}
        if self.image is not None:
            b["image_base64"] = base64.b64encode(_image_bytes(self.image)).decode()
        elif self.item is not None:
            b["id"] = int(self.item)
        else:
            b["code"] = _code_hex(self.code)
            if self.weights is not None:
                b["weights"] = [float(w) for w in np.asarray(self.weights, dtype=np.float64).reshape(-1)]
        for name in ("k", "mode", "radius", "labels_any", "labels_all"):
            v = getattr(self, name)
            if v is not None:
                b[name] = list(v) if name.startswith("labels") else v
        if self.debug:
            b["debug"] = True
        return b


@dataclass
class Hit:
    id: int
    distance: float
    labels: Optional[list] = None
    label_names: Optional[list] = None


@dataclass
class SearchResult:
    """An answer: its hits in order, and the index version and update-log position it reflects."""

    version: str
    log_position: int
    mode: str
    k: int
    hits: list
    query: dict = field(default_factory=dict)
    radius: Optional[int] = None
    debug: Optional[dict] = None

    @property
    def ids(self) -> list:
        return [h.id for h in self.hits]

    @property
    def distances(self) -> list:
        return [h.distance for h in self.hits]

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    @classmethod
    def from_json(cls, d: dict) -> "SearchResult":
        hits = [Hit(r["id"], r["distance"], r.get("labels"), r.get("label_names")) for r in d.get("results", [])]
        return cls(d["version"], int(d.get("log_position", 0)), d["mode"], d["k"], hits, d.get("query") or {},
                   d.get("radius"), d.get("debug"))


@dataclass
class QueryError:
    """A query of a batch that failed on its own (the others were answered)."""

    status: int
    error: str
    detail: str


@dataclass
class BatchResult:
    version: str
    log_position: int
    results: list  # SearchResult or QueryError, in the order of the queries


@dataclass
class UpdateResult:
    """A stored update: ``log_position`` is the position that holds it."""

    id: int
    op: str
    version: str
    log_position: int
    body: dict = field(default_factory=dict)


class Client:
    """HTTP client of one service (see the module docstring)."""

    def __init__(self, base_url: str, token: Optional[str] = None, timeout_s: float = 30.0, retries: int = 6,
                 backoff_s: float = 0.2, max_backoff_s: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    # ------------------------------------------------------------ transport
    def _once(self, method: str, path: str, data: Optional[bytes], ctype: Optional[str]) -> tuple[int, dict, dict]:
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"{}"), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except ValueError:
                payload = {}
            return exc.code, payload if isinstance(payload, dict) else {}, dict(exc.headers or {})

    def request(self, method: str, path: str, body: Optional[dict] = None, *, data: Optional[bytes] = None,
                content_type: Optional[str] = None) -> dict:
        """One call, retried on 503 and lost connections; returns the JSON body."""
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        delay = self.backoff_s
        last = ""
        for attempt in range(self.retries + 1):
            try:
                status, payload, headers = self._once(method, path, data, content_type)
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out: the service may be restarting
                status, payload, headers = None, {}, {}
                last = str(getattr(exc, "reason", exc))
            if status is not None and status < 400:
                return payload
            if status is not None and status != 503:
                detail = f"{payload.get('error', 'error')}: {payload.get('detail', '')}"
                raise ServiceError(f"{method} {path}: HTTP {status} {detail}", status, payload)
            if status == 503:
                last = f"HTTP 503 {payload.get('error', '')}: {payload.get('detail', '')}"
            if attempt == self.retries:
                break
            wait = delay
            try:
                wait = max(wait, float(headers.get("Retry-After") or headers.get("retry-after") or 0))
            except ValueError:
                pass
            time.sleep(min(wait, self.max_backoff_s))
            delay = min(delay * 2, self.max_backoff_s)
        raise ServiceError(f"{method} {path}: no answer after {self.retries + 1} attempts ({last})",
                           503 if last.startswith("HTTP 503") else None, {})

    # ------------------------------------------------------------ searching
    def search(self, query: Optional[Query] = None, **kwargs: Any) -> SearchResult:
        """``POST /v1/search`` with a :class:`Query` or its fields as keywords."""
        q = query if query is not None else Query(**kwargs)
        return SearchResult.from_json(self.request("POST", "/v1/search", q.body()))

    def search_batch(self, queries: list) -> BatchResult:
        """``POST /v1/search/batch``: every query answered in one pass; errors per query."""
        out = self.request("POST", "/v1/search/batch", {"queries": [q.body() for q in queries]})
        results = [
            SearchResult.from_json(r) if r.get("status") == 200 else QueryError(r["status"], r["error"], r["detail"])
            for r in out["results"]
        ]
        return BatchResult(out["version"], int(out["log_position"]), results)

    # ------------------------------------------------------------ items
    def item(self, item_id: int) -> dict:
        """``GET /v1/items/{id}``: labels, code, home shard, image link."""
        return self.request("GET", f"/v1/items/{int(item_id)}")

    def put_item(self, item_id: int, *, image: Optional[ImageLike] = None, code: Optional[Union[bytes, str]] = None,
                 labels: Optional[list] = None) -> UpdateResult:
        """Add or replace an item from an image (encoded by the service's model) or a code."""
        if (image is None) == (code is None):
            raise ValueError("give exactly one of image and code")
        body: dict = {"labels": list(labels or [])}
        if image is not None:
            body["image_base64"] = base64.b64encode(_image_bytes(image)).decode()
        else:
            body["code"] = _code_hex(code)
        r = self.request("PUT", f"/v1/items/{int(item_id)}", body)
        return UpdateResult(r["id"], r["op"], r["version"], int(r["log_position"]), r)

    def delete_item(self, item_id: int) -> UpdateResult:
        r = self.request("DELETE", f"/v1/items/{int(item_id)}")
        return UpdateResult(r["id"], r["op"], r["version"], int(r["log_position"]), r)

    # ------------------------------------------------------------ the service
    def index(self) -> dict:
        """``GET /v1/index``: the active version, items, bits, shards, log position."""
        return self.request("GET", "/v1/index")

    def _poll(self, what: str, timeout_s: float, probe) -> dict:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                got, done = probe()
                if done:
                    return got
                last = got
            except ServiceError as exc:
                last = exc
            time.sleep(0.5)
        raise ServiceError(f"service at {self.base_url}: {what} not reached within {timeout_s:.0f} s (last: {last})")

    def wait_ready(self, timeout_s: float = 120.0) -> dict:
        """Poll ``GET /readyz`` until the service answers ready; returns its body."""
        quick = Client(self.base_url, self.token, self.timeout_s, retries=0)
        return self._poll("readiness", timeout_s, lambda: (quick.request("GET", "/readyz"), True))

    def wait_version(self, version: str, timeout_s: float = 120.0) -> dict:
        """Poll ``GET /v1/index`` until the service answers from ``version``."""
        def probe():
            info = self.index()
            return info, info.get("version") == version
        return self._poll(f"version {version}", timeout_s, probe)

    def wait_position(self, position: int, timeout_s: float = 30.0) -> dict:
        """Poll ``GET /v1/index`` until the service searches update-log ``position`` (or later)."""
        def probe():
            info = self.index()
            return info, int(info.get("log_position", 0)) >= position
        return self._poll(f"log position {position}", timeout_s, probe)


def add_search_parser(subparsers) -> None:
    """``qadwh search``: query a running service from the command line."""
    p = subparsers.add_parser("search", help="query a running search service (the Python client, qadwh_ray.client)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    p.add_argument("--token-env", default="QADWH_SERVE_TOKEN", help="environment variable holding the bearer token (if any)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--image", help="an image file to search with")
    g.add_argument("--item", type=int, help="an indexed item id to search with")
    g.add_argument("--code", help="a packed code (hex) to search with")
    p.add_argument("--weights", help="comma-separated per-bit weights of --code (mode qadwh)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--mode", default="qadwh", choices=["qadwh", "dwh", "hamming"])
    p.add_argument("--radius", type=int, default=None, help="only items within this Hamming distance")
    p.add_argument("--labels-any", help="comma-separated class names or ids: items with at least one")
    p.add_argument("--labels-all", help="comma-separated class names or ids: items with every one")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_search)


def _labels(text: Optional[str]) -> Optional[list]:
    if not text:
        return None
    return [int(x) if x.strip().isdigit() else x.strip() for x in text.split(",") if x.strip()]


def cmd_search(args) -> int:
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    q = Query(image=args.image, item=args.item, code=args.code, weights=weights, k=args.k, mode=args.mode,
              radius=args.radius, labels_any=_labels(args.labels_any), labels_all=_labels(args.labels_all))
    client = Client(args.url, token=os.environ.get(args.token_env) or None)
    try:
        r = client.search(q)
    except ServiceError as exc:
        raise ValueError(str(exc)) from None
    except FileNotFoundError:
        raise
    if args.json:
        print(json.dumps({"version": r.version, "log_position": r.log_position, "query": r.query,
                          "results": [h.__dict__ for h in r.hits]}, indent=1))
        return 0
    print(f"version {r.version} at log position {r.log_position}; mode {r.mode}; {len(r)} results")
    print(f"{'rank':>4}  {'id':>12}  {'distance':>12}  labels")
    for rank, h in enumerate(r, 1):
        names = ", ".join(h.label_names or [str(x) for x in (h.labels or [])])
        print(f"{rank:>4}  {h.id:>12}  {h.distance:>12.6g}  {names}")
    return 0

