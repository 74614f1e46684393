"""Loss scaling: N workers (DDP over gloo) on a global batch give one process's gradient."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qadwh_ray.data.catalog import DatasetInfo
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.objective import batch_objective, project_weights_
from qadwh_ray.model import ModelConfig, build_model

N, WORLD = 16, 2


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, 28, 28, generator=g)
    labels = torch.zeros(N, 10)
    labels[torch.arange(N), torch.arange(N) % 4] = 1
    labels[3, 7] = 1  # a multi-label row
    return x, labels


def _model(spread_codes=False):
    torch.manual_seed(0)
    model = build_model(ModelConfig(nbits=16, num_classes=10)).double().eval()  # eval: BN/dropout not batch-dependent
    with torch.no_grad():
        model.W.uniform_(0.5, 1.5)
    if spread_codes:
        # the untrained CNN maps these noise images to nearly one feature vector, so every
        # triplet violates any margin; a linear backbone gives distinct codes, some triplets met
        model.backbone = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(28 * 28, model.hash_head.in_features)
        ).double()
    return model


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _config(method, average):
    # margin 8 keeps every triplet active; 0.05 on spread codes leaves some satisfied, so "active" divides by fewer
    return TrainConfig(method=method, triplet_average=average, margin=8.0 if average == "all" else 0.05)


def _worker(rank, port, form, average, out_dir):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from qadwh_ray.training.distributed import TorchDistributedGather

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    x, labels = _batch()
    per = N // WORLD
    sl = slice(rank * per, (rank + 1) * per)
    model = _model(spread_codes=average == "active")
    if form == "ninh":
        model.W.requires_grad_(False)  # NINH freezes W before DDP wraps the model
    ddp = DDP(model)
    cfg = _config(form, average)
    out = ddp(x[sl].double())
    parts = batch_objective(out, labels[sl], ddp.module.W, cfg, np.random.default_rng(0), TorchDistributedGather())
    parts.total.backward()
    if rank == 0:
        torch.save(_grads(ddp.module), os.path.join(out_dir, "dist.pt"))
    dist.destroy_process_group()


def _pair_model(method):
    torch.manual_seed(0)
    info = DatasetInfo("fashion", "fashion", tuple(str(i) for i in range(10)), False, "L", (28, 28), 70000)
    return build_model(TrainConfig(method=method, nbits=16).model_config(info, 28)).double().eval()


def _pair_forward(model, method, x, labels):
    return model(x.double(), labels.double()) if method == "adsq" else model(x.double())


def _pair_worker(rank, port, method, out_dir):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from qadwh_ray.training.distributed import TorchDistributedGather

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    x, labels = _batch()
    sl = slice(rank * (N // WORLD), (rank + 1) * (N // WORLD))
    cfg = TrainConfig(method=method, nbits=16)
    model = _pair_model(method)
    if hasattr(model, "W"):
        model.W.requires_grad_(False)  # as make_optimizer does for a method that does not learn W
    ddp = DDP(model, find_unused_parameters=not cfg.method_spec.class_stream)  # as the Ray Train worker does
    out = _pair_forward(ddp, method, x[sl], labels[sl])
    parts = batch_objective(out, labels[sl].double(), None, cfg, np.random.default_rng(0), TorchDistributedGather())
    parts.total.backward()
    if rank == 0:
        torch.save(_grads(ddp.module), os.path.join(out_dir, "dist.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["isdh", "doh", "adsq"])
def test_two_gloo_workers_reproduce_the_single_process_gradient_of_the_pair_losses(method, tmp_path):
    mp.spawn(_pair_worker, args=(_free_port(), method, str(tmp_path)), nprocs=WORLD, join=True)
    x, labels = _batch()
    model = _pair_model(method)
    if hasattr(model, "W"):
        model.W.requires_grad_(False)
    cfg = TrainConfig(method=method, nbits=16)
    parts = batch_objective(_pair_forward(model, method, x, labels), labels.double(), None, cfg, np.random.default_rng(0))
    parts.total.backward()
    single = _grads(model)
    distributed = torch.load(tmp_path / "dist.pt")
    assert single.keys() == distributed.keys() and single
    for name, g in single.items():
        torch.testing.assert_close(distributed[name], g, rtol=1e-9, atol=1e-12, msg=name)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "form, average", [("qadwh", "all"), ("qadwh-ref", "all"), ("ninh", "all"), ("qadwh", "active")]
)
def test_two_gloo_workers_reproduce_the_single_process_gradient(form, average, tmp_path):
    mp.spawn(_worker, args=(_free_port(), form, average, str(tmp_path)), nprocs=WORLD, join=True)
    x, labels = _batch()
    model = _model(spread_codes=average == "active")
    if form == "ninh":
        model.W.requires_grad_(False)
    cfg = _config(form, average)
    parts = batch_objective(model(x.double()), labels, model.W, cfg, np.random.default_rng(0))
    assert parts.num_triplets > 0
    parts.total.backward()
    single = _grads(model)
    distributed = torch.load(tmp_path / "dist.pt")
    assert single.keys() <= distributed.keys()
    for name, g in single.items():
        torch.testing.assert_close(distributed[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_active_average_is_the_mean_over_margin_violating_triplets():
    from qadwh_ray.core.losses import weighted_triplet_loss
    from qadwh_ray.core.triplets import all_valid_triplets
    from qadwh_ray.core.weights import class_weight_rows

    x, labels = _batch()
    model = _model(spread_codes=True)
    out = model(x.double())
    cfg = _config("qadwh", "active")
    parts = batch_objective(out, labels, model.W, cfg, np.random.default_rng(0))
    a, p, n = all_valid_triplets(labels.numpy().astype(np.uint8))
    rows = class_weight_rows(labels.double(), model.W)
    per = weighted_triplet_loss(out.h, rows, a, p, n, margin=cfg.margin, reduction="none").detach()
    active = per[per > 0]
    assert 0 < len(active) < len(per)  # the case where the two averages differ
    assert parts.triplet == pytest.approx(float(active.mean()), rel=1e-12)
    everything = batch_objective(out, labels, model.W, _config("qadwh", "all").replace(margin=cfg.margin),
                                 np.random.default_rng(0))
    assert everything.triplet == pytest.approx(float(per.mean()), rel=1e-12)


def test_uniform_weight_share_mixes_weighted_and_plain_distances():
    from qadwh_ray.core.losses import weighted_triplet_loss
    from qadwh_ray.core.triplets import all_valid_triplets
    from qadwh_ray.core.weights import class_weight_rows

    x, labels = _batch()
    model = _model(spread_codes=True)
    out = model(x.double())
    a, p, n = all_valid_triplets(labels.numpy().astype(np.uint8))
    rows = class_weight_rows(labels.double(), model.W).detach()
    h = out.h.detach()

    def brute(share):  # (1 - s) D_w + s D_plain, anchor row on both distances
        d = lambda i, j: ((1 - share) * rows[i] + share) @ (h[i] - h[j]) ** 2  # noqa: E731
        return np.mean([max(0.0, 0.05 + float(d(i, j) - d(i, k))) for i, j, k in zip(a, p, n)])

    for share in (0.0, 0.3, 1.0):
        cfg = TrainConfig(method="qadwh", margin=0.05, uniform_weight_share=share)
        parts = batch_objective(out, labels, model.W, cfg, np.random.default_rng(0))
        assert parts.triplet == pytest.approx(brute(share), rel=1e-9)
    plain = weighted_triplet_loss(h, torch.ones_like(h), a, p, n, margin=0.05)
    assert brute(1.0) == pytest.approx(float(plain), rel=1e-9)


def test_unknown_triplet_average_is_refused():
    with pytest.raises(ValueError, match="triplet_average"):
        TrainConfig(triplet_average="hardest")


def test_projection_keeps_W_nonnegative_with_unit_row_means():
    W = torch.nn.Parameter(torch.tensor([[-1.0, 2.0, 4.0], [0.5, 0.5, 2.0]]))
    project_weights_(W, normalise=True)
    assert (W >= 0).all()
    torch.testing.assert_close(W.mean(1), torch.ones(2))
    W2 = torch.nn.Parameter(torch.tensor([[-1.0, 2.0]]))
    project_weights_(W2, normalise=False)
    assert W2.tolist() == [[0.0, 2.0]]
