"""A direct lane for the hot route: ``POST /v1/search`` skips Starlette's routing.

Starlette/FastAPI's per-request machinery (middleware hops, matching the path
against every route, FastAPI's endpoint wrapper) is a large share of the
router's CPU for a handler that takes the raw ``Request`` and returns a ready
``JSONResponse`` (profile in docs/benchmarks.md). This ASGI middleware sends
exact ``(method, path)`` matches registered in ``app.state.fast_routes``
straight to their handler. The route stays declared on the FastAPI app (it is
what ``/docs`` and ``/openapi.json`` show, and what answers anything that does
not match exactly, e.g. other methods). Installed *inside* the guard
middleware (errors.py), so the body limit and the JSON 500 still apply; an
:class:`ApiError` gets the same JSON answer as through FastAPI.
"""

from __future__ import annotations

from typing import NamedTuple

from starlette.requests import Request

from qadwh_ray.serving.errors import ApiError, api_error_response

__all__ = ["FastRoutes", "MatchedPath"]


class MatchedPath(NamedTuple):
    """Stands in for Starlette's matched route in ``scope["route"]`` (metrics read its ``path``)."""

    path: str


class FastRoutes:
    """``app.state.fast_routes``: ``{(method, path): handler}``; ``handler(request)`` returns
    a Starlette response."""

    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        routes = getattr(self.state, "fast_routes", None)
        if scope["type"] == "http" and routes:
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):  # Serve mounts the app at root_path (route prefix)
                path = path[len(root):]
            handler = routes.get((scope["method"], path))
            if handler is not None:
                scope["route"] = MatchedPath(path)
                request = Request(scope, receive)
                try:
                    response = await handler(request)
                except ApiError as exc:
                    response = api_error_response(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
