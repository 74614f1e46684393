"""The compared methods: each trains a few local steps on real images, checkpoints, and is ranked
by the same evaluation code, each with its own distance."""

import dataclasses

import numpy as np
import pytest
import torch

from qadwh_ray.core.bits import unpack_bits
from qadwh_ray.core.metrics import mean_average_precision
from qadwh_ray.evaluation.ablation import evaluate_models
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.datasets import RetrievalData, load_retrieval_data, model_config_for
from qadwh_ray.evaluation.evaluate import distances_for
from qadwh_ray.training.local import train_local
from qadwh_ray.evaluation.rankings import main_ranking
from qadwh_ray.model import ModelConfig, build_model, encode, load_checkpoint
from qadwh_ray.model.asymmetric import AsymmetricHashingNetwork
from qadwh_ray.model.encode import preprocess
from qadwh_ray.model.ordinal import OrdinalHashingNetwork


@pytest.fixture(scope="module")
def small_data() -> RetrievalData:
    full = load_retrieval_data("fashion", split_seed=0, val_fraction=0.1)
    return dataclasses.replace(full, train_pos=full.train_pos[:160], val_pos=full.val_pos[:30],
                               query_pos=full.query_pos[::50], db_pos=full.db_pos[:300])


@pytest.mark.parametrize("method, network, title", [
    ("ninh-paper", "HashingNetwork", "NINH (paper, no class stream)"),
    ("isdh", "HashingNetwork", "ISDH"),
    ("doh", "OrdinalHashingNetwork", "DOH"),
    ("adsq", "AsymmetricHashingNetwork", "ADSQ"),
])
def test_each_method_trains_checkpoints_and_is_evaluated(method, network, title, small_data, tmp_path):
    cfg = TrainConfig(method=method, nbits=8, epochs=1, max_steps=2, classes_per_batch=4, images_per_class=4)
    uri = str(tmp_path / f"{method}-8.pt")
    result = train_local(cfg, small_data, checkpoint_uri=uri, progress=False, log=lambda *_: None)
    row = result.history[-1]
    assert result.steps == 2 and np.isfinite(row["loss"]) and row["loss"] > 0 and 0 <= row["val_map"] <= 1
    model = load_checkpoint(uri)
    assert type(model).__name__ == network and model.config.nbits == 8
    (metrics,) = evaluate_models([(method, 8, model)], small_data, log=lambda *_: None)
    assert metrics.method == title and 0 <= metrics.map_all <= 1 and len(metrics.ap) == len(small_data.query_ids)
    assert (metrics.precision_r2 is None) == (method == "doh")  # bit flips are no neighbourhood of symbol codes


def test_without_a_class_stream_the_class_head_and_W_stay_untouched(small_data):
    for method in ("ninh-paper", "isdh"):
        cfg = TrainConfig(method=method, nbits=8, epochs=1, max_steps=2, classes_per_batch=4, images_per_class=4)
        torch.manual_seed(cfg.seed)
        before = build_model(model_config_for(cfg, small_data)).class_head.weight.detach().clone()
        result = train_local(cfg, small_data, progress=False, log=lambda *_: None)
        assert torch.equal(result.model.class_head.weight.detach(), before), method
        assert torch.equal(result.model.W.detach(), torch.ones(10, 8)), method
        assert result.history[-1]["classification"] == 0.0


def test_doh_codes_are_each_symbols_argmax_ranked_by_differing_symbols(small_data):
    torch.manual_seed(0)
    model = build_model(ModelConfig(nbits=12, architecture="ordinal", symbol_bits=2)).eval()
    assert isinstance(model, OrdinalHashingNetwork) and (model.symbols, model.group) == (6, 4)
    images = small_data.query_images
    enc = encode(model, images)
    with torch.no_grad():
        _, scores = model.scores(preprocess(model, images))
    idx = scores.argmax(dim=-1).numpy()  # (n, 6)
    bits = unpack_bits(enc.codes, 12).reshape(len(images), 6, 2)
    assert np.array_equal(bits[:, :, 0] + 2 * bits[:, :, 1], idx)
    assert enc.qadwh_weights is None and enc.dwh_weights is None
    r = main_ranking("doh", model, images, small_data.db_images[:50])
    dist = distances_for(r, slice(0, len(images)))
    with torch.no_grad():
        db_idx = model.scores(preprocess(model, small_data.db_images[:50]))[1].argmax(dim=-1).numpy()
    assert np.array_equal(dist, (idx[:, None, :] != db_idx[None, :, :]).sum(-1))


def test_adsq_ranks_real_queries_against_database_codes_exactly(small_data):
    torch.manual_seed(0)
    model = build_model(ModelConfig(nbits=12, architecture="asymmetric")).eval()
    assert isinstance(model, AsymmetricHashingNetwork)
    q_img, db_img = small_data.query_images, small_data.db_images[:80]
    with torch.no_grad():
        u = torch.tanh(model.query_head(model.query_backbone(preprocess(model, q_img)))).double().numpy()
        w = torch.tanh(model.database_head(model.database_backbone(preprocess(model, db_img)))).numpy()
    b = np.where(w >= 0, 1.0, -1.0)
    r = main_ranking("adsq", model, q_img, db_img)
    assert np.array_equal(unpack_bits(r.db_codes, 12), (w >= 0).astype(np.uint8))
    dist = distances_for(r, slice(0, len(q_img)))
    direct = -u @ b.T
    assert 2 * dist - np.abs(u).sum(1, keepdims=True) == pytest.approx(direct, abs=1e-5)
    labels_q, labels_db = small_data.query_labels, small_data.db_labels[:80]
    assert mean_average_precision(dist, labels_q, labels_db) == pytest.approx(
        mean_average_precision(direct, labels_q, labels_db), abs=1e-6)
    # the query and database ImgNets are different networks
    assert not np.array_equal(encode(model, q_img, role="query").codes, encode(model, q_img).codes)


def test_models_the_service_cannot_search_are_refused():
    for arch in ("ordinal", "asymmetric"):
        with pytest.raises(ValueError, match=f"ck.pt holds a {arch} model, whose codes the weighted-Hamming index"):
            ModelConfig(nbits=16, architecture=arch).require_searchable("checkpoint ck.pt")
    ModelConfig(nbits=16).require_searchable("checkpoint ck.pt")
    with pytest.raises(ValueError, match="symbol_bits applies to the ordinal architecture only"):
        ModelConfig(symbol_bits=2)
