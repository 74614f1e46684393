"""The ingress deployment: FastAPI over HTTP, fan-out to every shard, exact merge.

Versions and swaps
    ``self.active`` is the index version new requests use; a request reads it
    once when it starts and passes that version to every shard, so one answer
    never mixes versions. A watcher (every ``poll_interval_s``) computes the
    version the service should serve — the admin pin (held by the control
    deployment, shared by all router replicas), else the ``user_config`` pin,
    else the index's ``CURRENT`` pointer — and, when it differs, *prepares* it
    (every shard deployment confirms it holds the version; the encoder loads
    the version's checkpoint) before switching ``self.active`` in one
    assignment. Shard replicas drop the old version only after it has gone
    unused for ``swap_grace_s``; a replica that misses a version loads it on
    demand. If a shard ever reports the version of a running request gone, the
    request restarts on the new active version — whole, never partially.

Failures
    Each shard/encoder call is retried (exponential back-off) when a replica
    dies, is unavailable or too slow, until ``request_deadline_s``; then the
    request fails with 503 ``{"error": "unavailable"}`` and ``Retry-After``.
    An answer is only ever built from every shard's complete reply.
"""


import asyncio
import hmac
import io
import logging
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from qadwh_ray.serving import api as api_mod
from qadwh_ray.serving.config import MODES, AppArgs, RuntimeConfig, read_token
from qadwh_ray.serving.errors import ERROR_RESPONSES, ApiError, install_error_handling
from qadwh_ray.serving.fastpath import FastRoutes
from qadwh_ray.serving.ingress import inter_deployment_handle_options

__all__ = ["Router", "fastapi_app", "ActiveVersion"]

log = logging.getLogger("ray.serve")

fastapi_app = FastAPI(
    title="qadwh image retrieval",
    description=(
        "Query-adaptive Deep Weighted Hashing search over a sharded, versioned index. "
        "Errors are JSON {\"error\", \"detail\"}. With a token configured, /v1/* needs `Authorization: Bearer <token>`."
    ),
    version="1",
    docs_url="/docs",
    redoc_url=None,
    openapi_url="/openapi.json",
)
fastapi_app.state.max_body_bytes = 8 * 1024 * 1024
fastapi_app.state.on_request = None
fastapi_app.state.fast_routes = {}
fastapi_app.add_middleware(FastRoutes, state=fastapi_app.state)  # added first: runs inside the guard
install_error_handling(fastapi_app)


class VersionGone(Exception):
    """A shard no longer has (and cannot load) the version a request started with."""


@dataclass(frozen=True)
class ActiveVersion:
    version: str
    num_shards: int
    code_bits: int
    num_items: int
    shard_rows: tuple
    checkpoint: dict
    in_channels: int
    num_classes: int
    dwh_weights: np.ndarray
    W: np.ndarray
    class_names: Optional[list]
    image_kind: Optional[str]
    created_at: str
    manifest: Any = field(repr=False, default=None)
    activated_at: float = field(default_factory=time.time)

    @property
    def image_mode(self) -> str:
        return "L" if self.in_channels == 1 else "RGB"


_RETRYABLE: tuple = ()
_IMAGE_CACHE_BYTES = 64 * 1024 * 1024


def check_shard_replies(replies: list[dict], version: str) -> None:
    """Refuse an answer unless every shard answered, and from ``version`` (no mixed versions)."""
    for r in replies:
        if not r.get("ok"):
            if r.get("error") == "version_unavailable":
                raise VersionGone(r.get("detail"))
            raise ApiError(422, r.get("error", "invalid_request"), r.get("detail", "the shard refused the query"))
        if r.get("version") != version:  # defensive: a shard must answer from the version asked for
            raise VersionGone(f"shard {r.get('shard')} answered from {r.get('version')}")


def _retryable() -> tuple:
    global _RETRYABLE
    if not _RETRYABLE:
        import ray.exceptions as rex
        from ray.serve import exceptions as sex

        names = ("BackPressureError", "DeploymentUnavailableError", "ReplicaUnavailableError", "RequestCancelledError")
        _RETRYABLE = (
            rex.RayActorError,
            rex.OutOfMemoryError,
            rex.ObjectLostError,
            asyncio.TimeoutError,
            TimeoutError,
            *(getattr(sex, n) for n in names if hasattr(sex, n)),
        )
    return _RETRYABLE


