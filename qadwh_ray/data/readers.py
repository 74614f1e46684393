"""Pixels of catalog items, read on demand: one reader for training, evaluation and indexing.

:func:`read_images` takes positions in a :class:`~qadwh_ray.data.catalog.Catalog`
and returns uint8 pixels in the dataset's mode at one size — so images of mixed
sizes are resized (bilinear, as torchvision's ``Resize``) to the size the model
takes. A bad item (unreadable, truncated, or of another colour mode than the
dataset: a colour photo in a grey dataset would lose its colour) raises an
error naming the file or row, or with ``skip_bad`` comes back as zeros with
its reason, for the caller to list.

Parquet rows are read by row group; a small per-process cache of recently read
row groups keeps class-balanced random batches from re-reading the same group
(write tables with row groups of a few hundred rows for random access).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from qadwh_ray import storage
from qadwh_ray.data.catalog import GRAY_MODES, Catalog, DatasetError

__all__ = ["ImageReadError", "read_images", "decode_to"]

_CACHE_BYTES = 64 << 20  # Parquet row groups kept per process
_THREADS = 8  # object-store latency dominates file reads


class ImageReadError(DatasetError):
    """An item's image cannot be used; the message names the file or row."""


def decode_to(data, mode: str, size: tuple[int, int] | None, source: str) -> np.ndarray:
    """Encoded bytes -> uint8 ``(H, W)`` (``"L"``) or ``(H, W, 3)`` (``"RGB"``), resized to ``size``."""
    from PIL import Image

    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ImageReadError(f"no image bytes for {source}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if mode == "L" and img.mode not in GRAY_MODES:
                raise ImageReadError(f"{source} is a colour image in a grey dataset (mode {img.mode})")
            img = img.convert(mode)
            if size is not None and (img.height, img.width) != tuple(size):
                img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except ImageReadError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError ...)
        raise ImageReadError(f"cannot decode image {source}: {type(exc).__name__}: {exc}") from exc


class _RowGroupCache:
    """LRU of (file, row group) -> list of image bytes, bounded in bytes; one per process."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.items: OrderedDict = OrderedDict()
        self.meta: dict[str, object] = {}
        self.lock = threading.Lock()

    def offsets(self, uri: str) -> np.ndarray:
        """First row of each row group of ``uri`` (plus the total), from the footer, read once."""
        with self.lock:
            if uri in self.meta:
                return self.meta[uri]
        import pyarrow.parquet as pq

        with storage.open_input(uri) as f:
            md = pq.ParquetFile(f).metadata
        out = np.concatenate([[0], np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])])
        with self.lock:
            self.meta[uri] = out
        return out

    def group(self, uri: str, g: int, column: str) -> list:
        key = (uri, g)
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        with storage.open_input(uri) as f:
            col = pq.ParquetFile(f).read_row_group(g, columns=[column]).column(column).combine_chunks()
        if hasattr(col.type, "get_field_index") and col.type.num_fields:  # {bytes, path} structs
            col = pc.struct_field(col, "bytes")
        blobs = col.to_pylist()
        nbytes = sum(len(b) for b in blobs if b)
        with self.lock:
            self.items[key] = blobs
            self.size += nbytes
            while self.size > self.limit and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.size -= sum(len(b) for b in old if b)
        return blobs


_CACHE = _RowGroupCache(_CACHE_BYTES)


def _builtin_pixels(cat: Catalog, positions: np.ndarray) -> np.ndarray:
    if cat.info.format == "fashion":
        from qadwh_ray.data.fashion import load_fashion_mnist

        images, _ = load_fashion_mnist()
        return images[cat.ids[positions]]
    from qadwh_ray.data.multilabel import cached_mosaics

    return cached_mosaics(cat.builtin_seed)[positions]


def _blobs(cat: Catalog, positions: np.ndarray) -> list:
    """Encoded bytes of each position (None where unreadable), with a reason per failure."""
    if cat.info.format == "folder":
        def read(p):
            try:
                return storage.read_bytes(cat.files[int(p)])
            except (OSError, storage.StorageError) as exc:
                return exc

        with ThreadPoolExecutor(max_workers=min(_THREADS, max(1, len(positions)))) as pool:
            return list(pool.map(read, positions.tolist()))
    out: list = [None] * len(positions)
    fidx = cat.file_index[positions]
    frow = cat.file_row[positions]
    for fi in np.unique(fidx).tolist():
        uri = cat.files[fi]
        sel = np.flatnonzero(fidx == fi)
        bounds = _CACHE.offsets(uri)
        groups = np.searchsorted(bounds, frow[sel], side="right") - 1
        for g in np.unique(groups).tolist():
            blobs = _CACHE.group(uri, g, cat.image_column)
            for j in sel[groups == g].tolist():
                out[j] = blobs[int(frow[j] - bounds[g])]
    return out


def read_images(
    cat: Catalog,
    positions: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    skip_bad: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Pixels of the items at ``positions``: ``(images, bad)``.

    ``images``: uint8 ``(n, H, W)`` for grey datasets, ``(n, H, W, 3)`` for RGB, at ``size``
    (default: the dataset's first image's size). ``bad``: one reason per item, "" for a good one;
    without ``skip_bad`` the first bad item raises :class:`ImageReadError` instead.
    """
    positions = np.asarray(positions, dtype=np.int64)
    mode = cat.info.mode
    size = tuple(int(s) for s in (size or cat.info.image_size))
    shape = (len(positions), *size) + ((3,) if mode == "RGB" else ())
    if cat.info.format in ("fashion", "fashion-multilabel"):
        pixels = _builtin_pixels(cat, positions)
        if pixels.shape[1:3] != size:
            from PIL import Image

            pixels = np.stack([np.asarray(Image.fromarray(p).resize((size[1], size[0]), Image.BILINEAR)) for p in pixels]) \
                if len(pixels) else np.zeros(shape, np.uint8)
        return pixels, [""] * len(positions)
    out = np.zeros(shape, dtype=np.uint8)
    bad = [""] * len(positions)
    for i, blob in enumerate(_blobs(cat, positions)):
        source = cat.source_of(int(positions[i]))
        try:
            if isinstance(blob, Exception):
                raise ImageReadError(f"cannot read {source}: {blob}")
            out[i] = decode_to(blob, mode, size, source)
        except ImageReadError as exc:
            if not skip_bad:
                raise
            bad[i] = str(exc)
    return out, bad
