"""Datasets that are not Fashion-MNIST's ten grey classes, through the README's main command:
``qadwh run --data URI --exit-after-queries`` — trained on Ray Train from Ray Data, evaluated,
indexed on Ray Data, served on Ray Serve and queried over HTTP, with the dataset's own class names.

(1) an RGB image folder of 5 new classes (48x48 JPEG and PNG, some nested) with a 12-bit model;
(2) a multi-label Parquet dataset with string labels, read from the S3-compatible test server.
"""

import json
import os
import subprocess
import sys

import pytest

from own_data import MULTILABEL_CLASSES, RGB_CLASSES, make_multilabel_parquet, make_rgb_folder
from serving_support import free_port

pytestmark = pytest.mark.timeout(900)


def _run(data: str, out: str, bits: int, tmp_path) -> str:
    qadwh = os.path.join(os.path.dirname(sys.executable), "qadwh")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster
    cmd = [qadwh, "run", "--data", data, "--bits", str(bits), "--methods", "qadwh", "--epochs", "1",
           "--set", "max_steps=2", "--set", "classes_per_batch=4", "--set", "images_per_class=4",
           "--out", out, "--port", str(free_port()), "--exit-after-queries", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=850)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-6000:]
    for stage in ("[1/4] train on Ray Train", "[2/4] evaluate", "[3/4] index the database on Ray Data", "[4/4] serve on Ray Serve"):
        assert stage in text, text[-4000:]
    return text


def _top5_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if "QaDWH top-5:" in line:
            names |= {n.strip() for n in line.split("QaDWH top-5:")[1].split(",")}
    return names


def test_rgb_image_folder_with_a_12_bit_model(tmp_path):
    from qadwh_ray.index.store import IndexStore

    make_rgb_folder(str(tmp_path / "images"), per_class=60)
    out = tmp_path / "run"
    text = _run(str(tmp_path / "images"), str(out), 12, tmp_path)
    assert "300 RGB images (48x48 first), 5 classes, single-label [folder]" in text
    store = IndexStore(str(out / "index"))
    manifest = store.read_manifest(store.current_version())
    assert manifest.code_bits == 12 and manifest.num_items == 120  # the split's database: 24 per class
    assert list(manifest.class_names) == sorted(RGB_CLASSES)
    names = _top5_names(text)
    assert names and names <= set(RGB_CLASSES), names  # answers over HTTP name the dataset's own classes
    split = json.loads((out / "split.json").read_text())
    assert len(split["query"]) == 30 and split["protocol"] == "per-class"


def test_multilabel_parquet_on_s3(tmp_path, s3_server):
    bucket = s3_server.make_bucket()
    data = f"s3://{bucket}/catalogue"
    make_multilabel_parquet(data, n=400)
    out = f"s3://{bucket}/run"
    text = _run(data, out, 16, tmp_path)
    assert "400 grey images (56x56 first), 10 classes, multi-label [parquet]" in text
    names = _top5_names(text)
    assert names and names <= set(MULTILABEL_CLASSES), names
