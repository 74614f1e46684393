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

Query-string parameters ``k``, ``mode``, ``radius``, ``debug``, ``labels_any``
and ``labels_all`` are accepted for every body type (body fields win; label
lists comma-separated outside JSON). ``POST /v1/search/batch`` takes
``{"queries": [<JSON search body>, ...]}``. Every problem is an
:class:`~qadwh_ray.serving.errors.ApiError` with a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from qadwh_ray.core.hamming import MODES, validated_weights
from qadwh_ray.serving.errors import ApiError

__all__ = [
    "SearchBody",
    "SearchResponse",
    "Query",
    "BatchBody",
    "parse_search",
    "parse_batch",
    "parse_json",
    "parse_code",
    "SEARCH_OPENAPI",
    "BATCH_OPENAPI",
]

_PARAMS = ("k", "mode", "radius", "debug", "labels_any", "labels_all")


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
    labels_any: Optional[List[Union[StrictInt, str]]] = Field(
        None, description="only items with at least one of these classes (ids or names)"
    )
    labels_all: Optional[List[Union[StrictInt, str]]] = Field(
        None, description="only items with every one of these classes (ids or names)"
    )


class BatchBody(BaseModel):
    """JSON body of ``POST /v1/search/batch``: several search bodies, answered together."""

    model_config = ConfigDict(extra="forbid")

    queries: List[SearchBody] = Field(..., description="the queries, each a JSON body of POST /v1/search")


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
    log_position: int = Field(0, description="the update-log position the answer reflects (with version)")
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
                        "labels_any": {"type": "string", "description": "comma-separated class ids or names"},
                        "labels_all": {"type": "string", "description": "comma-separated class ids or names"},
                    },
                    "required": ["image"],
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

BATCH_OPENAPI = {"requestBody": {"required": True, "content": {"application/json": {"schema": BatchBody.model_json_schema()}}}}


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
    labels_any: Optional[list] = None  # class ids or names as given; the router resolves names
    labels_all: Optional[list] = None


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


def label_list(value: Any, name: str) -> Optional[list]:
    """A label filter as given: a JSON list, or comma-separated text (form field, query string)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        if any(not v for v in items):
            raise ApiError(422, "invalid_labels", f"{name} has an empty entry: {value[:80]!r}")
        return [int(v) if v.lstrip("-").isdigit() else v for v in items]
    if isinstance(value, list):
        return value
    raise ApiError(422, "invalid_labels", f"{name} must be a list of class ids or names")


def _common(params: dict, default_k: int, max_k: int) -> dict:
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
    return {
        "k": k,
        "mode": mode,
        "radius": radius,
        "debug": bool(_bool_param(params.get("debug"))),
        "labels_any": label_list(params.get("labels_any"), "labels_any"),
        "labels_all": label_list(params.get("labels_all"), "labels_all"),
    }


def parse_json(body: bytes) -> Any:
    """Request JSON, with a 400 for malformed or too deeply nested documents (never a 500)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "malformed_json", "request body is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    return "; ".join(f"{prefix}{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5])


