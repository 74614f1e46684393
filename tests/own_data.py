"""Datasets that are not Fashion-MNIST's ten grey classes, made from it inside the tests (no downloads).

- :func:`make_rgb_folder`: an RGB image folder of 5 new classes (Fashion-MNIST classes regrouped),
  tinted per class, resized to 48x48, written as JPEG and PNG, nested one level for some files.
- :func:`make_multilabel_parquet`: a multi-label Parquet table (2x2 mosaics, string labels) at any URI.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from qadwh_ray import storage

# five new classes from the ten Fashion-MNIST ones
RGB_CLASSES = {"tops": (0, 2), "bottoms": (1,), "dresses": (3, 4, 6), "shoes": (5, 7, 9), "bags": (8,)}
RGB_TINTS = {"tops": (255, 120, 60), "bottoms": (60, 120, 255), "dresses": (200, 60, 200), "shoes": (60, 200, 90),
             "bags": (230, 210, 40)}
MULTILABEL_CLASSES = ["top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _fashion():
    from qadwh_ray.data.fashion import load_fashion_mnist

    return load_fashion_mnist()


def rgb_image(grey: np.ndarray, tint: tuple[int, int, int], size: int = 48) -> Image.Image:
    """A grey 28x28 image as a tinted RGB image of ``size`` pixels."""
    g = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    rgb = (g[..., None] * np.asarray(tint, dtype=np.float32)[None, None, :]).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def make_rgb_folder(root: str, per_class: int = 60, seed: int = 0, size: int = 48) -> dict:
    """Write ``root/<class>/...`` (every third file nested in a sub-folder, PNG and JPEG alternating)."""
    images, labels = _fashion()
    rng = np.random.default_rng(seed)
    counts = {}
    for name, members in RGB_CLASSES.items():
        pool = np.flatnonzero(np.isin(labels, members))
        pick = rng.choice(pool, size=per_class, replace=False)
        for j, i in enumerate(pick.tolist()):
            img = rgb_image(images[i], RGB_TINTS[name], size)
            ext, fmt = (".png", "PNG") if j % 2 else (".jpg", "JPEG")
            sub = "more/" if j % 3 == 0 else ""
            buf = io.BytesIO()
            img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            storage.write_bytes(storage.join(root, name, f"{sub}{name}-{j:04d}{ext}"), buf.getvalue())
        counts[name] = per_class
    return counts


def make_multilabel_parquet(uri: str, n: int = 400, seed: int = 0, rows_per_file: int = 200) -> list[str]:
    """Write ``n`` 2x2 mosaics (56x56 grey PNG) with string label lists as Parquet files under ``uri``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qadwh_ray.data.multilabel import make_mosaics

    images, labels = _fashion()
    mosaics, matrix = make_mosaics(images, labels, n, seed=seed, num_classes=10)[:2]
    names = np.asarray(MULTILABEL_CLASSES)
    files = []
    for part, start in enumerate(range(0, n, rows_per_file)):
        rows = range(start, min(n, start + rows_per_file))
        blobs, lists = [], []
        for r in rows:
            buf = io.BytesIO()
            Image.fromarray(mosaics[r]).save(buf, format="PNG")
            blobs.append(buf.getvalue())
            lists.append(names[np.flatnonzero(matrix[r])].tolist())
        table = pa.table({"id": pa.array(np.arange(start, start + len(rows), dtype=np.int64) + 1000),
                          "image": pa.array(blobs, type=pa.binary()), "labels": pa.array(lists)})
        target = storage.join(uri, f"part-{part:05d}.parquet")
        with storage.open_output(target) as f:
            pq.write_table(table, f, row_group_size=64)
        files.append(target)
    return files
