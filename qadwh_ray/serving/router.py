"""The ingress deployment: the HTTP routes, the served version, the update log position.

Versions and swaps
    ``self.active`` is the index version new requests use; a request reads it
    once when it starts and passes that version (and one update-log position)
    to every shard, so one answer never mixes versions or positions. A watcher
    (every ``poll_interval_s``) computes the version the service should serve
    — the admin pin (held by the control deployment, shared by all router
    replicas), else the ``user_config`` pin, else the index's ``CURRENT``
    pointer — and, when it differs, *prepares* it (serving/versions.py) before
    switching ``self.active`` in one assignment. Shard replicas drop the old
    version only after it has gone unused for ``swap_grace_s``; a replica that
    misses a version loads it on demand. If a shard ever reports the version of
    a running request gone, the request restarts on the new active version —
    whole, never partially.

The rest lives beside it: query resolution (queries.py), calls with retries
and the coalesced fan-out (fanout.py), merging (answers.py), request parsing
(api.py), live updates (updates.py).
"""


import asyncio
import hmac
import logging
import os
import random
import time
from typing import Optional

import numpy as np
from fastapi import FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from qadwh_ray.serving import api as api_mod
from qadwh_ray.serving.answers import label_names, merge_replies
from qadwh_ray.serving.config import MODES, AppArgs, RuntimeConfig, read_token
from qadwh_ray.serving.errors import ERROR_RESPONSES, ApiError, install_error_handling
from qadwh_ray.serving.fanout import Backends, Coalescer, VersionGone
from qadwh_ray.serving.fastpath import FastRoutes
from qadwh_ray.serving.ingress import inter_deployment_handle_options
from qadwh_ray.serving.versions import ActiveVersion, prepare_version

__all__ = ["Router", "fastapi_app"]

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
            "active": Gauge("qadwh_active_version", description="1 for the index version this router replica serves (others age out)", tag_keys=("version",)),
            "log_position": Gauge("qadwh_log_position", description="update-log position this router replica searches"),
            "log_unfolded": Gauge("qadwh_log_unfolded", description="update-log changes after the active version's build (replayed by every replica)"),
            "log_lag": Gauge("qadwh_log_lag_s", description="seconds since this router replica last read the end of the update log"),
            "updates": Counter("qadwh_updates", description="item updates stored in the update log", tag_keys=("op",)),
            "batch": Histogram("qadwh_batch_queries", description="queries per POST /v1/search/batch", boundaries=[1, 2, 4, 8, 16, 32, 64, 128]),
        }
    except Exception as exc:  # noqa: BLE001 — metrics are optional
        log.warning("metrics disabled: %s", exc)
        return {}


