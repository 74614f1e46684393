"""Writing labelled images as a Parquet dataset (the format :mod:`qadwh_ray.data.catalog` reads)."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadwh_ray import storage
from qadwh_ray.core.labels import as_label_matrix
from qadwh_ray.data.catalog import META_CLASS_NAMES, META_NUM_CLASSES
from qadwh_ray.data.transforms import encode_png

__all__ = ["write_parquet_images"]


def write_parquet_images(
    uri: str,
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    rows_per_file: int | None = None,
    row_group_size: int = 256,  # small groups: training reads rows at random
) -> list[str]:
    """Write images as a Parquet table of ``(id int64, image PNG bytes, label)``.

    ``labels``: ``(n,)`` class indices (an int64 ``label`` column) or an ``(n, c)``
    0/1 matrix (a ``labels`` column: the list of each row's positive classes). Without
    ``rows_per_file`` ``uri`` is one file; with it ``uri`` is a directory of
    ``part-00000.parquet`` ... files. Each file appears atomically. The number
    of classes and the class names go into the schema metadata. Returns the
    written file URIs.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images must be uint8 (n, H, W) or (n, H, W, 3), got {images.dtype} {images.shape}")
    n = images.shape[0]
    labels = np.asarray(labels)
    if labels.ndim == 1:
        mat = as_label_matrix(labels, len(class_names) if class_names is not None else None)
        label_array = pa.array(labels.astype(np.int64), type=pa.int64())
    else:
        mat = as_label_matrix(labels, len(class_names) if class_names is not None else None)
        rows, cls = np.nonzero(mat)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
        label_array = pa.ListArray.from_arrays(pa.array(offsets), pa.array(cls.astype(np.int32)))
    if mat.shape[0] != n:
        raise ValueError(f"{n} images but {mat.shape[0]} labels")
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must be ({n},), got {ids.shape}")
    meta = {META_NUM_CLASSES: str(mat.shape[1]).encode()}
    if class_names is not None:
        meta[META_CLASS_NAMES] = json.dumps(list(class_names)).encode()
    label_name = "label" if labels.ndim == 1 else "labels"
    table = pa.table(
        {"id": pa.array(ids), "image": pa.array([encode_png(im) for im in images], type=pa.binary()), label_name: label_array}
    ).replace_schema_metadata(meta)

    def write(target: str, t: pa.Table) -> None:
        with storage.open_output(target) as f:
            pq.write_table(t, f, row_group_size=row_group_size)

    if rows_per_file is None:
        write(uri, table)
        return [uri]
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    out = []
    for i, start in enumerate(range(0, max(n, 1), rows_per_file)):
        target = storage.join(uri, f"part-{i:05d}.parquet")
        write(target, table.slice(start, rows_per_file))
        out.append(target)
    return out
