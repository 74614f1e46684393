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
from qadwh_ray.data.fashion import fashion_augmented_images

# data.transforms imports torch: imported inside the functions that decode, so other tasks never load torch

__all__ = ["SourcePlan", "plan_source", "dataset_of", "FASHION_PARTS"]

FASHION_PARTS = ("database", "query", "train", "all")
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

    @property
    def class_names(self) -> list[str]:
        """The dataset's class names (the built-in sources: Fashion-MNIST's)."""
        if "class_names" in self.params:
            return list(self.params["class_names"])
        from qadwh_ray.data.fashion import CLASS_NAMES

        return list(CLASS_NAMES)

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

            # the built-in images go to the object store once: tasks map them zero-copy, not re-decompress them
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
        if self.kind == "dataset":
            return _dataset_stream(self, block_rows, common)
        raise ValueError(f"unknown source kind {self.kind!r}")


# ---------------------------------------------------------------- planning


def _mode_for(in_channels: int) -> str:
    return "L" if in_channels == 1 else "RGB"


def _size2(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if np.isscalar(size):
        return (int(size), int(size))
    return (int(size[0]), int(size[1]))


def dataset_of(spec: str) -> str:
    """The dataset a source spec reads from: ``fashion:train`` and ``fashion-augmented:N`` are parts or
    variants of ``fashion``; any other spec is the dataset itself (what a retrain trains on)."""
    if spec.startswith(("fashion:", "fashion-augmented:")):
        return "fashion"
    return spec


def plan_source(
    spec: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    image_size: int | tuple[int, int] | None = None,
    split_seed: int = 0,
    part: str | None = None,
    split_uri: str | None = None,
) -> SourcePlan:
    """Plan reading ``part`` ("database", "query", "train" or "all") of the dataset ``spec`` (a URI
    or built-in name, :mod:`qadwh_ray.data.catalog`) for a model with ``num_classes`` classes and
    ``in_channels`` channels; the part comes from ``split_uri`` or the dataset's seeded split.

    Default part: a built-in set's or a given split's "database" (the evaluation protocol's), a
    catalogue URI's "all" (production indexes every image)."""
    mode = _mode_for(in_channels)
    if spec.startswith("fashion:"):  # the older spelling of a built-in part
        spec, part = "fashion", spec.split(":", 1)[1]
    if part is None:
        part = "database" if spec in ("fashion", "fashion-multilabel") or split_uri else "all"
    if part not in FASHION_PARTS:
        raise ValueError(f"unknown dataset part {part!r}: choose one of {', '.join(FASHION_PARTS)}")
    if spec == "fashion" and split_uri is None:  # the 70,000 arrays shared zero-copy by every task
        n = len(_fashion_ids(part, split_seed))
        return SourcePlan("fashion", f"fashion:{part}", n, (28, 28), mode, num_classes,
                          params={"part": part, "split_seed": int(split_seed)})
    if spec.startswith("fashion-augmented:"):
        raw = spec.split(":", 1)[1].replace("_", "")
        try:
            n = int(raw) if raw.isdigit() else int(float(raw))  # 1000000 or 1e6
        except ValueError:
            raise ValueError(f"fashion-augmented needs an item count, e.g. fashion-augmented:1000000, got {spec!r}") from None
        if n < 1:
            raise ValueError(f"fashion-augmented needs a positive item count, got {n}")
        return SourcePlan("fashion-augmented", spec, n, (28, 28), mode, num_classes, params={"items": n})
    from qadwh_ray.data.catalog import open_catalog
    from qadwh_ray.data.split import Split
    from qadwh_ray.training.datasets import dataset_split

    cat = open_catalog(spec, split_seed=split_seed, num_classes=num_classes)
    if part == "all":
        positions = np.arange(len(cat), dtype=np.int64)
    else:
        split = Split.load(split_uri) if split_uri else dataset_split(cat, split_seed)
        positions = np.sort(cat.positions(getattr(split, part), what=f"split part {part!r}"))
    return plan_dataset(cat, positions, num_classes=num_classes, in_channels=in_channels, image_size=image_size, part=part)


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


# ------------------------------------------------------- datasets (catalog)

_CATALOGS: dict = {}


def _catalog_of(ref):
    """The catalog behind an ObjectRef, fetched once per worker process (a catalog itself passes through)."""
    if not hasattr(ref, "hex"):
        return ref
    key = ref.hex()
    if key not in _CATALOGS:
        import ray

        _CATALOGS.clear()
        _CATALOGS[key] = ray.get(ref)
    return _CATALOGS[key]


def _catalog_batch(batch: dict, catalog, image_size: tuple[int, int], mode: str) -> dict:
    """Read and decode one block of catalog positions; bad items are kept with their reason."""
    from qadwh_ray.data.readers import read_images

    cat = _catalog_of(catalog)
    rows = np.asarray(batch["_row"], dtype=np.int64)
    positions = np.asarray(batch["position"], dtype=np.int64)
    images, bad = read_images(cat, positions, size=image_size, skip_bad=True)
    if mode == "RGB" and images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    ids = cat.ids[positions]
    return {
        "_row": rows,
        "id": ids,
        "image": np.ascontiguousarray(images),
        "labels": cat.labels[positions],
        "source": np.asarray(cat.sources(positions), dtype=object),
        "bad": np.asarray([f"id {int(i)}: {b}" if b else "" for i, b in zip(ids, bad)], dtype=object),
    }


def plan_dataset(
    catalog,
    positions: np.ndarray,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int | tuple[int, int] | None,
    part: str,
) -> SourcePlan:
    """Plan reading the items at ``positions`` of a dataset catalog (e.g. its split's database)."""
    info = catalog.info
    if info.num_classes != num_classes:
        raise ValueError(
            f"the dataset {info.uri} has {info.num_classes} classes but the model was trained on {num_classes}: "
            f"index a dataset with the model's classes"
        )
    mode = _mode_for(in_channels)
    if info.mode == "RGB" and mode == "L":
        raise ValueError(f"the dataset {info.uri} holds RGB images but the model takes grey images")
    size = _size2(image_size) or tuple(info.image_size)
    return SourcePlan(
        "dataset", f"{info.uri}:{part}", int(len(positions)), size, mode, num_classes,
        params={"part": part, "format": info.format, "class_names": list(info.class_names),
                "catalog": catalog, "positions": np.asarray(positions, dtype=np.int64)},
    )


def _dataset_stream(plan: SourcePlan, block_rows: int, common: dict):
    import ray.data

    catalog_ref = ray.put(plan.params["catalog"])
    positions = plan.params["positions"]
    n = len(positions)
    nblocks = max(1, -(-n // block_rows))
    rows = ray.data.from_numpy(np.arange(n, dtype=np.int64)).repartition(nblocks)
    return rows.map_batches(
        _dataset_block,
        batch_size=None,
        batch_format="numpy",
        fn_kwargs=dict(positions=ray.put(positions), catalog=catalog_ref, image_size=tuple(plan.image_size), mode=plan.mode),
        **common,
    )


def _dataset_block(batch: dict, positions, catalog, image_size, mode) -> dict:
    rows = np.asarray(batch["data"], dtype=np.int64)
    pos = _base_arrays(positions)[rows]
    return _catalog_batch({"_row": rows, "position": pos}, catalog, image_size, mode)