# NOTE: every module-level name the routes use must be defined above this class:
# @serve.ingress serialises the FastAPI app (and the functions it references) here.
@serve.ingress(fastapi_app)
class Router:
    """Serve deployment body (wrapped by :func:`qadwh_ray.serving.app.build_app`)."""

    async def __init__(self, args: dict, encoder, shards: list, control):
        from qadwh_ray.index.store import IndexStore
        from qadwh_ray.index.update_log import UpdateLog
        from qadwh_ray.serving.queries import QueryResolver
        from qadwh_ray.serving.updates import LogPosition, UpdateWriter

        self.args = AppArgs.parse(args)
        # The handles were made by whoever built the app; call over the transport this
        # cluster's Serve is set up for (gRPC under the fast ingress, serving/ingress.py).
        opts = inter_deployment_handle_options()
        self.m = _metrics()
        a = self.args
        self.backends = Backends(encoder.options(**opts), [h.options(**opts) for h in shards], control.options(**opts),
                                 a.attempt_timeout_s, a.request_deadline_s, self.m)
        self.store = IndexStore(a.index)
        update_log = UpdateLog(a.index)
        self.user_pin: Optional[str] = a.version
        self.admin_pin: Optional[str] = None
        self.active: Optional[ActiveVersion] = None
        self.last_error: Optional[str] = None
        self.swaps = 0
        self._swap_lock = asyncio.Lock()
        self.tokens = _Tokens(a)
        ra = a.router
        # coalesce=False: every request alone, as many at once as arrive
        self.coalescer = Coalescer(self.backends, ra.max_batch if ra.coalesce else 1, ra.max_inflight_batches if ra.coalesce else 1 << 30,
                                   self._observe_shards)
        self.resolver = QueryResolver(self.backends, update_log, a.max_image_pixels, a.images_from_sources, self.m)
        self.log_position = LogPosition(update_log, a.updates.poll_interval_s, self._observe_log)
        self.writer = UpdateWriter(update_log, self.log_position, a.updates.max_batch)
        fastapi_app.state.max_body_bytes = a.max_body_bytes
        fastapi_app.state.on_request = self._observe
        fastapi_app.state.fast_routes = {("POST", "/v1/search"): self.search}  # serving/fastpath.py
        loop = asyncio.get_running_loop()
        await self.log_position.refresh()
        # The first version is activated by the first reconfigure() (build_app always sets
        # a user_config; Serve awaits it before sending traffic); the watcher does it otherwise.
        self._watcher = loop.create_task(self._watch())
        self._log_follower = loop.create_task(self.log_position.follow())

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
                got = await asyncio.wait_for(self.backends.control.get.remote(), timeout=5)
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

    async def _switch_to(self, version: str) -> ActiveVersion:
        async with self._swap_lock:
            if self.active is not None and self.active.version == version:
                return self.active
            st = await prepare_version(self.store, version, self.backends, self.args.checkpoint, self.log_position.value)
            old = self.active
            self.active = st  # one assignment: requests started before keep the old version
            self.log_position.advance(st.log_base)
            self.swaps += 1
            self.resolver.clear()
            if self.m:
                self.m["swaps"].inc()
            log.info("router: now serving index version %s (was %s)", version, old.version if old else None)
            return st

    def _require_active(self) -> ActiveVersion:
        st = self.active
        if st is None:
            raise ApiError(503, "not_ready", f"no index version is loaded yet ({self.last_error or 'starting'})", {"Retry-After": "2"})
        return st

    # ---------------------------------------------------------------- search

    def _position(self, st: ActiveVersion) -> int:
        """The log position a request started now searches (never before its version's)."""
        return max(self.log_position.value, st.log_base)

    async def _answer(self, st: ActiveVersion, queries: list, timings: list) -> list:
        """Answers (dicts) or ApiErrors for ``queries``, searched in one coalesced pass per shard."""
        deadline = self.backends.deadline()
        position = self._position(st)

        async def resolve(q, t):
            try:
                return await self.resolver.resolve(st, q, position, deadline, t)
            except ApiError as exc:
                return exc

        if len(queries) == 1:  # the common case: no task for gather to schedule
            resolved = [await resolve(queries[0], timings[0])]
        else:
            resolved = await asyncio.gather(*(resolve(q, t) for q, t in zip(queries, timings)))
        ok = [j for j, r in enumerate(resolved) if not isinstance(r, ApiError)]
        out: list = list(resolved)
        if not ok:
            return out
        t = time.perf_counter()
        per_query, meta = await self.coalescer.submit(st.version, st.num_shards, position, [resolved[j][0] for j in ok], deadline)
        fanout_ms = (time.perf_counter() - t) * 1e3
        for j, per_shard in zip(ok, per_query):
            q, (_, info) = queries[j], resolved[j]
            t = time.perf_counter()
            merged = merge_replies(per_shard, q.k, st.class_names)
            timings[j].update(fanout_ms=fanout_ms, merge_ms=(time.perf_counter() - t) * 1e3, shards=meta)
            out[j] = {"version": st.version, "log_position": position, "mode": q.mode, "k": q.k, "radius": q.radius,
                      "query": info, **merged}
        return out

    async def _answer_on_active(self, queries: list, timings: list) -> list:
        """:meth:`_answer` on the active version, restarted whole on a newer one if a shard lost it."""
        st = self._require_active()
        for attempt in range(3):
            try:
                return await self._answer(st, queries, timings)
            except VersionGone as exc:
                newer = self.active
                if newer is None or newer.version == st.version or attempt == 2:
                    raise ApiError(503, "unavailable", f"index version {st.version} is no longer available ({exc})", {"Retry-After": "1"}) from None
                st = newer
        raise AssertionError("unreachable")

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

    def _observe_log(self, position: int, seconds_since_read: float) -> None:
        """Gauges, refreshed on every poll of the log (Ray drops a gauge series that is not re-set)."""
        if not self.m:
            return
        self.m["log_position"].set(position)
        self.m["log_lag"].set(seconds_since_read)
        st = self.active
        if st is not None:
            self.m["log_unfolded"].set(max(0, position - st.log_base))
            self.m["items"].set(st.num_items)
            self.m["active"].set(1, tags={"version": st.version})

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
        timings: dict = {}
        (out,) = await self._answer_on_active([q], [timings])
        if isinstance(out, ApiError):
            raise out
        if q.debug:
            timings["total_ms"] = (time.perf_counter() - t0) * 1e3
            timings["router_replica"] = _replica_tag()
            out["debug"] = timings
        return JSONResponse(out)

    @fastapi_app.post(
        "/v1/search/batch",
        summary="Several searches in one request (one pass per shard); errors are reported per query",
        responses=ERROR_RESPONSES,
        openapi_extra=api_mod.BATCH_OPENAPI,
    )
    async def search_batch(self, request: Request):
        self._auth(request)
        parsed = await api_mod.parse_batch(request, self.args.default_k, self.args.max_k, self.args.max_batch_queries)
        if self.m:
            self.m["batch"].observe(len(parsed))
        queries = [p for p in parsed if not isinstance(p, ApiError)]
        timings = [{} for _ in queries]
        answers = iter(zip(queries, timings, await self._answer_on_active(queries, timings) if queries else []))
        st = self._require_active()
        results = []
        for p in parsed:
            q, t, r = (None, None, p) if isinstance(p, ApiError) else next(answers)
            if isinstance(r, ApiError):
                results.append({"status": r.status, "error": r.error, "detail": r.detail})
            else:
                results.append({"status": 200, **r, **({"debug": t} if q.debug else {})})
        done = [r for r in results if r["status"] == 200]
        return JSONResponse({
            "version": done[0]["version"] if done else st.version,
            "log_position": done[0]["log_position"] if done else self._position(st),
            "results": results,
        })

    async def _item_now(self, st: ActiveVersion, item_id: int) -> tuple[dict, int]:
        position = self._position(st)
        try:
            return await self.resolver.item(st, position, item_id), position
        except VersionGone:
            raise ApiError(503, "unavailable", "the index version changed; try again", {"Retry-After": "1"}) from None

    @fastapi_app.get("/v1/items/{item_id}", summary="An indexed item: labels, code, image link", responses=ERROR_RESPONSES)
    async def get_item(self, request: Request, item_id: int = Path(..., ge=0, le=2**63 - 1)):
        self._auth(request)
        st = self._require_active()
        item, position = await self._item_now(st, item_id)
        if item.get("from_log"):
            has_image = self.args.images_from_sources and bool(item.get("log_image"))
        else:
            has_image = self.args.images_from_sources and (item.get("source") is not None or st.image_kind is not None)
        lab = item.get("labels")
        return {
            "id": item_id,
            "version": st.version,
            "log_position": position,
            "updated": bool(item.get("from_log")),
            "shard": item["shard"],
            "labels": lab,
            "label_names": label_names(lab, st.class_names),
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
        item, _ = await self._item_now(st, item_id)
        px = await self.resolver.item_pixels(st, item)
        png = await asyncio.to_thread(_png, px)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def _auth_write(self, request: Request) -> None:
        if self.tokens.get() is None:
            raise ApiError(403, "forbidden", "updates are disabled: configure a bearer token to enable them")
        self._auth(request)

    async def _store(self, st: ActiveVersion, entry) -> int:
        try:
            stored = await self.writer.write(entry)
        except (OSError, RuntimeError) as exc:
            raise ApiError(503, "log_unavailable", f"the update log cannot be written ({type(exc).__name__}); try again", {"Retry-After": "1"}) from None
        if self.m:
            self.m["updates"].inc(tags={"op": entry.op})
        return stored.seq

    @fastapi_app.put(
        "/v1/items/{item_id}",
        summary="Add or replace an item (an image or a code, with labels); stored in the update log before the answer",
        responses=ERROR_RESPONSES,
    )
    async def put_item(self, request: Request, item_id: int = Path(..., ge=0, le=2**63 - 1)):
        from qadwh_ray.index.update_log import LogEntry
        from qadwh_ray.serving.queries import resolve_labels
        from qadwh_ray.serving.updates import parse_item_update

        self._auth_write(request)
        upd = await parse_item_update(request)
        st = self._require_active()
        labels = list(resolve_labels(upd.labels, st.class_names, st.manifest.num_classes, "labels"))
        image_sha = None
        if upd.image is not None:
            px = await self.resolver.decode_upload(st, upd.image)
            code = (await self.backends.encode(px, st.checkpoint, self.backends.deadline()))["code"]
            try:
                image_sha = await asyncio.to_thread(self.resolver.update_log.put_image, upd.image)
            except OSError as exc:
                raise ApiError(503, "log_unavailable", f"the update log cannot be written ({type(exc).__name__}); try again", {"Retry-After": "1"}) from None
        else:
            code = api_mod.parse_code(upd.code_hex, st.code_bits)
        entry = LogEntry(0, "put", item_id, code.hex(), labels, st.checkpoint.get("sha256"), image_sha)
        position = await self._store(st, entry)
        return {"id": item_id, "op": "put", "version": st.version, "log_position": position, "code": code.hex(),
                "labels": labels, "label_names": label_names(labels, st.class_names), "has_image": image_sha is not None}

    @fastapi_app.delete("/v1/items/{item_id}", summary="Delete an item; stored in the update log before the answer", responses=ERROR_RESPONSES)
    async def delete_item(self, request: Request, item_id: int = Path(..., ge=0, le=2**63 - 1)):
        from qadwh_ray.index.update_log import LogEntry

        self._auth_write(request)
        st = self._require_active()
        await self._item_now(st, item_id)  # 404 for an item that is not there
        position = await self._store(st, LogEntry(0, "delete", item_id))
        return {"id": item_id, "op": "delete", "version": st.version, "log_position": position}

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
        position = self._position(st)
        r = await self.backends.call(f"shard-{shard}", self.backends.shards[shard].sample_ids, st.version, position, n,
                                     random.randrange(2**31))
        if not r.get("ok"):
            raise ApiError(503, "unavailable", r.get("detail", "shard unavailable"), {"Retry-After": "1"})
        return {"version": st.version, "log_position": position, "ids": r["ids"]}

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
            "max_batch_queries": self.args.max_batch_queries,
            "log_position": self._position(st),
            "log_base": st.log_base,
            "log_error": self.log_position.error,
            "last_error": self.last_error,
        }

    @fastapi_app.put("/v1/admin/index", summary="Pin (or unpin with null) the served index version", responses=ERROR_RESPONSES)
    async def admin_pin_version(self, request: Request):
        from qadwh_ray.index.format import validate_version_name

        if self.tokens.get() is None:
            raise ApiError(403, "forbidden", "the admin API is disabled: configure a bearer token to enable it")
        self._auth(request)
        body = api_mod.parse_json(await request.body())
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
        await self.backends.call("control", self.backends.control.set, v)
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
            await asyncio.wait_for(asyncio.gather(*(self.backends.shards[i].status.remote() for i in range(st.num_shards))), timeout=5)
        except Exception as exc:  # noqa: BLE001
            raise ApiError(503, "not_ready", f"a shard does not answer: {type(exc).__name__}", {"Retry-After": "2"}) from None
        return {"status": "ready", "version": st.version, "shards": st.num_shards}

    @fastapi_app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self):
        if not self.args.page:
            raise ApiError(404, "not_found", "the search page is disabled")
        from qadwh_ray.serving.page import PAGE_HTML

        return HTMLResponse(PAGE_HTML, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

