"""`qadwh index` / jobs/index.py argument handling and errors that need no Ray."""

import importlib.util
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadwh_ray.index.writer import write_index
from qadwh_ray.index_build.cli import main


def _ckpt(tmp_path):
    from qadwh_ray.model import ModelConfig, build_model, save_checkpoint

    path = str(tmp_path / "m.pt")
    save_checkpoint(path, build_model(ModelConfig(nbits=16)))
    return path


def test_job_module_has_no_import_side_effects():
    from pathlib import Path

    before = set(sys.modules)
    path = Path(__file__).resolve().parents[2] / "jobs" / "index.py"
    spec = importlib.util.spec_from_file_location("qadwh_jobs_index", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert callable(mod.main)
    assert not any(m == "ray" or m.startswith("ray.") for m in set(sys.modules) - before)


def test_missing_out_and_missing_columns_exit_2_naming_the_file(tmp_path, capsys):
    assert main(["index", "--checkpoint", "x.pt", "--source", "fashion"]) == 2
    assert "--out" in capsys.readouterr().err
    src = tmp_path / "db"
    src.mkdir()
    pq.write_table(pa.table({"id": [1], "picture": [b"x"], "label": [0]}), src / "part-0.parquet")
    rc = main(["index", "--checkpoint", _ckpt(tmp_path), "--source", str(src), "--out", str(tmp_path / "idx")])
    err = capsys.readouterr().err
    assert rc == 2 and "has no 'image' column" in err and "part-0.parquet" in err
    assert not (tmp_path / "idx").exists()


def test_versions_verify_publish_gc(tmp_path, capsys):
    root = str(tmp_path / "idx")
    for v in ("v1", "v2"):
        write_index(root, np.arange(10), np.zeros((10, 2), np.uint8), code_bits=16, version=v)
    assert main(["index-versions", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "  v1  items=10" in out and "* v2  items=10" in out
    assert main(["index-verify", "--root", root, "--version", "v1"]) == 0
    assert main(["index-publish", "--root", root, "--version", "v1"]) == 0
    assert "CURRENT -> v1" in capsys.readouterr().out
    assert main(["index-gc", "--root", root, "--keep", "1"]) == 0
    # keep=1 keeps the newest (v2) and the current one (v1, rolled back to): nothing to delete
    assert '{"versions": [], "staging": [], "incomplete": []}' in capsys.readouterr().out
    assert main(["index-verify", "--root", root, "--version", "nope"]) == 1


def test_a_12_bit_version_is_listed_with_its_real_length_and_verifies(tmp_path, capsys):
    root = str(tmp_path / "idx")
    codes = np.tile(np.array([[0xFF, 0x0F]], np.uint8), (10, 1))  # 12 bits set, 4 padding bits 0
    m = write_index(root, np.arange(10), codes, np.eye(10, 3, dtype=np.uint8), code_bits=12, class_names=["a", "b", "c"])
    assert m.code_bits == 12 and m.code_bytes == 2 and m.class_names == ["a", "b", "c"]
    assert main(["index-versions", "--root", root]) == 0
    assert "bits=12" in capsys.readouterr().out
    assert main(["index-verify", "--root", root, "--version", m.version]) == 0