class _Tokens:
    """The bearer token, re-read when its file changes (rotation without restarts)."""

    def __init__(self, args: AppArgs):
        self.args = args
        self._mtime = None
        self.token = read_token(args)

    def get(self) -> Optional[str]:
        f = self.args.auth_token_file
        if f:
            try:
                m = os.stat(f).st_mtime_ns
            except OSError:
                return self.token  # keep the last good token
            if m != self._mtime:
                try:
                    self.token = read_token(self.args)
                    self._mtime = m
                except RuntimeError as exc:
                    log.warning("auth token file: %s (keeping the previous token)", exc)
        return self.token


def _png(img: np.ndarray) -> bytes:
    from qadwh_ray.data.transforms import encode_png

    return encode_png(img)


def _replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_tag
    except Exception:  # noqa: BLE001
        return "local"


def _metrics():
    try:
        from ray.serve.metrics import Counter, Gauge, Histogram

        ms = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 15000]
        return {
            "requests": Counter("qadwh_requests", description="HTTP requests by endpoint and status", tag_keys=("endpoint", "status")),
            "latency": Histogram("qadwh_request_latency_ms", description="HTTP request latency (ms)", boundaries=ms, tag_keys=("endpoint",)),
            "shard": Histogram("qadwh_shard_latency_ms", description="per-shard search round trip from the router (ms)", boundaries=ms, tag_keys=("shard",)),
            "shard_search": Histogram("qadwh_shard_search_ms", description="search time inside a shard replica (ms)", boundaries=ms, tag_keys=("shard",)),
            "encode": Histogram("qadwh_encode_latency_ms", description="query encoding round trip (ms)", boundaries=ms),
            "retries": Counter("qadwh_backend_retries", description="retried shard/encoder calls", tag_keys=("target",)),
            "swaps": Counter("qadwh_index_swaps", description="index version switches"),
            "items": Gauge("qadwh_index_items", description="items in the active index version"),
        }
    except Exception as exc:  # noqa: BLE001 — metrics are optional
        log.warning("metrics disabled: %s", exc)
        return {}


