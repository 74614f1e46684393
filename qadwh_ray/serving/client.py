"""A small HTTP client of the search service (standard library only).

Used by the main job (sample queries after deploying), the nightly pipeline
(waiting for the service to swap to the version it published) and anyone
scripting against the API::

    c = ServiceClient("http://127.0.0.1:8000", token=None)
    c.wait_ready(timeout_s=120)
    hits = c.search(image_png=open("shoe.png", "rb").read(), k=10, mode="qadwh")
    hits["ids"], hits["distances"], hits["version"]
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request

import numpy as np

__all__ = ["ServiceClient", "ServiceError", "png_bytes"]


class ServiceError(RuntimeError):
    """The service answered with an error status (``status`` and its JSON ``body``) or not at all."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 3) image as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class ServiceClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except ValueError:
                payload = {}
            detail = f"{payload.get('error', 'error')}: {payload.get('detail', exc.reason)}"
            raise ServiceError(f"{method} {path}: HTTP {exc.code} {detail}", exc.code, payload) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceError(f"{method} {path}: {getattr(exc, 'reason', exc)}") from None

    def index(self) -> dict:
        """``GET /v1/index``: the active version, items, bits, shards."""
        return self._request("GET", "/v1/index")

    def item(self, item_id: int) -> dict:
        return self._request("GET", f"/v1/items/{int(item_id)}")

    def search(
        self,
        *,
        image_png: bytes | None = None,
        item_id: int | None = None,
        k: int = 10,
        mode: str = "qadwh",
        radius: int | None = None,
        debug: bool = False,
    ) -> dict:
        """``POST /v1/search`` with an image or an indexed item's id."""
        if (image_png is None) == (item_id is None):
            raise ValueError("give exactly one of image_png and item_id")
        body: dict = {"k": k, "mode": mode, "debug": debug}
        if image_png is not None:
            body["image_base64"] = base64.b64encode(image_png).decode()
        else:
            body["id"] = int(item_id)
        if radius is not None:
            body["radius"] = radius
        return self._request("POST", "/v1/search", body)

    def wait_ready(self, timeout_s: float = 120.0) -> dict:
        """Poll ``GET /readyz`` until the service answers ready; returns its body."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return self._request("GET", "/readyz")
            except ServiceError as exc:
                last = exc
                time.sleep(0.5)
        raise ServiceError(f"service at {self.base_url} not ready after {timeout_s:.0f} s: {last}")

    def wait_version(self, version: str, timeout_s: float = 120.0) -> dict:
        """Poll ``GET /v1/index`` until the service answers from ``version``."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            try:
                info = self.index()
                seen = info.get("version")
                if seen == version:
                    return info
            except ServiceError as exc:
                seen = str(exc)
            time.sleep(0.5)
        raise ServiceError(f"service at {self.base_url} did not move to version {version} within {timeout_s:.0f} s (last: {seen})")
