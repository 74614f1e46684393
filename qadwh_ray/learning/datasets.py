"""The retrieval experiment's data: train / validation / query / database parts.

Both built-in datasets follow the paper protocol of DESIGN.md §4 with a saved,
seeded split. Two kinds of validation, neither touching the test queries:
``val_fraction`` holds training images out for the per-epoch validation MAP of a
run, and ``evaluate_on="validation"`` swaps the queries and the database for the
validation queries and database of :func:`~qadwh_ray.data.split.validation_protocol`
(drawn from the database part), on which settings are chosen; the test queries
are scored once per final setting (``evaluate_on="test"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from qadwh_ray.core.labels import as_label_matrix
from qadwh_ray.data.split import Split, paper_split, validation_protocol, validation_split

EVALUATION_SETS = ("validation", "test")


@dataclass
class RetrievalData:
    name: str
    split: Split
    train_images: np.ndarray
    train_labels: np.ndarray  # (n, c) uint8 0/1
    val_images: np.ndarray
    val_labels: np.ndarray
    query_images: np.ndarray
    query_labels: np.ndarray
    query_ids: np.ndarray
    db_images: np.ndarray
    db_labels: np.ndarray
    db_ids: np.ndarray  # ids = row numbers in the source dataset, so results are traceable
    evaluated_on: str = "test"  # which queries and database these are: "test" or "validation"

    def summary(self) -> str:
        return (
            f"{self.name}: train {len(self.train_images)}, val {len(self.val_images)}, "
            f"{self.evaluated_on} queries {len(self.query_images)}, {self.evaluated_on} database {len(self.db_images)} "
            f"(split seed {self.split.seed})"
        )


def load_retrieval_data(
    dataset: str = "fashion", split_seed: int = 0, val_fraction: float = 0.1, evaluate_on: str = "test"
) -> RetrievalData:
    if dataset == "fashion":
        from qadwh_ray.data.fashion import load_fashion_mnist

        images, classes = load_fashion_mnist()
        labels = as_label_matrix(classes, 10)
        split = paper_split(classes, seed=split_seed)
        strata = classes
    elif dataset == "fashion-multilabel":
        from qadwh_ray.data.multilabel import fashion_multilabel

        mosaics = fashion_multilabel(seed=split_seed)  # 1,000 queries, 5,000 train, 24,000 database
        images, labels, split = mosaics.images, mosaics.label_matrix, mosaics.split
        strata = None
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose fashion or fashion-multilabel")
    if evaluate_on == "test":
        query, database = split.query, split.database
    elif evaluate_on == "validation":
        query, database = validation_protocol(split, labels)
    else:
        raise ValueError(f"evaluate_on must be one of {', '.join(EVALUATION_SETS)}, got {evaluate_on!r}")
    if val_fraction > 0:
        train_idx, val_idx = validation_split(split.train, val_fraction, seed=split_seed, labels=strata)
    else:
        train_idx, val_idx = split.train, split.train[:0]
    return RetrievalData(
        name=dataset,
        split=split,
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        val_images=images[val_idx],
        val_labels=labels[val_idx],
        query_images=images[query],
        query_labels=labels[query],
        query_ids=np.asarray(query, dtype=np.int64),
        db_images=images[database],
        db_labels=labels[database],
        db_ids=np.asarray(database, dtype=np.int64),
        evaluated_on=evaluate_on,
    )


def limit_training(data: RetrievalData, limit: int | None, seed: int = 0) -> RetrievalData:
    """Keep a seeded subset of ``limit`` training images (validation, queries and database unchanged)."""
    if limit is None or limit >= len(data.train_images):
        return data
    keep = np.sort(np.random.default_rng([seed, 7]).permutation(len(data.train_images))[:limit])
    return dataclasses.replace(data, train_images=data.train_images[keep], train_labels=data.train_labels[keep])


def load_training_data(cfg) -> RetrievalData:
    """The data a :class:`~qadwh_ray.learning.config.TrainConfig` trains on (``train_limit`` applied)."""
    data = load_retrieval_data(cfg.dataset, cfg.split_seed, cfg.val_fraction)
    return limit_training(data, cfg.train_limit, cfg.split_seed)