class _Coalescer:
    """Adaptive batching of shard calls: a query is sent at once when a slot is free;
    while ``max_inflight`` batches are out, new queries queue and leave together in
    the next call (one call per shard per batch instead of one per query). No timer:
    an idle service adds no latency, a busy one makes fewer, larger calls."""

    def __init__(self, router, max_batch: int, max_inflight: int):
        self.router = router
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.pending: list = []
        self.inflight = 0

    def submit(self, st, query: tuple, deadline: float) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((st, query, deadline, fut))
        self._kick()
        return fut

    def _kick(self) -> None:
        while self.pending and self.inflight < self.max_inflight:
            version = self.pending[0][0].version
            batch, rest = [], []
            for p in self.pending:
                (batch if p[0].version == version and len(batch) < self.max_batch else rest).append(p)
            self.pending = rest
            batch = [p for p in batch if not p[3].done()]  # cancelled requests are dropped
            if not batch:
                continue
            self.inflight += 1
            asyncio.get_running_loop().create_task(self._dispatch(batch))

    async def _dispatch(self, batch: list) -> None:
        try:
            st = batch[0][0]
            deadline = min(p[2] for p in batch)
            queries = [p[1] for p in batch]
            router = self.router

            async def one(i: int):
                t = time.perf_counter()
                r = await router._call(f"shard-{i}", router.shards[i].search_many, st.version, queries, deadline=deadline)
                r["_rtt_ms"] = (time.perf_counter() - t) * 1e3
                return r

            replies = await asyncio.gather(*(one(i) for i in range(st.num_shards)))
            check_shard_replies(replies, st.version)
            meta = [
                {"shard": r["shard"], "rtt_ms": round(r["_rtt_ms"], 3), "search_ms": round(r["search_ms"], 3), "replica": r.get("replica"), "batch": len(batch)}
                for r in replies
            ]
            for j, (_, _, _, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(([r["results"][j] for r in replies], meta))
            router._observe_shards(meta)  # once per shard call, not once per query it carried
        except BaseException as exc:  # noqa: BLE001 — every waiting request gets the failure
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.inflight -= 1
            self._kick()


# NOTE: every module-level name the routes use must be defined above this class:
# @serve.ingress serialises the FastAPI app (and the functions it references) here.
@serve.ingress(fastapi_app)
class Router:
    """Serve deployment body (wrapped by :func:`qadwh_ray.serving.app.build_app`)."""

    async def __init__(self, args: dict, encoder, shards: list, control):
        from qadwh_ray.index.store import IndexStore

        self.args = AppArgs.parse(args)
        # The handles were made by whoever built the app; call over the transport this
        # cluster's Serve is set up for (gRPC under the fast ingress, serving/ingress.py).
        opts = inter_deployment_handle_options()
        self.encoder = encoder.options(**opts)
        self.shards = [h.options(**opts) for h in shards]
        self.control = control.options(**opts)
        self.store = IndexStore(self.args.index)
        self.user_pin: Optional[str] = self.args.version
        self.admin_pin: Optional[str] = None
        self.active: Optional[ActiveVersion] = None
        self.last_error: Optional[str] = None
        self.swaps = 0
        self._swap_lock = asyncio.Lock()
        self._images: OrderedDict = OrderedDict()
        self._image_bytes = 0
        self.tokens = _Tokens(self.args)
        self.m = _metrics()
        ra = self.args.router
        self._coalescer = _Coalescer(self, ra.max_batch, ra.max_inflight_batches) if ra.coalesce else None
        fastapi_app.state.max_body_bytes = self.args.max_body_bytes
        fastapi_app.state.on_request = self._observe
        fastapi_app.state.fast_routes = {("POST", "/v1/search"): self.search}  # serving/fastpath.py
        # The first version is activated by the first reconfigure() (build_app always sets
        # a user_config; Serve awaits it before sending traffic); the watcher does it otherwise.
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    # ---------------------------------------------------------------- versions

    async def _desired(self) -> str:
        if self.admin_pin:
            return self.admin_pin
        if self.user_pin:
            return self.user_pin
        return await asyncio.to_thread(self.store.resolve, None)

    async def reconfigure(self, user_config: dict) -> None:
        """``serve deploy`` changed ``user_config``: follow the new pin (switches on the next watcher tick)."""
        self.user_pin = RuntimeConfig.parse(user_config).version
        if self.active is None:
            await self._tick()  # start-up: activate before taking traffic (failures leave it not ready)
        else:
            asyncio.get_running_loop().create_task(self._tick())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.args.poll_interval_s)
            await self._tick()

    async def _tick(self) -> None:
        try:
            try:
                got = await asyncio.wait_for(self.control.get.remote(), timeout=5)
                self.admin_pin = got.get("pin")
            except Exception as exc:  # noqa: BLE001 — keep the last known admin pin
                log.debug("router: control unreachable: %s", exc)
            desired = await self._desired()
            if self.active is None or desired != self.active.version:
                await self._switch_to(desired)
            self.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 — keep serving the active version
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self.last_error:
                log.warning("router: staying on %s: %s", self.active.version if self.active else None, msg)
            self.last_error = msg

    async def _prepare(self, version: str) -> ActiveVersion:
        from qadwh_ray.index.reader import IndexReader
        from qadwh_ray.serving.encoder import checkpoint_ref
        from qadwh_ray.serving.images import class_names, image_kind

        reader = await asyncio.to_thread(IndexReader, self.store, version)
        m = reader.manifest
        if m.num_shards > len(self.shards):
            raise RuntimeError(
                f"index version {version} has {m.num_shards} shards but this application has {len(self.shards)} shard "
                "deployments: redeploy with num_shards >= that"
            )
        ref = checkpoint_ref(m, self.args.checkpoint)
        info = await self._call("encoder", self.encoder.describe, ref)
        if info["nbits"] != m.code_bits:
            raise RuntimeError(f"checkpoint {ref['uri']} makes {info['nbits']}-bit codes; index version {version} holds {m.code_bits}-bit codes")
        replies = await asyncio.gather(*(self._call(f"shard-{i}", self.shards[i].prepare, version) for i in range(m.num_shards)))
        for r in replies:
            if not r.get("ok"):
                raise RuntimeError(r.get("detail", "shard refused the version"))
        return ActiveVersion(
            version=version,
            num_shards=m.num_shards,
            code_bits=m.code_bits,
            num_items=m.num_items,
            shard_rows=tuple(s.rows for s in m.shards),
            checkpoint={"uri": info["uri"], "sha256": info["sha256"]},
            in_channels=int(info["in_channels"]),
            num_classes=int(info["num_classes"]),
            dwh_weights=np.asarray(info["dwh_weights"]),
            W=np.asarray(info["W"]),
            class_names=class_names(m, info["num_classes"]),
            image_kind=image_kind(m),
            created_at=m.created_at,
            manifest=m,
        )

    async def _switch_to(self, version: str) -> ActiveVersion:
        async with self._swap_lock:
            if self.active is not None and self.active.version == version:
                return self.active
            st = await self._prepare(version)
            old = self.active
            self.active = st  # one assignment: requests started before keep the old version
            self.swaps += 1
            self._images.clear()
            self._image_bytes = 0
            if self.m:
                self.m["swaps"].inc()
                self.m["items"].set(st.num_items)
            log.info("router: now serving index version %s (was %s)", version, old.version if old else None)
            return st

    def _require_active(self) -> ActiveVersion:
        st = self.active
        if st is None:
            raise ApiError(503, "not_ready", f"no index version is loaded yet ({self.last_error or 'starting'})", {"Retry-After": "2"})
        return st

    # ---------------------------------------------------------------- backends

    async def _call(self, target: str, method, *args, deadline: Optional[float] = None):
        """Call a deployment method, retrying dead/unavailable/slow replicas until the deadline."""
        end = deadline or (time.monotonic() + self.args.request_deadline_s)
        delay = 0.05
        retryable = _retryable()
        while True:
            left = end - time.monotonic()
            try:
                return await asyncio.wait_for(method.remote(*args), timeout=max(0.05, min(self.args.attempt_timeout_s, left)))
            except retryable as exc:
                left = end - time.monotonic()
                if left <= delay:
                    raise ApiError(
                        503, "unavailable", f"{target} is unavailable ({type(exc).__name__}); try again", {"Retry-After": "1"}
                    ) from None
                if self.m:
                    self.m["retries"].inc(tags={"target": target})
                log.info("router: retrying %s after %s", target, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _encode(self, st: ActiveVersion, pixels: np.ndarray, deadline: float) -> dict:
        r = await self._call("encoder", self.encoder.encode, pixels, st.checkpoint, deadline=deadline)
        if not r.get("ok"):
            status = 422 if r.get("error") == "invalid_image" else 503
            raise ApiError(status, r.get("error", "encoder_error"), r.get("detail", "the encoder failed"))
        return r

    async def _item(self, st: ActiveVersion, item_id: int, deadline: Optional[float] = None) -> dict:
        from qadwh_ray.index.format import shard_of_ids

        if not 0 <= item_id < 2**63:
            raise ApiError(404, "unknown_item", f"no item {item_id} in index version {st.version}")
        home = int(shard_of_ids(np.asarray([item_id], dtype=np.int64), st.num_shards)[0])
        r = await self._call(f"shard-{home}", self.shards[home].items, st.version, [item_id], deadline=deadline)
        if not r.get("ok"):
            raise VersionGone(r.get("detail"))
        item = r["items"][0]
        if item is None:
            raise ApiError(404, "unknown_item", f"no item {item_id} in index version {st.version}")
        item["shard"] = home
        return item

    async def _item_pixels(self, st: ActiveVersion, item: dict) -> np.ndarray:
        from qadwh_ray.serving.images import ImageUnavailable, item_pixels

        if not self.args.images_from_sources:
            raise ApiError(404, "no_image", "this service does not serve item images")
        key = (st.version, item["id"])
        got = self._images.get(key)
        if got is not None:
            self._images.move_to_end(key)
            return got
        try:
            px = await asyncio.to_thread(item_pixels, st.manifest, item["id"], item.get("source"), st.image_mode, self.args.max_image_pixels)
        except ImageUnavailable as exc:
            raise ApiError(404, "no_image", str(exc)) from None
        self._images[key] = px
        self._image_bytes += px.nbytes
        while self._image_bytes > _IMAGE_CACHE_BYTES and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self._image_bytes -= old.nbytes
        return px

    def _decode_upload(self, st: ActiveVersion, data: bytes) -> np.ndarray:
        from PIL import Image

        from qadwh_ray.data.transforms import ImageDecodeError, decode_image
        from qadwh_ray.serving.images import check_pixels

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 — PIL raises many types
            raise ApiError(422, "invalid_image", "the uploaded file is not a decodable image (PNG, JPEG, GIF, BMP, WebP ...)") from None
        check_pixels(w, h, self.args.max_image_pixels)
        try:
            return decode_image(data, mode=st.image_mode, source="upload")
        except ImageDecodeError as exc:
            raise ApiError(422, "invalid_image", str(exc)) from None

    # ---------------------------------------------------------------- search

    async def _search_once(self, st: ActiveVersion, q: api_mod.Query, timings: dict) -> dict:
        deadline = time.monotonic() + self.args.request_deadline_s
        nbits = st.code_bits
        query_info: dict = {"kind": q.kind}
        if q.radius is not None and q.radius > nbits:
            raise ApiError(422, "invalid_radius", f"radius must be between 0 and {nbits} (the code length), got {q.radius}")
        weights = None
        if q.kind == "image":
            t = time.perf_counter()
            px = await asyncio.to_thread(self._decode_upload, st, q.image) if len(q.image) > 65536 else self._decode_upload(st, q.image)
            timings["decode_ms"] = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            enc = await self._encode(st, px, deadline)
            timings["encode_ms"] = (time.perf_counter() - t) * 1e3
            timings["encoder_batch_size"] = enc.get("batch_size")
            if self.m:
                self.m["encode"].observe(timings["encode_ms"])
            code = enc["code"]
            weights = np.asarray(enc["weights"])[None, :]
            probs = np.asarray(enc["probs"])
            query_info["predicted_class"] = int(np.argmax(probs))
            if st.class_names:
                query_info["predicted_label"] = st.class_names[query_info["predicted_class"]]
        elif q.kind == "id":
            item = await self._item(st, q.item_id, deadline)
            code = item["code"]
            query_info["id"] = q.item_id
            if q.mode == "qadwh":
                try:
                    px = await self._item_pixels(st, item)
                except ApiError:
                    px = None
                if px is not None:
                    enc = await self._encode(st, px, deadline)
                    weights = np.asarray(enc["weights"])[None, :]
                    query_info["weights_from"] = "image"
                elif item.get("labels"):
                    weights = st.W[item["labels"]].mean(axis=0)[None, :]
                    query_info["weights_from"] = "labels"
                else:
                    weights = st.dwh_weights[None, :]
                    query_info["weights_from"] = "dwh"
        else:
            code = api_mod.parse_code(q.code_hex, nbits)
            if q.mode == "qadwh":
                if q.weights is None:
                    raise ApiError(422, "invalid_weights", "a code query in mode qadwh needs 'weights' (one per bit); or use mode dwh or hamming")
                weights = np.asarray(api_mod.parse_weights(q.weights, nbits), dtype=np.float64)[None, :]
        query_info["code"] = code.hex()
        if q.mode == "dwh":
            weights = st.dwh_weights
        elif q.mode == "hamming":
            weights = None
        qc = np.frombuffer(code, dtype=np.uint8).reshape(1, -1)
        if q.debug:
            timings["weights"] = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1).tolist()

        t = time.perf_counter()
        if self._coalescer is not None:
            w_row = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
            per_shard, meta = await self._coalescer.submit(st, (qc[0], w_row, q.mode, q.k, q.radius), deadline)
            pairs = [(d[None, :], ids[None, :]) for d, ids, _ in per_shard]
            label_rows = [[lab] for _, _, lab in per_shard]
            shard_meta = meta
        else:

            async def one(i: int):
                t1 = time.perf_counter()
                r = await self._call(f"shard-{i}", self.shards[i].search, st.version, qc, weights, q.mode, q.k, q.radius, deadline=deadline)
                r["_rtt_ms"] = (time.perf_counter() - t1) * 1e3
                return r

            replies = await asyncio.gather(*(one(i) for i in range(st.num_shards)))
            check_shard_replies(replies, st.version)
            pairs = [(r["distances"], r["ids"]) for r in replies]
            label_rows = [r["labels"] for r in replies]
            shard_meta = [
                {"shard": r["shard"], "rtt_ms": round(r["_rtt_ms"], 3), "search_ms": round(r["search_ms"], 3), "replica": r.get("replica")}
                for r in replies
            ]
        timings["fanout_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        from qadwh_ray.core.topk import merge_topk

        d, ids = merge_topk(pairs, q.k)
        labels_of: dict = {}
        for (_, pid), rows in zip(pairs, label_rows):
            for row_ids, row_labels in zip(pid, rows):
                for i_, lab in zip(row_ids[row_ids >= 0].tolist(), row_labels):
                    labels_of[i_] = lab
        keep = ids[0] >= 0
        out_ids = ids[0][keep].tolist()
        out_d = d[0][keep].tolist()
        out_labels = [labels_of.get(i) for i in out_ids]
        timings["merge_ms"] = (time.perf_counter() - t) * 1e3
        timings["shards"] = shard_meta
        if self._coalescer is None:
            self._observe_shards(shard_meta)
        names = st.class_names
        results = [
            {
                "id": i,
                "distance": dist,
                "labels": lab,
                "label_names": [names[c] for c in lab if c < len(names)] if (names and lab is not None) else None,
            }
            for i, dist, lab in zip(out_ids, out_d, out_labels)
        ]
        return {
            "version": st.version,
            "mode": q.mode,
            "k": q.k,
            "radius": q.radius,
            "query": query_info,
            "ids": out_ids,
            "distances": out_d,
            "labels": out_labels,
            "results": results,
        }

    # ---------------------------------------------------------------- helpers

    def _auth(self, request: Request) -> None:
        token = self.tokens.get()
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})

    def _observe_shards(self, shard_meta: list) -> None:
        if not self.m:
            return
        try:
            for x in shard_meta:
                self.m["shard"].observe(x["rtt_ms"], tags={"shard": str(x["shard"])})
                self.m["shard_search"].observe(x["search_ms"], tags={"shard": str(x["shard"])})
        except Exception as exc:  # noqa: BLE001 — metrics never fail a request
            log.debug("router: shard metrics: %s", exc)

    def _observe(self, scope: dict, status: int, seconds: float) -> None:
        if not self.m:
            return
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        self.m["requests"].inc(tags={"endpoint": endpoint, "status": str(status)})
        self.m["latency"].observe(seconds * 1e3, tags={"endpoint": endpoint})

    # ---------------------------------------------------------------- routes

    @fastapi_app.post(
        "/v1/search",
        summary="Search with an image, an item id or a packed code",
        response_model=api_mod.SearchResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=api_mod.SEARCH_OPENAPI,
    )
    async def search(self, request: Request):
        t0 = time.perf_counter()
        self._auth(request)
        q = await api_mod.parse_search(request, self.args.default_k, self.args.max_k)
        st = self._require_active()
        timings: dict = {}
        for attempt in range(3):
            try:
                out = await self._search_once(st, q, timings)
                break
            except VersionGone as exc:
                newer = self.active
                if newer is None or newer.version == st.version or attempt == 2:
                    raise ApiError(503, "unavailable", f"index version {st.version} is no longer available ({exc})", {"Retry-After": "1"}) from None
                st = newer  # restart the whole query on the version now active
        if q.debug:
            timings["total_ms"] = (time.perf_counter() - t0) * 1e3
            timings["router_replica"] = _replica_tag()
            out["debug"] = timings
        return JSONResponse(out)

    @fastapi_app.get("/v1/items/{item_id}", summary="An indexed item: labels, code, image link", responses=ERROR_RESPONSES)
    async def get_item(self, request: Request, item_id: int = Path(..., ge=0, le=2**63 - 1)):
        self._auth(request)
        st = self._require_active()
        try:
            item = await self._item(st, item_id)
        except VersionGone:
            raise ApiError(503, "unavailable", "the index version changed; try again", {"Retry-After": "1"}) from None
        has_image = self.args.images_from_sources and (item.get("source") is not None or st.image_kind is not None)
        names = st.class_names
        lab = item.get("labels")
        return {
            "id": item_id,
            "version": st.version,
            "shard": item["shard"],
            "labels": lab,
            "label_names": [names[c] for c in lab if c < len(names)] if (names and lab is not None) else None,
            "code": item["code"].hex(),
            "bits": st.code_bits,
            "has_image": bool(has_image),
            "image_url": f"/v1/items/{item_id}/image" if has_image else None,
        }

    @fastapi_app.get(
        "/v1/items/{item_id}/image",
        summary="The item's image as PNG (when the index knows its source)",
        responses={**ERROR_RESPONSES, 200: {"content": {"image/png": {}}}},
        response_class=Response,
    )
    async def get_item_image(self, request: Request, item_id: int = Path(..., ge=0, le=2**63 - 1)):
        self._auth(request)
        st = self._require_active()
        try:
            item = await self._item(st, item_id)
        except VersionGone:
            raise ApiError(503, "unavailable", "the index version changed; try again", {"Retry-After": "1"}) from None
        px = await self._item_pixels(st, item)
        png = await asyncio.to_thread(_png, px)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @fastapi_app.get("/v1/random", summary="Random item ids of the active version (for the search page)", responses=ERROR_RESPONSES)
    async def random_items(self, request: Request, n: int = 1):
        self._auth(request)
        if not 1 <= n <= 100:
            raise ApiError(422, "invalid_request", f"n must be between 1 and 100, got {n}")
        st = self._require_active()
        rows = np.asarray(st.shard_rows, dtype=np.float64)
        if rows.sum() == 0:
            return {"version": st.version, "ids": []}
        shard = int(np.random.default_rng().choice(len(rows), p=rows / rows.sum()))
        r = await self._call(f"shard-{shard}", self.shards[shard].sample_ids, st.version, n, random.randrange(2**31))
        if not r.get("ok"):
            raise ApiError(503, "unavailable", r.get("detail", "shard unavailable"), {"Retry-After": "1"})
        return {"version": st.version, "ids": r["ids"]}

    @fastapi_app.get("/v1/index", summary="The active index version", responses=ERROR_RESPONSES)
    async def index_info(self, request: Request):
        from qadwh_ray.serving.images import has_item_images

        self._auth(request)
        st = self._require_active()
        return {
            "version": st.version,
            "items": st.num_items,
            "bits": st.code_bits,
            "num_shards": st.num_shards,
            "shards": [{"shard": i, "rows": r} for i, r in enumerate(st.shard_rows)],
            "created_at": st.created_at,
            "checkpoint": st.checkpoint,
            "class_names": st.class_names,
            "has_images": bool(self.args.images_from_sources and has_item_images(st.manifest)),
            "following": "admin_pin" if self.admin_pin else ("user_config_pin" if self.user_pin else "CURRENT"),
            "pinned": self.admin_pin or self.user_pin,
            "swaps": self.swaps,
            "activated_at": st.activated_at,
            "modes": list(MODES),
            "default_k": self.args.default_k,
            "max_k": self.args.max_k,
            "last_error": self.last_error,
        }

    @fastapi_app.put("/v1/admin/index", summary="Pin (or unpin with null) the served index version", responses=ERROR_RESPONSES)
    async def admin_pin_version(self, request: Request):
        from qadwh_ray.index.format import validate_version_name

        if self.tokens.get() is None:
            raise ApiError(403, "forbidden", "the admin API is disabled: configure a bearer token to enable it")
        self._auth(request)
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "malformed_json", "request body is not valid JSON") from None
        if not isinstance(body, dict) or set(body) != {"version"}:
            raise ApiError(422, "invalid_request", 'send {"version": "<name>"} to pin or {"version": null} to follow CURRENT')
        v = body["version"]
        if v is not None:
            if not isinstance(v, str):
                raise ApiError(422, "invalid_request", "version must be a string or null")
            try:
                validate_version_name(v)
            except ValueError as exc:
                raise ApiError(422, "invalid_version", str(exc)) from None
            if v not in await asyncio.to_thread(self.store.list_versions):
                raise ApiError(404, "unknown_version", f"no published index version {v}")
        await self._call("control", self.control.set, v)
        self.admin_pin = v
        try:
            st = await self._switch_to(await self._desired())
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ApiError(409, "swap_failed", f"cannot serve the requested version: {exc}") from None
        return {"pinned": v, "active": st.version}

    @fastapi_app.get("/healthz", summary="Liveness", include_in_schema=True)
    async def healthz(self):
        return {"status": "ok"}

    @fastapi_app.get("/readyz", summary="Readiness: an index version is active and every shard answers", responses=ERROR_RESPONSES)
    async def readyz(self):
        st = self.active
        if st is None:
            raise ApiError(503, "not_ready", f"no index version active yet ({self.last_error or 'starting'})", {"Retry-After": "2"})
        try:
            await asyncio.wait_for(asyncio.gather(*(self.shards[i].status.remote() for i in range(st.num_shards))), timeout=5)
        except Exception as exc:  # noqa: BLE001
            raise ApiError(503, "not_ready", f"a shard does not answer: {type(exc).__name__}", {"Retry-After": "2"}) from None
        return {"status": "ready", "version": st.version, "shards": st.num_shards}

    @fastapi_app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self):
        if not self.args.page:
            raise ApiError(404, "not_found", "the search page is disabled")
        from qadwh_ray.serving.page import PAGE_HTML

        return HTMLResponse(PAGE_HTML, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

