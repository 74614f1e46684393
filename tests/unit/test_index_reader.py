"""Reader: resolves versions, verifies checksums, refuses damaged or missing shards by name (no Ray)."""

import os

import numpy as np
import pytest

from qadwh_ray import storage
from qadwh_ray.index import IndexIntegrityError, IndexReader, IndexStore, load_manifest, open_index
from qadwh_ray.index.writer import write_index


@pytest.fixture
def index_root(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    ids = rng.permutation(10_000)[:n].astype(np.int64)
    codes = rng.integers(0, 256, size=(n, 4), dtype=np.uint8)
    labels = np.eye(10, dtype=np.uint8)[rng.integers(0, 10, n)]
    root = str(tmp_path / "idx")
    write_index(root, ids, codes, labels, code_bits=32, num_shards=3, version="v1",
                item_sources=[f"img-{i}.png" for i in ids], checkpoint={"uri": "x", "sha256": "0" * 64})
    return root, ids, codes, labels


def test_read_all_and_shards(index_root):
    root, ids, codes, labels = index_root
    r = open_index(root)
    assert r.version == "v1" and r.num_shards == 3 and r.manifest.num_items == 300
    d = r.read_all()
    order = np.argsort(ids)
    assert np.array_equal(d.ids, ids[order]) and np.array_equal(d.codes, codes[order]) and np.array_equal(d.labels, labels[order])
    assert d.sources == [f"img-{i}.png" for i in ids[order]]
    per = [r.read_shard(i) for i in range(3)]
    assert sum(len(p) for p in per) == 300
    for p in per:
        assert (np.diff(p.ids) > 0).all()
    assert load_manifest(root).version == "v1"
    with pytest.raises(IndexError, match="no shard 3"):
        r.read_shard(3)


def _shard_path(root, i):
    store = IndexStore(root)
    return storage.local_path(store.shard_uri("v1", f"shard-{i:05d}.parquet"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_shard_is_refused_by_name(index_root, damage):
    root = index_root[0]
    path = _shard_path(root, 1)
    data = open(path, "rb").read()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data = bytearray(data)
        data[100] ^= 0x01
        data = bytes(data)
    else:
        data = b"not parquet" * 10
    with open(path, "wb") as f:
        f.write(data)
    r = open_index(root)
    r.read_shard(0)  # the undamaged shards still load on their own
    with pytest.raises(IndexIntegrityError, match=r"shard shard-00001\.parquet at .*v1/shard-00001\.parquet is damaged"):
        r.read_shard(1)
    with pytest.raises(IndexIntegrityError, match="shard-00001"):
        r.read_all()
    with pytest.raises(IndexIntegrityError, match="shard-00001"):
        r.verify()


def test_missing_shard_is_refused_by_name(index_root):
    root = index_root[0]
    os.remove(_shard_path(root, 2))
    with pytest.raises(IndexIntegrityError, match=r"shard shard-00002\.parquet of index version v1 is missing"):
        open_index(root).read_shard(2)


def test_replaced_manifest_is_detected_via_pointer(index_root):
    root = index_root[0]
    store = IndexStore(root)
    uri = store.manifest_uri("v1")
    data = storage.read_bytes(uri)
    storage.write_bytes(uri, data.replace(b'"num_classes": 10', b'"num_classes": 11'))
    with pytest.raises(IndexIntegrityError, match="manifest .* damaged or replaced"):
        open_index(root)
    IndexReader(root, "v1")  # naming the version explicitly reads its manifest as it is


def test_load_into_search_index(index_root):
    search = pytest.importorskip("qadwh_ray.core.search")
    root, ids, codes, labels = index_root
    r = open_index(root)
    idx_all = r.load_all()
    idx_one = r.load_shard(0)
    assert isinstance(idx_all, search.HashIndex) and isinstance(idx_one, search.HashIndex)
    assert len(idx_all) == 300 and len(idx_one) == r.manifest.shards[0].rows
    assert np.array_equal(idx_all.labels_of(ids[:5]), labels[:5])
    q = codes[:3]
    d, got = idx_all.search(q, 5, mode="hamming")
    from qadwh_ray.core.hamming import hamming_distances

    full = hamming_distances(q, codes)
    for i in range(3):
        order = np.lexsort((ids, full[i]))[:5]
        assert np.array_equal(np.asarray(got[i]), ids[order])
