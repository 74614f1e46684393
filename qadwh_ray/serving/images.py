"""Where an indexed item's image comes from (thumbnails, item-id queries).

The index says it, never the request: a shard row's ``source`` column (a file
URI, or ``<parquet file>#row=<n>`` for a Parquet source) or, when the source is
null, the manifest's source record (the built-in Fashion-MNIST sets, whose ids
are row numbers of the 70,000-image set, and ``fashion-augmented`` items,
which are rendered by the same deterministic function the index build used).
A request only ever supplies an integer item id, which is looked up in the
index; no request value becomes a storage path.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["image_kind", "class_names", "has_item_images", "item_image", "ImageUnavailable"]

_FASHION_KINDS = ("fashion", "fashion-augmented")
_MAX_SOURCE_BYTES = 64 * 1024 * 1024


class ImageUnavailable(LookupError):
    """The index does not know where this item's image is (or it cannot be read)."""


def image_kind(manifest) -> Optional[str]:
    """``"fashion"`` when every source of the version is a built-in Fashion-MNIST set."""
    kinds = {s.get("kind") for s in (manifest.sources or []) if isinstance(s, dict)}
    if kinds and kinds <= set(_FASHION_KINDS):
        return "fashion"
    return None


def class_names(manifest, num_classes: Optional[int]) -> Optional[list]:
    """The names of the model's ``num_classes`` classes: the manifest's (the dataset's own).

    A version written before manifests carried class names has them only
    when its sources are the built-in Fashion-MNIST sets.
    """
    n = num_classes or manifest.num_classes
    names = manifest.class_names
    if names is None and image_kind(manifest) == "fashion":
        from qadwh_ray.data.fashion import CLASS_NAMES

        names = list(CLASS_NAMES)
    return list(names) if names is not None and (n is None or len(names) == n) else None


def has_item_images(manifest) -> bool:
    """Whether the version says where its items' images are (built-in sets, or a source URI per item)."""
    kinds = {s.get("kind") for s in (manifest.sources or []) if isinstance(s, dict)}
    return bool(kinds) and kinds <= {*_FASHION_KINDS, "dataset", "folder", "parquet"}


def _parquet_image_column(manifest, file_uri: str) -> str:
    for s in manifest.sources or []:
        if not isinstance(s, dict) or s.get("kind") != "parquet":
            continue
        base = str(s.get("uri", "")).rstrip("/")
        if file_uri == base or file_uri.startswith(base + "/"):
            return str(s.get("image_column") or "image")
    return "image"


def _parquet_row_bytes(file_uri: str, row: int, column: str) -> bytes:
    import pyarrow.parquet as pq

    from qadwh_ray import storage

    with storage.open_input(file_uri) as f:
        pf = pq.ParquetFile(f)
        start = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row < start + n:
                col = pf.read_row_group(g, columns=[column]).column(0)
                value = col[row - start].as_py()
                if value is None:
                    raise ImageUnavailable(f"{file_uri} row {row}: the image is null")
                if isinstance(value, dict):  # Ray Data / HF style {"bytes": ..., "path": ...}
                    value = value.get("bytes")
                if not isinstance(value, (bytes, bytearray)):
                    raise ImageUnavailable(f"{file_uri} row {row}: column {column!r} holds no image bytes")
                return bytes(value)
            start += n
    raise ImageUnavailable(f"{file_uri} has no row {row}")


def item_image(manifest, item_id: int, source: Optional[str], mode: str) -> "bytes | np.ndarray":
    """An indexed item's image: the encoded bytes of its source file or Parquet cell, or the
    uint8 pixels of a built-in Fashion-MNIST item (``(H, W)`` for mode L, ``(H, W, 3)`` for RGB).
    The encoder deployment decodes bytes.

    Raises :class:`ImageUnavailable` when the index does not say where the
    image is or it cannot be read.
    """
    from qadwh_ray import storage

    if source:
        if "#row=" in source:
            file_uri, _, row = source.rpartition("#row=")
            try:
                r = int(row)
            except ValueError:
                raise ImageUnavailable(f"item {item_id}: malformed source {source!r}") from None
            data = _parquet_row_bytes(file_uri, r, _parquet_image_column(manifest, file_uri))
        else:
            try:
                if storage.size_of(source) > _MAX_SOURCE_BYTES:
                    raise ImageUnavailable(f"item {item_id}: source file is over {_MAX_SOURCE_BYTES} bytes")
                data = storage.read_bytes(source)
            except (FileNotFoundError, OSError) as exc:
                raise ImageUnavailable(f"item {item_id}: cannot read its source: {exc}") from exc
        return data
    if image_kind(manifest) == "fashion":
        from qadwh_ray.data.fashion import fashion_augmented_images

        kinds = {s.get("kind") for s in manifest.sources if isinstance(s, dict)}
        if "fashion-augmented" not in kinds and not 0 <= item_id < 70000:
            raise ImageUnavailable(f"item {item_id} is not a Fashion-MNIST row")
        try:
            imgs, _ = fashion_augmented_images(np.asarray([item_id], dtype=np.int64))
        except (FileNotFoundError, ValueError) as exc:
            raise ImageUnavailable(f"Fashion-MNIST is not available on this server: {exc}") from exc
        img = imgs[0]
        if mode == "RGB":
            img = np.repeat(img[..., None], 3, axis=-1)
        return np.ascontiguousarray(img)
    raise ImageUnavailable(f"the index does not record where the image of item {item_id} is")
