"""The router's side of live updates: parsing item updates, writing them, following the log.

``PUT /v1/items/{id}`` takes JSON ``{"image_base64": ...}`` or ``{"code": "<hex>"}``
with ``"labels"`` (class ids or names), a ``multipart/form-data`` upload (file
field ``image``, field ``labels`` comma-separated) or a raw ``image/*`` body
(``?labels=``). An image is encoded by the served version's model and stored
in the log beside the change, so a later version built with another model
can re-encode it; a code is tied to the model that made it.

:class:`UpdateWriter` stores changes in the update log
(:mod:`qadwh_ray.index.update_log`): a change is sent at once when no write is
in flight, and changes arriving meanwhile leave together as the next segment
(one storage write for many requests). A request is answered only when its
segment is stored. :class:`LogPosition` is the newest log position this
replica knows: advanced by its own writes and by polling the log, so changes
made through any replica are searched within about ``poll_interval_s``.
:class:`ItemUpdates` turns one parsed update into a stored log entry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from dataclasses import dataclass
from typing import Optional

from qadwh_ray.index.update_log import LogEntry, UpdateLog
from qadwh_ray.serving import api as api_mod
from qadwh_ray.serving.errors import ApiError

__all__ = ["ItemUpdate", "parse_item_update", "UpdateWriter", "LogPosition", "ItemUpdates", "StoredUpdate"]

log = logging.getLogger("ray.serve")


@dataclass
class ItemUpdate:
    labels: Optional[list]  # class ids or names, as given
    image: Optional[bytes] = None
    code_hex: Optional[str] = None


async def parse_item_update(request) -> ItemUpdate:
    """The body of ``PUT /v1/items/{id}``: an image or a code, and labels."""
    ctype = request.headers.get("content-type", "").lower()
    extra = set(request.query_params) - {"labels"}
    if extra:
        raise ApiError(422, "invalid_request", f"unknown query parameter(s): {', '.join(sorted(extra))[:200]}")
    query_labels = request.query_params.get("labels")
    body = await request.body()
    if ctype.startswith("multipart/form-data"):
        fields, files = await api_mod.read_form(request, max(1024, len(body)), {"image", "labels"})
        if not files.get("image"):
            raise ApiError(422, "invalid_request", "a multipart item update needs a non-empty file field 'image'")
        return ItemUpdate(api_mod.label_list(fields.get("labels", query_labels), "labels"), image=files["image"])
    if ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
        if not body:
            raise ApiError(422, "invalid_request", "empty image body")
        return ItemUpdate(api_mod.label_list(query_labels, "labels"), image=body)
    if ctype.startswith("application/json") or (not ctype and body[:1] == b"{"):
        raw = api_mod.parse_json(body)
        if not isinstance(raw, dict) or not set(raw) <= {"image_base64", "code", "labels"}:
            raise ApiError(422, "invalid_request", 'send {"image_base64": ...} or {"code": "<hex>"}, with "labels": [...]')
        given = [k for k in ("image_base64", "code") if raw.get(k) is not None]
        if len(given) != 1:
            raise ApiError(422, "invalid_request", f"give exactly one of image_base64 or code (got {', '.join(given) or 'none'})")
        labels = raw.get("labels")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in labels)):
            raise ApiError(422, "invalid_labels", "labels must be a list of class ids or names")
        if "code" in given:
            if not isinstance(raw["code"], str):
                raise ApiError(422, "invalid_code", "code must be a hex string")
            return ItemUpdate(labels, code_hex=raw["code"])
        if not isinstance(raw["image_base64"], str):
            raise ApiError(422, "invalid_image", "image_base64 must be a string")
        try:
            img = base64.b64decode(raw["image_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_image", "image_base64 is not valid base64") from None
        if not img:
            raise ApiError(422, "invalid_image", "image_base64 decodes to no bytes")
        return ItemUpdate(labels, image=img)
    raise ApiError(415, "unsupported_media_type", "send application/json, multipart/form-data or image/*")


class LogPosition:
    """The newest update-log position this replica knows (see the module docstring)."""

    def __init__(self, update_log: UpdateLog, poll_interval_s: float, observe=None):
        self.update_log = update_log
        self.poll_interval_s = poll_interval_s
        self.observe = observe  # called with (position, seconds since the log was last read) after each poll
        self.value = 0
        self.error: Optional[str] = None
        self.read_at = time.monotonic()

    def advance(self, position: int) -> int:
        self.value = max(self.value, int(position))
        return self.value

    async def refresh(self) -> int:
        self.advance(await asyncio.to_thread(self.update_log.end, self.value))
        self.read_at = time.monotonic()
        return self.value

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — keep the last known position
                msg = f"{type(exc).__name__}: {exc}"
                if msg != self.error:
                    log.warning("router: cannot read the update log: %s", msg)
                self.error = msg
            if self.observe is not None:
                try:
                    self.observe(self.value, time.monotonic() - self.read_at)
                except Exception:  # noqa: BLE001 — metrics never stop the follower
                    pass


class UpdateWriter:
    """Group commit of changes into the update log (see the module docstring)."""

    def __init__(self, update_log: UpdateLog, position: LogPosition, max_batch: int):
        self.update_log = update_log
        self.position = position
        self.max_batch = max_batch
        self.pending: list = []
        self.writing = False

    async def write(self, change: LogEntry) -> LogEntry:
        """Store ``change``; returns it with its sequence number once it is durable."""
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((change, fut))
        if not self.writing:
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        self.writing = True
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                try:
                    stored = await asyncio.to_thread(self.update_log.append, [c for c, _ in batch], self.position.value)
                except Exception as exc:  # noqa: BLE001 — every waiting request gets the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.position.advance(stored[-1].seq)
                for (_, fut), entry in zip(batch, stored):
                    if not fut.done():
                        fut.set_result(entry)
        finally:
            self.writing = False


@dataclass
class StoredUpdate:
    position: int  # the log position the change was stored at
    code: Optional[bytes] = None
    labels: Optional[list] = None
    has_image: bool = False


def _log_unavailable(exc: Exception) -> ApiError:
    return ApiError(503, "log_unavailable", f"the update log cannot be written ({type(exc).__name__}); try again", {"Retry-After": "1"})


class ItemUpdates:
    """Puts and deletes of one item, for the active version ``st``, stored through ``writer``."""

    def __init__(self, backends, update_log: UpdateLog, writer: UpdateWriter, observe=None):
        self.backends = backends
        self.update_log = update_log
        self.writer = writer
        self.observe = observe  # called with the op of every stored change

    async def _store(self, entry: LogEntry) -> int:
        try:
            stored = await self.writer.write(entry)
        except (OSError, RuntimeError) as exc:
            raise _log_unavailable(exc) from None
        if self.observe is not None:
            self.observe(entry.op)
        return stored.seq

    async def put(self, st, item_id: int, upd: ItemUpdate) -> StoredUpdate:
        """An image is encoded by the version's model and kept in the log beside its code."""
        from qadwh_ray.serving.queries import resolve_labels

        labels = list(resolve_labels(upd.labels, st.class_names, st.manifest.num_classes, "labels"))
        image_sha = None
        if upd.image is not None:
            code = (await self.backends.encode(upd.image, st.checkpoint, self.backends.deadline()))["code"]
            try:
                image_sha = await asyncio.to_thread(self.update_log.put_image, upd.image)
            except OSError as exc:
                raise _log_unavailable(exc) from None
        else:
            code = api_mod.parse_code(upd.code_hex, st.code_bits)
        entry = LogEntry(0, "put", item_id, code.hex(), labels, st.checkpoint.get("sha256"), image_sha)
        return StoredUpdate(await self._store(entry), code, labels, image_sha is not None)

    async def delete(self, item_id: int) -> StoredUpdate:
        return StoredUpdate(await self._store(LogEntry(0, "delete", item_id)))
