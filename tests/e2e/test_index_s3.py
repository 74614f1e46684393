"""The full build → publish → read cycle against a real S3 server on 127.0.0.1 (moto),
checked with boto3 (the objects) and pyarrow (the reader)."""

import os

import numpy as np
import pytest
from index_helpers import local_codes, spread_model

from qadwh_ray.data.writers import write_parquet_images
from qadwh_ray.index import IndexIntegrityError, IndexStore, open_index, write_index
from qadwh_ray.index_build import BuildOptions, build_index
from qadwh_ray.model import save_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

_S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")


def _keys(client, bucket, prefix):
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(k for k in out if not k.endswith("/"))  # pyarrow leaves empty "directory" marker objects behind


def test_build_publish_read_on_s3(s3_server, ray_cluster, tmp_path):
    from qadwh_ray.data.fashion import load_fashion_mnist

    bucket = s3_server.make_bucket()
    client = s3_server.client()
    images, labels = load_fashion_mnist()
    n = 250
    write_parquet_images(f"s3://{bucket}/db", images[:n], labels[:n], np.arange(n) + 7000, rows_per_file=100)
    ckpt = f"s3://{bucket}/models/run1/model.pt"
    save_checkpoint(ckpt, spread_model(seed=3))
    root = f"s3://{bucket}/index"
    # the endpoint and the moto test credentials, for the pipeline's workers (a real cluster uses IAM roles)
    env = {k: os.environ[k] for k in _S3_ENV if k in os.environ}
    opts = dict(shards=2, block_rows=100, batch_size=128, actors=1, worker_env=env)

    r1 = build_index(ckpt, f"s3://{bucket}/db", root, BuildOptions(**opts))
    keys = _keys(client, bucket, "index/")
    v1 = r1.version
    assert keys == ["index/CURRENT", f"index/versions/{v1}/manifest.json",
                    f"index/versions/{v1}/shard-00000.parquet", f"index/versions/{v1}/shard-00001.parquet"]
    pointer = client.get_object(Bucket=bucket, Key="index/CURRENT")["Body"].read()
    assert v1.encode() in pointer

    reader = open_index(root)
    assert reader.version == v1 and reader.manifest.num_items == n
    assert reader.manifest.checkpoint["uri"] == ckpt
    data = reader.read_all()
    assert np.array_equal(data.ids, np.arange(n) + 7000)
    local_ckpt = str(tmp_path / "model.pt")
    with open(local_ckpt, "wb") as f:
        f.write(client.get_object(Bucket=bucket, Key="models/run1/model.pt")["Body"].read())
    assert data.codes.tobytes() == local_codes(local_ckpt, images[:n]).tobytes()
    assert data.sources[0].startswith(f"s3://{bucket}/db/part-00000.parquet#row=0")

    # a second version (same codes, written without Ray) with keep=1: staged, copied
    # server-side, pointer moved, and the old version's objects deleted
    v2 = write_index(root, data.ids, data.codes, data.labels, code_bits=16, num_shards=2, checkpoint=reader.manifest.checkpoint, keep=1).version
    keys = _keys(client, bucket, "index/")
    assert not any(k.startswith(f"index/versions/{v1}/") for k in keys) and not any("_staging" in k for k in keys)
    assert IndexStore(root).current_version() == v2 and IndexStore(root).list_versions() == [v2]

    # a corrupted shard object is detected when it is loaded, and named
    key = f"index/versions/{v2}/shard-00001.parquet"
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) - 20])
    r = open_index(root)
    r.read_shard(0)
    with pytest.raises(IndexIntegrityError, match=rf"shard shard-00001\.parquet at s3://{bucket}/{key} is damaged"):
        r.read_shard(1)
    from qadwh_ray.index_build.cli import main as cli_main

    assert cli_main(["index-verify", "--root", root]) == 1
