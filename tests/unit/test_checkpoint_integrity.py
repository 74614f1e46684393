"""Checkpoint integrity: the SHA-256 file written after model.pt, and the resume walk past incomplete or
damaged checkpoint directories (newest first, never past the one asked for)."""

import hashlib
import os
import subprocess

import pyarrow.fs as pafs
import pytest
import torch

from qadwh_ray import storage
from qadwh_ray.model import ModelConfig, build_model, save_checkpoint
from qadwh_ray.model.checkpoint import (
    CheckpointError,
    checkpoint_dir_name,
    load_newest_good,
    load_payload,
    newest_checkpoint,
)

LOCAL = pafs.LocalFileSystem()


def _model(seed: int):
    torch.manual_seed(seed)
    return build_model(ModelConfig(nbits=8, num_classes=10))


def _run(root, steps) -> dict[int, str]:
    """A training run's directory: one checkpoint_step<N>/ per step, each saved as training saves it."""
    dirs = {}
    for i, step in enumerate(steps):
        d = os.path.join(root, checkpoint_dir_name(step))
        save_checkpoint(os.path.join(d, "model.pt"), _model(step), step=step)
        os.utime(os.path.join(d, "model.pt"), (1_000_000 + i, 1_000_000 + i))  # written in step order
        dirs[step] = d
    return dirs


def test_the_checksum_file_holds_the_sha256_of_model_pt_in_sha256sum_format(tmp_path):
    d = tmp_path / "ck"
    digest = save_checkpoint(str(d / "model.pt"), _model(0), step=1)
    assert digest == hashlib.sha256((d / "model.pt").read_bytes()).hexdigest()
    assert (d / "model.pt.sha256").read_text() == f"{digest}  model.pt\n"
    assert subprocess.run(["sha256sum", "-c", "model.pt.sha256"], cwd=d, capture_output=True).returncode == 0
    assert sorted(os.listdir(d)) == ["model.pt", "model.pt.sha256"]  # no temporary files left behind
    assert load_payload(str(d))["sha256"] == digest


def test_a_truncated_model_is_refused_and_the_previous_good_checkpoint_is_used(tmp_path):
    dirs = _run(tmp_path, [2, 4, 6])
    model = os.path.join(dirs[6], "model.pt")
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    with pytest.raises(CheckpointError, match=rf"{model} is damaged: its \d+ bytes have SHA-256 [0-9a-f]{{64}}, but model.pt.sha256 records"):
        load_payload(dirs[6])

    logs = []
    uri, payload = load_newest_good(LOCAL, dirs[6], log=logs.append)
    assert uri == dirs[4] and payload["step"] == 4 and payload["uri"] == os.path.join(dirs[4], "model.pt")
    assert len(logs) == 1 and logs[0].startswith(f"skipping checkpoint {dirs[6]}: {model} is damaged")
    expected = _model(4).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in payload["state_dict"].items())


def test_a_flipped_byte_of_the_same_length_is_detected(tmp_path):
    dirs = _run(tmp_path, [1, 2])
    model = os.path.join(dirs[2], "model.pt")
    data = bytearray(open(model, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(model, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged"):
        load_payload(model)  # the file alone is checked too: its checksum file is beside it
    assert load_newest_good(LOCAL, dirs[2], log=lambda _: None)[1]["step"] == 1


def test_a_checkpoint_directory_without_its_checksum_file_is_incomplete(tmp_path):
    dirs = _run(tmp_path, [3, 6])
    os.remove(os.path.join(dirs[6], "model.pt.sha256"))  # as if the writer died before its last file
    with pytest.raises(CheckpointError, match=rf"{dirs[6]}/model.pt is incomplete: no model.pt.sha256 beside it"):
        load_payload(dirs[6])
    logs = []
    assert load_newest_good(LOCAL, dirs[6], log=logs.append)[1]["step"] == 3
    assert logs == [f"skipping checkpoint {dirs[6]}: {dirs[6]}/model.pt is incomplete: no model.pt.sha256 beside it (written last)"]
    # and the newest checkpoint of a run for indexing is the newest complete one
    assert newest_checkpoint(str(tmp_path)) == os.path.join(dirs[3], "model.pt")


def test_a_directory_without_model_pt_is_skipped(tmp_path):
    dirs = _run(tmp_path, [1])
    empty = tmp_path / checkpoint_dir_name(2)
    empty.mkdir()  # what an upload that died before its first file leaves
    logs = []
    assert load_newest_good(LOCAL, str(empty), log=logs.append)[0] == dirs[1]
    assert "is incomplete" in logs[0]


def test_the_walk_goes_back_only_and_says_when_no_checkpoint_is_good(tmp_path):
    dirs = _run(tmp_path, [2, 4, 6])
    with open(os.path.join(dirs[2], "model.pt"), "ab") as f:
        f.write(b"x")
    os.remove(os.path.join(dirs[4], "model.pt.sha256"))
    (tmp_path / "notes").mkdir()  # other directories of the run are not checkpoints
    logs = []
    with pytest.raises(CheckpointError, match=r"no complete, undamaged checkpoint at or before .*checkpoint_step00000004 "
                                              r"\(skipped checkpoint_step00000004, checkpoint_step00000002\)"):
        load_newest_good(LOCAL, dirs[4], log=logs.append)  # the good step 6 is newer: not a fallback
    assert len(logs) == 2


def test_a_rewritten_checkpoint_replaces_its_checksum(tmp_path):
    dirs = _run(tmp_path, [5])
    model = os.path.join(dirs[5], "model.pt")
    digest = save_checkpoint(model, _model(99), step=5)
    assert open(model + ".sha256").read().split()[0] == digest
    assert load_payload(dirs[5])["sha256"] == digest


def test_a_lone_file_without_checksum_loads_and_one_with_a_wrong_checksum_does_not(tmp_path):
    path = tmp_path / "qadwh-16.pt"
    save_checkpoint(str(path), _model(0), step=1)
    os.remove(f"{path}.sha256")  # a checkpoint file written before checksum files existed
    assert load_payload(str(path))["step"] == 1
    (tmp_path / "qadwh-16.pt.sha256").write_text("0" * 64 + "  qadwh-16.pt\n")
    with pytest.raises(CheckpointError, match=f"{path} is damaged"):
        load_payload(str(path))


def test_the_resume_walk_on_s3(s3_server):
    bucket = s3_server.make_bucket()
    run = f"s3://{bucket}/runs/r"
    for step in (10, 20, 30):
        save_checkpoint(f"{run}/{checkpoint_dir_name(step)}/model.pt", _model(step), step=step)
    latest = f"{run}/{checkpoint_dir_name(30)}"
    data = storage.read_bytes(f"{latest}/model.pt")
    storage.write_bytes(f"{latest}/model.pt", data[: len(data) - 100])
    logs = []
    uri, payload = load_newest_good(*storage.filesystem_and_path(latest), log=logs.append)
    assert uri == f"{run}/{checkpoint_dir_name(20)}" and payload["step"] == 20
    assert payload["uri"] == f"{uri}/model.pt"
    assert logs[0].startswith(f"skipping checkpoint {latest}: {latest}/model.pt is damaged")
