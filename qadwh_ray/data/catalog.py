"""One description of a labelled image collection, read from the data itself.

A dataset is a URI (local path or ``s3://``) of

- an **image folder**: one sub-folder per class (files may be nested below it),
  any number of classes >= 2; or
- a **Parquet** file or directory of files with an encoded-image column
  (``image``) and either ``label`` (an int or a string per row) or ``labels``
  (a list of ints or strings per row: multi-label), and an optional ``id``
  column; or
- one of the built-in names ``fashion`` (Fashion-MNIST) and
  ``fashion-multilabel`` (2x2 mosaics of it).

:func:`open_catalog` reads only metadata (a listing, the label and id columns,
one image) and returns a :class:`Catalog`: the item table (ids, label matrix,
where each item's bytes live) and a :class:`DatasetInfo` (class names, number
of classes, grey or RGB, single- or multi-label) — never configured by hand.
Pixels are read on demand by :mod:`qadwh_ray.data.readers`, so training,
evaluation and indexing read every format through the same code.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qadwh_ray import storage

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetInfo",
    "Catalog",
    "open_catalog",
    "parquet_files",
    "folder_item_id",
]

BUILTIN_DATASETS = ("fashion", "fashion-multilabel")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
PARQUET_EXTENSIONS = (".parquet", ".pq")
CLASS_NAMES_FILE = "classes.txt"  # optional, beside the data: one class name per line, in label-index order
META_CLASS_NAMES = b"qadwh.class_names"
META_NUM_CLASSES = b"qadwh.num_classes"
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class DatasetError(ValueError):
    """The data cannot be used as a labelled image collection; the message names the file or row."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, as read from it."""

    uri: str
    format: str  # "fashion" | "fashion-multilabel" | "folder" | "parquet"
    class_names: tuple[str, ...]
    multi_label: bool
    mode: str  # "L" (grey) | "RGB"
    image_size: tuple[int, int]  # (height, width) of the first image
    num_items: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def to_dict(self) -> dict:
        return {
            "uri": self.uri,
            "format": self.format,
            "class_names": list(self.class_names),
            "multi_label": self.multi_label,
            "mode": self.mode,
            "image_size": list(self.image_size),
            "num_items": self.num_items,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(
            uri=str(d["uri"]),
            format=str(d["format"]),
            class_names=tuple(str(c) for c in d["class_names"]),
            multi_label=bool(d["multi_label"]),
            mode=str(d["mode"]),
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
            num_items=int(d["num_items"]),
        )

    def summary(self) -> str:
        kind = "multi-label" if self.multi_label else "single-label"
        colour = "grey" if self.mode == "L" else "RGB"
        return (
            f"{self.uri}: {self.num_items} {colour} images ({self.image_size[0]}x{self.image_size[1]} first), "
            f"{self.num_classes} classes, {kind} [{self.format}]"
        )


@dataclass(eq=False)
class Catalog:
    """The item table of a dataset: position ``i`` has id ``ids[i]`` and labels ``labels[i]``.

    ``files``: folder datasets: the image file of each item; Parquet: the data files.
    ``file_index`` / ``file_row`` (Parquet): which file and which row in it holds item ``i``.
    """

    info: DatasetInfo
    ids: np.ndarray  # (n,) int64, unique
    labels: np.ndarray  # (n, c) uint8 0/1
    files: list[str] = field(default_factory=list)
    file_index: np.ndarray | None = None
    file_row: np.ndarray | None = None
    image_column: str = "image"
    builtin_seed: int = 0  # fashion-multilabel: the seed its mosaics were drawn with

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def positions(self, ids: np.ndarray, *, what: str = "ids") -> np.ndarray:
        """Positions of ``ids`` in this catalog (an error names the first unknown id)."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[order]
        at = np.searchsorted(sorted_ids, ids)
        at = np.minimum(at, max(len(sorted_ids) - 1, 0))
        found = sorted_ids[at] == ids if len(sorted_ids) else np.zeros(ids.shape, bool)
        if not found.all():
            bad = int(ids[np.flatnonzero(~found)[0]])
            raise DatasetError(f"{what}: id {bad} is not in the dataset {self.info.uri}")
        return order[at]

    def source_of(self, position: int) -> str:
        """Where item ``position`` lives, for messages and the index's source column."""
        if self.info.format == "folder":
            return self.files[position]
        if self.info.format == "parquet":
            return f"{self.files[int(self.file_index[position])]}#row={int(self.file_row[position])}"
        return f"{self.info.format}:{int(self.ids[position])}"

    def sources(self, positions: np.ndarray) -> list[str]:
        if self.info.format in ("folder", "parquet"):
            return [self.source_of(int(p)) for p in positions]
        return [""] * len(positions)  # built-in items: the id says it all


# ------------------------------------------------------------------ helpers


def folder_item_id(relative_path: str) -> int:
    """A stable non-negative int64 id for an image file, from its path below the dataset root:
    adding or removing other files never changes an item's id (a growing folder re-indexes cleanly)."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def image_mode(data: bytes, source: str) -> str:
    """'L' for a grey encoding, 'RGB' otherwise."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return "L" if img.mode in GRAY_MODES else "RGB"
    except Exception as exc:
        raise DatasetError(f"cannot decode image {source}: {type(exc).__name__}: {exc}") from exc


def _first_image(data: bytes, source: str) -> tuple[str, tuple[int, int]]:
    import io

    from PIL import Image

    mode = image_mode(data, source)
    with Image.open(io.BytesIO(data)) as img:
        return mode, (int(img.height), int(img.width))


def _class_names_file(uri: str) -> list[str] | None:
    """``classes.txt`` beside a folder's class directories or a Parquet table, if present."""
    base = uri if storage.is_dir(uri) else posixpath.dirname(uri.rstrip("/")) or "."
    path = storage.join(base, CLASS_NAMES_FILE)
    if not storage.exists(path):
        return None
    names = [line.strip() for line in storage.read_bytes(path).decode("utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DatasetError(f"{path} names a class more than once")
    return names


def _check_classes(names: list[str], where: str) -> None:
    if len(names) < 2:
        raise DatasetError(
            f"{where} has {len(names)} class{'es' if len(names) != 1 else ''} ({', '.join(names) or 'none'}); "
            f"retrieval needs at least 2 classes"
        )


# ------------------------------------------------------------------ folder


def _open_folder(uri: str, class_names: list[str] | None) -> Catalog:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem_and_path(uri)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError as exc:
        raise storage.StorageError(f"cannot list {uri}: {exc}") from exc
    dirs = sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith("."))
    if not dirs:
        raise DatasetError(f"no class sub-folders in {uri} (expected {uri}/<class name>/<images>)")
    _check_classes(dirs, f"image folder {uri}")
    if class_names is not None:
        unknown = sorted(set(dirs) - set(class_names))
        if unknown:
            raise DatasetError(f"class folder(s) {', '.join(unknown)} of {uri} are not in its {CLASS_NAMES_FILE}")
    names = list(class_names) if class_names is not None else dirs
    files: list[str] = []
    labels: list[int] = []
    ids: list[int] = []
    root = uri.rstrip("/")
    for name in dirs:
        found = storage.list_files(storage.join(uri, name), recursive=True, suffixes=IMAGE_EXTENSIONS)
        if not found:
            raise DatasetError(
                f"class folder {storage.join(uri, name)} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        ci = names.index(name)
        for f in sorted(found):
            files.append(f)
            labels.append(ci)
            ids.append(folder_item_id(f[len(root) + 1 :] if f.startswith(root + "/") else f))
    id_arr = np.asarray(ids, dtype=np.int64)
    if np.unique(id_arr).size != id_arr.size:  # 2^-63 per pair: a collision means the same path twice
        raise DatasetError(f"two image files of {uri} map to one item id")
    mode, size = _first_image(storage.read_bytes(files[0]), files[0])
    label_matrix = np.zeros((len(files), len(names)), dtype=np.uint8)
    label_matrix[np.arange(len(files)), np.asarray(labels, dtype=np.int64)] = 1
    info = DatasetInfo(uri, "folder", tuple(names), False, mode, size, len(files))
    return Catalog(info, id_arr, label_matrix, files=files)


# ------------------------------------------------------------------ parquet


def parquet_files(uri: str) -> list[str]:
    """The Parquet files of a table: one file, or every ``*.parquet`` under a directory."""
    if storage.is_dir(uri):
        files = storage.list_files(uri, recursive=True, suffixes=PARQUET_EXTENSIONS)
        if not files:
            raise DatasetError(f"no Parquet files (*.parquet) under {uri}")
        return sorted(files)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no such dataset: {uri}")
    return [uri]


def _open_parquet_file(uri: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(storage.open_input(uri))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"{uri} is not a readable Parquet file: {exc}") from exc


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _label_kind(t: pa.DataType, column: str, uri: str) -> tuple[bool, str]:
    """(multi_label, "int" | "str") of a label column type."""
    multi = _is_list(t)
    inner = t.value_type if multi else t
    if pa.types.is_integer(inner):
        return multi, "int"
    if pa.types.is_string(inner) or pa.types.is_large_string(inner):
        return multi, "str"
    raise DatasetError(
        f"label column {column!r} in {uri} must hold ints or strings (or lists of them), got {t}"
    )


def _image_column_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):  # Hugging Face datasets' Image feature: {bytes, path}
        return t.get_field_index("bytes") >= 0
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _open_parquet(uri: str, class_names: list[str] | None, num_classes: int | None = None) -> Catalog:
    files = parquet_files(uri)
    label_col = kind = None
    multi = False
    meta_names: list[str] | None = None
    ids_parts, rows_parts, cls_parts, fidx_parts, frow_parts = [], [], [], [], []
    has_id = None
    offset = 0
    first_blob = first_src = None
    for fi, f in enumerate(files):
        pf = _open_parquet_file(f)
        schema = pf.schema_arrow
        if "image" not in schema.names:
            raise DatasetError(f"{f} has no 'image' column of encoded image bytes (columns: {', '.join(schema.names)})")
        if not _image_column_type_ok(schema.field("image").type):
            raise DatasetError(f"column 'image' in {f} must hold encoded image bytes, got {schema.field('image').type}")
        present = [c for c in ("label", "labels") if c in schema.names]
        if len(present) != 1:
            raise DatasetError(
                f"{f} needs exactly one label column, 'label' (one class per row) or 'labels' (a list per row); "
                f"found {present or 'neither'} (columns: {', '.join(schema.names)})"
            )
        col = present[0]
        this_multi, this_kind = _label_kind(schema.field(col).type, col, f)
        if col == "labels" and not this_multi:
            raise DatasetError(f"column 'labels' in {f} must hold a list of classes per row, got {schema.field(col).type}")
        if label_col is None:
            label_col, kind, multi = col, this_kind, this_multi
        elif (col, this_kind, this_multi) != (label_col, kind, multi):
            raise DatasetError(f"{f} labels its rows as {col} ({this_kind}) but earlier files as {label_col} ({kind})")
        if has_id is None:
            has_id = "id" in schema.names
        elif has_id != ("id" in schema.names):
            raise DatasetError(f"{f} {'has' if 'id' in schema.names else 'lacks'} an 'id' column, unlike earlier files")
        md = schema.metadata or {}
        if META_CLASS_NAMES in md and meta_names is None:
            meta_names = [str(n) for n in json.loads(md[META_CLASS_NAMES])]
        table = pf.read(columns=[col] + (["id"] if has_id else []))
        n = table.num_rows
        column = table.column(col).combine_chunks()
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DatasetError(f"{col} is null in row {row} of {f}")
        if multi:
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            if (lengths == 0).any():
                raise DatasetError(f"row {int(np.flatnonzero(lengths == 0)[0])} of {f} has an empty label list")
            values = pc.list_flatten(column)
            if values.null_count:
                raise DatasetError(f"{col} in {f} holds a null class")
            rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            values, rows = column, np.arange(n, dtype=np.int64)
        cls_parts.append(values.to_numpy(zero_copy_only=False))
        rows_parts.append(rows + offset)
        if has_id:
            idc = table.column("id").combine_chunks()
            if not pa.types.is_integer(idc.type) or idc.null_count:
                raise DatasetError(f"column 'id' in {f} must hold non-null integers, got {idc.type}")
            ids_parts.append(idc.to_numpy(zero_copy_only=False).astype(np.int64))
        else:
            ids_parts.append(np.arange(offset, offset + n, dtype=np.int64))
        fidx_parts.append(np.full(n, fi, dtype=np.int32))
        frow_parts.append(np.arange(n, dtype=np.int64))
        if first_blob is None and n:
            blob = pf.read_row_group(0, columns=["image"]).column("image")[0].as_py()
            first_blob = blob["bytes"] if isinstance(blob, dict) else blob
            first_src = f"row 0 of {f}"
        offset += n
    if offset == 0:
        raise DatasetError(f"no rows in {uri}")
    ids = np.concatenate(ids_parts)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DatasetError(f"id {int(uniq[counts > 1][0])} appears more than once in {uri}")
    raw = np.concatenate(cls_parts)
    rows = np.concatenate(rows_parts)
    names = class_names or meta_names
    if kind == "str":
        found = sorted(set(raw.tolist()))
        if names is None:
            names = found
        else:
            unknown = sorted(set(found) - set(names))
            if unknown:
                raise DatasetError(f"label {unknown[0]!r} in {uri} is not among the dataset's class names")
        lookup = {n: i for i, n in enumerate(names)}
        cls = np.asarray([lookup[v] for v in raw.tolist()], dtype=np.int64)
    else:
        cls = raw.astype(np.int64)
        if cls.size and cls.min() < 0:
            i = int(np.flatnonzero(cls < 0)[0])
            raise DatasetError(f"negative class {int(cls[i])} for id {int(ids[rows[i]])} in {uri}")
        if names is None:
            names = [str(c) for c in range(num_classes or int(cls.max()) + 1)]
        if cls.size and cls.max() >= len(names):
            i = int(np.flatnonzero(cls >= len(names))[0])
            raise DatasetError(
                f"class {int(cls[i])} of id {int(ids[rows[i]])} in {uri} is outside the {len(names)} classes [0, {len(names)})"
            )
    _check_classes(list(names), f"Parquet dataset {uri}")
    labels = np.zeros((offset, len(names)), dtype=np.uint8)
    labels[rows, cls] = 1
    mode, size = _first_image(first_blob, first_src) if isinstance(first_blob, (bytes, bytearray)) else (None, None)
    if mode is None:
        raise DatasetError(f"the first image of {uri} is null or not bytes")
    info = DatasetInfo(uri, "parquet", tuple(names), bool(multi), mode, size, offset)
    return Catalog(info, ids, labels, files=files, file_index=np.concatenate(fidx_parts),
                   file_row=np.concatenate(frow_parts))


# ------------------------------------------------------------------ built-in


def _open_builtin(name: str, split_seed: int) -> Catalog:
    if name == "fashion":
        from qadwh_ray.data.fashion import CLASS_NAMES, load_fashion_mnist

        images, classes = load_fashion_mnist()
        labels = np.zeros((classes.size, len(CLASS_NAMES)), dtype=np.uint8)
        labels[np.arange(classes.size), classes] = 1
        info = DatasetInfo("fashion", "fashion", tuple(CLASS_NAMES), False, "L", (28, 28), int(classes.size))
        return Catalog(info, np.arange(classes.size, dtype=np.int64), labels)
    from qadwh_ray.data.fashion import CLASS_NAMES
    from qadwh_ray.data.multilabel import cached_multilabel

    mosaics = cached_multilabel(int(split_seed))
    n = mosaics.images.shape[0]
    info = DatasetInfo("fashion-multilabel", "fashion-multilabel", tuple(CLASS_NAMES), True, "L",
                       tuple(mosaics.images.shape[1:3]), int(n))
    return Catalog(info, np.arange(n, dtype=np.int64), mosaics.label_matrix, builtin_seed=int(split_seed))


def open_catalog(uri: str, *, split_seed: int = 0, num_classes: int | None = None) -> Catalog:
    """Open a dataset by URI (or built-in name); reads metadata and one image, no pixels.

    ``split_seed`` matters only for ``fashion-multilabel``, whose mosaics are drawn per seed;
    ``num_classes`` (a model's) is how many classes integer labels without names range over.
    """
    if not isinstance(uri, str) or not uri:
        raise DatasetError(f"a dataset is a URI or one of {', '.join(BUILTIN_DATASETS)}, got {uri!r}")
    if uri in BUILTIN_DATASETS:
        return _open_builtin(uri, split_seed)
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"no dataset at {uri}: give an image folder (one sub-folder per class), a Parquet file or directory, "
            f"or one of {', '.join(BUILTIN_DATASETS)}"
        )
    names = _class_names_file(uri)
    is_parquet = uri.lower().endswith(PARQUET_EXTENSIONS) or (
        storage.is_dir(uri) and bool(storage.list_files(uri, recursive=True, suffixes=PARQUET_EXTENSIONS))
    )
    return _open_parquet(uri, names, num_classes) if is_parquet else _open_folder(uri, names)
