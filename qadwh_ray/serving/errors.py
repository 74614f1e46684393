"""The HTTP error model: every failure is JSON ``{"error": code, "detail": message}``.

Client mistakes get a 4xx with a message naming the bad value; an unexpected
server error is a 500 that says only that it happened and its request id (the
traceback goes to the replica's log, never to the client). A pure ASGI
middleware enforces the request-body limit while the body streams in and is
the last line of defence against an exception escaping a route.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "install_error_handling", "error_body", "api_error_response", "ERROR_RESPONSES", "BodyTooLarge"]

log = logging.getLogger("ray.serve")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """Raised anywhere in a route to answer with a JSON error."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status = int(status)
        self.error = error
        self.detail = detail
        self.headers = headers or {}


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes")


def error_body(error: str, detail: Any) -> dict:
    return {"error": error, "detail": detail}


def _json(status: int, error: str, detail: Any, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(error, detail), status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    return _json(exc.status, exc.error, exc.detail, exc.headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


ERROR_RESPONSES: dict = {
    s: {
        "description": name.replace("_", " "),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                    "required": ["error", "detail"],
                }
            }
        },
    }
    for s, name in _STATUS_CODES.items()
    if s in (400, 401, 404, 413, 415, 422, 503)
}


class _GuardMiddleware:
    """Body-size limit while streaming + JSON 500 for anything that escapes a route."""

    def __init__(self, app, state):
        self.app = app
        self.state = state  # the FastAPI app's state: max_body_bytes, on_request(scope, status, seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        try:
            status = await self._handle(scope, receive, send)
        finally:
            cb = getattr(self.state, "on_request", None)
            if cb is not None:
                try:
                    cb(scope, status, time.perf_counter() - t0)
                except Exception:  # noqa: BLE001 — metrics never break a request
                    pass

    async def _handle(self, scope, receive, send) -> int:
        limit = int(getattr(self.state, "max_body_bytes", 8 * 1024 * 1024))
        started = False
        status = 500
        seen = 0

        # A declared Content-Length over the limit is refused before reading anything.
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    await _send_json(send, 400, "bad_request", "invalid Content-Length header")
                    return 400
                if declared > limit:
                    await _send_json(send, 413, "payload_too_large", f"request body of {declared} bytes exceeds the limit of {limit} bytes")
                    return 413

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return msg

        async def tracking_send(msg):
            nonlocal started, status
            if msg.get("type") == "http.response.start":
                started = True
                status = int(msg.get("status", 500))
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ApiError as exc:  # raised from receive (body limit) outside a route's handler
            if not started:
                await _send_json(send, exc.status, exc.error, exc.detail, exc.headers)
                status = exc.status
        except Exception:  # noqa: BLE001 — never a stack trace to the client
            rid = uuid.uuid4().hex[:12]
            log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            if not started:
                await _send_json(send, 500, "internal", f"internal server error (request {rid}; see the server log)")
                status = 500
        return status


async def _send_json(send, status: int, error: str, detail: Any, headers: dict | None = None) -> None:
    body = json.dumps(error_body(error, detail)).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for k, v in (headers or {}).items():
        hdrs.append((k.lower().encode(), str(v).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def install_error_handling(app: FastAPI) -> None:
    """JSON handlers for ApiError, HTTP and validation errors, plus the guard middleware
    (reads ``app.state.max_body_bytes`` and calls ``app.state.on_request`` per request)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return api_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return _json(exc.status_code, code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _json(422, "invalid_request", _validation_detail(exc))

    app.add_middleware(_GuardMiddleware, state=app.state)