def _query_from_json(raw: Any, params: dict, default_k: int, max_k: int, where: str = "") -> Query:
    """One search from a JSON object (the body of /v1/search or one entry of a batch)."""
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_request", f"{where or 'the JSON body'} must be an object")
    try:
        b = SearchBody.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc)) from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "request body is JSON nested too deeply") from None
    params = dict(params)
    for name in _PARAMS:
        v = getattr(b, name)
        if v is not None:
            params[name] = v
    common = _common(params, default_k, max_k)
    given = [n for n in ("image_base64", "id", "code") if getattr(b, n) is not None]
    if len(given) != 1:
        raise ApiError(422, "invalid_request", f"give exactly one of image_base64, id or code (got {', '.join(given) or 'none'})")
    if b.weights is not None and b.code is None:
        raise ApiError(422, "invalid_request", "weights are only accepted with a code query")
    if b.image_base64 is not None:
        try:
            img = base64.b64decode(b.image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_image", "image_base64 is not valid base64") from None
        if not img:
            raise ApiError(422, "invalid_image", "image_base64 decodes to no bytes")
        return Query("image", image=img, **common)
    if b.id is not None:
        if b.id < 0:
            raise ApiError(422, "invalid_request", f"item ids are non-negative, got {b.id}")
        return Query("id", item_id=b.id, **common)
    if b.weights is not None and common["mode"] != "qadwh":
        raise ApiError(422, "invalid_request", f"weights are only used in mode qadwh (mode {common['mode']} uses its own)")
    return Query("code", code_hex=b.code, weights=b.weights, **common)


def _query_params(request) -> dict:
    extra = set(request.query_params) - set(_PARAMS)
    if extra:
        raise ApiError(422, "invalid_request", f"unknown query parameter(s): {', '.join(sorted(extra))[:200]}")
    return {k: v for k, v in request.query_params.items() if k in _PARAMS}


async def read_form(request, max_part_size: int, names: set) -> tuple[dict, dict]:
    """``multipart/form-data`` with the parts ``names`` → (text fields, file fields as bytes),
    parsed by python-multipart (through Starlette)."""
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=1, max_fields=len(names), max_part_size=max_part_size)
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", None) or "malformed multipart body"
        raise ApiError(400, "bad_request", f"malformed multipart body: {detail}") from None
    except (ValueError, KeyError, AssertionError) as exc:  # python-multipart's own errors on a broken body
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    fields: dict = {}
    files: dict = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value.strip()
            else:
                files[name] = await value.read()
    finally:
        await form.close()
    unknown = (set(fields) | set(files)) - set(names)
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(sorted(unknown))[:200]}")
    if "image" in fields:
        raise ApiError(422, "invalid_request", "send the image as a file part (with a filename), e.g. curl -F image=@photo.png")
    return fields, files


async def parse_search(request, default_k: int, max_k: int) -> Query:
    """Read and validate a search request (the body limit is enforced while it streams)."""
    ctype = request.headers.get("content-type", "").lower()
    params = _query_params(request)
    body = await request.body()
    if ctype.startswith("multipart/form-data"):
        fields, files = await read_form(request, max(1024, len(body)), {"image", *_PARAMS})
        if not files.get("image"):
            raise ApiError(422, "invalid_request", "multipart search needs a non-empty file field 'image'")
        params.update(fields)
        return Query("image", image=files["image"], **_common(params, default_k, max_k))
    if ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
        if not body:
            raise ApiError(422, "invalid_request", "empty image body")
        return Query("image", image=body, **_common(params, default_k, max_k))
    if ctype.startswith("application/json") or (not ctype and body[:1] in (b"{", b"[")):
        return _query_from_json(parse_json(body), params, default_k, max_k)
    if not ctype:
        raise ApiError(415, "unsupported_media_type", "missing Content-Type: send application/json, multipart/form-data or image/*")
    raise ApiError(
        415, "unsupported_media_type", f"Content-Type {ctype[:60]!r} is not accepted: send application/json, multipart/form-data or image/*"
    )


async def parse_batch(request, default_k: int, max_k: int, max_queries: int) -> list:
    """``POST /v1/search/batch``: a list with a :class:`Query` or an :class:`ApiError` per query.

    A malformed envelope (not JSON, no ``queries`` list, too many queries) fails the
    whole request; a bad query fails only its own entry.
    """
    ctype = request.headers.get("content-type", "").lower()
    if ctype and not ctype.startswith("application/json"):
        raise ApiError(415, "unsupported_media_type", "a batch is JSON: {\"queries\": [...]} with Content-Type application/json")
    params = _query_params(request)
    raw = parse_json(await request.body())
    if not isinstance(raw, dict) or set(raw) != {"queries"} or not isinstance(raw["queries"], list):
        raise ApiError(422, "invalid_request", 'send {"queries": [<search body>, ...]}')
    queries = raw["queries"]
    if not 1 <= len(queries) <= max_queries:
        raise ApiError(422, "invalid_request", f"a batch holds 1 to {max_queries} queries, got {len(queries)}")
    out: list = []
    for i, q in enumerate(queries):
        try:
            out.append(_query_from_json(q, params, default_k, max_k, where=f"queries[{i}]"))
        except ApiError as exc:
            out.append(exc)
    return out


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
    try:
        validated_weights(weights, "dwh", 1, nbits)  # the search's own rules, answered as a 422
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "invalid_weights", str(exc)) from None
    return weights
