"""A few real training steps on real Fashion-MNIST images, end to end through evaluation."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import pyarrow.parquet as pq

from qadwh_ray.core.hamming import hamming_distances, weighted_hamming_distances
from qadwh_ray.core.metrics import average_precisions
from qadwh_ray.core.stats import paired_difference
from qadwh_ray.evaluation.ablation import evaluate_checkpoints, run_ablation, summarize_order
from qadwh_ray.evaluation.export import slug
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.datasets import RetrievalData, load_retrieval_data
from qadwh_ray.training.local import train_local
from qadwh_ray.model import load_checkpoint
from qadwh_ray.model.checkpoint import load_payload
from qadwh_ray.data.catalog import DatasetInfo

FASHION_INFO = DatasetInfo("fashion", "fashion", tuple(str(i) for i in range(10)), False, "L", (28, 28), 70000)


@pytest.fixture(scope="module")
def small_data() -> RetrievalData:
    full = load_retrieval_data("fashion", split_seed=0, val_fraction=0.1)
    return dataclasses.replace(
        full, train_pos=full.train_pos[:320], val_pos=full.val_pos[:40], query_pos=full.query_pos[::20],
        db_pos=full.db_pos[:600],
    )


def test_local_training_steps_checkpoint_and_keep_W_feasible(small_data, tmp_path):
    cfg = TrainConfig(nbits=16, epochs=2, max_steps=3, classes_per_batch=4, images_per_class=4)
    uri = str(tmp_path / "model.pt")
    result = train_local(cfg, small_data, checkpoint_uri=uri, progress=False, log=lambda *_: None)
    assert result.steps == 3
    row = result.history[-1]
    assert {"loss", "triplet", "classification", "train_accuracy", "val_map"} <= set(row)
    assert 0 <= row["val_map"] <= 1
    W = result.model.W.detach()
    assert (W >= 0).all() and torch.allclose(W.mean(1), torch.ones(10))
    assert not torch.equal(W, torch.ones_like(W))  # W is learned
    payload = load_payload(uri)
    assert payload["train_config"]["nbits"] == 16 and payload["step"] == 3 and payload["split_seed"] == 0
    again = load_checkpoint(uri)
    torch.testing.assert_close(again.W, result.model.W)


def test_ninh_keeps_W_frozen_at_one(small_data):
    cfg = TrainConfig(nbits=8, epochs=1, max_steps=2, classes_per_batch=4, images_per_class=4, method="ninh")
    result = train_local(cfg, small_data, progress=False, log=lambda *_: None)
    assert torch.equal(result.model.W.detach(), torch.ones(10, 8))


def test_weight_warmup_keeps_W_at_one_then_learns_it(small_data):
    from qadwh_ray.data.transforms import to_float_tensor
    from qadwh_ray.training.loop import make_optimizer, train_step
    from qadwh_ray.model.network import build_model

    cfg = TrainConfig(nbits=8, epochs=3, weight_warmup_epochs=2, classes_per_batch=4, images_per_class=4)
    model = build_model(cfg.model_config(FASHION_INFO, 28))
    optimizer = make_optimizer(model, cfg)
    idx = np.concatenate([np.flatnonzero(small_data.train_labels[:, c])[:4] for c in range(4)])
    x = to_float_tensor(small_data.train_images[idx], mean=model.config.mean, std=model.config.std)
    y = torch.as_tensor(small_data.train_labels[idx], dtype=torch.float32)
    rng = np.random.default_rng(0)
    head = [p for n, p in model.named_parameters() if n != "W"][-1]
    before = head.detach().clone()
    for epoch in (0, 1):  # warm-up: the network learns, W stays at its 1s (the loss is NINH's)
        train_step(model, optimizer, x, y, cfg, rng, epoch=epoch)
        assert torch.equal(model.W.detach(), torch.ones(10, 8))
    assert not torch.equal(head.detach(), before)
    train_step(model, optimizer, x, y, cfg, rng, epoch=2)  # after it: W is learned, still feasible
    W = model.W.detach()
    assert not torch.equal(W, torch.ones(10, 8)) and torch.allclose(W.mean(1), torch.ones(10))


def test_weight_lr_scale_gives_W_its_own_rate_under_the_schedule():
    from qadwh_ray.training.loop import make_optimizer, make_scheduler
    from qadwh_ray.model.network import build_model

    cfg = TrainConfig(nbits=8, epochs=4, lr=1e-3, weight_lr_scale=10.0, lr_schedule="cosine")
    model = build_model(cfg.model_config(FASHION_INFO, 28))
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    net_group, w_group = optimizer.param_groups
    assert w_group["params"] == [model.W] and w_group["weight_decay"] == 0.0
    for _ in range(3):  # the cosine schedule scales both rates alike: W's stays 10x the network's
        assert w_group["lr"] == pytest.approx(10 * net_group["lr"]) and net_group["lr"] > 0
        optimizer.step()
        scheduler.step()
    assert net_group["lr"] < cfg.lr


def test_ablation_table_has_every_ranking(small_data, tmp_path):
    cfg = TrainConfig(epochs=1, max_steps=2, classes_per_batch=4, images_per_class=4)
    rows, runs = run_ablation(cfg, [8], ["ninh", "qadwh", "qadwh-ref"], out_dir=str(tmp_path), progress=False,
                              log=lambda *_: None, data=small_data, export_dir=str(tmp_path / "export"))
    methods = [r.method for r in rows]
    assert methods == [
        "NINH", "LSH (features)", "ITQ (features)", "QaDWH codes, plain Hamming", "DWH", "QaDWH", "QaDWH (reference form)",
    ]
    for r in rows:
        assert 0 <= r.map_all <= 1 and 0 <= r.map_at_1000 <= 1 and 0 <= r.precision_r2 <= 1
    assert len(summarize_order(rows)) == 1
    assert (tmp_path / "ablation.json").exists() and (tmp_path / "split.json").exists()
    assert len(runs) == 3 and all(np.isfinite(r["train_seconds"]) for r in runs)
    assert (tmp_path / "pr-8bits.png").stat().st_size > 1000 and (tmp_path / "pk-8bits.png").exists()
    # Every number can be recomputed from the export alone.
    for r in rows:
        q = pq.read_table(tmp_path / "export" / f"{slug(r.method)}-8" / "queries.parquet").to_pydict()
        d = pq.read_table(tmp_path / "export" / f"{slug(r.method)}-8" / "database.parquet").to_pydict()
        qc = np.array([np.frombuffer(c, np.uint8) for c in q["code"]])
        dc = np.array([np.frombuffer(c, np.uint8) for c in d["code"]])
        if "weights" in q:
            dist = weighted_hamming_distances(qc, dc, np.array(q["weights"]))
        else:
            dist = hamming_distances(qc, dc).astype(float)
        ap = average_precisions(dist, np.array(q["labels"]), np.array(d["labels"]), db_ids=np.array(d["id"]))
        assert ap == pytest.approx(np.array(q["ap"]), abs=1e-12), r.method
        assert ap.mean() == pytest.approx(r.map_all, abs=1e-12), r.method
    # ... and so is every paired difference of the report, from those per-query APs
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert len(report["paired"]) == 21 and report["evaluated_on"] == "test"  # every pair of the 7 rankings at 8 bits
    p = report["paired"][0]
    ap_of = {r.method: r.ap for r in rows}
    again = paired_difference(ap_of[p["better"]], ap_of[p["worse"]])
    assert (again.estimate, again.low, again.high) == (p["difference"], p["low"], p["high"])
    assert "| bits | better | worse |" in (tmp_path / "ablation.md").read_text()


def test_evaluate_checkpoints_reads_the_naming_convention(small_data, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=1, max_steps=1, classes_per_batch=4, images_per_class=4)
    run_ablation(cfg, [8], ["qadwh"], out_dir=str(tmp_path), progress=False, log=lambda *_: None, data=small_data)
    monkeypatch.setattr("qadwh_ray.evaluation.ablation.load_retrieval_data", lambda *a, **k: small_data)
    rows = evaluate_checkpoints(str(tmp_path), [8], ["qadwh"], cfg, log=lambda *_: None, out_dir=str(tmp_path / "ev"))
    assert [r.method for r in rows][-1] == "QaDWH"
    (run,) = json.loads((tmp_path / "ev" / "ablation.json").read_text())["runs"]
    assert (run["method"], run["seed"], run["checkpoint"]) == ("qadwh", cfg.seed, str(tmp_path / "qadwh-8.pt"))
    # --flip-average on: the same rankings as the model whose own config says so
    from qadwh_ray.evaluation.ablation import evaluate_models
    from qadwh_ray.model.checkpoint import load_checkpoint

    flipped = evaluate_checkpoints(str(tmp_path), [8], ["qadwh"], cfg, log=lambda *_: None, flip_average=True)
    model = load_checkpoint(str(tmp_path / "qadwh-8.pt"))
    model.config = dataclasses.replace(model.config, flip_average=True)
    expect = evaluate_models([("qadwh", 8, model)], small_data, log=lambda *_: None)
    assert [r.map_all for r in flipped] == [r.map_all for r in expect]
    with pytest.raises(FileNotFoundError, match="ninh-8.pt"):
        evaluate_checkpoints(str(tmp_path), [8], ["ninh"], cfg, log=lambda *_: None)
    # A model trained on another split or dataset is refused, not silently ranked.
    with pytest.raises(ValueError, match="split_seed=0 but this evaluation uses split_seed=3"):
        evaluate_checkpoints(str(tmp_path), [8], ["qadwh"], cfg, log=lambda *_: None,
                             data=dataclasses.replace(small_data, split=dataclasses.replace(small_data.split, seed=3)))
    with pytest.raises(ValueError, match=r"dataset=.fashion-multilabel.; evaluate it with --set dataset=fashion$"):
        evaluate_checkpoints(str(tmp_path), [8], ["qadwh"], cfg.replace(dataset="fashion-multilabel"), log=lambda *_: None,
                             data=small_data)


def test_a_12_bit_model_trains_and_validates(tmp_path):
    """The paper's 12 bits: training (with weighted validation MAP) and evaluation run end to end."""
    from qadwh_ray.training.config import TrainConfig
    from qadwh_ray.training.local import train_local

    cfg = TrainConfig(nbits=12, max_steps=2, epochs=1, train_limit=400, val_fraction=0.1)
    result = train_local(cfg, checkpoint_uri=str(tmp_path / "m.pt"), progress=False, log=lambda *_: None)
    assert result.steps == 2 and result.history and 0.0 <= result.history[-1]["val_map"] <= 1.0
