"""The direct lane for POST /v1/search (serving/fastpath.py) answers exactly as the FastAPI route would."""

from asgi_client import Client
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from qadwh_ray.serving.errors import ApiError, install_error_handling
from qadwh_ray.serving.fastpath import FastRoutes


def make_app():
    app = FastAPI()
    app.state.max_body_bytes = 64
    app.state.fast_routes = {}
    seen = {"route": 0, "fast": 0, "endpoints": []}
    app.state.on_request = lambda scope, status, s: seen["endpoints"].append((getattr(scope.get("route"), "path", None), status))
    app.add_middleware(FastRoutes, state=app.state)
    install_error_handling(app)

    async def handler(request: Request):
        body = await request.json()
        if body.get("fail"):
            raise ApiError(422, "invalid_request", "told to fail", {"X-Why": "test"})
        if body.get("crash"):
            raise RuntimeError("secret internals")
        return JSONResponse({"echo": body, "path": request.url.path})

    @app.post("/v1/search")
    async def search(request: Request):
        seen["route"] += 1
        return await handler(request)

    async def fast(request: Request):
        seen["fast"] += 1
        return await handler(request)

    app.state.fast_routes = {("POST", "/v1/search"): fast}
    return app, seen


def test_registered_route_skips_the_router_and_answers_the_same():
    app, seen = make_app()
    c = Client(app)
    r = c.post("/v1/search", {"a": 1})
    assert r.status_code == 200 and r.json() == {"echo": {"a": 1}, "path": "/v1/search"}
    assert seen["fast"] == 1 and seen["route"] == 0
    assert seen["endpoints"][-1] == ("/v1/search", 200)  # metrics still tag by the route path


def test_errors_keep_the_json_error_model_and_the_guard():
    app, seen = make_app()
    c = Client(app)
    r = c.post("/v1/search", {"fail": True})
    assert r.status_code == 422 and r.json() == {"error": "invalid_request", "detail": "told to fail"}
    assert r.headers["x-why"] == "test"
    r = c.post("/v1/search", {"crash": True})
    assert r.status_code == 500 and r.json()["error"] == "internal" and "secret" not in r.text
    r = c.post("/v1/search", content=b'{"x": "' + b"y" * 100 + b'"}')
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"  # body limit still applies
    assert seen["route"] == 0


def test_other_methods_and_paths_go_through_fastapi():
    app, seen = make_app()
    c = Client(app)
    assert c.get("/v1/search").status_code == 405
    assert c.post("/v1/search/extra", {}).status_code == 404
    assert seen["fast"] == 0


def test_route_prefix_is_stripped_like_starlette_does():
    app, seen = make_app()
    c = Client(app, root_path="/qadwh")
    r = c.post("/qadwh/v1/search", {"b": 2})
    assert r.status_code == 200 and r.json()["echo"] == {"b": 2}
    assert seen["fast"] == 1
