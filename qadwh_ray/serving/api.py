"""Request and response models of the HTTP API, and request parsing.

``POST /v1/search`` takes exactly one query:

* an image — ``multipart/form-data`` with a file field ``image`` (other form
  fields: ``k``, ``mode``, ``radius``, ``debug``), a raw ``image/*`` body, or
  JSON ``{"image_base64": ...}``;
* an existing item — JSON ``{"id": 123}``;
* a packed code — JSON ``{"code": "<hex>", "weights": [...]}`` (hex of the
  ``ceil(nbits/8)`` code bytes, byte 0 first, bit ``t`` of byte ``j`` = bit
  ``8j+t``, little-endian as everywhere in the project; for a length that is
  not a multiple of 8 the padding bits ``nbits .. 8*ceil(nbits/8)-1`` must be 0,
  :mod:`qadwh_ray.core.bits`); ``weights`` (``nbits`` non-negative weights, one
  per real bit) are required for ``mode="qadwh"`` and refused otherwise.

Query-string parameters ``k``, ``mode``, ``radius`` and ``debug`` are accepted
for every body type (body fields win). Every problem is an
:class:`~qadwh_ray.serving.errors.ApiError` with a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, List, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qadwh_ray.serving.config import MODES
from qadwh_ray.serving.errors import ApiError

__all__ = [
    "SearchBody",
    "SearchResponse",
    "Query",
    "parse_search",
    "parse_multipart",
    "parse_code",
    "SEARCH_OPENAPI",
]


class SearchBody(BaseModel):
    """JSON body of ``POST /v1/search``: exactly one of ``image_base64``, ``id``, ``code``."""

    model_config = ConfigDict(extra="forbid")

    image_base64: Optional[str] = Field(None, description="an encoded image (PNG, JPEG, ...) in base64")
    id: Optional[int] = Field(None, description="search with an indexed item (its stored code)")
    code: Optional[str] = Field(
        None, description="packed code as hex: ceil(nbits/8) bytes, byte 0 first, bits little-endian in each byte, padding bits 0"
    )
    weights: Optional[List[float]] = Field(None, description="per-bit weights for a code query in mode qadwh")
    k: Optional[int] = Field(None, description="results wanted (1 .. max_k)")
    mode: Optional[str] = Field(None, description="qadwh | dwh | hamming")
    radius: Optional[int] = Field(None, description="only items within this Hamming distance of the query")
    debug: Optional[bool] = Field(None, description="add timings per stage and per shard")


class Result(BaseModel):
    id: int
    distance: float
    labels: Optional[List[int]] = None
    label_names: Optional[List[str]] = None


class SearchResponse(BaseModel):
    version: str = Field(..., description="the index version that answered (one version per answer)")
    mode: str
    k: int
    radius: Optional[int] = None
    query: dict
    ids: List[int]
    distances: List[float]
    labels: List[Optional[List[int]]]
    results: List[Result]
    debug: Optional[dict] = None


SEARCH_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SearchBody.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "k": {"type": "integer"},
                        "mode": {"type": "string", "enum": list(MODES)},
                        "radius": {"type": "integer"},
                        "debug": {"type": "boolean"},
                    },
                    "required": ["image"],
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass
class Query:
    kind: str  # "image" | "id" | "code"
    k: int
    mode: str
    radius: Optional[int]
    debug: bool
    image: Optional[bytes] = None
    item_id: Optional[int] = None
    code_hex: Optional[str] = None
    weights: Optional[list] = None


_BOUNDARY_RE = re.compile(r'boundary="?([^";]{1,200})"?', re.I)
_DISP_PARAM_RE = re.compile(r';\s*([a-zA-Z*]+)="([^"]*)"|;\s*([a-zA-Z*]+)=([^;\s]+)')


def parse_multipart(body: bytes, content_type: str) -> tuple[dict, dict]:
    """``multipart/form-data`` → (text fields, file fields as bytes). Small and strict (RFC 7578)."""
    m = _BOUNDARY_RE.search(content_type)
    if not m:
        raise ApiError(400, "bad_request", "multipart body without a boundary parameter")
    delim = b"\r\n--" + m.group(1).encode("latin-1")
    chunks = (b"\r\n" + body).split(delim)
    if len(chunks) < 2:
        raise ApiError(400, "bad_request", "malformed multipart body: no part found")
    fields: dict = {}
    files: dict = {}
    closed = False
    for part in chunks[1:]:
        if part.startswith(b"--"):
            closed = True
            break
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            raise ApiError(400, "bad_request", "malformed multipart body: a part has no header block")
        headers = {}
        for line in head.split(b"\r\n"):
            if not line.strip():
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                raise ApiError(400, "bad_request", "malformed multipart header line")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
        disp = headers.get("content-disposition", "")
        if not disp.lower().startswith("form-data"):
            raise ApiError(400, "bad_request", "multipart part without Content-Disposition: form-data")
        params = {}
        for a, b, c, d in _DISP_PARAM_RE.findall(disp):
            params[(a or c).lower()] = b if a else d
        name = params.get("name")
        if not name:
            raise ApiError(400, "bad_request", "multipart part without a field name")
        if "filename" in params or name == "image":
            files[name] = data
        else:
            fields[name] = data.decode("utf-8", "replace").strip()
    if not closed:
        raise ApiError(400, "bad_request", "malformed multipart body: missing the closing boundary")
    return fields, files


def _int_param(value: Any, name: str) -> Optional[int]:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(422, "invalid_request", f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be an integer, got {str(value)[:40]!r}") from None


def _bool_param(value: Any) -> Optional[bool]:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ApiError(422, "invalid_request", f"debug must be true or false, got {s[:20]!r}")


def _common(params: dict, default_k: int, max_k: int) -> tuple[int, str, Optional[int], bool]:
    k = _int_param(params.get("k"), "k")
    k = default_k if k is None else k
    if not 1 <= k <= max_k:
        raise ApiError(422, "invalid_k", f"k must be between 1 and {max_k}, got {k}")
    mode = params.get("mode")
    mode = "qadwh" if mode in (None, "") else str(mode).strip().lower()
    if mode not in MODES:
        raise ApiError(422, "invalid_mode", f"unknown mode {str(params.get('mode'))[:40]!r}: use one of {', '.join(MODES)}")
    radius = _int_param(params.get("radius"), "radius")
    if radius is not None and radius < 0:
        raise ApiError(422, "invalid_radius", f"radius must be >= 0, got {radius}")
    debug = bool(_bool_param(params.get("debug")))
    return k, mode, radius, debug


async def parse_search(request, default_k: int, max_k: int) -> Query:
    """Read and validate a search request (the body limit is enforced while it streams)."""
    ctype = request.headers.get("content-type", "").lower()
    params: dict = {k: v for k, v in request.query_params.items() if k in ("k", "mode", "radius", "debug")}
    extra = set(request.query_params) - {"k", "mode", "radius", "debug"}
    if extra:
        raise ApiError(422, "invalid_request", f"unknown query parameter(s): {', '.join(sorted(extra))[:200]}")
    body = await request.body()
    if ctype.startswith("multipart/form-data"):
        fields, files = parse_multipart(body, request.headers.get("content-type", ""))
        unknown = (set(fields) | set(files)) - {"image", "k", "mode", "radius", "debug"}
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(sorted(unknown))[:200]}")
        if "image" not in files or not files["image"]:
            raise ApiError(422, "invalid_request", "multipart search needs a non-empty file field 'image'")
        params.update(fields)
        k, mode, radius, debug = _common(params, default_k, max_k)
        return Query("image", k, mode, radius, debug, image=files["image"])
    if ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
        if not body:
            raise ApiError(422, "invalid_request", "empty image body")
        k, mode, radius, debug = _common(params, default_k, max_k)
        return Query("image", k, mode, radius, debug, image=body)
    if ctype.startswith("application/json") or (not ctype and body[:1] in (b"{", b"[")):
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ApiError(422, "invalid_request", "the JSON body must be an object")
        try:
            b = SearchBody.model_validate(raw)
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
            raise ApiError(422, "invalid_request", errs) from None
        for name in ("k", "mode", "radius", "debug"):
            v = getattr(b, name)
            if v is not None:
                params[name] = v
        k, mode, radius, debug = _common(params, default_k, max_k)
        given = [n for n in ("image_base64", "id", "code") if getattr(b, n) is not None]
        if len(given) != 1:
            raise ApiError(
                422, "invalid_request", f"give exactly one of image_base64, id or code (got {', '.join(given) or 'none'})"
            )
        if b.weights is not None and b.code is None:
            raise ApiError(422, "invalid_request", "weights are only accepted with a code query")
        if b.image_base64 is not None:
            try:
                img = base64.b64decode(b.image_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(422, "invalid_image", "image_base64 is not valid base64") from None
            if not img:
                raise ApiError(422, "invalid_image", "image_base64 decodes to no bytes")
            return Query("image", k, mode, radius, debug, image=img)
        if b.id is not None:
            if b.id < 0:
                raise ApiError(422, "invalid_request", f"item ids are non-negative, got {b.id}")
            return Query("id", k, mode, radius, debug, item_id=b.id)
        if b.weights is not None and mode != "qadwh":
            raise ApiError(422, "invalid_request", f"weights are only used in mode qadwh (mode {mode} uses its own)")
        return Query("code", k, mode, radius, debug, code_hex=b.code, weights=b.weights)
    if not ctype:
        raise ApiError(415, "unsupported_media_type", "missing Content-Type: send application/json, multipart/form-data or image/*")
    raise ApiError(
        415, "unsupported_media_type", f"Content-Type {ctype[:60]!r} is not accepted: send application/json, multipart/form-data or image/*"
    )


def parse_code(code_hex: str, nbits: int) -> bytes:
    """The packed bytes of a hex code of an ``nbits``-bit index (see the module docstring)."""
    import numpy as np

    from qadwh_ray.core.bits import check_codes, code_bytes

    s = code_hex.strip().lower()
    if s.startswith("0x"):
        s = s[2:]
    want = 2 * code_bytes(nbits)
    if len(s) != want:
        raise ApiError(
            422,
            "invalid_code",
            f"code has {len(s)} hex digits; this index uses {nbits}-bit codes, sent as {want // 2} bytes ({want} hex digits)",
        )
    try:
        code = bytes.fromhex(s)
    except ValueError:
        raise ApiError(422, "invalid_code", "code must be hexadecimal digits") from None
    try:
        check_codes(np.frombuffer(code, dtype=np.uint8).reshape(1, -1), nbits, name="code")
    except ValueError as exc:
        raise ApiError(422, "invalid_code", str(exc)) from None
    return code


def parse_weights(weights: list, nbits: int) -> list:
    if len(weights) != nbits:
        raise ApiError(422, "invalid_weights", f"weights has {len(weights)} values; this index uses {nbits}-bit codes")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ApiError(422, "invalid_weights", f"weights must be finite and >= 0; weights[{i}] = {w}")
        if w > 1e300:
            raise ApiError(422, "invalid_weights", f"weights[{i}] = {w} is too large")
    return weights
