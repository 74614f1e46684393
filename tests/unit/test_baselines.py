import numpy as np
import pytest

from qadwh_ray.core.baselines import fit_itq, fit_lsh, quantization_loss
from qadwh_ray.core.bits import unpack_bits


def _features(n=400, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d)) * 3
    return centres[rng.integers(0, 4, n)] + rng.normal(size=(n, d))


def test_lsh_bits_are_signs_of_random_projections():
    x = _features()
    h = fit_lsh(x, 16, seed=3)
    codes = h.encode(x)
    bits = unpack_bits(codes, 16)
    for i in range(0, len(x), 37):
        for k in range(16):
            assert bits[i, k] == int(np.dot(x[i] - x.mean(0), h.projection[:, k]) >= 0)


def test_itq_lowers_quantization_loss_below_its_random_start():
    x = _features()
    start = fit_itq(x, 16, iterations=0, seed=1)
    fitted = fit_itq(x, 16, iterations=50, seed=1)
    assert quantization_loss(x, fitted) < quantization_loss(x, start)
    # projection = PCA directions @ rotation: orthonormal columns
    np.testing.assert_allclose(fitted.projection.T @ fitted.projection, np.eye(16), atol=1e-8)
    assert fitted.encode(x).shape == (len(x), 2)


def test_baseline_errors_are_named():
    with pytest.raises(ValueError, match="between 1 and 4096 bits"):
        fit_lsh(_features(), 0)
    with pytest.raises(ValueError, match="ITQ needs"):
        fit_itq(_features(n=10), 16)
    with pytest.raises(ValueError, match="dimensions"):
        fit_lsh(_features(), 8).encode(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        fit_lsh(np.full((4, 3), np.nan), 8)
