"""Multi-label Fashion-MNIST mosaics: real pixels, union labels, no leakage."""

import numpy as np
import pytest

from qadwh_ray.core.labels import as_label_matrix
from qadwh_ray.data.fashion import load_fashion_mnist
from qadwh_ray.data.multilabel import fashion_multilabel, make_mosaics, source_pools


@pytest.fixture(scope="module")
def fashion():
    return load_fashion_mnist()


def test_mosaics_are_real_tiles_with_union_labels(fashion):
    images, labels = fashion
    m, lm, src = make_mosaics(images, labels, 2000, seed=1, return_sources=True)
    assert m.shape == (2000, 56, 56) and m.dtype == np.uint8
    assert lm.shape == (2000, 10) and lm.dtype == np.uint8
    assert src.shape == (2000, 4) and src.dtype == np.int64
    for i in range(0, 2000, 97):
        assert np.array_equal(m[i, :28, :28], images[src[i, 0]])
        assert np.array_equal(m[i, :28, 28:], images[src[i, 1]])
        assert np.array_equal(m[i, 28:, :28], images[src[i, 2]])
        assert np.array_equal(m[i, 28:, 28:], images[src[i, 3]])
    # labels are exactly the union of the tiles' classes
    union = np.zeros_like(lm)
    np.put_along_axis(union, labels[src], 1, axis=1)
    assert np.array_equal(union, lm)
    as_label_matrix(lm, 10)  # every row has a label


def test_label_statistics_are_sensible(fashion):
    _, lm = make_mosaics(*fashion, 6000, seed=2)
    per_row = lm.sum(axis=1)
    assert per_row.min() == 1 and per_row.max() == 3
    counts = np.bincount(per_row, minlength=4)[1:]
    assert (counts > 1500).all()  # 1, 2 and 3 labels all common
    freq = lm.mean(axis=0)
    assert (freq > 0.15).all() and (freq < 0.25).all()  # balanced classes
    _, lm4 = make_mosaics(*fashion, 500, seed=2, min_classes=4, max_classes=4)
    assert (lm4.sum(axis=1) == 4).all()


def test_determinism_and_pool(fashion):
    images, labels = fashion
    a = make_mosaics(images, labels, 300, seed=7)
    b = make_mosaics(images, labels, 300, seed=7)
    c = make_mosaics(images, labels, 300, seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    pool = np.arange(1000, 3000)
    _, _, src = make_mosaics(images, labels, 300, seed=7, pool=pool, return_sources=True)
    assert src.min() >= 1000 and src.max() < 3000


def test_rgb_and_errors(fashion):
    rgb = np.repeat(fashion[0][:200, :, :, None], 3, axis=3)
    m, _ = make_mosaics(rgb, fashion[1][:200], 10, seed=0)
    assert m.shape == (10, 56, 56, 3)
    with pytest.raises(ValueError, match="uint8"):
        make_mosaics(fashion[0].astype(np.float32), fashion[1], 3)
    with pytest.raises(ValueError, match="labels"):
        make_mosaics(fashion[0], fashion[1][:10], 3)
    with pytest.raises(ValueError, match="covers 2 classes"):
        make_mosaics(fashion[0], fashion[1], 3, pool=np.flatnonzero(fashion[1] < 2))


def test_source_pools_are_disjoint_and_stratified(fashion):
    pools = source_pools(fashion[1], (0.1, 0.2, 0.7), seed=0)
    assert [len(p) for p in pools] == [7000, 14000, 49000]
    assert np.array_equal(np.sort(np.concatenate(pools)), np.arange(70000))
    assert np.bincount(fashion[1][pools[0]]).tolist() == [700] * 10


def test_fashion_multilabel_has_no_source_leakage():
    ms = fashion_multilabel(n_query=200, n_train=500, n_database=2000, seed=0)
    assert ms.images.shape == (2700, 56, 56) and ms.label_matrix.shape == (2700, 10)
    assert ms.split.sizes == {"query": 200, "train": 500, "database": 2000}
    ms.split.validate(2700)
    q = np.unique(ms.tile_sources[ms.split.query])
    t = np.unique(ms.tile_sources[ms.split.train])
    d = np.unique(ms.tile_sources[ms.split.database])
    assert not np.intersect1d(q, d).size and not np.intersect1d(q, t).size and not np.intersect1d(t, d).size
    again = fashion_multilabel(n_query=200, n_train=500, n_database=2000, seed=0)
    assert np.array_equal(again.images, ms.images)
