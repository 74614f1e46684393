"""Ray Data build → publish → read: codes equal local encoding byte for byte;
bad input named, or skipped and listed with --skip-bad."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from index_helpers import local_codes, rgb_12bit_model, rgb_folder, save_model

from qadwh_ray.data.transforms import encode_png
from qadwh_ray.index import IndexStore, open_index
from qadwh_ray.index_build import BadInputError, BuildOptions, build_index
from qadwh_ray.data.fashion import fashion_augmented_images

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


def test_12_bit_rgb_folder_index_keeps_the_real_length_and_the_class_names(ray_cluster, tmp_path):
    """The paper's 12 bits: codes stored in 2 bytes with zero padding, the manifest says 12
    bits and the folder's own class names, and search over the stored codes equals a
    brute force over the unpadded bits."""
    from qadwh_ray.core.bits import unpack_bits

    names, files = rgb_folder(str(tmp_path / "clothes"))
    pixels = np.stack([px for _, px in files.values()])
    ckpt = rgb_12bit_model(tmp_path / "m12.pt", pixels, len(names))
    res = build_index(ckpt, str(tmp_path / "clothes"), str(tmp_path / "index"), BuildOptions(shards=2, part="all", **FAST))
    m = res.manifest
    assert m.code_bits == 12 and m.code_bytes == 2 and m.num_items == len(files)
    assert m.class_names == names and m.num_classes == len(names) and "T-shirt/top" not in names
    assert m.sources[0]["mode"] == "RGB"
    reader = open_index(str(tmp_path / "index"))
    assert reader.manifest.class_names == names  # as published
    data = reader.read_all()
    by_path = [files[s] for s in data.sources]
    assert [c for c, _ in by_path] == data.labels.argmax(1).tolist()
    expected = local_codes(ckpt, np.stack([px for _, px in by_path]))
    assert data.codes.shape == (len(files), 2) and data.codes.tobytes() == expected.tobytes()
    assert not (data.codes[:, 1] & 0xF0).any()  # padding bits are zero
    bits = unpack_bits(data.codes, 12).astype(np.int64)
    assert len(np.unique(bits, axis=0)) > 10
    d, ids = reader.load_all().search(data.codes[:3], 10, mode="hamming")
    ham = (bits[:3, None, :] != bits[None, :, :]).sum(-1)
    for q in range(3):
        order = np.lexsort((data.ids, ham[q]))[:10]
        assert ids[q].tolist() == data.ids[order].tolist() and d[q].tolist() == ham[q][order].tolist()
