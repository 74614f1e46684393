"""Ray Data readers for the image database, streamed and decoded in map_batches.

A source is planned in the driver from metadata only (Parquet footers, a
file listing, the size of the built-in set) and becomes a Ray Dataset whose
read/decode tasks emit batches with one fixed schema:

``_row``    int64: the row's ordinal in the source (0 .. n_rows-1); the build
            proves with it that every row was processed exactly once
``id``      int64: the item id stored in the index
``image``   uint8 ``(n, H, W)`` or ``(n, H, W, 3)`` decoded pixels (zeros for a bad row)
``labels``  uint8 ``(n, num_classes)`` 0/1 (all zeros = unlabeled)
``source``  str: where the image came from ("" when the id says it all)
``bad``     str: why the row is unusable ("" for a good row)

Bad rows (undecodable bytes, wrong image size, label out of range, null
values) are *emitted* with their reason instead of raising inside a Ray task,
so the driver gets a structured record naming the row and file: it stops the
build with that message, or with ``skip_bad`` lists it in the manifest.
Problems with a whole file (missing columns, wrong column types, unreadable
footer) are found while planning, before any work starts.

Built-in sources: ``fashion`` (the database part of the paper split of
Fashion-MNIST; ``fashion:query`` / ``fashion:train`` / ``fashion:all``; ids
are row numbers in the 70,000-image set) and ``fashion-augmented:N`` (N items,
the 70,000 real images then deterministic augmentations of them, for scale
benchmarks). Any other source is a URI (local or ``s3://``) of a Parquet
file/directory of encoded images + labels, or an image folder (one
sub-folder per class).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from qadwh_ray import storage

# qadwh_ray.data.transforms (decode_image, augment) imports torch: it is imported
# inside the functions that need it, so read/write task workers of sources that
# need no decoding never load torch.

__all__ = ["SourcePlan", "plan_source", "FASHION_PARTS", "AUGMENT_CHUNK", "fashion_augmented_images"]

FASHION_PARTS = ("database", "query", "train", "all")
AUGMENT_CHUNK = 1000  # augmentation is drawn per aligned chunk of item ids: independent of block boundaries
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_META_NUM_CLASSES = b"qadwh.num_classes"


@dataclass
class SourcePlan:
    """What will be read: size, expected image shape, and how to read it."""

    kind: str  # "fashion" | "fashion-augmented" | "parquet" | "folder"
    uri: str
    n_rows: int
    image_size: tuple[int, int]
    mode: str  # "L" | "RGB"
    num_classes: int
    labeled: bool = True
    params: dict = field(default_factory=dict)
    work: list = field(default_factory=list)  # work items for parquet/folder sources

    def describe(self) -> dict:
        d = {"kind": self.kind, "uri": self.uri, "rows": self.n_rows, "image_size": list(self.image_size), "mode": self.mode}
        d.update({k: v for k, v in self.params.items() if isinstance(v, (str, int, float, bool, type(None)))})
        return d

    def dataset(self, block_rows: int = 2048, decode_cpus: float = 0.25, runtime_env: dict | None = None, tasks: int | None = None):
        """The Ray Dataset of decoded rows (see the module docstring)."""
        import ray.data

        # at most ``tasks`` concurrent read/decode tasks (no more than there are inputs);
        # Ray core retries a task whose worker died
        inputs = len(self.work) if self.work else max(1, -(-self.n_rows // block_rows))
        size = min(tasks, inputs) if tasks else None
        common = dict(num_cpus=decode_cpus, runtime_env=runtime_env, compute=ray.data.TaskPoolStrategy(size=size))
        if self.kind in ("fashion", "fashion-augmented"):
            from qadwh_ray.data.fashion import load_fashion_mnist

            # the built-in 70,000 base images (55 MB) go to the object store once; every
            # task maps them zero-copy instead of decompressing the IDX files again
            images, labels = load_fashion_mnist()
            ids = _fashion_ids(self.params["part"], self.params["split_seed"]) if self.kind == "fashion" else None
            base = ray.put({"images": images, "labels": labels, "ids": ids})
            nblocks = max(1, -(-self.n_rows // block_rows))
            ds = ray.data.range(self.n_rows, override_num_blocks=nblocks)
            return ds.map_batches(
                _fashion_batch,
                batch_size=None,
                batch_format="numpy",
                fn_kwargs=dict(kind=self.kind, num_classes=self.num_classes, mode=self.mode, base=base),
                **common,
            )
        if not self.work:
            raise ValueError(f"source {self.uri} has no rows to read")
        ds = ray.data.from_items(self.work, override_num_blocks=len(self.work))
        fn = _parquet_work if self.kind == "parquet" else _folder_work
        return ds.map_batches(
            fn,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs=dict(plan=_PlanLite.of(self), block_rows=block_rows),
            **common,
        )


@dataclass(frozen=True)
class _PlanLite:
    """The part of a plan a read task needs (no work list)."""

    image_size: tuple[int, int]
    mode: str
    num_classes: int
    labeled: bool
    image_column: str
    label_column: str | None
    id_column: str | None

    @classmethod
    def of(cls, p: SourcePlan) -> "_PlanLite":
        return cls(
            image_size=tuple(p.image_size),
            mode=p.mode,
            num_classes=p.num_classes,
            labeled=p.labeled,
            image_column=p.params.get("image_column", "image"),
            label_column=p.params.get("label_column"),
            id_column=p.params.get("id_column"),
        )


# ---------------------------------------------------------------- planning


def _mode_for(in_channels: int) -> str:
    return "L" if in_channels == 1 else "RGB"


def _size2(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if np.isscalar(size):
        return (int(size), int(size))
    return (int(size[0]), int(size[1]))


def plan_source(
    spec: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    image_size: int | tuple[int, int] | None = None,
    split_seed: int = 0,
    source_format: str = "auto",
    image_column: str = "image",
    label_column: str | None = "label",
    id_column: str | None = "id",
    work_rows: int = 4096,
) -> SourcePlan:
    """Plan reading ``spec`` (see the module docstring) for a model with
    ``num_classes`` classes and ``in_channels`` channels."""
    mode = _mode_for(in_channels)
    if spec == "fashion" or spec.startswith("fashion:"):
        part = spec.split(":", 1)[1] if ":" in spec else "database"
        if part not in FASHION_PARTS:
            raise ValueError(f"unknown Fashion-MNIST part {part!r} in {spec!r}: choose one of {', '.join(FASHION_PARTS)}")
        n = len(_fashion_ids(part, split_seed))
        return SourcePlan("fashion", f"fashion:{part}", n, (28, 28), mode, num_classes, params={"part": part, "split_seed": int(split_seed)})
    if spec.startswith("fashion-augmented:"):
        raw = spec.split(":", 1)[1].replace("_", "")
        try:
            n = int(raw) if raw.isdigit() else int(float(raw))  # 1000000 or 1e6
        except ValueError:
            raise ValueError(f"fashion-augmented needs an item count, e.g. fashion-augmented:1000000, got {spec!r}") from None
        if n < 1:
            raise ValueError(f"fashion-augmented needs a positive item count, got {n}")
        return SourcePlan("fashion-augmented", spec, n, (28, 28), mode, num_classes, params={"items": n})
    if source_format not in ("auto", "parquet", "folder"):
        raise ValueError(f"source format must be auto, parquet or folder, got {source_format!r}")
    if not storage.exists(spec):
        raise FileNotFoundError(f"no image source at {spec}")
    if source_format == "auto":
        if spec.lower().endswith((".parquet", ".pq")):
            source_format = "parquet"
        elif storage.is_dir(spec) and storage.list_files(spec, recursive=True, suffixes=(".parquet", ".pq")):
            source_format = "parquet"
        else:
            source_format = "folder"
    if source_format == "parquet":
        return _plan_parquet(spec, num_classes, mode, _size2(image_size), image_column, label_column, id_column, work_rows)
    return _plan_folder(spec, num_classes, mode, _size2(image_size), work_rows)


# ------------------------------------------------------------- Fashion-MNIST


@functools.lru_cache(maxsize=8)
def _fashion_ids(part: str, seed: int) -> np.ndarray:
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.split import paper_split

    _, labels = load_fashion_mnist()
    if part == "all":
        return np.arange(labels.shape[0], dtype=np.int64)
    split = paper_split(labels, seed=seed)
    return getattr(split, part)


def fashion_augmented_images(
    ids: np.ndarray, images: np.ndarray | None = None, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images and class indices of ``fashion-augmented`` items ``ids``.

    Item ``i`` shows real image ``i % 70000``; items past the first 70,000 are
    augmented (:func:`qadwh_ray.data.transforms.augment`) with a seed drawn per
    aligned chunk of :data:`AUGMENT_CHUNK` ids, so an item's pixels never
    depend on which other items are read with it. ``images``/``labels``: the
    70,000 base images (default: :func:`~qadwh_ray.data.fashion.load_fashion_mnist`).
    """
    from qadwh_ray.data.transforms import augment

    if images is None or labels is None:
        from qadwh_ray.data.fashion import load_fashion_mnist

        images, labels = load_fashion_mnist()
    base_n = images.shape[0]
    ids = np.asarray(ids, dtype=np.int64)
    out = images[ids % base_n]  # fancy indexing copies
    aug = ids >= base_n
    if aug.any():
        chunks = np.unique(ids[aug] // AUGMENT_CHUNK)
        for c in chunks.tolist():
            lo = c * AUGMENT_CHUNK
            chunk_ids = np.arange(lo, lo + AUGMENT_CHUNK, dtype=np.int64)
            variants = augment(images[chunk_ids % base_n], seed=int(c))
            sel = np.flatnonzero(aug & (ids // AUGMENT_CHUNK == c))
            out[sel] = variants[ids[sel] - lo]
    return out, labels[ids % base_n]


_BASE: dict = {}


def _base_arrays(ref) -> dict:
    """The base arrays behind an ObjectRef, fetched once per worker process."""
    key = ref.hex()
    if key not in _BASE:
        import ray

        _BASE.clear()
        _BASE[key] = ray.get(ref)
    return _BASE[key]


def _fashion_batch(batch: dict, kind: str, num_classes: int, mode: str, base) -> dict:
    data = _base_arrays(base)
    rows = np.asarray(batch["id"], dtype=np.int64)  # ray.data.range's column: the ordinal
    if kind == "fashion":
        ids = data["ids"][rows]
        imgs, cls = data["images"][ids], data["labels"][ids]
    else:
        ids = rows.copy()
        imgs, cls = fashion_augmented_images(ids, data["images"], data["labels"])
    n = rows.shape[0]
    labels = np.zeros((n, num_classes), dtype=np.uint8)
    bad = np.full(n, "", dtype=object)
    ok = (cls >= 0) & (cls < num_classes)
    labels[np.flatnonzero(ok), cls[ok]] = 1
    for i in np.flatnonzero(~ok).tolist():
        bad[i] = f"id {int(ids[i])}: label {int(cls[i])} outside [0, {num_classes}) for this model"
    if mode == "RGB":
        imgs = np.repeat(imgs[..., None], 3, axis=-1)
    return {
        "_row": rows,
        "id": ids,
        "image": np.ascontiguousarray(imgs),
        "labels": labels,
        "source": np.full(n, "", dtype=object),
        "bad": bad,
    }


# ------------------------------------------------------------------ decoding


def _rows_batch(
    rows: np.ndarray,
    ids: np.ndarray,
    blobs: list,
    label_lists: list,
    sources: list,
    pre_bad: list,
    plan: _PlanLite,
) -> dict:
    """Decode and validate one batch; bad rows are kept with their reason."""
    from qadwh_ray.data.transforms import ImageDecodeError, decode_image

    n = len(blobs)
    h, w = plan.image_size
    shape = (n, h, w) if plan.mode == "L" else (n, h, w, 3)
    images = np.zeros(shape, dtype=np.uint8)
    labels = np.zeros((n, plan.num_classes), dtype=np.uint8)
    bad = np.full(n, "", dtype=object)
    for i in range(n):
        where = sources[i] or f"row {int(rows[i])}"
        who = where if pre_bad[i] == "id is null" else f"id {int(ids[i])} ({where})"
        if pre_bad[i]:
            bad[i] = f"{who}: {pre_bad[i]}"
            continue
        if ids[i] < 0:
            bad[i] = f"{who}: ids must be non-negative"
            continue
        labs = label_lists[i]
        if plan.labeled:
            if labs is None:
                bad[i] = f"{who}: label is null"
                continue
            if len(labs) == 0:
                bad[i] = f"{who}: empty label list"
                continue
            if any(v is None for v in labs):
                bad[i] = f"{who}: null class in the label list"
                continue
            out = [int(v) for v in labs if not 0 <= int(v) < plan.num_classes]
            if out:
                bad[i] = f"{who}: label {out[0]} outside [0, {plan.num_classes})"
                continue
        blob = blobs[i]
        if blob is None:
            bad[i] = f"{who}: image is null"
            continue
        try:
            img = decode_image(blob, expected_size=(h, w), mode=plan.mode, source=None)
        except ImageDecodeError as exc:
            bad[i] = f"{who}: {exc}"
            continue
        images[i] = img
        if plan.labeled:
            labels[i, [int(v) for v in labs]] = 1
    return {
        "_row": np.asarray(rows, dtype=np.int64),
        "id": np.asarray(ids, dtype=np.int64),
        "image": images,
        "labels": labels,
        "source": np.asarray(sources, dtype=object),
        "bad": bad,
    }


# ------------------------------------------------------------------ Parquet


def _read_footer(uri: str) -> pq.FileMetaData:
    try:
        with storage.open_input(uri) as f:
            return pq.ParquetFile(f).metadata
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{uri} is not a readable Parquet file: {exc}") from exc


def _check_parquet_schema(schema: pa.Schema, uri: str, image_column: str, label_column: str | None, id_column: str | None) -> None:
    for role, name in (("image", image_column), ("label", label_column), ("id", id_column)):
        if name is not None and name not in schema.names:
            raise ValueError(f"{role} column {name!r} not found in {uri} (columns: {', '.join(schema.names)})")
    t = schema.field(image_column).type
    if pa.types.is_struct(t):
        if t.get_field_index("bytes") < 0:
            raise TypeError(f"image column {image_column!r} in {uri} is a struct without a 'bytes' field: {t}")
        t = t.field("bytes").type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)):
        raise TypeError(f"image column {image_column!r} in {uri} must hold encoded image bytes, got type {t}")
    if label_column is not None:
        lt = schema.field(label_column).type
        is_list = pa.types.is_list(lt) or pa.types.is_large_list(lt) or pa.types.is_fixed_size_list(lt)
        if not (pa.types.is_integer(lt) or (is_list and pa.types.is_integer(lt.value_type))):
            raise TypeError(f"label column {label_column!r} in {uri} must be an integer class or a list of integer classes, got {lt}")
    if id_column is not None and not pa.types.is_integer(schema.field(id_column).type):
        raise TypeError(f"id column {id_column!r} in {uri} must hold integers, got {schema.field(id_column).type}")


def _plan_parquet(uri, num_classes, mode, image_size, image_column, label_column, id_column, work_rows) -> SourcePlan:
    from qadwh_ray.data.sources import parquet_files  # imports torch: only where Parquet is planned

    files = parquet_files(uri)
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        footers = list(pool.map(_read_footer, files))
    work = []
    row0 = 0
    for f, meta in zip(files, footers):
        schema = meta.schema.to_arrow_schema()
        _check_parquet_schema(schema, f, image_column, label_column, id_column)
        declared = (schema.metadata or {}).get(_META_NUM_CLASSES)
        if declared is not None and label_column is not None and int(declared) > num_classes:
            raise ValueError(f"{f} declares {int(declared)} classes but the model has only {num_classes}")
        file_row = 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            if n:
                work.append({"file": f, "row_group": rg, "row0": row0, "file_row0": file_row, "rows": n})
            row0 += n
            file_row += n
    if image_size is None:
        image_size = _peek_parquet_size(work, image_column, mode) if work else (0, 0)
    return SourcePlan(
        "parquet",
        uri,
        row0,
        image_size,
        mode,
        num_classes,
        labeled=label_column is not None,
        params={"files": len(files), "image_column": image_column, "label_column": label_column, "id_column": id_column},
        work=work,
    )


def _blob_column(column: pa.Array) -> list:
    if pa.types.is_struct(column.type):
        column = pc.struct_field(column, "bytes")
    return column.to_pylist()


def _peek_parquet_size(work: list, image_column: str, mode: str) -> tuple[int, int]:
    """The first decodable image's size: every image must have it (or pass --image-size)."""
    from qadwh_ray.data.transforms import ImageDecodeError, decode_image

    first = work[0]
    with storage.open_input(first["file"]) as f:
        pf = pq.ParquetFile(f)
        for rb in pf.iter_batches(batch_size=64, row_groups=[first["row_group"]], columns=[image_column]):
            for blob in _blob_column(rb.column(0)):
                if blob is None:
                    continue
                try:
                    return tuple(decode_image(blob, mode=mode).shape[:2])
                except ImageDecodeError:
                    continue
            break
    raise ValueError(f"cannot determine the image size from the first rows of {first['file']}: pass --image-size")


def _label_lists(column: pa.Array | None, n: int) -> list:
    if column is None:
        return [None] * n
    if pa.types.is_integer(column.type):
        return [None if v is None else [v] for v in column.to_pylist()]
    return column.to_pylist()


def _parquet_work(batch: pa.Table, plan: _PlanLite, block_rows: int) -> Iterator[dict]:
    item = batch.to_pylist()[0]
    uri = item["file"]
    cols = [c for c in (plan.image_column, plan.label_column, plan.id_column) if c is not None]
    offset = 0
    with storage.open_input(uri) as f:
        pf = pq.ParquetFile(f)
        for rb in pf.iter_batches(batch_size=block_rows, row_groups=[item["row_group"]], columns=cols):
            n = rb.num_rows
            rows = np.arange(item["row0"] + offset, item["row0"] + offset + n, dtype=np.int64)
            file_rows = range(item["file_row0"] + offset, item["file_row0"] + offset + n)
            offset += n
            pre_bad: list = [None] * n
            if plan.id_column is None:
                ids = rows.copy()
            else:
                id_col = rb.column(plan.id_column)
                ids = np.asarray(pc.fill_null(id_col, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
                if id_col.null_count:
                    for i in np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False)).tolist():
                        pre_bad[i] = "id is null"
            sources = [f"{uri}#row={r}" for r in file_rows]
            labels = _label_lists(rb.column(plan.label_column) if plan.label_column else None, n)
            yield _rows_batch(rows, ids, _blob_column(rb.column(plan.image_column)), labels, sources, pre_bad, plan)
    if offset != item["rows"]:
        raise IOError(f"{uri} row group {item['row_group']}: read {offset} rows, its footer says {item['rows']}")


# -------------------------------------------------------------- image folder


def _plan_folder(uri: str, num_classes: int, mode: str, image_size, work_rows: int) -> SourcePlan:
    from qadwh_ray.data.transforms import decode_image

    fs, path = storage.filesystem_and_path(uri)
    if not storage.is_dir(uri):
        raise FileNotFoundError(f"no image folder at {uri}")
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    classes = sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith((".", "_")))
    if not classes:
        raise FileNotFoundError(f"no class sub-folders in {uri} (expected {uri}/<class name>/<images>)")
    if len(classes) > num_classes:
        raise ValueError(f"image folder {uri} has {len(classes)} class folders but the model has {num_classes} classes")
    files, labels = [], []
    for ci, name in enumerate(classes):
        found = storage.list_files(storage.join(uri, name), recursive=True, suffixes=IMAGE_EXTENSIONS)
        files.extend(found)
        labels.extend([ci] * len(found))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {uri}")
    if image_size is None:
        image_size = tuple(decode_image(storage.read_bytes(files[0]), mode=mode, source=files[0]).shape[:2])
    chunk = max(1, min(work_rows, 256))
    work = [
        {"files": files[s : s + chunk], "labels": labels[s : s + chunk], "row0": s} for s in range(0, len(files), chunk)
    ]
    return SourcePlan("folder", uri, len(files), image_size, mode, num_classes, params={"classes": len(classes), "class_names": ",".join(classes)}, work=work)


def _folder_work(batch: pa.Table, plan: _PlanLite, block_rows: int) -> Iterator[dict]:
    item = batch.to_pylist()[0]
    files, labels, row0 = item["files"], item["labels"], item["row0"]

    def read(f: str) -> Any:
        try:
            return storage.read_bytes(f)
        except FileNotFoundError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        blobs = list(pool.map(read, files))
    n = len(files)
    pre_bad = [f"cannot read: {b}" if isinstance(b, Exception) else None for b in blobs]
    blobs = [None if isinstance(b, Exception) else b for b in blobs]
    rows = np.arange(row0, row0 + n, dtype=np.int64)
    yield _rows_batch(rows, rows.copy(), blobs, [[c] for c in labels], list(files), pre_bad, plan)
