"""A real multi-label set derived from Fashion-MNIST: 2x2 mosaics.

Each mosaic shows four real images; its label set is the union of their
classes, which exercises every multi-label path (relevance =
shares at least one label, mean class-weight rows, multi-label softmax loss)
with real pixels.

How a mosaic is drawn: pick ``k`` distinct classes (``k`` uniform in
``[min_classes, max_classes]``, default 1-3, so label sets vary: on average 2
labels per mosaic, each class present in ~20% of mosaics); the four tiles take
those classes with every chosen class used at least once, in random positions;
each tile is a random source image of its class. The label row is then
exactly the chosen classes.

Leakage: :func:`fashion_multilabel` draws query, training and database
mosaics from three *disjoint* pools of source images (stratified per class),
so no query shares a source tile with any database or training mosaic.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np

from qadwh_ray.data.split import Split

__all__ = ["make_mosaics", "MosaicSet", "fashion_multilabel", "source_pools"]


def make_mosaics(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    seed: int = 0,
    *,
    pool: np.ndarray | None = None,
    min_classes: int = 1,
    max_classes: int = 3,
    num_classes: int | None = None,
    return_sources: bool = False,
):
    """Build ``n`` 2x2 mosaics from ``images`` ``(N, H, W[, C])`` with class
    indices ``labels`` ``(N,)``.

    Returns ``(mosaics (n, 2H, 2W[, C]) uint8, label_matrix (n, num_classes) uint8)``
    and, with ``return_sources=True``, also the ``(n, 4)`` int64 source index
    of each tile (row-major: top-left, top-right, bottom-left, bottom-right).
    ``pool`` restricts the source images to those indices. Deterministic for a
    seed, fully vectorised.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be (N,) class indices matching {images.shape[0]} images, got {labels.dtype} {labels.shape}")
    if n < 0:
        raise ValueError(f"number of mosaics must be >= 0, got {n}")
    if not 1 <= min_classes <= max_classes <= 4:
        raise ValueError(f"need 1 <= min_classes <= max_classes <= 4, got {min_classes}, {max_classes}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")

    src = np.arange(images.shape[0], dtype=np.int64) if pool is None else np.asarray(pool, dtype=np.int64)
    if src.ndim != 1 or (src.size and (src.min() < 0 or src.max() >= images.shape[0])):
        raise ValueError(f"pool must be 1-D indices into {images.shape[0]} images")
    src_labels = labels[src].astype(np.int64)
    order = np.argsort(src_labels, kind="stable")
    src_sorted = src[order]
    counts = np.bincount(src_labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts > 0)
    if present.size < max_classes:
        raise ValueError(f"the source pool covers {present.size} classes; mosaics with up to {max_classes} distinct classes need more")

    rng = np.random.default_rng(seed)
    k = rng.integers(min_classes, max_classes + 1, size=n)  # distinct classes per mosaic
    # k distinct classes per row: first columns of a random permutation of the present classes
    chosen = present[np.argsort(rng.random((n, present.size)), axis=1)[:, :max_classes]]  # (n, max_classes)
    # tile t < k gets slot t (every chosen class appears), the others a random slot < k
    slot = np.floor(rng.random((n, 4)) * k[:, None]).astype(np.int64)
    first = np.arange(4)[None, :] < k[:, None]
    slot = np.where(first, np.arange(4)[None, :], slot)
    slot = np.take_along_axis(slot, np.argsort(rng.random((n, 4)), axis=1), axis=1)  # shuffle positions
    tile_class = np.take_along_axis(chosen, slot, axis=1)  # (n, 4)
    pick = np.floor(rng.random((n, 4)) * counts[tile_class]).astype(np.int64)
    sources = src_sorted[starts[tile_class] + pick]  # (n, 4)

    tiles = images[sources]  # (n, 4, H, W[, C])
    h, w = images.shape[1:3]
    rest = images.shape[3:]
    mosaics = tiles.reshape(n, 2, 2, h, w, *rest).swapaxes(2, 3).reshape(n, 2 * h, 2 * w, *rest)

    label_matrix = np.zeros((n, num_classes), dtype=np.uint8)
    rows = np.repeat(np.arange(n), 4)
    label_matrix[rows, tile_class.ravel()] = 1
    mosaics = np.ascontiguousarray(mosaics)
    return (mosaics, label_matrix, sources) if return_sources else (mosaics, label_matrix)


def source_pools(labels: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Split source indices into disjoint pools, stratified per class, with
    the given fractions (summing to at most 1). Returns sorted int64 arrays."""
    labels = np.asarray(labels)
    if any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"pool fractions must be positive and sum to at most 1, got {fractions}")
    rng = np.random.default_rng(seed)
    pools: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum((0.0,) + tuple(fractions))
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * members.size).astype(int)
        for i in range(len(fractions)):
            pools[i].append(members[cuts[i] : cuts[i + 1]])
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in pools]


@dataclass(frozen=True, eq=False)
class MosaicSet:
    """Mosaics with their label matrix, the query/train/database split and the
    source image of every tile (for leakage audits)."""

    images: np.ndarray  # (n, 56, 56) uint8
    label_matrix: np.ndarray  # (n, 10) uint8
    split: Split
    tile_sources: np.ndarray  # (n, 4) int64 indices into load_fashion_mnist()


def fashion_multilabel(
    n_query: int = 1000,
    n_train: int = 5000,
    n_database: int = 24000,
    seed: int = 0,
    *,
    root: str | None = None,
    pool_fractions: tuple[float, float, float] = (0.1, 0.2, 0.7),
) -> MosaicSet:
    """Multi-label Fashion-MNIST mosaics with a leakage-free split.

    The 70,000 source images are split (stratified, by ``seed``) into disjoint
    query / train / database pools (``pool_fractions``); query mosaics use only
    query-pool images, etc. Mosaics are stored query block first, then train,
    then database; ``split`` holds the corresponding indices.
    """
    from qadwh_ray.data.fashion import NUM_CLASSES, load_fashion_mnist

    images, labels = load_fashion_mnist(root)
    pools = source_pools(labels, pool_fractions, seed=seed)
    parts = []
    for i, (count, pool) in enumerate(zip((n_query, n_train, n_database), pools)):
        if count < 1:
            raise ValueError(f"need at least one mosaic in every part, got {(n_query, n_train, n_database)}")
        parts.append(
            make_mosaics(images, labels, count, seed=(int(seed), i), pool=pool, num_classes=NUM_CLASSES, return_sources=True)
        )
    mosaics = np.concatenate([p[0] for p in parts])
    label_matrix = np.concatenate([p[1] for p in parts])
    sources = np.concatenate([p[2] for p in parts])
    bounds = np.cumsum([0, n_query, n_train, n_database])
    split = Split(
        query=np.arange(bounds[0], bounds[1]),
        train=np.arange(bounds[1], bounds[2]),
        database=np.arange(bounds[2], bounds[3]),
        seed=int(seed),
        protocol="fashion-mosaic",
        n_items=int(bounds[3]),
        params={"pool_fractions": list(pool_fractions), "n_query": n_query, "n_train": n_train, "n_database": n_database},
    ).validate()
    return MosaicSet(images=mosaics, label_matrix=label_matrix, split=split, tile_sources=sources)


@functools.lru_cache(maxsize=2)
def cached_multilabel(seed: int) -> MosaicSet:
    """The default mosaic set of ``seed``, built once per process (readers ask for it per batch)."""
    return fashion_multilabel(seed=seed)


def cached_mosaics(seed: int) -> np.ndarray:
    return cached_multilabel(seed).images
