import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qadwh_ray.core.losses import multilabel_softmax_loss, triplet_loss, weighted_triplet_loss
from qadwh_ray.core.triplets import all_valid_triplets


def _ref_triplet(h, w, a, p, n, margin, form):
    """Loop over triplets and bits, straight from the formulas."""
    h, w = h.detach().numpy(), w.detach().numpy()
    out = []
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
        if form == "paper":
            dp = sum(w[ai, k] * (h[ai, k] - h[pi, k]) ** 2 for k in range(h.shape[1]))
            dn = sum(w[ai, k] * (h[ai, k] - h[ni, k]) ** 2 for k in range(h.shape[1]))
        else:
            dp = sum((w[ai, k] * h[ai, k] - w[pi, k] * h[pi, k]) ** 2 for k in range(h.shape[1]))
            dn = sum((w[ai, k] * h[ai, k] - w[ni, k] * h[ni, k]) ** 2 for k in range(h.shape[1]))
        out.append(max(0.0, margin + dp - dn))
    return np.array(out)


def _batch(seed, N=10, q=8, c=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, N)
    h = torch.tensor(rng.random((N, q)), dtype=torch.float64, requires_grad=True)
    w = torch.tensor(rng.random((N, q)) * 2, dtype=torch.float64, requires_grad=True)
    a, p, n = all_valid_triplets(labels)
    return h, w, a, p, n


@pytest.mark.parametrize("form", ["paper", "reference"])
@pytest.mark.parametrize("margin", [0.3, 1.0])
def test_weighted_triplet_matches_loop(form, margin):
    for seed in range(3):
        h, w, a, p, n = _batch(seed)
        ref = _ref_triplet(h, w, a, p, n, margin, form)
        none = weighted_triplet_loss(h, w, a, p, n, margin=margin, form=form, reduction="none")
        np.testing.assert_allclose(none.detach().numpy(), ref, rtol=0, atol=1e-10)
        s = weighted_triplet_loss(h, w, a, p, n, margin=margin, form=form, reduction="sum")
        m = weighted_triplet_loss(h, w, a, p, n, margin=margin, form=form)
        assert abs(s.item() - ref.sum()) < 1e-10
        assert abs(m.item() - ref.mean()) < 1e-10


def test_anchor_subset_and_torch_indices():
    h, w, a, p, n = _batch(7)
    keep = a % 2 == 0  # anchors that are a strict subset of the rows, unsorted order
    a, p, n = a[keep][::-1].copy(), p[keep][::-1].copy(), n[keep][::-1].copy()
    ref = _ref_triplet(h, w, a, p, n, 1.0, "paper")
    out = weighted_triplet_loss(h, w, torch.as_tensor(a), torch.as_tensor(p), torch.as_tensor(n), reduction="none")
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-10)


def test_plain_triplet_is_weighted_with_ones_and_squared_euclidean():
    h, w, a, p, n = _batch(3)
    out = triplet_loss(h, a, p, n, margin=0.5, reduction="none")
    ones = torch.ones_like(h)
    np.testing.assert_allclose(out.detach().numpy(), _ref_triplet(h, ones, a, p, n, 0.5, "paper"), atol=1e-10)
    np.testing.assert_allclose(
        out.detach().numpy(),
        _ref_triplet(h, ones, a, p, n, 0.5, "reference"),
        atol=1e-10,
    )


@pytest.mark.parametrize("form", ["paper", "reference"])
def test_gradcheck_weighted(form):
    # Hand-picked triplets with hinges far from the kink: one active (large margin), one inactive.
    rng = np.random.default_rng(11)
    h = torch.tensor(rng.random((5, 4)), dtype=torch.float64, requires_grad=True)
    w = torch.tensor(rng.random((5, 4)) + 0.5, dtype=torch.float64, requires_grad=True)
    a, p, n = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 3, 4]), torch.tensor([2, 4, 4, 3])

    def f(h, w):
        return weighted_triplet_loss(h, w, a, p, n, margin=10.0, form=form)

    def g(h, w):
        return weighted_triplet_loss(h, w, a, p, n, margin=-10.0, form=form, reduction="sum")

    vals = weighted_triplet_loss(h, w, a, p, n, margin=10.0, form=form, reduction="none")
    assert (vals > 1.0).all()  # all active, away from the kink
    assert torch.autograd.gradcheck(f, (h, w))
    assert torch.autograd.gradcheck(g, (h, w))  # all inactive: zero gradient


