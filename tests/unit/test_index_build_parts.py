"""The pieces of the indexing pipeline that run inside Ray tasks, tested as plain
functions: source planning and decoding (bad rows named), part writing, shard
compaction (exactly once, duplicates). No Ray."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qadwh_ray import storage
from qadwh_ray.data.transforms import encode_png
from qadwh_ray.index.format import ShardInfo, check_shard_bytes, shard_data_from_table, shard_of_ids
from qadwh_ray.index_build.errors import IndexBuildError
from qadwh_ray.index_build.parts import compact_shard, write_parts
from qadwh_ray.data.fashion import fashion_augmented_images
from qadwh_ray.index_build.sources import _catalog_batch, plan_source


def _png(size=28, value=7):
    return encode_png(np.full((size, size), value, np.uint8))


def _bad_table():
    blobs = [_png(value=i) for i in range(10)]
    blobs[3] = b"\x89PNG not really"
    blobs[5] = _png(size=20)
    labels = [i % 10 for i in range(10)]
    labels[7] = 12
    labels[9] = None
    return pa.table({"id": pa.array(np.arange(100, 110), pa.int64()), "image": pa.array(blobs, pa.binary()), "label": pa.array(labels, pa.int64())})


def test_parquet_plan_and_decode_name_bad_rows(tmp_path):
    f = str(tmp_path / "db.parquet")
    good_labels = pa.array([i % 10 for i in range(10)], pa.int64())
    pq.write_table(_bad_table().set_column(2, "label", good_labels), f, row_group_size=4)
    plan = plan_source(f, num_classes=10, part="all")
    assert plan.kind == "dataset" and plan.n_rows == 10 and plan.image_size == (28, 28)
    cat = plan.params["catalog"]
    b = _catalog_batch({"_row": np.arange(10), "position": plan.params["positions"]}, cat, (28, 28), "L")
    reasons = {int(r): str(m) for r, m in zip(b["_row"], b["bad"]) if m}
    assert sorted(reasons) == [3]  # a smaller image is resized, like any photo collection's
    assert reasons[3].startswith(f"id 103: cannot decode image {f}#row=3")
    assert b["image"].shape == (10, 28, 28) and b["image"][2].max() == 2 and b["image"][5].max() == 7
    assert b["labels"][4].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert b["source"][4] == f"{f}#row=4" and b["id"].tolist() == list(range(100, 110))


def test_parquet_plan_rejects_bad_labels_and_columns(tmp_path):
    f = str(tmp_path / "db.parquet")
    table = _bad_table()
    pq.write_table(table.set_column(2, "label", pa.array([i % 10 for i in range(9)] + [12], pa.int64())), f)
    with pytest.raises(ValueError, match="class 12 of id 109 .* outside the 10 classes"):
        _plan_with_names(f, 10)
    pq.write_table(table, f)
    with pytest.raises(ValueError, match=r"label is null in row 9 of .*db\.parquet"):
        plan_source(f, num_classes=10, part="all")
    g = str(tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"id": [1], "img": [b"x"], "label": [0]}), g)
    with pytest.raises(ValueError, match=r"part-0\.parquet has no 'image' column .*\(columns: id, img, label\)"):
        plan_source(g, num_classes=10, part="all")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(ValueError, match="broken.parquet is not a readable Parquet file"):
        plan_source(str(tmp_path / "broken.parquet"), num_classes=10, part="all")


def _plan_with_names(f, n):
    storage.write_bytes(storage.join(str(storage.local_path(f)).rsplit("/", 1)[0], "classes.txt"),
                        "\n".join(f"c{i}" for i in range(n)).encode())
    return plan_source(f, num_classes=n, part="all")


def test_fashion_sources_plan():
    p = plan_source("fashion", num_classes=10)
    assert p.n_rows == 64_000 and p.params == {"part": "database", "split_seed": 0}
    assert plan_source("fashion:query", num_classes=10).n_rows == 1000
    assert plan_source("fashion-augmented:1e6", num_classes=10).n_rows == 1_000_000
    with pytest.raises(ValueError, match="unknown dataset part"):
        plan_source("fashion:nope", num_classes=10)


def test_augmented_items_do_not_depend_on_batching():
    ids = np.array([5, 70_001, 70_999, 71_000, 140_500], np.int64)
    a, la = fashion_augmented_images(ids)
    b = np.stack([fashion_augmented_images(ids[i : i + 1])[0][0] for i in range(len(ids))])
    assert np.array_equal(a, b)
    from qadwh_ray.data.fashion import load_fashion_mnist

    images, labels = load_fashion_mnist()
    assert np.array_equal(a[0], images[5]) and not np.array_equal(a[1], images[1])
    assert la.tolist() == labels[ids % 70_000].tolist()


def _encoded_batch(rows, ids, nbits=16, bad=None):
    n = len(rows)
    rng = np.random.default_rng(int(rows[0]) if n else 0)
    return {
        "_row": np.asarray(rows, np.int64),
        "id": np.asarray(ids, np.int64),
        "code": rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8),
        "labels": np.eye(10, dtype=np.uint8)[np.asarray(ids) % 10],
        "source": np.array([f"s{i}" for i in rows], dtype=object),
        "bad": np.array(bad if bad is not None else [""] * n, dtype=object),
    }


def test_parts_then_compaction_exactly_once(tmp_path):
    parts = str(tmp_path / "_parts")
    n_rows, shards = 100, 3
    batches = [_encoded_batch(range(s, s + 25), np.arange(s, s + 25) * 7) for s in range(0, 100, 25)]
    batches[1]["bad"][4] = "id 196 (s29): cannot decode image"
    recs = [write_parts(b, parts, shards, 16, True) for b in batches]
    again = write_parts(batches[2], parts, shards, 16, True)  # a retried task rewrites the same part names
    assert sorted(again["file"].tolist()) == sorted(recs[2]["file"].tolist())
    bad = [(int(r), str(m)) for rec in recs for k, r, m in zip(rec["kind"], rec["_row"], rec["reason"]) if k == "bad"]
    assert bad == [(29, "id 196 (s29): cannot decode image")]
    by_shard = {s: [f for rec in recs for k, sh, f in zip(rec["kind"], rec["shard"], rec["file"]) if k == "part" and sh == s] for s in range(shards)}
    seen = np.zeros(n_rows, bool)
    total = 0
    for s in range(shards):
        out = str(tmp_path / f"shard-{s:05d}.parquet")
        res = compact_shard(s, sorted(set(by_shard[s])), out, 16, n_rows)
        bm = np.unpackbits(res["bitmap"], count=n_rows).astype(bool)
        assert not (seen & bm).any()
        seen |= bm
        info = ShardInfo(**res["info"])
        d = shard_data_from_table(check_shard_bytes(storage.read_bytes(out), info, 16, out), 16, 10)
        assert (np.diff(d.ids) > 0).all() and (shard_of_ids(d.ids, shards) == s).all()
        total += info.rows
    assert total == 99 and seen.sum() == 99 and not seen[29]


def test_compaction_refuses_overlapping_parts(tmp_path):
    parts = str(tmp_path / "_parts")
    a = write_parts(_encoded_batch(range(0, 10), range(0, 10)), parts, 1, 16, True)
    b = write_parts(_encoded_batch(range(5, 15), range(5, 15)), parts, 1, 16, True)
    with pytest.raises(IndexBuildError, match="source row 5 was encoded more than once"):
        compact_shard(0, [*a["file"], *b["file"]], str(tmp_path / "s.parquet"), 16, 15)


def test_compaction_reports_duplicate_ids_keeping_the_first(tmp_path):
    parts = str(tmp_path / "_parts")
    rec = write_parts(_encoded_batch(range(0, 6), [10, 11, 12, 11, 13, 10]), parts, 1, 16, True)
    res = compact_shard(0, list(rec["file"]), str(tmp_path / "s.parquet"), 16, 6)
    assert res["info"]["rows"] == 4
    dups = sorted((d["row"], d["id"]) for d in res["duplicates"])
    assert dups == [(3, 11), (5, 10)]
    assert "first at row 1" in [d for d in res["duplicates"] if d["id"] == 11][0]["reason"]


def test_image_folder_plan_and_decode(tmp_path):
    for cls, values in (("boots", [1, 2]), ("coats", [3])):
        (tmp_path / "db" / cls).mkdir(parents=True)
        for v in values:
            (tmp_path / "db" / cls / f"img{v}.png").write_bytes(_png(value=v))
    (tmp_path / "db" / "coats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    plan = plan_source(str(tmp_path / "db"), num_classes=2, part="all")
    assert plan.kind == "dataset" and plan.n_rows == 4 and plan.class_names == ["boots", "coats"]
    b = _catalog_batch({"_row": np.arange(4), "position": plan.params["positions"]}, plan.params["catalog"], (28, 28), "L")
    assert b["labels"].argmax(1).tolist() == [0, 0, 1, 1]
    broken = [i for i, m in enumerate(b["bad"]) if m]
    assert broken == [2] and b["source"][2].endswith("coats/broken.png") and "cannot decode image" in b["bad"][2]
    assert b["image"][3].max() == 3
    with pytest.raises(ValueError, match="has 2 classes but the model was trained on 10"):
        plan_source(str(tmp_path / "db"), num_classes=10, part="all")
