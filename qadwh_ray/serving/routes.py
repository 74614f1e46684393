"""The HTTP API: one FastAPI app per router replica, its routes calling the router's parts.

:func:`http_app` is what the router returns from ``__serve_build_asgi_app__``
(Ray Serve's late-bound ingress, applied in ``build_app``), so every replica
builds its own app around its own state; nothing here is module-global.
Routes only parse, check auth, call the router's parts and shape the answer.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from qadwh_ray.serving import api as api_mod
from qadwh_ray.serving.answers import label_names
from qadwh_ray.core.hamming import MODES
from qadwh_ray.serving.errors import ERROR_RESPONSES, ApiError, install_error_handling
from qadwh_ray.serving.fastpath import FastRoutes

__all__ = ["http_app"]

_ITEM_ID = Path(..., ge=0, le=2**63 - 1)
_UPDATES_OFF = "updates are disabled: configure a bearer token to enable them"
_ADMIN_OFF = "the admin API is disabled: configure a bearer token to enable it"


def http_app(router) -> FastAPI:
    """The API of ``router`` (a :class:`qadwh_ray.serving.router.Router`)."""
    r = router
    a = r.args
    app = FastAPI(
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
    app.state.max_body_bytes = a.max_body_bytes
    app.state.on_request = r.metrics.request
    app.add_middleware(FastRoutes, state=app.state)  # added first: runs inside the guard
    install_error_handling(app)

    @app.post("/v1/search", summary="Search with an image, an item id or a packed code", response_model=api_mod.SearchResponse,
              responses=ERROR_RESPONSES, openapi_extra=api_mod.SEARCH_OPENAPI)
    async def search(request: Request):
        t0 = time.perf_counter()
        r.auth.check(request.headers)
        q = await api_mod.parse_search(request, a.default_k, a.max_k)
        timings: dict = {}
        (out,) = await r.searcher.answer([q], [timings])
        if isinstance(out, ApiError):
            raise out
        if q.debug:
            timings["total_ms"] = (time.perf_counter() - t0) * 1e3
            timings["router_replica"] = r.replica
            out["debug"] = timings
        return JSONResponse(out)

    app.state.fast_routes = {("POST", "/v1/search"): search}  # serving/fastpath.py

    @app.post("/v1/search/batch", summary="Several searches in one request (one pass per shard); errors are reported per query",
              responses=ERROR_RESPONSES, openapi_extra=api_mod.BATCH_OPENAPI)
    async def search_batch(request: Request):
        r.auth.check(request.headers)
        parsed = await api_mod.parse_batch(request, a.default_k, a.max_k, a.max_batch_queries)
        r.metrics.batch(len(parsed))
        queries = [p for p in parsed if not isinstance(p, ApiError)]
        timings = [{} for _ in queries]
        answers = iter(zip(queries, timings, await r.searcher.answer(queries, timings) if queries else []))
        st = r.versions.require_active()
        results = []
        for p in parsed:
            q, t, out = (None, None, p) if isinstance(p, ApiError) else next(answers)
            if isinstance(out, ApiError):
                results.append({"status": out.status, "error": out.error, "detail": out.detail})
            else:
                results.append({"status": 200, **out, **({"debug": t} if q.debug else {})})
        done = [x for x in results if x["status"] == 200]
        return JSONResponse({
            "version": done[0]["version"] if done else st.version,
            "log_position": done[0]["log_position"] if done else r.searcher.position(st),
            "results": results,
        })

    @app.get("/v1/items/{item_id}", summary="An indexed item: labels, code, image link", responses=ERROR_RESPONSES)
    async def get_item(request: Request, item_id: int = _ITEM_ID):
        r.auth.check(request.headers)
        st = r.versions.require_active()
        item, position = await r.searcher.item(st, item_id)
        if item.get("from_log"):
            has_image = a.images_from_sources and bool(item.get("log_image"))
        else:
            has_image = a.images_from_sources and (item.get("source") is not None or st.image_kind is not None)
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

    @app.get("/v1/items/{item_id}/image", summary="The item's image as PNG (when the index knows its source)",
             responses={**ERROR_RESPONSES, 200: {"content": {"image/png": {}}}}, response_class=Response)
    async def get_item_image(request: Request, item_id: int = _ITEM_ID):
        r.auth.check(request.headers)
        st = r.versions.require_active()
        item, _ = await r.searcher.item(st, item_id)
        png = await r.resolver.item_png(st, item)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.put("/v1/items/{item_id}", summary="Add or replace an item (an image or a code, with labels); stored in the update log before the answer",
             responses=ERROR_RESPONSES)
    async def put_item(request: Request, item_id: int = _ITEM_ID):
        from qadwh_ray.serving.updates import parse_item_update

        r.auth.check_write(request.headers, _UPDATES_OFF)
        upd = await parse_item_update(request)
        st = r.versions.require_active()
        done = await r.updates.put(st, item_id, upd)
        return {"id": item_id, "op": "put", "version": st.version, "log_position": done.position, "code": done.code.hex(),
                "labels": done.labels, "label_names": label_names(done.labels, st.class_names), "has_image": done.has_image}

    @app.delete("/v1/items/{item_id}", summary="Delete an item; stored in the update log before the answer", responses=ERROR_RESPONSES)
    async def delete_item(request: Request, item_id: int = _ITEM_ID):
        r.auth.check_write(request.headers, _UPDATES_OFF)
        st = r.versions.require_active()
        await r.searcher.item(st, item_id)  # 404 for an item that is not there
        done = await r.updates.delete(item_id)
        return {"id": item_id, "op": "delete", "version": st.version, "log_position": done.position}

    @app.get("/v1/random", summary="Random item ids of the active version (for the search page)", responses=ERROR_RESPONSES)
    async def random_items(request: Request, n: int = 1):
        r.auth.check(request.headers)
        if not 1 <= n <= 100:
            raise ApiError(422, "invalid_request", f"n must be between 1 and 100, got {n}")
        st = r.versions.require_active()
        ids, position = await r.searcher.random_ids(st, n)
        if position is None:
            return {"version": st.version, "ids": ids}
        return {"version": st.version, "log_position": position, "ids": ids}

    @app.get("/v1/index", summary="The active index version", responses=ERROR_RESPONSES)
    async def index_info(request: Request):
        from qadwh_ray.serving.images import has_item_images

        r.auth.check(request.headers)
        v = r.versions
        st = v.require_active()
        return {
            "version": st.version,
            "items": st.num_items,
            "bits": st.code_bits,
            "num_shards": st.num_shards,
            "shards": [{"shard": i, "rows": n} for i, n in enumerate(st.shard_rows)],
            "created_at": st.created_at,
            "checkpoint": st.checkpoint,
            "class_names": st.class_names,
            "has_images": bool(a.images_from_sources and has_item_images(st.manifest)),
            "following": v.following,
            "pinned": v.admin_pin or v.user_pin,
            "swaps": v.swaps,
            "activated_at": st.activated_at,
            "modes": list(MODES),
            "default_k": a.default_k,
            "max_k": a.max_k,
            "max_batch_queries": a.max_batch_queries,
            "log_position": r.searcher.position(st),
            "log_base": st.log_base,
            "log_error": r.log_position.error,
            "last_error": v.last_error,
        }

    @app.put("/v1/admin/index", summary="Pin (or unpin with null) the served index version", responses=ERROR_RESPONSES)
    async def admin_pin_version(request: Request):
        from qadwh_ray.index.format import validate_version_name

        r.auth.check_write(request.headers, _ADMIN_OFF)
        body = api_mod.parse_json(await request.body())
        if not isinstance(body, dict) or set(body) != {"version"}:
            raise ApiError(422, "invalid_request", 'send {"version": "<name>"} to pin or {"version": null} to follow CURRENT')
        pin = body["version"]
        if pin is not None:
            if not isinstance(pin, str):
                raise ApiError(422, "invalid_request", "version must be a string or null")
            try:
                validate_version_name(pin)
            except ValueError as exc:
                raise ApiError(422, "invalid_version", str(exc)) from None
            if pin not in await asyncio.to_thread(r.store.list_versions):
                raise ApiError(404, "unknown_version", f"no published index version {pin}")
        try:
            st = await r.versions.pin(pin)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ApiError(409, "swap_failed", f"cannot serve the requested version: {exc}") from None
        return {"pinned": pin, "active": st.version}

    @app.get("/healthz", summary="Liveness", include_in_schema=True)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: an index version is active and every shard answers", responses=ERROR_RESPONSES)
    async def readyz():
        st = r.versions.active
        if st is None:
            raise ApiError(503, "not_ready", f"no index version active yet ({r.versions.last_error or 'starting'})", {"Retry-After": "2"})
        try:
            await asyncio.wait_for(asyncio.gather(*(r.backends.shards[i].status.remote() for i in range(st.num_shards))), timeout=5)
        except Exception as exc:  # noqa: BLE001
            raise ApiError(503, "not_ready", f"a shard does not answer: {type(exc).__name__}", {"Retry-After": "2"}) from None
        return {"status": "ready", "version": st.version, "shards": st.num_shards}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        if not a.page:
            raise ApiError(404, "not_found", "the search page is disabled")
        from qadwh_ray.serving.page import PAGE_HTML

        return HTMLResponse(PAGE_HTML, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    return app
