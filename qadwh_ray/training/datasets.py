"""The retrieval experiment's data: a dataset's train / validation / query / database parts.

Any dataset URI (:mod:`qadwh_ray.data.catalog`) with a seeded split: the
paper's protocol on the built-in sets (docs/architecture.md, 'Data'), its per-class
generalisation (:func:`~qadwh_ray.data.split.class_split`) on any other
collection, or a saved ``split.json``. Two kinds of validation, neither touching
the test queries: ``val_fraction`` holds training images out for the per-epoch
validation MAP of a run, and ``evaluate_on="validation"`` swaps the queries and
the database for the validation queries and database of
:func:`~qadwh_ray.data.split.validation_protocol` (drawn from the database part),
on which settings are chosen; the test queries are scored once per final setting
(``evaluate_on="test"``).

Pixels are read lazily (:mod:`qadwh_ray.data.readers`) at the model's input
size the first time a part's images are asked for, so Ray Train — which reads
training images in Ray Data tasks — never loads them in the driver.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from qadwh_ray.data.catalog import Catalog, DatasetInfo, open_catalog
from qadwh_ray.data.readers import read_images
from qadwh_ray.data.split import Split, class_split, paper_split, validation_protocol, validation_split

__all__ = ["RetrievalData", "load_retrieval_data", "load_training_data", "dataset_split", "default_image_size"]

_STATS_SAMPLE = 1000  # training images the normalisation statistics are taken from
EVALUATION_SETS = ("validation", "test")


def dataset_split(cat: Catalog, seed: int = 0) -> Split:
    """The seeded split of a dataset: its parts hold item ids."""
    if cat.info.format == "fashion":
        return paper_split(cat.labels.argmax(axis=1), seed=seed)  # ids are row numbers
    if cat.info.format == "fashion-multilabel":
        from qadwh_ray.data.multilabel import cached_multilabel

        return cached_multilabel(cat.builtin_seed).split
    return class_split(cat.labels, cat.ids, seed=seed)


def default_image_size(info: DatasetInfo) -> int:
    """The model's input side when the config gives none: the data's own (its first image's larger side)."""
    return int(max(info.image_size))


@dataclass(eq=False)
class RetrievalData:
    """A dataset with its split; ``*_pos`` are positions in ``catalog``, pixels read on first use."""

    catalog: Catalog
    split: Split
    image_size: int
    train_pos: np.ndarray
    val_pos: np.ndarray
    query_pos: np.ndarray
    db_pos: np.ndarray
    evaluated_on: str = "test"  # which queries and database query_pos / db_pos are: "test" or "validation"

    @property
    def name(self) -> str:
        return self.catalog.info.uri

    @property
    def info(self) -> DatasetInfo:
        return self.catalog.info

    @property
    def class_names(self) -> list[str]:
        return list(self.catalog.info.class_names)

    @functools.cached_property
    def _pixels(self) -> dict:
        return {}

    def images(self, part: str) -> np.ndarray:
        """uint8 pixels of a part ("train", "val", "query", "db") at the model's input size, read once."""
        if part not in self._pixels:
            pos = getattr(self, f"{part}_pos")
            self._pixels[part], _ = read_images(self.catalog, pos, size=(self.image_size, self.image_size))
        return self._pixels[part]

    train_images = property(lambda self: self.images("train"))
    val_images = property(lambda self: self.images("val"))
    query_images = property(lambda self: self.images("query"))
    db_images = property(lambda self: self.images("db"))
    train_labels = property(lambda self: self.catalog.labels[self.train_pos])
    val_labels = property(lambda self: self.catalog.labels[self.val_pos])
    query_labels = property(lambda self: self.catalog.labels[self.query_pos])
    db_labels = property(lambda self: self.catalog.labels[self.db_pos])
    query_ids = property(lambda self: self.catalog.ids[self.query_pos])
    db_ids = property(lambda self: self.catalog.ids[self.db_pos])  # the ids stored in the index

    def normalisation(self) -> tuple[list[float], list[float]] | None:
        """Per-channel mean and std of (up to 1,000 of) the training images; None for the built-in sets,
        whose fixed Fashion-MNIST statistics keep earlier results reproducible."""
        if self.info.format in ("fashion", "fashion-multilabel"):
            return None
        rng = np.random.default_rng(0)
        pos = self.train_pos if len(self.train_pos) <= _STATS_SAMPLE else np.sort(
            rng.choice(self.train_pos, _STATS_SAMPLE, replace=False))
        pixels, _ = read_images(self.catalog, pos, size=(self.image_size, self.image_size))
        x = pixels.reshape(len(pos), -1, self.info.in_channels).astype(np.float64) / 255.0
        mean = x.mean(axis=(0, 1))
        std = np.maximum(x.std(axis=(0, 1)), 1e-3)
        return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]

    def summary(self) -> str:
        return (
            f"{self.info.summary()}\n  split: train {len(self.train_pos)}, val {len(self.val_pos)}, "
            f"{self.evaluated_on} queries {len(self.query_pos)}, {self.evaluated_on} database {len(self.db_pos)} "
            f"(split seed {self.split.seed}, "
            f"{self.split.protocol}); model input {self.image_size}x{self.image_size}"
        )


