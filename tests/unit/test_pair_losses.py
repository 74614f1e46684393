"""ISDH, DOH and ADSQ losses against small examples worked out by hand."""

import math

import pytest
import torch

from qadwh_ray.core.pair_losses import adsq_loss, isdh_loss, ordinal_pair_loss

ALL3 = torch.arange(3)


def _l(theta, s):  # the pair likelihood, by hand
    return math.log(1 + math.exp(theta)) - s * theta


def test_isdh_hand_example():
    # labels {0}, {0, 1}, {1}: cosines s01 = s12 = 1/sqrt(2) (partial), s02 = 0 (complete, dissimilar)
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    u = torch.tensor([[1.0, 0.0], [0.5, 0.5], [-1.0, 0.0]], dtype=torch.float64)
    got = isdh_loss(u, y, ALL3, mse_weight=1.0, quantization_weight=0.1)
    r = 1 / math.sqrt(2)
    # the only complete pairs are (0, 2) and (2, 0): one group, weight 1; theta = <u0, u2> / 2 = -0.5, s = 0
    ce = 2 * _l(-0.5, 0) / 6
    # partial pairs: (1 + <u_i, u_j> / 2) / 2 against 1/sqrt(2); <u0, u1> = 0.5, <u1, u2> = -0.5; both directions
    mse = 2 * ((0.625 - r) ** 2 + (0.375 - r) ** 2) / 6
    quant = (0 + 1 + 0.5 + 0.5 + 0 + 1) / 6
    assert got.cross_entropy.item() == pytest.approx(ce, abs=1e-12)
    assert got.squared_error.item() == pytest.approx(mse, abs=1e-12)
    assert got.quantization.item() == pytest.approx(quant, abs=1e-12)
    assert got.total.item() == pytest.approx(ce + mse + 0.1 * quant, abs=1e-12)


def test_isdh_balances_similar_and_dissimilar_pairs():
    # classes 0, 0, 1: similar pairs (0,1), (1,0); dissimilar (0,2), (2,0), (1,2), (2,1)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    got = isdh_loss(u, y, ALL3, quantization_weight=0.0)
    w_sim, w_dis = 6 / (2 * 2), 6 / (2 * 4)  # each group weighs 3 of the 6 complete pairs
    # theta: <u0,u1>/2 = 0, <u0,u2>/2 = 0, <u1,u2>/2 = -1
    ce = (2 * w_sim * _l(0, 1) + 2 * w_dis * _l(0, 0) + 2 * w_dis * _l(-1, 0)) / 6
    assert got.cross_entropy.item() == pytest.approx(ce, abs=1e-12) and got.squared_error.item() == 0.0
    assert got.total.item() == pytest.approx(ce, abs=1e-12)


def test_doh_hand_example():
    # one symbol of K = 2: p0 = (1, 0), p1 = (1/2, 1/2), p2 = (0, 1); items 0 and 1 share a class
    p = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # agreement A01 = 0.5, A02 = 0, A12 = 0.5; theta = A - 1/2
    want = 2 * (_l(0.0, 1) + _l(-0.5, 0) + _l(0.0, 0)) / 6
    assert ordinal_pair_loss(p, y, ALL3).item() == pytest.approx(want, abs=1e-12)


def test_adsq_hand_example():
    # one bit, two items of different classes
    v = torch.tensor([[0.5], [-0.5]], dtype=torch.float64)  # LabelNet: B = (+1, -1)
    u = torch.tensor([[0.8], [-0.2]], dtype=torch.float64)  # query ImgNet
    w = torch.tensor([[0.6], [0.4]], dtype=torch.float64)  # database ImgNet
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    got = adsq_loss(u, w, v, y, torch.arange(2), quantization_weight=0.5)
    label = 2 * _l(0.5 * -0.5 / 2, 0) / 2
    asym = (_l(0.8 * 0.6 / 2, 1) + _l(0.8 * 0.4 / 2, 0) + _l(-0.2 * 0.6 / 2, 0) + _l(-0.2 * 0.4 / 2, 1)) / 4
    semantic = ((0.8 - 1) ** 2 + (0.6 - 1) ** 2 + (-0.2 + 1) ** 2 + (0.4 + 1) ** 2) / 2
    quant = ((0.5 - 1) ** 2 + (0.5 - 1) ** 2 + (0.6 - 1) ** 2 + (0.4 - 1) ** 2) / 2
    assert got.label.item() == pytest.approx(label, abs=1e-12)
    assert got.asymmetric.item() == pytest.approx(asym, abs=1e-12)
    assert got.semantic.item() == pytest.approx(semantic, abs=1e-12)
    assert got.quantization.item() == pytest.approx(quant, abs=1e-12)
    assert got.total.item() == pytest.approx(label + asym + semantic + 0.5 * quant, abs=1e-12)


def test_anchor_shares_add_up_to_the_whole_batch_loss():
    """Two workers each owning half the anchors sum to the single-process loss (values and gradients)."""
    g = torch.Generator().manual_seed(0)
    n, q = 6, 4
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
    u = torch.tanh(torch.randn(n, q, generator=g, dtype=torch.float64)).requires_grad_()
    halves = (torch.arange(3), torch.arange(3, 6))
    whole = isdh_loss(u, y, torch.arange(n)).total
    (gw,) = torch.autograd.grad(whole, u)
    parts = sum(isdh_loss(u, y, h).total for h in halves)
    (gp,) = torch.autograd.grad(parts, u)
    assert parts.item() == pytest.approx(whole.item(), abs=1e-12) and torch.allclose(gp, gw, atol=1e-12)

    p = torch.softmax(torch.randn(n, 3, 4, generator=g, dtype=torch.float64), -1)
    assert sum(ordinal_pair_loss(p, y, h) for h in halves).item() == pytest.approx(
        ordinal_pair_loss(p, y, torch.arange(n)).item(), abs=1e-12)

    v = torch.tanh(torch.randn(n, q, generator=g, dtype=torch.float64))
    w = torch.tanh(torch.randn(n, q, generator=g, dtype=torch.float64))
    qu = torch.tanh(torch.randn(n, q, generator=g, dtype=torch.float64))
    whole = adsq_loss(qu, w, v, y, torch.arange(n)).total
    split = sum(adsq_loss(qu[h], w, v, y, h).total for h in halves)
    assert split.item() == pytest.approx(whole.item(), abs=1e-12)
