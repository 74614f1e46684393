"""Loaders for real image collections, all returning an :class:`ImageSet`.

- :func:`load_cifar10`: torchvision's on-disk ``cifar-10-batches-py`` pickles;
- :func:`load_image_folder`: one sub-folder per class (torchvision ImageFolder);
- :func:`load_parquet_images` / :func:`iter_parquet_image_batches`: Parquet
  tables of encoded image bytes + labels (one file or a directory of files),
  the format large collections live in on object storage.

Every location is a URI of :mod:`qadwh_ray.storage` (local path or
``s3://``). Nothing is downloaded. Bad input fails with an error that names
the file, the column or the row id at fault.
"""

from __future__ import annotations

import io
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from qadwh_ray import storage
from qadwh_ray.core.labels import as_label_matrix
from qadwh_ray.data.transforms import ImageDecodeError, decode_image, encode_png

__all__ = [
    "ImageSet",
    "IMAGE_EXTENSIONS",
    "load_cifar10",
    "load_image_folder",
    "load_parquet_images",
    "iter_parquet_image_batches",
    "write_parquet_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_META_NUM_CLASSES = b"qadwh.num_classes"
_META_CLASS_NAMES = b"qadwh.class_names"
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(eq=False)
class ImageSet:
    """Images with their labels and identities.

    ``images``: uint8 ``(n, H, W)`` or ``(n, H, W, 3)``; ``label_matrix``:
    uint8 0/1 ``(n, c)``; ``ids``: int64 ``(n,)``; ``class_names``: the ``c``
    names when known; ``source_refs``: where each image came from (file URIs).
    """

    images: np.ndarray
    label_matrix: np.ndarray
    ids: np.ndarray
    class_names: list[str] | None = None
    source_refs: list[str] | None = None

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.label_matrix = np.asarray(self.label_matrix)
        self.ids = np.asarray(self.ids, dtype=np.int64)
        n = self.images.shape[0]
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (n, H, W) or (n, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.label_matrix.ndim != 2 or self.label_matrix.shape[0] != n:
            raise ValueError(f"label_matrix must be ({n}, c), got {self.label_matrix.shape}")
        if self.ids.shape != (n,):
            raise ValueError(f"ids must be ({n},), got {self.ids.shape}")
        if self.class_names is not None and len(self.class_names) != self.label_matrix.shape[1]:
            raise ValueError(f"{len(self.class_names)} class names for {self.label_matrix.shape[1]} label columns")
        if self.source_refs is not None and len(self.source_refs) != n:
            raise ValueError(f"{len(self.source_refs)} source refs for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.label_matrix.shape[1])

    def subset(self, index: np.ndarray) -> "ImageSet":
        """The items at ``index`` (an index array), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(
            images=self.images[index],
            label_matrix=self.label_matrix[index],
            ids=self.ids[index],
            class_names=self.class_names,
            source_refs=None if self.source_refs is None else [self.source_refs[i] for i in index],
        )


def _auto_mode(data: bytes, source: str) -> str:
    """'L' for grayscale encodings, 'RGB' otherwise (decided on the first image)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return "L" if img.mode in _GRAY_MODES else "RGB"
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image ({source}): {type(exc).__name__}: {exc}") from exc


def _size_tuple(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


# ------------------------------------------------------------------ CIFAR-10

_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


def _unpickle(uri: str) -> dict:
    try:
        obj = pickle.loads(storage.read_bytes(uri), encoding="bytes")
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{uri} is not a CIFAR-10 pickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{uri} is not a CIFAR-10 batch (a pickled dict), got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar10(root: str, split: str = "all") -> ImageSet:
    """CIFAR-10 in torchvision's on-disk format, read directly (no download).

    ``root`` is the ``cifar-10-batches-py`` directory or its parent. ``split``:
    ``"train"`` (50,000), ``"test"`` (10,000) or ``"all"`` (train then test,
    60,000). Images are ``(n, 32, 32, 3)`` uint8; ids are positions.
    The format is Python pickle: only load files you trust.
    """
    names = {"train": _CIFAR_TRAIN, "test": _CIFAR_TEST, "all": _CIFAR_TRAIN + _CIFAR_TEST}
    if split not in names:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    base = root
    if not storage.exists(storage.join(root, "batches.meta")):
        base = storage.join(root, "cifar-10-batches-py")
        if not storage.exists(storage.join(base, "batches.meta")):
            raise FileNotFoundError(
                f"no CIFAR-10 data at {root}: expected {root}/cifar-10-batches-py/batches.meta "
                f"(torchvision's format; this project never downloads it)"
            )
    meta = _unpickle(storage.join(base, "batches.meta"))
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    images, labels = [], []
    for name in names[split]:
        uri = storage.join(base, name)
        batch = _unpickle(uri)
        for key in ("data", "labels"):
            if key not in batch:
                raise ValueError(f"CIFAR-10 batch {uri} lacks the key {key!r}")
        data = np.asarray(batch["data"])
        lab = np.asarray(batch["labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"CIFAR-10 batch {uri}: data must be uint8 (n, 3072), got {data.dtype} {data.shape}")
        if lab.shape != (data.shape[0],):
            raise ValueError(f"CIFAR-10 batch {uri}: {data.shape[0]} images but {lab.shape} labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    y = np.concatenate(labels)
    num_classes = len(class_names) or 10
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"CIFAR-10 labels in {base} outside [0, {num_classes})")
    return ImageSet(
        images=np.ascontiguousarray(np.concatenate(images)),
        label_matrix=as_label_matrix(y, num_classes),
        ids=np.arange(y.size, dtype=np.int64),
        class_names=class_names or None,
    )


# ---------------------------------------------------------------- image folder


def _list_class_dirs(uri: str) -> list[str]:
    fs, path = storage.filesystem_and_path(uri)
    if not storage.is_dir(uri):
        raise FileNotFoundError(f"no image folder at {uri}")
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError as exc:
        raise storage.StorageError(f"cannot list {uri}: {exc}") from exc
    names = [e.base_name for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")]
    return sorted(names)


def load_image_folder(
    uri: str,
    *,
    mode: str | None = None,
    expected_size: int | tuple[int, int] | None = None,
    max_workers: int = 8,
) -> ImageSet:
    """Images laid out one sub-folder per class (torchvision ImageFolder):
    ``uri/<class>/**/<image>.png|.jpg|...``, local or ``s3://``.

    Class names are the sorted sub-folder names; items are in (class, path)
    order; ``source_refs`` are the file URIs. ``mode`` ``"L"``/``"RGB"``
    (default: decided by the first image); every image must have the size of
    ``expected_size`` (default: the first image's). Reads run in a small
    thread pool because object-store latency dominates.
    """
    classes = _list_class_dirs(uri)
    if not classes:
        raise FileNotFoundError(f"no class sub-folders in {uri} (expected {uri}/<class name>/<images>)")
    files: list[str] = []
    labels: list[int] = []
    for ci, name in enumerate(classes):
        found = storage.list_files(storage.join(uri, name), recursive=True, suffixes=IMAGE_EXTENSIONS)
        if not found:
            raise FileNotFoundError(f"class folder {storage.join(uri, name)} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files.extend(found)
        labels.extend([ci] * len(found))
    first = storage.read_bytes(files[0])
    mode = mode or _auto_mode(first, files[0])
    size = _size_tuple(expected_size) or decode_image(first, mode=mode, source=files[0]).shape[:2]

    def load(f: str) -> np.ndarray:
        return decode_image(storage.read_bytes(f), expected_size=size, mode=mode, source=f)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        images = list(pool.map(load, files))
    return ImageSet(
        images=np.stack(images),
        label_matrix=as_label_matrix(np.asarray(labels, dtype=np.int64), len(classes)),
        ids=np.arange(len(files), dtype=np.int64),
        class_names=classes,
        source_refs=files,
    )


# -------------------------------------------------------------------- parquet


def parquet_files(uri: str) -> list[str]:
    """The Parquet files of a table: one file, or every *.parquet under a directory."""
    if storage.is_dir(uri):
        files = storage.list_files(uri, recursive=True, suffixes=(".parquet", ".pq"))
        if not files:
            raise FileNotFoundError(f"no Parquet files (*.parquet) under {uri}")
        return files
    if not storage.exists(uri):
        raise FileNotFoundError(f"no such Parquet file or directory: {uri}")
    return [uri]


def _open_parquet(f, uri: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except Exception as exc:
        raise ValueError(f"{uri} is not a readable Parquet file: {exc}") from exc


def _check_columns(schema: pa.Schema, columns: dict[str, str | None], uri: str) -> None:
    for role, name in columns.items():
        if name is not None and name not in schema.names:
            raise ValueError(f"{role} column {name!r} not found in {uri} (columns: {schema.names})")


def _image_bytes(column: pa.Array, name: str, uri: str) -> list:
    t = column.type
    if pa.types.is_struct(t):  # Hugging Face datasets' Image feature: {bytes, path}
        if t.get_field_index("bytes") < 0:
            raise TypeError(f"image column {name!r} in {uri} is a struct without a 'bytes' field: {t}")
        column = pc.struct_field(column, "bytes")
        t = column.type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)):
        raise TypeError(f"image column {name!r} in {uri} must hold encoded image bytes, got type {t}")
    return column.to_pylist()


def _label_pairs(column: pa.Array, name: str, uri: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, class) pairs of a label column: int class per row or list<int> per row."""
    t = column.type
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"label column {name!r} in {uri} is null for id {int(ids[row])}")
    if pa.types.is_integer(t):
        cls = column.to_numpy(zero_copy_only=False).astype(np.int64)
        rows = np.arange(len(column), dtype=np.int64)
    elif (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and pa.types.is_integer(
        t.value_type
    ):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if (lengths == 0).any():
            row = int(np.flatnonzero(lengths == 0)[0])
            raise ValueError(f"label column {name!r} in {uri}: id {int(ids[row])} has an empty label list")
        values = pc.list_flatten(column)
        if values.null_count:
            raise ValueError(f"label column {name!r} in {uri} holds null class indices")
        cls = values.to_numpy(zero_copy_only=False).astype(np.int64)
        rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        raise TypeError(f"label column {name!r} in {uri} must be an integer class or a list of integer classes, got {t}")
    if cls.size and cls.min() < 0:
        i = int(np.flatnonzero(cls < 0)[0])
        raise ValueError(f"label column {name!r} in {uri}: negative class {int(cls[i])} for id {int(ids[rows[i]])}")
    return rows, cls


def _label_matrix(rows: np.ndarray, cls: np.ndarray, n: int, num_classes: int, ids: np.ndarray, where: str) -> np.ndarray:
    if cls.size and cls.max() >= num_classes:
        i = int(np.flatnonzero(cls >= num_classes)[0])
        raise ValueError(f"class {int(cls[i])} of id {int(ids[rows[i]])} in {where} is outside [0, {num_classes})")
    out = np.zeros((n, num_classes), dtype=np.uint8)
    out[rows, cls] = 1
    return out


def _metadata(schema: pa.Schema) -> tuple[int | None, list[str] | None]:
    meta = schema.metadata or {}
    num = int(meta[_META_NUM_CLASSES]) if _META_NUM_CLASSES in meta else None
    names = json.loads(meta[_META_CLASS_NAMES]) if _META_CLASS_NAMES in meta else None
    return num, names


@dataclass
class _Chunk:
    uri: str
    images: np.ndarray
    rows: np.ndarray
    cls: np.ndarray
    ids: np.ndarray


def _iter_chunks(
    uri: str,
    batch_size: int,
    image_column: str,
    label_column: str,
    id_column: str | None,
    mode: str | None,
    expected_size,
    state: dict,
) -> Iterator[_Chunk]:
    """Decoded record batches of every file, in file order, streamed."""
    files = parquet_files(uri)
    offset = 0
    size = _size_tuple(expected_size)
    for file_uri in files:
        with storage.open_input(file_uri) as f:
            pf = _open_parquet(f, file_uri)
            schema = pf.schema_arrow
            _check_columns(schema, {"image": image_column, "label": label_column, "id": id_column}, file_uri)
            num, names = _metadata(schema)
            if num is not None and state.get("num_classes") not in (None, num):
                raise ValueError(f"{file_uri} declares {num} classes, earlier files {state['num_classes']}")
            if state.get("num_classes") is None:
                state["num_classes"] = num
            if state.get("class_names") is None:
                state["class_names"] = names
            cols = [c for c in (image_column, label_column, id_column) if c is not None]
            for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                n = rb.num_rows
                if id_column is None:
                    ids = np.arange(offset, offset + n, dtype=np.int64)
                else:
                    id_col = rb.column(id_column)
                    if not pa.types.is_integer(id_col.type) or id_col.null_count:
                        raise TypeError(f"id column {id_column!r} in {file_uri} must hold non-null integers, got {id_col.type}")
                    ids = id_col.to_numpy(zero_copy_only=False).astype(np.int64)
                offset += n
                rows, cls = _label_pairs(rb.column(label_column), label_column, file_uri, ids)
                blobs = _image_bytes(rb.column(image_column), image_column, file_uri)
                decoded = []
                for i, blob in enumerate(blobs):
                    src = f"id {int(ids[i])} in {file_uri}"
                    if blob is None:
                        raise ImageDecodeError(f"image column {image_column!r} is null ({src})")
                    if mode is None:
                        mode = _auto_mode(blob, src)
                    img = decode_image(blob, expected_size=size, mode=mode, source=src)
                    size = size or img.shape[:2]
                    decoded.append(img)
                images = np.stack(decoded) if decoded else np.zeros((0, 0, 0), np.uint8)
                yield _Chunk(file_uri, images, rows, cls, ids)


def load_parquet_images(
    uri: str,
    image_column: str = "image",
    label_column: str = "label",
    id_column: str | None = "id",
    num_classes: int | None = None,
    *,
    mode: str | None = None,
    expected_size: int | tuple[int, int] | None = None,
) -> ImageSet:
    """Read a Parquet file, or every ``*.parquet`` under a directory/prefix,
    of encoded images and labels into memory.

    Labels: an integer class per row, or a ``list<int>`` of classes per row
    (multi-label). ``num_classes``: given, else the files' metadata (written by
    :func:`write_parquet_images`), else the largest class + 1. ``id_column``
    ``None`` numbers the rows. ``mode``/``expected_size`` as in
    :func:`load_image_folder`. For collections too large for memory use
    :func:`iter_parquet_image_batches`.
    """
    state: dict = {}
    chunks = [
        c for c in _iter_chunks(uri, 4096, image_column, label_column, id_column, mode, expected_size, state) if len(c.ids)
    ]
    if not chunks:
        raise ValueError(f"no rows in {uri}")
    num = num_classes or state.get("num_classes")
    if num is None:
        num = int(max(int(c.cls.max()) for c in chunks)) + 1
    names = state.get("class_names")
    mats = [_label_matrix(c.rows, c.cls, len(c.ids), num, c.ids, c.uri) for c in chunks]
    ids = np.concatenate([c.ids for c in chunks])
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"id {int(uniq[counts > 1][0])} appears more than once in {uri}")
    return ImageSet(
        images=np.concatenate([c.images for c in chunks]),
        label_matrix=np.concatenate(mats),
        ids=ids,
        class_names=names if names is not None and len(names) == num else None,
    )


def iter_parquet_image_batches(
    uri: str,
    batch_size: int,
    image_column: str = "image",
    label_column: str = "label",
    id_column: str | None = "id",
    num_classes: int | None = None,
    *,
    mode: str | None = None,
    expected_size: int | tuple[int, int] | None = None,
) -> Iterator[ImageSet]:
    """Stream :class:`ImageSet` batches of exactly ``batch_size`` rows (the
    last may be shorter) without loading the whole table: files are read one
    record batch at a time (``ParquetFile.iter_batches``).

    ``num_classes`` must be given unless the files carry it in their metadata
    (as :func:`write_parquet_images` does): a stream cannot look ahead.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state: dict = {}
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending_rows = 0

    def emit(take: int) -> ImageSet:
        nonlocal pending, pending_rows
        imgs, mats, ids = (np.concatenate(x) for x in zip(*pending))
        rest = (imgs[take:], mats[take:], ids[take:])
        pending = [rest] if len(rest[2]) else []
        pending_rows = len(rest[2])
        names = state.get("class_names")
        return ImageSet(
            images=imgs[:take],
            label_matrix=mats[:take],
            ids=ids[:take],
            class_names=names if names is not None and len(names) == mats.shape[1] else None,
        )

    for chunk in _iter_chunks(uri, batch_size, image_column, label_column, id_column, mode, expected_size, state):
        num = num_classes or state.get("num_classes")
        if num is None:
            raise ValueError(
                f"num_classes is needed to stream {uri}: its files carry no {_META_NUM_CLASSES.decode()} metadata"
            )
        if not len(chunk.ids):
            continue
        mat = _label_matrix(chunk.rows, chunk.cls, len(chunk.ids), num, chunk.ids, chunk.uri)
        pending.append((chunk.images, mat, chunk.ids))
        pending_rows += len(chunk.ids)
        while pending_rows >= batch_size:
            yield emit(batch_size)
    if pending_rows:
        yield emit(pending_rows)


def write_parquet_images(
    uri: str,
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    rows_per_file: int | None = None,
    row_group_size: int = 1024,
) -> list[str]:
    """Write images as a Parquet table of ``(id int64, image PNG bytes, label)``.

    ``labels``: ``(n,)`` class indices (an int64 column) or an ``(n, c)`` 0/1
    matrix (a ``list<int32>`` column of the positive classes). Without
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
    meta = {_META_NUM_CLASSES: str(mat.shape[1]).encode()}
    if class_names is not None:
        meta[_META_CLASS_NAMES] = json.dumps(list(class_names)).encode()
    table = pa.table(
        {"id": pa.array(ids), "image": pa.array([encode_png(im) for im in images], type=pa.binary()), "label": label_array}
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
