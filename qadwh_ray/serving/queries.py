"""From a parsed request to what the shards search: code, weights, mode, k, radius, filter.

An image is decoded and encoded by the encoder deployment with the model of
the version being served; an item id is looked up in its home shard (as of the
request's log position) and, in mode ``qadwh``, given the weights of its image,
else of its labels' class rows, else the model's DWH vector; a code is parsed
and, in mode ``qadwh``, needs its own weights. Label filters name classes by
id or by the names the version records. Item images are read here (from their
source or the update log) and cached; the encoder decodes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Optional

import numpy as np

from qadwh_ray.core.filters import LabelFilter
from qadwh_ray.core.live import LiveQuery
from qadwh_ray.serving import api as api_mod
from qadwh_ray.serving.errors import ApiError
from qadwh_ray.serving.fanout import Backends, VersionGone

__all__ = ["QueryResolver", "resolve_labels", "label_filter"]

_IMAGE_CACHE_BYTES = 64 * 1024 * 1024


def resolve_labels(values: Optional[list], class_names: Optional[list], num_classes: Optional[int], field: str) -> tuple:
    """Class ids from ids or names (names need the version's class names)."""
    if not values:
        return ()
    if not num_classes:
        raise ApiError(422, "invalid_labels", f"{field}: this index version has no classes to filter by")
    out = []
    for v in values:
        if isinstance(v, bool):
            raise ApiError(422, "invalid_labels", f"{field}: {v!r} is not a class id or name")
        if isinstance(v, int):
            if not 0 <= v < num_classes:
                raise ApiError(422, "invalid_labels", f"{field}: class id {v} is outside 0..{num_classes - 1}")
            out.append(v)
            continue
        if not class_names:
            raise ApiError(422, "invalid_labels", f"{field}: this index version records no class names; use class ids 0..{num_classes - 1}")
        try:
            out.append(class_names.index(str(v)))
        except ValueError:
            shown = ", ".join(repr(n) for n in class_names[:12]) + (" ..." if len(class_names) > 12 else "")
            raise ApiError(422, "invalid_labels", f"{field}: unknown class name {str(v)[:60]!r} (classes: {shown})") from None
    return tuple(sorted(set(out)))


def label_filter(q: api_mod.Query, st) -> LabelFilter:
    """The query's filter in class ids of the version's labels (names read from the version)."""
    num_classes = st.manifest.num_classes if st.manifest is not None else st.num_classes
    return LabelFilter(
        any_of=resolve_labels(q.labels_any, st.class_names, num_classes, "labels_any"),
        all_of=resolve_labels(q.labels_all, st.class_names, num_classes, "labels_all"),
    )


class QueryResolver:
    """Resolves queries against the active version ``st`` (an :class:`ActiveVersion`)."""

    def __init__(self, backends: Backends, update_log, images_from_sources: bool, observe_encode=None):
        self.backends = backends
        self.update_log = update_log
        self.images_from_sources = images_from_sources
        self.observe_encode = observe_encode  # called with each query encoding's round trip (ms)
        self._images: OrderedDict = OrderedDict()
        self._image_bytes = 0

    def clear(self) -> None:
        """Forget cached item images (a new version is active)."""
        self._images.clear()
        self._image_bytes = 0

    async def resolve(self, st, q: api_mod.Query, position: int, deadline: float, timings: dict) -> tuple[LiveQuery, dict]:
        """``(the query for the shards, what the answer says about the query)``."""
        nbits = st.code_bits
        info: dict = {"kind": q.kind}
        if q.radius is not None and q.radius > nbits:
            raise ApiError(422, "invalid_radius", f"radius must be between 0 and {nbits} (the code length), got {q.radius}")
        flt = label_filter(q, st)
        weights = None
        if q.kind == "image":
            t = time.perf_counter()
            enc = await self.backends.encode(q.image, st.checkpoint, deadline)
            timings["encode_ms"] = (time.perf_counter() - t) * 1e3
            timings["decode_ms"] = enc.get("decode_ms")
            timings["encoder_batch_size"] = enc.get("batch_size")
            if self.observe_encode is not None:
                self.observe_encode(timings["encode_ms"])
            code = enc["code"]
            weights = np.asarray(enc["weights"], dtype=np.float64)
            info["predicted_class"] = int(np.argmax(np.asarray(enc["probs"])))
            if st.class_names:
                info["predicted_label"] = st.class_names[info["predicted_class"]]
        elif q.kind == "id":
            item = await self.item(st, position, q.item_id, deadline)
            code = item["code"]
            info["id"] = q.item_id
            if q.mode == "qadwh":
                weights, info["weights_from"] = await self._item_weights(st, item, deadline)
        else:
            code = api_mod.parse_code(q.code_hex, nbits)
            if q.mode == "qadwh":
                if q.weights is None:
                    raise ApiError(422, "invalid_weights", "a code query in mode qadwh needs 'weights' (one per bit); or use mode dwh or hamming")
                weights = np.asarray(api_mod.parse_weights(q.weights, nbits), dtype=np.float64)
        info["code"] = code.hex()
        if q.mode == "dwh":
            weights = np.asarray(st.dwh_weights, dtype=np.float64)
        elif q.mode == "hamming":
            weights = None
        if q.debug:
            timings["weights"] = None if weights is None else weights.reshape(-1).tolist()
        if not flt.empty:
            info["filter"] = {"labels_any": list(flt.any_of), "labels_all": list(flt.all_of)}
        return LiveQuery(np.frombuffer(code, dtype=np.uint8), weights, q.mode, q.k, q.radius, flt), info

    async def _item_weights(self, st, item: dict, deadline: float):
        try:
            image = await self.item_image(st, item)
            enc = await self.backends.encode(image, st.checkpoint, deadline)
            return np.asarray(enc["weights"], dtype=np.float64), "image"
        except ApiError as exc:
            if exc.status not in (404, 413, 422):  # no usable image: fall back to the labels
                raise
        if item.get("labels"):
            r = await self.backends.label_weights(item["labels"], st.checkpoint, deadline)
            return np.asarray(r["weights"], dtype=np.float64), "labels"
        return np.asarray(st.dwh_weights, dtype=np.float64), "dwh"

    async def item(self, st, position: int, item_id: int, deadline: Optional[float] = None) -> dict:
        """The item as of ``position`` from its home shard: code, labels, source, home shard."""
        from qadwh_ray.index.format import shard_of_ids

        if not 0 <= item_id < 2**63:
            raise ApiError(404, "unknown_item", f"no item {item_id} in index version {st.version}")
        home = int(shard_of_ids(np.asarray([item_id], dtype=np.int64), st.num_shards)[0])
        r = await self.backends.call(f"shard-{home}", self.backends.shards[home].items, st.version, position, [item_id],
                                     deadline=deadline)
        if not r.get("ok"):
            raise VersionGone(r.get("detail"))
        item = r["items"][0]
        if item is None:
            raise ApiError(404, "unknown_item", f"no item {item_id} in index version {st.version} at log position {position}")
        item["shard"] = home
        return item

    def _remember(self, key: tuple, value: "bytes | np.ndarray") -> None:
        self._images[key] = value
        self._image_bytes += len(value) if isinstance(value, bytes) else value.nbytes
        while self._image_bytes > _IMAGE_CACHE_BYTES and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self._image_bytes -= len(old) if isinstance(old, bytes) else old.nbytes

    def _cached(self, key: tuple):
        got = self._images.get(key)
        if got is not None:
            self._images.move_to_end(key)
        return got

    async def item_image(self, st, item: dict) -> "bytes | np.ndarray":
        """The item's image (encoded bytes, or pixels of a built-in set): from its source, or
        from the update log for an item put with an image."""
        from qadwh_ray.serving.images import ImageUnavailable, item_image

        if not self.images_from_sources:
            raise ApiError(404, "no_image", "this service does not serve item images")
        key = (st.version, item["id"], item.get("log_image"))
        got = self._cached(key)
        if got is not None:
            return got
        if item.get("from_log"):
            if not item.get("log_image"):
                raise ApiError(404, "no_image", f"item {item['id']} was put with a code, not an image")
            image = await asyncio.to_thread(self.update_log.read_image, item["log_image"])
        else:
            try:
                image = await asyncio.to_thread(item_image, st.manifest, item["id"], item.get("source"), st.image_mode)
            except ImageUnavailable as exc:
                raise ApiError(404, "no_image", str(exc)) from None
        self._remember(key, image)
        return image

    async def item_png(self, st, item: dict) -> bytes:
        """The item's image as PNG, in the colour mode of the version's model (made by the encoder, cached here)."""
        key = (st.version, item["id"], item.get("log_image"), "png")
        got = self._cached(key)
        if got is not None:
            return got
        image = await self.item_image(st, item)
        try:
            png = (await self.backends.thumbnail(image, st.checkpoint))["png"]
        except ApiError as exc:
            if exc.status in (413, 422):
                raise ApiError(404, "no_image", f"the image of item {item['id']} cannot be decoded: {exc.detail}") from None
            raise
        self._remember(key, png)
        return png
