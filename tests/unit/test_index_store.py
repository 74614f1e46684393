"""Versioned store: staging is invisible, publish writes the pointer last, retention (no Ray)."""

import json
import os
import time

import numpy as np
import pytest

from qadwh_ray import storage
from qadwh_ray.index import IndexStore, NoCurrentVersionError, VersionNotFoundError, open_index
from qadwh_ray.index.format import IndexIntegrityError
from qadwh_ray.index.writer import write_index


def _arrays(n=40, nbits=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64) * 3 + seed
    codes = rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)
    labels = np.eye(5, dtype=np.uint8)[rng.integers(0, 5, n)]
    return ids, codes, labels


def _write(root, version, publish=True, seed=0, **kw):
    ids, codes, labels = _arrays(seed=seed)
    return write_index(root, ids, codes, labels, code_bits=16, num_shards=kw.pop("num_shards", 2), version=version, publish=publish, **kw)


def test_layout_and_pointer(tmp_path):
    root = str(tmp_path / "idx")
    m = _write(root, "v1")
    store = IndexStore(root)
    assert sorted(os.listdir(root)) == ["CURRENT", "versions"]
    assert sorted(os.listdir(tmp_path / "idx" / "versions" / "v1")) == ["manifest.json", "shard-00000.parquet", "shard-00001.parquet"]
    pointer = json.loads(storage.read_bytes(store.pointer_uri))
    assert pointer["version"] == "v1" and len(pointer["manifest_sha256"]) == 64
    assert store.current_version() == "v1" and store.list_versions() == ["v1"]
    assert store.resolve() == "v1" and store.resolve("v1") == "v1"
    assert m.num_items == 40 and [s.rows for s in m.shards] == [s.rows for s in store.read_manifest("v1").shards]


def test_staged_build_is_invisible_until_published(tmp_path):
    root = str(tmp_path / "idx")
    _write(root, "v1")
    _write(root, "v2", publish=False, seed=1)
    store = IndexStore(root)
    assert store.current_version() == "v1"
    assert store.list_versions() == ["v1"] and store.list_staged() == ["v2"]
    with pytest.raises(VersionNotFoundError, match="never published"):
        store.resolve("v2")
    assert open_index(root).version == "v1"
    store.publish("v2")
    assert store.current_version() == "v2" and store.list_versions() == ["v1", "v2"] and store.list_staged() == []
    # roll back
    store.set_current("v1")
    assert open_index(root).version == "v1"


def test_publish_refuses_a_damaged_staged_build_and_keeps_current(tmp_path):
    root = str(tmp_path / "idx")
    _write(root, "v1")
    _write(root, "v2", publish=False, seed=1)
    store = IndexStore(root)
    shard = storage.local_path(store.shard_uri("v2", "shard-00001.parquet", staged=True))
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 7)
    with pytest.raises(IndexIntegrityError, match=r"shard-00001\.parquet .* damaged"):
        store.publish("v2")
    assert store.current_version() == "v1" and store.list_versions() == ["v1"]


def test_no_current_version(tmp_path):
    store = IndexStore(str(tmp_path / "none"))
    assert store.current_version() is None and store.list_versions() == []
    with pytest.raises(NoCurrentVersionError, match="no published index version"):
        store.resolve()
    with pytest.raises(VersionNotFoundError, match="no index version v9"):
        store.resolve("v9")


def test_interrupted_copy_without_manifest_is_ignored(tmp_path):
    root = str(tmp_path / "idx")
    _write(root, "v1")
    half = tmp_path / "idx" / "versions" / "v2"
    half.mkdir()
    (half / "shard-00000.parquet").write_bytes(b"partial")
    store = IndexStore(root)
    assert store.list_versions() == ["v1"]
    with pytest.raises(VersionNotFoundError):
        store.resolve("v2")
    assert store.cleanup(keep=3, stale_after_s=3600)["incomplete"] == []  # fresh: maybe a copy in progress
    assert store.cleanup(keep=3, stale_after_s=0, now=time.time() + 1)["incomplete"] == ["v2"]


def test_retention_keeps_newest_and_never_the_current(tmp_path):
    root = str(tmp_path / "idx")
    for i in range(1, 6):
        _write(root, f"v{i}", seed=i)
    store = IndexStore(root)
    store.set_current("v1")  # rolled back to the oldest
    deleted = store.cleanup(keep=2)
    assert deleted["versions"] == ["v2", "v3"]
    assert store.list_versions() == ["v1", "v4", "v5"] and store.current_version() == "v1"
    with pytest.raises(ValueError):
        store.cleanup(keep=0)


def test_writer_keep_applies_retention(tmp_path):
    root = str(tmp_path / "idx")
    for i in range(1, 5):
        _write(root, f"v{i}", seed=i, keep=2)
    assert IndexStore(root).list_versions() == ["v3", "v4"]


def test_stale_staging_is_cleaned(tmp_path):
    root = str(tmp_path / "idx")
    _write(root, "v1")
    _write(root, "v2", publish=False, seed=1)
    store = IndexStore(root)
    store.mark_failed("v2", "MAP fell")
    with pytest.raises(IndexIntegrityError, match="failed its checks"):
        store.publish("v2")
    assert store.cleanup(keep=3)["staging"] == []
    assert store.cleanup(keep=3, stale_after_s=10, now=time.time() + 60)["staging"] == ["v2"]
    assert store.list_staged() == []


def test_new_version_names_sort_by_time():
    import datetime as dt

    a = IndexStore.new_version_name(dt.datetime(2026, 1, 1, 2, 0, 0, tzinfo=dt.timezone.utc))
    b = IndexStore.new_version_name(dt.datetime(2026, 1, 2, 2, 0, 0, tzinfo=dt.timezone.utc))
    assert a < b and a.startswith("v20260101T020000000Z-")
