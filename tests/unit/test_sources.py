"""Real-format loaders on small data written by the tests themselves."""

import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qadwh_ray.data.sources import (
    ImageSet,
    iter_parquet_image_batches,
    load_cifar10,
    load_image_folder,
    load_parquet_images,
    write_parquet_images,
)
from qadwh_ray.data.transforms import ImageDecodeError, encode_png

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ CIFAR-10


def _write_cifar(root, per_batch=4):
    """torchvision's layout, pickled with bytes keys like the original files."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, f, protocol=2)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        img = RNG.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        lab = RNG.integers(0, 10, size=per_batch).tolist()
        data = img.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # CIFAR rows: R plane, G plane, B plane
        with open(base / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": lab, b"data": data, b"filenames": []}, f, protocol=2)
        images.append(img)
        labels.extend(lab)
    return np.concatenate(images), np.array(labels), names


def test_load_cifar10(tmp_path):
    images, labels, names = _write_cifar(tmp_path)
    s = load_cifar10(str(tmp_path))
    assert isinstance(s, ImageSet) and len(s) == 24
    assert s.images.shape == (24, 32, 32, 3) and np.array_equal(s.images, images)
    assert np.array_equal(s.label_matrix.argmax(1), labels) and s.label_matrix.sum() == 24
    assert s.class_names == names and np.array_equal(s.ids, np.arange(24))
    train = load_cifar10(str(tmp_path / "cifar-10-batches-py"), split="train")
    assert len(train) == 20 and np.array_equal(train.images, images[:20])
    assert np.array_equal(load_cifar10(str(tmp_path), split="test").images, images[20:])
    with pytest.raises(ValueError, match="split"):
        load_cifar10(str(tmp_path), split="val")


def test_load_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(str(tmp_path))
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(str(tmp_path))
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(str(tmp_path))


# --------------------------------------------------------------- image folder


def _write_folder(root, classes=("coat", "bag", "sandal"), per_class=3, size=(20, 16), fmt="PNG"):
    images = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = RNG.integers(0, 256, size=size, dtype=np.uint8)
            ext = "png" if fmt == "PNG" else "jpg"
            Image.fromarray(img).save(root / c / f"img{i}.{ext}", format=fmt)
            images[f"{c}/img{i}.{ext}"] = img
    return images


def test_load_image_folder(tmp_path):
    written = _write_folder(tmp_path)
    (tmp_path / "README.txt").write_text("top-level files are not classes")
    (tmp_path / "bag" / "notes.txt").write_text("not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "coat" / "sub").mkdir()
    extra = RNG.integers(0, 256, size=(20, 16), dtype=np.uint8)
    Image.fromarray(extra).save(tmp_path / "coat" / "sub" / "deep.png")
    written["coat/sub/deep.png"] = extra
    s = load_image_folder(str(tmp_path))
    assert s.class_names == ["bag", "coat", "sandal"]
    assert len(s) == 10 and s.images.shape == (10, 20, 16)
    for img, lab, ref in zip(s.images, s.label_matrix, s.source_refs):
        rel = os.path.relpath(ref, tmp_path)
        assert np.array_equal(img, written[rel])
        assert s.class_names[lab.argmax()] == rel.split("/")[0]
    rgb = load_image_folder(str(tmp_path), mode="RGB")
    assert rgb.images.shape == (10, 20, 16, 3)


def test_load_image_folder_jpeg_rgb(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.jpeg")
    s = load_image_folder(str(tmp_path))
    assert s.images.shape == (4, 8, 8, 3) and s.label_matrix.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder"):
        load_image_folder(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        load_image_folder(str(tmp_path))
    _write_folder(tmp_path)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "sandal" / "small.png")
    with pytest.raises(ImageDecodeError, match=r"sandal/small.png.*5x5"):
        load_image_folder(str(tmp_path))
    os.remove(tmp_path / "sandal" / "small.png")
    (tmp_path / "bag" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageDecodeError, match="bag/broken.png"):
        load_image_folder(str(tmp_path))
    os.remove(tmp_path / "bag" / "broken.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no images"):
        load_image_folder(str(tmp_path))


# -------------------------------------------------------------------- parquet

IMAGES = RNG.integers(0, 256, size=(50, 12, 10), dtype=np.uint8)
LABELS = RNG.integers(0, 4, size=50)


def test_parquet_single_label_round_trip(tmp_path):
    uri = str(tmp_path / "set.parquet")
    ids = np.arange(1000, 1050)
    assert write_parquet_images(uri, IMAGES, LABELS, ids, class_names=list("abcd")) == [uri]
    s = load_parquet_images(uri)
    assert np.array_equal(s.images, IMAGES) and np.array_equal(s.ids, ids)
    assert np.array_equal(s.label_matrix.argmax(1), LABELS) and s.class_names == list("abcd")
    assert load_parquet_images(uri, num_classes=6).num_classes == 6


def test_parquet_multilabel_directory(tmp_path):
    lm = np.zeros((50, 5), np.uint8)
    lm[np.arange(50), LABELS] = 1
    lm[np.arange(0, 50, 3), 4] = 1
    uri = str(tmp_path / "tables")
    files = write_parquet_images(uri, IMAGES, lm, rows_per_file=16)
    assert len(files) == 4 and all(f.startswith(uri) for f in files)
    assert pq.read_schema(files[0]).field("label").type == pa.list_(pa.int32())
    s = load_parquet_images(uri)
    assert np.array_equal(s.label_matrix, lm) and np.array_equal(s.images, IMAGES)
    assert np.array_equal(s.ids, np.arange(50))


def test_parquet_streaming_batches(tmp_path):
    uri = str(tmp_path / "tables")
    write_parquet_images(uri, IMAGES, LABELS, rows_per_file=13)
    batches = list(iter_parquet_image_batches(uri, batch_size=8))
    assert [len(b) for b in batches] == [8] * 6 + [2]
    assert np.array_equal(np.concatenate([b.images for b in batches]), IMAGES)
    assert np.array_equal(np.concatenate([b.label_matrix for b in batches]).argmax(1), LABELS)
    assert all(b.num_classes == 4 for b in batches)
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_parquet_image_batches(uri, batch_size=0))


def _plain_table(path, images=IMAGES, labels=None, **extra):
    cols = {"id": pa.array(np.arange(len(images)) + 7), "image": pa.array([encode_png(i) for i in images])}
    cols["label"] = pa.array(LABELS[: len(images)] if labels is None else labels)
    cols.update(extra)
    pq.write_table(pa.table(cols), path)


def test_parquet_without_metadata(tmp_path):
    uri = str(tmp_path / "plain.parquet")
    _plain_table(uri)
    assert load_parquet_images(uri).num_classes == int(LABELS.max()) + 1
    with pytest.raises(ValueError, match="num_classes"):
        list(iter_parquet_image_batches(uri, 10))
    assert len(list(iter_parquet_image_batches(uri, 10, num_classes=4))) == 5
    s = load_parquet_images(uri, id_column=None)
    assert np.array_equal(s.ids, np.arange(50))


def test_parquet_custom_columns_and_hf_struct(tmp_path):
    uri = str(tmp_path / "hf.parquet")
    struct = pa.StructArray.from_arrays(
        [pa.array([encode_png(i) for i in IMAGES[:5]]), pa.array([f"{i}.png" for i in range(5)])], ["bytes", "path"]
    )
    pq.write_table(pa.table({"img": struct, "cls": pa.array([[0], [1, 2], [2], [0, 1], [1]]), "key": pa.array(range(5))}), uri)
    s = load_parquet_images(uri, image_column="img", label_column="cls", id_column="key")
    assert np.array_equal(s.images, IMAGES[:5])
    assert s.label_matrix.tolist()[1] == [0, 1, 1]


def test_parquet_errors_name_column_file_and_row(tmp_path):
    uri = str(tmp_path / "t.parquet")
    _plain_table(uri)
    with pytest.raises(ValueError, match=r"image column 'pixels' not found in .*t\.parquet"):
        load_parquet_images(uri, image_column="pixels")
    with pytest.raises(ValueError, match="label column 'y' not found"):
        load_parquet_images(uri, label_column="y")
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        load_parquet_images(str(tmp_path / "nothing.parquet"))
    bad = [encode_png(i) for i in IMAGES[:5]]
    bad[3] = b"corrupted bytes"
    pq.write_table(pa.table({"id": pa.array([10, 11, 12, 13, 14]), "image": pa.array(bad), "label": pa.array([0] * 5)}), uri)
    with pytest.raises(ImageDecodeError, match=r"id 13 in .*t\.parquet"):
        load_parquet_images(uri)
    _plain_table(uri, images=IMAGES[:3], labels=pa.array([[0], [], [1]], pa.list_(pa.int64())))
    with pytest.raises(ValueError, match="id 8 has an empty label list"):
        load_parquet_images(uri)
    _plain_table(uri, images=IMAGES[:3], labels=pa.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match="label column 'label'.*string"):
        load_parquet_images(uri)
    _plain_table(uri, images=IMAGES[:3], labels=pa.array([0, 5, 1]))
    with pytest.raises(ValueError, match="class 5 of id 8"):
        load_parquet_images(uri, num_classes=3)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="junk.parquet"):
        load_parquet_images(str(tmp_path / "junk.parquet"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        load_parquet_images(str(tmp_path / "emptydir"))


def test_imageset_validation_and_subset():
    s = ImageSet(IMAGES[:4], np.eye(4, dtype=np.uint8), np.arange(4), class_names=list("abcd"), source_refs=list("wxyz"))
    sub = s.subset([2, 0])
    assert np.array_equal(sub.images, IMAGES[[2, 0]]) and sub.source_refs == ["y", "w"]
    with pytest.raises(ValueError, match="label_matrix"):
        ImageSet(IMAGES[:4], np.eye(3, dtype=np.uint8), np.arange(4))
    with pytest.raises(ValueError, match="class names"):
        ImageSet(IMAGES[:4], np.eye(4, dtype=np.uint8), np.arange(4), class_names=["a"])