def load_retrieval_data(
    dataset: str = "fashion",
    split_seed: int = 0,
    val_fraction: float = 0.1,
    *,
    image_size: int | None = None,
    split_uri: str | None = None,
    catalog: Catalog | None = None,
    evaluate_on: str = "test",
) -> RetrievalData:
    """A dataset URI (or built-in name) with its split: ``split_uri`` (a saved ``split.json``) or the
    seeded default; ``image_size``: the model's input side (default: the data's own); ``evaluate_on``:
    whose queries and database to rank, the test split's or the validation protocol's."""
    if evaluate_on not in EVALUATION_SETS:
        raise ValueError(f"evaluate_on must be one of {', '.join(EVALUATION_SETS)}, got {evaluate_on!r}")
    cat = catalog or open_catalog(dataset, split_seed=split_seed)
    split = Split.load(split_uri) if split_uri else dataset_split(cat, split_seed)
    query, database = split.query, split.database
    if evaluate_on == "validation":
        query, database = validation_protocol(split, cat.labels, cat.ids)
    train = cat.positions(split.train, what="split part 'train'")
    strata = None if cat.info.multi_label else cat.labels.argmax(axis=1)
    if val_fraction > 0:
        train, val = validation_split(train, val_fraction, seed=split_seed, labels=strata)
    else:
        val = train[:0]
    return RetrievalData(
        catalog=cat,
        split=split,
        image_size=int(image_size or default_image_size(cat.info)),
        train_pos=train,
        val_pos=val,
        query_pos=cat.positions(query, what=f"{evaluate_on} queries"),
        db_pos=cat.positions(database, what=f"{evaluate_on} database"),
        evaluated_on=evaluate_on,
    )


def limit_training(data: RetrievalData, limit: int | None, seed: int = 0) -> RetrievalData:
    """Keep a seeded subset of ``limit`` training images (validation, queries and database unchanged)."""
    if limit is None or limit >= len(data.train_pos):
        return data
    keep = np.sort(np.random.default_rng([seed, 7]).permutation(len(data.train_pos))[:limit])
    return dataclasses.replace(data, train_pos=data.train_pos[keep])


def load_training_data(cfg, catalog: Catalog | None = None) -> RetrievalData:
    """The data a :class:`~qadwh_ray.training.config.TrainConfig` trains on (``train_limit`` applied)."""
    data = load_retrieval_data(cfg.dataset, cfg.split_seed, cfg.val_fraction, image_size=cfg.image_size,
                               split_uri=cfg.split, catalog=catalog)
    return limit_training(data, cfg.train_limit, cfg.split_seed)


def model_config_for(cfg, data: RetrievalData):
    """The network a config trains on this data (classes, channels, input size, normalisation from it)."""
    return cfg.model_config(data.info, data.image_size, data.normalisation())
