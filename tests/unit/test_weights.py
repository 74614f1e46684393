import numpy as np
import pytest
import torch

from qadwh_ray.core.weights import (
    class_weight_rows,
    clamp_nonnegative_,
    dwh_weights,
    query_adaptive_weights,
    query_adaptive_weights_torch,
    softmax,
)


def _ref_qaw(z, W):
    out = np.zeros((z.shape[0], W.shape[1]))
    for i in range(z.shape[0]):
        e = [np.exp(v - max(z[i])) for v in z[i]]
        s = sum(e)
        for c in range(W.shape[0]):
            out[i] += e[c] / s * W[c]
    return out


def test_query_adaptive_weights_matches_reference():
    rng = np.random.default_rng(0)
    z, W = rng.normal(size=(6, 4)) * 3, rng.random((4, 16))
    out = query_adaptive_weights(z, W)
    assert out.shape == (6, 16) and out.dtype == np.float64
    np.testing.assert_allclose(out, _ref_qaw(z, W), rtol=1e-12)
    np.testing.assert_allclose(query_adaptive_weights(z[0], W), out[0], rtol=1e-12)


def test_softmax_is_stable_for_huge_logits():
    z = np.array([[1000.0, 1000.0, -1000.0], [1e308, 0.0, 0.0]])
    p = softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(p[1], [1.0, 0.0, 0.0])


def test_query_adaptive_weights_accepts_torch_and_is_convex_combination():
    rng = np.random.default_rng(1)
    W = rng.random((3, 8))
    z = torch.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    out = query_adaptive_weights(z, torch.tensor(W))
    assert isinstance(out, np.ndarray)
    # each row lies between the class rows' min and max
    assert (out >= W.min(0) - 1e-12).all() and (out <= W.max(0) + 1e-12).all()


def test_query_adaptive_weights_torch_matches_and_differentiates():
    rng = np.random.default_rng(2)
    z = torch.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    W = torch.tensor(rng.random((3, 8)), requires_grad=True)
    out = query_adaptive_weights_torch(z, W)
    np.testing.assert_allclose(out.detach().numpy(), query_adaptive_weights(z, W), rtol=1e-12)
    assert torch.autograd.gradcheck(query_adaptive_weights_torch, (z, W))
    with pytest.raises(ValueError, match="shape"):
        query_adaptive_weights_torch(z, W[:2])


@pytest.mark.parametrize(
    "z, W, exc, match",
    [
        (np.zeros((2, 3)), np.ones((4, 8)), ValueError, "3 classes but W has 4"),
        (np.zeros((2, 3)), -np.ones((3, 8)), ValueError, "non-negative"),
        (np.zeros((2, 3)), np.full((3, 8), np.nan), ValueError, "NaN"),
        (np.full((2, 3), np.nan), np.ones((3, 8)), ValueError, "NaN"),
        (np.zeros((2, 2, 3)), np.ones((3, 8)), ValueError, "shape"),
        (np.zeros((2, 3)), np.ones(8), ValueError, "shape"),
        (np.array([["a", "b", "c"]]), np.ones((3, 8)), TypeError, "dtype"),
    ],
)
def test_query_adaptive_weights_rejects(z, W, exc, match):
    with pytest.raises(exc, match=match):
        query_adaptive_weights(z, W)


def test_dwh_weights_is_mean_of_rows():
    W = np.array([[1.0, 2.0], [3.0, 0.0]])
    np.testing.assert_allclose(dwh_weights(W), [2.0, 1.0])
    np.testing.assert_allclose(dwh_weights(torch.tensor(W)), [2.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        dwh_weights(-W)


def test_class_weight_rows_single_and_multi_label():
    W = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0], [0.0, 0.0, 8.0]], dtype=torch.float64, requires_grad=True)
    Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1]])
    rows = class_weight_rows(Y, W)
    ref = np.stack([W[0].detach().numpy(), W[1].detach().numpy(),
                    (W[0] + W[1]).detach().numpy() / 2, (W[0] + W[1] + W[2]).detach().numpy() / 3])
    np.testing.assert_allclose(rows.detach().numpy(), ref)
    rows.sum().backward()
    # d/dW_c of sum of rows = sum over items of y_ic / |y_i|
    np.testing.assert_allclose(W.grad[:, 0].numpy(), [1 + 0.5 + 1 / 3, 1 + 0.5 + 1 / 3, 1 / 3])
    assert class_weight_rows(torch.tensor(Y, dtype=torch.bool), W).shape == (4, 3)


def test_class_weight_rows_rejects():
    W = torch.ones(3, 4)
    with pytest.raises(ValueError, match="label row 1"):
        class_weight_rows(np.array([[1, 0, 0], [0, 0, 0]]), W)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        class_weight_rows(np.ones((2, 4)), W)
    with pytest.raises(ValueError, match="num_classes"):
        class_weight_rows(np.ones((2, 4)), torch.ones(4))


def test_clamp_nonnegative_in_place_on_parameter():
    W = torch.nn.Parameter(torch.tensor([[-1.0, 0.5], [2.0, -0.1]]))
    out = clamp_nonnegative_(W)
    assert out is W and W.requires_grad
    assert torch.equal(W.data, torch.tensor([[0.0, 0.5], [2.0, 0.0]]))
