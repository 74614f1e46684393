"""Nightly re-index: checks gate publication; incremental append without re-encoding."""

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from index_helpers import local_codes, save_model

from qadwh_ray import storage
from qadwh_ray.data.transforms import encode_png
from qadwh_ray.index import IndexStore, open_index
from qadwh_ray.index_build import BuildOptions, CheckOptions, newest_checkpoint, reindex

pytestmark = pytest.mark.ray

FAST = dict(block_rows=200, batch_size=200, actors=1, shards=2)
CHECKS = dict(map_queries=100, sample_queries=4, k=20)


def test_reindex_publishes_good_and_refuses_worse_then_appends(ray_cluster, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("qadwh_jobs_index", Path(__file__).resolve().parents[2] / "jobs" / "index.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job_main = job.main

    ckpts = tmp_path / "train-run"
    good = save_model(ckpts / "checkpoint_000001" / "model.pt", seed=0)
    root = str(tmp_path / "index")

    # first nightly run: nothing current yet, checks run and the version is published
    r1 = reindex(str(ckpts), "fashion-augmented:600", root, BuildOptions(**FAST), CheckOptions(**CHECKS))
    store = IndexStore(root)
    assert r1.published and store.current_version() == r1.version
    checks = r1.manifest.checks
    assert checks["sample_queries"]["status"] == "identical to brute force"
    assert checks["checksums"]["status"] == "verified" and checks["items"]["count"] == 600
    assert 0.15 < checks["map"]["value"] < 1.0
    assert open_index(root).manifest.checks == checks  # the published manifest carries them

    # a newer but worse checkpoint: the MAP check fails, nothing is published, exit status 1 with the reason
    time.sleep(0.01)
    worse = save_model(ckpts / "checkpoint_000002" / "model.pt", seed=0, degenerate=True)
    os.utime(worse, (time.time() + 5, time.time() + 5))
    assert newest_checkpoint(str(ckpts)) == worse
    rc = job_main(["--reindex", "--checkpoint", str(ckpts), "--source", "fashion-augmented:600", "--out", root,
                   "--shards", "2", "--block-rows", "200", "--batch-size", "200", "--map-queries", "100", "--sample-queries", "4"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "re-index check failed" in err and "MAP on the query set fell from" in err and "current version is unchanged" in err
    assert store.current_version() == r1.version and store.list_versions() == [r1.version]
    failed = [v for v in store.list_staged()]
    assert len(failed) == 1
    reason = json.loads(storage.read_bytes(storage.join(store.staging_uri(failed[0]), "FAILED.json")))
    assert "MAP" in reason["reason"]

    # incremental: new items appended with the current checkpoint, nothing re-encoded
    from qadwh_ray.data.fashion import load_fashion_mnist

    images, labels = load_fashion_mnist()
    new_ids = np.arange(65_000, 65_150)
    table = pa.table({"id": pa.array(new_ids, pa.int64()), "image": pa.array([encode_png(im) for im in images[new_ids]], pa.binary()),
                      "label": pa.array(labels[new_ids].astype(np.int64))})
    new_src = str(tmp_path / "new-items")
    os.makedirs(new_src)
    pq.write_table(table, os.path.join(new_src, "part-0.parquet"))
    before = open_index(root).read_all()
    r3 = reindex(None, new_src, root, BuildOptions(**FAST), CheckOptions(**CHECKS, map_tolerance=0.05, queries="fashion:query"),
                 incremental=True)
    m3 = r3.manifest
    assert r3.published and m3.parent == r1.version and m3.num_items == 750
    assert m3.checkpoint["sha256"] == r1.manifest.checkpoint["sha256"]
    assert m3.build["rows_read"] == 150  # only the new items went through the encoder
    assert m3.class_names == r1.manifest.class_names and m3.class_names[0] == "T-shirt/top"  # the version's classes
    after = open_index(root).read_all()
    old = np.isin(after.ids, before.ids)
    assert np.array_equal(after.ids[old], before.ids) and after.codes[old].tobytes() == before.codes.tobytes()
    assert np.array_equal(after.ids[~old], new_ids)
    assert after.codes[~old].tobytes() == local_codes(good, images[new_ids]).tobytes()
    assert store.list_versions() == [r1.version, r3.version]