def test_gradcheck_plain_triplet():
    rng = np.random.default_rng(12)
    h = torch.tensor(rng.random((4, 6)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h: triplet_loss(h, [0, 1, 2], [1, 0, 3], [2, 3, 0], margin=10.0), (h,)
    )


def test_empty_triplets_give_connected_zero():
    h = torch.rand(6, 8, requires_grad=True)
    w = torch.rand(6, 8, requires_grad=True)
    e = np.zeros(0, dtype=np.int64)
    for red in ("mean", "sum"):
        loss = weighted_triplet_loss(h, w, e, e, e, reduction=red)
        assert loss.item() == 0.0 and loss.requires_grad and loss.grad_fn is not None
        loss.backward()
        assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))
    none = weighted_triplet_loss(h, w, e, e, e, reduction="none")
    assert none.shape == (0,) and none.requires_grad
    assert triplet_loss(h, e, e, e).requires_grad


def test_many_triplets_large_batch():
    """A batch of 256 with ~1e6 triplets runs forward and backward (matrix form, no per-triplet rows)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 64)
    a, p, n = all_valid_triplets(labels)
    assert a.size > 1_000_000
    h = torch.rand(256, 48, requires_grad=True)
    W = torch.rand(4, 48, requires_grad=True)
    rows = W[torch.as_tensor(labels)]
    loss = weighted_triplet_loss(h, rows, a, p, n)
    loss.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(W.grad).all()
    # spot-check a few triplets against the loop reference in float64
    idx = rng.choice(a.size, 20, replace=False)
    h64, r64 = h.detach().double(), rows.detach().double()
    out = weighted_triplet_loss(h64, r64, a[idx], p[idx], n[idx], reduction="none")
    np.testing.assert_allclose(out.numpy(), _ref_triplet(h64, r64, a[idx], p[idx], n[idx], 1.0, "paper"), atol=1e-10)


def test_triplet_errors():
    h, w = torch.rand(4, 8), torch.rand(4, 8)
    i = np.array([0, 1])
    with pytest.raises(ValueError, match="'bogus'"):
        weighted_triplet_loss(h, w, i, i, i, form="bogus")
    with pytest.raises(ValueError, match="'avg'"):
        weighted_triplet_loss(h, w, i, i, i, reduction="avg")
    with pytest.raises(ValueError, match="index 7"):
        weighted_triplet_loss(h, w, i, np.array([0, 7]), i)
    with pytest.raises(ValueError, match="index -1"):
        weighted_triplet_loss(h, w, i, np.array([0, -1]), i)
    with pytest.raises(ValueError, match="2, 2, 1"):
        weighted_triplet_loss(h, w, i, i, i[:1])
    with pytest.raises(TypeError, match="integer"):
        weighted_triplet_loss(h, w, i.astype(float), i, i)
    with pytest.raises(ValueError, match="same shape"):
        weighted_triplet_loss(h, w[:, :4], i, i, i)
    with pytest.raises(ValueError, match="margin"):
        weighted_triplet_loss(h, w, i, i, i, margin=float("nan"))


def _ref_mlsoftmax(z, Y):
    z, Y = z.detach().numpy(), np.asarray(Y, dtype=float)
    out = []
    for i in range(z.shape[0]):
        lse = np.log(sum(np.exp(v) for v in z[i]))
        out.append(-sum(Y[i, j] / Y[i].sum() * (z[i, j] - lse) for j in range(z.shape[1])))
    return np.array(out)


def test_multilabel_softmax_matches_loop_and_gradcheck():
    rng = np.random.default_rng(5)
    z = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float64, requires_grad=True)
    Y = (rng.random((6, 4)) < 0.5).astype(np.uint8)
    Y[np.arange(6), rng.integers(0, 4, 6)] = 1
    ref = _ref_mlsoftmax(z, Y)
    np.testing.assert_allclose(multilabel_softmax_loss(z, Y, reduction="none").detach().numpy(), ref, atol=1e-10)
    assert abs(multilabel_softmax_loss(z, Y).item() - ref.mean()) < 1e-10
    assert abs(multilabel_softmax_loss(z, torch.tensor(Y), reduction="sum").item() - ref.sum()) < 1e-10
    assert torch.autograd.gradcheck(lambda z: multilabel_softmax_loss(z, Y), (z,))


def test_multilabel_softmax_equals_cross_entropy_for_one_hot():
    rng = np.random.default_rng(6)
    z = torch.tensor(rng.normal(size=(9, 5)) * 4, dtype=torch.float64)
    y = rng.integers(0, 5, 9)
    Y = np.eye(5, dtype=np.uint8)[y]
    ce = F.cross_entropy(z, torch.as_tensor(y))
    assert abs(multilabel_softmax_loss(z, Y).item() - float(ce)) < 1e-12


def test_multilabel_softmax_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="label row 1"):
        multilabel_softmax_loss(z, np.array([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        multilabel_softmax_loss(z, np.ones((2, 2)))
    with pytest.raises(ValueError, match="0 and 1"):
        multilabel_softmax_loss(z, np.full((2, 3), 2))
    with pytest.raises(ValueError, match="'x'"):
        multilabel_softmax_loss(z, np.ones((2, 3)), reduction="x")
