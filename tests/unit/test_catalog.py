"""Datasets from their own files: the catalog (classes, channels, labels, ids), the one pixel reader,
per-class splits, and every kind of bad input named clearly."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qadwh_ray.data.catalog import DatasetError, folder_item_id, open_catalog
from qadwh_ray.data.readers import ImageReadError, read_images
from qadwh_ray.data.split import class_split


def _encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _grey(value: int, size=(12, 12)) -> np.ndarray:
    return np.full(size, value, np.uint8)


def _folder(root, spec: dict, rgb: bool = False) -> None:
    for cls, values in spec.items():
        for i, v in enumerate(values):
            sub = root / cls / ("nested" if i % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            img = _grey(v) if not rgb else np.dstack([_grey(v), _grey(255 - v), _grey(v // 2)])
            (sub / f"{cls}{i}.png").write_bytes(_encoded(img))


def test_image_folder_classes_channels_labels_and_stable_ids(tmp_path):
    _folder(tmp_path / "d", {"cats": [10, 20, 30], "dogs": [40, 50], "eels": [60, 70]}, rgb=True)
    cat = open_catalog(str(tmp_path / "d"))
    info = cat.info
    assert info.class_names == ("cats", "dogs", "eels") and info.num_classes == 3 and info.format == "folder"
    assert info.mode == "RGB" and info.in_channels == 3 and not info.multi_label and info.image_size == (12, 12)
    assert cat.labels.sum(0).tolist() == [3, 2, 2] and len(cat) == 7
    assert any("/nested/" in f for f in cat.files)  # nested files belong to their class folder
    pixels, bad = read_images(cat, np.arange(7))
    assert pixels.shape == (7, 12, 12, 3) and bad == [""] * 7
    # an item's id depends only on its own path: adding files elsewhere changes no id
    before = dict(zip(cat.files, cat.ids.tolist()))
    _folder(tmp_path / "d", {"ants": [5]}, rgb=True)
    after = open_catalog(str(tmp_path / "d"))
    assert all(before[f] == i for f, i in zip(after.files, after.ids.tolist()) if f in before)
    assert after.info.class_names[0] == "ants"
    assert after.ids[0] == folder_item_id("ants/ants0.png")


def test_image_folder_bad_input_is_named(tmp_path):
    _folder(tmp_path / "one", {"only": [1, 2]})
    with pytest.raises(DatasetError, match=r"has 1 class \(only\); retrieval needs at least 2 classes"):
        open_catalog(str(tmp_path / "one"))
    _folder(tmp_path / "empty", {"a": [1], "b": [2]})
    (tmp_path / "empty" / "c").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*empty/c holds no images"):
        open_catalog(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        open_catalog(str(tmp_path / "missing"))

    _folder(tmp_path / "mixed", {"a": [1, 2], "b": [3]})
    (tmp_path / "mixed" / "a" / "big.png").write_bytes(_encoded(_grey(9, (30, 20))))  # another size: resized
    (tmp_path / "mixed" / "b" / "colour.png").write_bytes(_encoded((np.zeros((12, 12, 3)) + [200, 0, 0]).astype(np.uint8)))
    (tmp_path / "mixed" / "b" / "cut.png").write_bytes(_encoded(_grey(5))[:40])
    cat = open_catalog(str(tmp_path / "mixed"))
    assert cat.info.mode == "L"
    big = cat.files.index(str(tmp_path / "mixed" / "a" / "big.png"))
    assert read_images(cat, [big])[0].shape == (1, 12, 12)
    pixels, bad = read_images(cat, np.arange(len(cat)), skip_bad=True)
    reasons = {cat.files[i].rsplit("/", 1)[1]: b for i, b in enumerate(bad) if b}
    assert set(reasons) == {"colour.png", "cut.png"}
    assert "colour.png is a colour image in a grey dataset" in reasons["colour.png"]
    assert "cannot decode image" in reasons["cut.png"] and "cut.png" in reasons["cut.png"]
    with pytest.raises(ImageReadError, match="colour.png"):
        read_images(cat, np.arange(len(cat)))


def test_class_names_file_orders_the_classes(tmp_path):
    _folder(tmp_path / "d", {"b": [1], "a": [2]})
    (tmp_path / "d" / "classes.txt").write_text("b\na\nc\n")
    cat = open_catalog(str(tmp_path / "d"))
    assert cat.info.class_names == ("b", "a", "c") and cat.labels.shape == (2, 3)
    (tmp_path / "d" / "classes.txt").write_text("a\n")
    with pytest.raises(DatasetError, match="class folder.* b .*not in its classes.txt"):
        open_catalog(str(tmp_path / "d"))


def _table(labels, ids=None, image=True):
    n = len(labels)
    cols = {}
    if ids is not None:
        cols["id"] = pa.array(ids, pa.int64())
    if image:
        cols["image"] = pa.array([_encoded(_grey(10 * i % 250)) for i in range(n)], pa.binary())
    cols["labels" if isinstance(labels[0], list) else "label"] = pa.array(labels)
    return pa.table(cols)


def test_parquet_string_int_and_multi_labels(tmp_path):
    f = str(tmp_path / "s.parquet")
    pq.write_table(_table(["shoe", "bag", "shoe", "hat"], ids=[7, 3, 9, 1]), f)
    cat = open_catalog(f)
    assert cat.info.class_names == ("bag", "hat", "shoe") and not cat.info.multi_label and cat.info.mode == "L"
    assert cat.labels.argmax(1).tolist() == [2, 0, 2, 1] and cat.ids.tolist() == [7, 3, 9, 1]
    assert cat.positions(np.array([9, 7])).tolist() == [2, 0]
    with pytest.raises(DatasetError, match="id 5 is not in the dataset"):
        cat.positions(np.array([5]))

    d = tmp_path / "multi"
    d.mkdir()
    pq.write_table(_table([["a", "b"], ["c"]], ids=[1, 2]), str(d / "part-0.parquet"))
    pq.write_table(_table([["b"], ["a", "c"]], ids=[3, 4]), str(d / "part-1.parquet"), row_group_size=1)
    cat = open_catalog(str(d))
    assert cat.info.multi_label and cat.info.class_names == ("a", "b", "c")
    assert cat.labels.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1]]
    pixels, _ = read_images(cat, np.array([3, 0]))  # across files and row groups
    assert pixels[0].max() == 10 and pixels[1].max() == 0

    g = str(tmp_path / "ints.parquet")
    pq.write_table(_table([0, 2, 1]), g)  # no id column: ids are row numbers
    cat = open_catalog(g)
    assert cat.info.class_names == ("0", "1", "2") and cat.ids.tolist() == [0, 1, 2]


def test_parquet_bad_input_is_named(tmp_path):
    f = str(tmp_path / "t.parquet")
    pq.write_table(_table(["a", "b"], image=False), f)
    with pytest.raises(DatasetError, match=r"t\.parquet has no 'image' column"):
        open_catalog(f)
    pq.write_table(_table(["a", "b"]).append_column("labels", pa.array([["a"], ["b"]])), f)
    with pytest.raises(DatasetError, match=r"needs exactly one label column.*found \['label', 'labels'\]"):
        open_catalog(f)
    pq.write_table(_table([1.5, 2.5]), f)
    with pytest.raises(DatasetError, match="must hold ints or strings"):
        open_catalog(f)
    pq.write_table(_table(["a", "a"]), f)
    with pytest.raises(DatasetError, match="retrieval needs at least 2 classes"):
        open_catalog(f)
    pq.write_table(_table(["a", "b"], ids=[4, 4]), f)
    with pytest.raises(DatasetError, match="id 4 appears more than once"):
        open_catalog(f)
    pq.write_table(_table([0, 5]), f)
    (tmp_path / "classes.txt").write_text("x\ny\n")
    with pytest.raises(DatasetError, match=r"class 5 of id 1 .* outside the 2 classes"):
        open_catalog(f)
    (tmp_path / "classes.txt").unlink()
    d = tmp_path / "two"
    d.mkdir()
    pq.write_table(_table(["a", "b"]), str(d / "p0.parquet"))
    pq.write_table(_table([0, 1]), str(d / "p1.parquet"))
    with pytest.raises(DatasetError, match=r"p1\.parquet labels its rows as label \(int\) but earlier files as label \(str\)"):
        open_catalog(str(d))


def test_class_split_counts_fractions_caps_and_ids():
    n_per = [60, 60, 60, 60, 60]
    labels = np.repeat(np.eye(5, dtype=np.uint8), n_per, axis=0)
    ids = np.arange(300) * 10 + 5
    s = class_split(labels, ids, seed=1)
    assert s.sizes == {"query": 30, "train": 150, "database": 120}
    assert np.isin(s.query, ids).all() and s.query.min() >= 5  # parts hold ids, not positions
    assert s == class_split(labels, ids, seed=1) and not np.array_equal(s.train, class_split(labels, ids, seed=2).train)
    s = class_split(labels, ids, queries=2, train=0.9, max_train=20)
    assert s.sizes == {"query": 10, "train": 100, "database": 190}
    with pytest.raises(ValueError, match="class 0 has 60 items: too few for 10 queries \\+ 50 training items"):
        class_split(labels, ids, queries=10, train=50)
    with pytest.raises(ValueError, match="queries must be a positive count or a fraction"):
        class_split(labels, ids, queries=0)
