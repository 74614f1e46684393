"""Ray Data build → publish → read: codes equal local encoding byte for byte;
bad input named, or skipped and listed with --skip-bad."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from index_helpers import local_codes, save_model

from qadwh_ray.data.transforms import encode_png
from qadwh_ray.index import IndexStore, open_index
from qadwh_ray.indexing import BadInputError, BuildOptions, build_index
from qadwh_ray.indexing.sources import fashion_augmented_images

pytestmark = pytest.mark.ray

FAST = dict(block_rows=200, batch_size=200, actors=1)


def test_build_publish_read_codes_equal_local_encoding(ray_cluster, tmp_path):
    ckpt = save_model(tmp_path / "model.pt")
    root = str(tmp_path / "index")
    n = 600
    res = build_index(ckpt, f"fashion-augmented:{n}", root, BuildOptions(shards=3, **FAST))
    assert res.published and res.bad_rows == 0
    m = res.manifest
    assert m.num_items == n and m.num_shards == 3 and m.code_bits == 16 and m.bit_order == "little"
    assert m.checkpoint["uri"] == ckpt and len(m.checkpoint["sha256"]) == 64
    assert all(len(s.sha256) == 64 and s.rows > 0 for s in m.shards)
    store = IndexStore(root)
    assert store.current_version() == res.version and store.list_staged() == []

    reader = open_index(root)
    data = reader.read_all()
    assert np.array_equal(data.ids, np.arange(n))  # every item exactly once
    images, labels = fashion_augmented_images(data.ids)
    expected = local_codes(ckpt, images)
    assert len(np.unique(expected, axis=0)) > 50  # a model with diverse codes
    assert data.codes.tobytes() == expected.tobytes()  # byte for byte
    assert np.array_equal(data.labels.argmax(1), labels)
    # each shard loads alone into the search index and holds only its own ids
    idx = reader.load_shard(1)
    assert len(idx) == m.shards[1].rows
    full = reader.load_all()
    assert len(full) == n
    d, ids = full.search(expected[:2], 3, mode="hamming")
    assert (d[:, 0] == 0).all()


def _db_with_bad_rows(path, n=40, bad_label=True):
    from qadwh_ray.data.fashion import load_fashion_mnist

    images, labels = load_fashion_mnist()
    blobs = [encode_png(im) for im in images[:n]]
    lab = labels[:n].tolist()
    blobs[7] = b"garbage, not an image"
    blobs[11] = encode_png(images[11][:20, :20])
    if bad_label:
        lab[23] = 42
    table = pa.table({"id": pa.array(np.arange(n) + 1000, pa.int64()), "image": pa.array(blobs, pa.binary()), "label": pa.array(lab, pa.int64())})
    pq.write_table(table, path, row_group_size=16)
    return images[:n]


def test_bad_input_is_named_then_skipped_and_listed(ray_cluster, tmp_path):
    ckpt = save_model(tmp_path / "model.pt")
    src = str(tmp_path / "db.parquet")
    images = _db_with_bad_rows(src)
    root = str(tmp_path / "index")
    with pytest.raises(ValueError, match=r"class 42 of id 1023 in .*db\.parquet is outside the 10 classes"):
        build_index(ckpt, src, root, BuildOptions(shards=2, **FAST))  # label problems: found while planning
    images = _db_with_bad_rows(src, bad_label=False)
    with pytest.raises(BadInputError, match=r"bad input: id 1007: cannot decode image .*db\.parquet#row=7: .*--skip-bad"):
        build_index(ckpt, src, root, BuildOptions(shards=2, **FAST))
    store = IndexStore(root)
    assert store.current_version() is None and store.list_versions() == [] and store.list_staged() == []

    res = build_index(ckpt, src, root, BuildOptions(shards=2, skip_bad=True, **FAST))
    m = res.manifest
    assert m.num_items == 39 and m.bad_row_count == 1 and res.bad_rows == 1
    listed = {b["row"]: b for b in m.bad_rows}
    assert sorted(listed) == [7]
    assert listed[7]["id"] == 1007 and "cannot decode image" in listed[7]["reason"] and listed[7]["source"].endswith("db.parquet#row=7")
    data = open_index(root).read_all()
    good = np.setdiff1d(np.arange(40), [7, 11])  # the 20x20 image is resized, so its codes differ
    assert np.array_equal(np.setdiff1d(data.ids, [1011]), good + 1000) and 1011 in data.ids
    keep = np.isin(data.ids, good + 1000)
    assert data.codes[keep].tobytes() == local_codes(ckpt, images[good]).tobytes()
    assert data.sources[0].endswith("db.parquet#row=0")
