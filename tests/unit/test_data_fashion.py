"""Real Fashion-MNIST (Debian's dataset-fashion-mnist) and the split protocols."""

import gzip
import json

import numpy as np
import pytest

from qadwh_ray.data.fashion import CLASS_NAMES, FASHION_MNIST_DIR, load_fashion_mnist, read_idx
from qadwh_ray.data.split import Split, multilabel_split, paper_split, validation_protocol, validation_split


@pytest.fixture(scope="module")
def fashion():
    return load_fashion_mnist()


def test_load_fashion_mnist(fashion):
    images, labels = fashion
    assert images.shape == (70000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (70000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [7000] * 10
    assert len(CLASS_NAMES) == 10
    # train first: the first training label of Fashion-MNIST is 9 (ankle boot)
    assert labels[0] == 9
    assert 0 < images.mean() < 255
    assert load_fashion_mnist() is fashion  # decoded once per process
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1  # shared arrays are read-only


def test_missing_files_give_install_hint(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as err:
        load_fashion_mnist(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    monkeypatch.setenv("QADWH_FASHION_MNIST_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_fashion_mnist()
    assert FASHION_MNIST_DIR == "/usr/share/datasets/fashion-mnist"


def test_read_idx_validates_header(tmp_path):
    good = tmp_path / "x-idx1-ubyte.gz"
    with gzip.open(good, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    assert read_idx(str(good)).tolist() == [1, 2, 3]
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([1, 2]))
    with pytest.raises(ValueError, match="short-idx1-ubyte"):
        read_idx(str(short))
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="junk.gz"):
        read_idx(str(junk))


def test_paper_split_protocol(fashion):
    _, labels = fashion
    split = paper_split(labels, seed=0)
    assert split.sizes == {"query": 1000, "train": 5000, "database": 64000}
    assert np.bincount(labels[split.query]).tolist() == [100] * 10
    assert np.bincount(labels[split.train]).tolist() == [500] * 10
    everything = np.concatenate([split.query, split.train, split.database])
    assert np.array_equal(np.sort(everything), np.arange(70000))  # disjoint and complete
    assert split.seed == 0 and split.protocol == "paper" and split.n_items == 70000
    split.validate(70000)
    for part in (split.query, split.train, split.database):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    assert paper_split(labels, seed=0) == split  # deterministic
    other = paper_split(labels, seed=1)
    assert not np.array_equal(other.query, split.query)


def test_paper_split_errors():
    labels = np.repeat(np.arange(3), 50)
    with pytest.raises(ValueError, match="class 0 has 50 items"):
        paper_split(labels, queries_per_class=10, train_per_class=40)
    with pytest.raises(ValueError, match="multilabel_split"):
        paper_split(np.array([[1, 1, 0], [0, 1, 0]]))
    one_hot = np.eye(3, dtype=np.uint8)[labels]
    assert paper_split(one_hot, queries_per_class=5, train_per_class=10) == paper_split(
        labels, queries_per_class=5, train_per_class=10
    )


def test_split_save_load_round_trip(tmp_path, fashion):
    split = paper_split(fashion[1], seed=3)
    uri = str(tmp_path / "splits" / "fashion.json")
    split.save(uri)
    loaded = Split.load(uri)
    assert loaded == split and loaded.params == {"queries_per_class": 100, "train_per_class": 500}
    doc = json.loads((tmp_path / "splits" / "fashion.json").read_text())
    assert doc["seed"] == 3 and doc["format"] == "qadwh-split"
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="bad.json"):
        Split.load(str(tmp_path / "bad.json"))
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(ValueError, match="notjson.json"):
        Split.load(str(tmp_path / "notjson.json"))


def test_validate_catches_bad_splits():
    def mk(q, t, d, n=10):
        return Split(query=q, train=t, database=d, seed=0, protocol="t", n_items=n)

    mk([0], [1], [2, 3]).validate()
    with pytest.raises(ValueError, match="'query' and 'database' share"):
        mk([0, 2], [1], [2, 3]).validate()
    with pytest.raises(ValueError, match="index 12 outside"):
        mk([0], [1], [12]).validate()
    with pytest.raises(ValueError, match="index 3 more than once"):
        mk([0], [1], [3, 3]).validate()
    with pytest.raises(ValueError, match="made for 10 items"):
        mk([0], [1], [2]).validate(20)
    with pytest.raises(ValueError, match="empty"):
        mk([], [1], [2]).validate()


def test_multilabel_split():
    lm = np.random.default_rng(0).integers(0, 2, size=(500, 5)).astype(np.uint8)
    s = multilabel_split(lm, seed=4, n_query=50, n_train=100)
    assert s.sizes == {"query": 50, "train": 100, "database": 350}
    s.validate(500)
    assert multilabel_split(lm, seed=4, n_query=50, n_train=100) == s
    with pytest.raises(ValueError, match="500 items"):
        multilabel_split(lm, n_query=400, n_train=100)


def test_validation_split(fashion):
    labels = fashion[1]
    split = paper_split(labels, seed=0)
    tr, va = validation_split(split.train, 0.1, seed=0)
    assert len(va) == 500 and len(tr) == 4500
    assert np.array_equal(np.sort(np.concatenate([tr, va])), split.train)
    assert not np.intersect1d(va, split.query).size
    tr2, va2 = validation_split(split.train, 0.1, seed=0, labels=labels)
    assert np.bincount(labels[va2]).tolist() == [50] * 10  # stratified
    assert np.array_equal(validation_split(split.train, 0.1, seed=0)[1], va)
    with pytest.raises(ValueError, match="fraction"):
        validation_split(split.train, 1.5)


def test_validation_protocol_is_disjoint_from_test_queries_and_training(fashion):
    labels = fashion[1]
    split = paper_split(labels, seed=0)
    vq, vdb = validation_protocol(split, labels)
    assert len(vq) == 1000 and len(vdb) == 63000
    assert np.bincount(labels[vq]).tolist() == [100] * 10  # as many per class as the test queries
    for part in (split.query, split.train):
        assert not np.intersect1d(vq, part).size and not np.intersect1d(vdb, part).size
    assert not np.intersect1d(vq, vdb).size
    assert np.array_equal(np.union1d(vq, vdb), split.database)
    again = validation_protocol(split, np.eye(10, dtype=np.uint8)[labels])  # one-hot rows: the same draw
    assert np.array_equal(again[0], vq) and np.array_equal(again[1], vdb)
    assert not np.array_equal(validation_protocol(split, labels, seed=1)[0], vq)
    # multi-label: a random draw of as many queries as the test set has
    lm = np.random.default_rng(0).integers(0, 2, size=(500, 5)).astype(np.uint8)
    lm[lm.sum(axis=1) == 0, 0] = 1
    ml = multilabel_split(lm, seed=4, n_query=50, n_train=100)
    mq, mdb = validation_protocol(ml, lm)
    assert len(mq) == 50 and len(mdb) == 300 and np.array_equal(np.union1d(mq, mdb), ml.database)
    with pytest.raises(ValueError, match="labels have 10 rows but the split was made for 500 items"):
        validation_protocol(ml, lm[:10])


def test_retrieval_data_on_validation_swaps_queries_and_database_only():
    from qadwh_ray.training.datasets import load_retrieval_data

    test = load_retrieval_data("fashion", 0, 0.1, evaluate_on="test")
    val = load_retrieval_data("fashion", 0, 0.1, evaluate_on="validation")
    assert val.evaluated_on == "validation" and "validation queries 1000" in val.summary()
    assert np.array_equal(val.train_images, test.train_images) and np.array_equal(val.val_images, test.val_images)
    assert not np.intersect1d(val.query_ids, test.query_ids).size
    assert np.isin(val.query_ids, test.db_ids).all() and len(val.db_ids) == 63000
    with pytest.raises(ValueError, match="evaluate_on must be one of validation, test, got 'train'"):
        load_retrieval_data("fashion", 0, 0.1, evaluate_on="train")
