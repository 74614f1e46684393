"""Bootstrap and t intervals against brute-force references (explicit loops, the same RNG)."""

import math

import numpy as np
import pytest

from qadwh_ray.core.metrics import average_precisions, mean_average_precision
from qadwh_ray.core.stats import (
    Interval, bootstrap_means, mean_interval, paired_difference, t_cdf, t_quantile,
)


def _loop_means(values, n_resamples, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(values), size=len(values))
        total = 0.0
        for i in idx:
            total += values[i]
        out.append(total / len(values))
    return np.array(out)


def _loop_quantile(x, p):
    """Linear interpolation between order statistics at h = (B - 1) p."""
    s = sorted(x)
    h = (len(s) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


@pytest.mark.parametrize("n, chunk", [(7, None), (50, 3), (51, 1), (200, 1000)])
def test_bootstrap_means_equal_a_loop_over_resamples(n, chunk):
    v = np.random.default_rng(n).random(n)
    got = bootstrap_means(v, 301, np.random.default_rng(9), chunk=chunk)
    assert got == pytest.approx(_loop_means(v, 301, 9), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_paired_difference_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(40)
    b = np.clip(a - 0.05 + 0.1 * rng.random(40), 0, 1)
    got = paired_difference(a, b, n_resamples=500, seed=seed, chunk=7)
    d = [x - y for x, y in zip(a, b)]
    means = _loop_means(d, 500, seed)
    assert got.estimate == pytest.approx(sum(d) / len(d), abs=1e-15)
    assert got.low == pytest.approx(_loop_quantile(means, 0.025), abs=1e-12)
    assert got.high == pytest.approx(_loop_quantile(means, 0.975), abs=1e-12)
    assert got.n == 40 and "500 resamples" in got.method
    narrow = paired_difference(a, b, n_resamples=500, confidence=0.5, seed=seed)
    assert got.low <= narrow.low <= narrow.high <= got.high


def test_paired_difference_of_per_query_ap_is_the_map_difference():
    rng = np.random.default_rng(1)
    Q, D = rng.integers(0, 4, 30), rng.integers(0, 4, 80)
    da, db = rng.integers(0, 6, (30, 80)), rng.integers(0, 6, (30, 80))
    ap_a, ap_b = average_precisions(da, Q, D), average_precisions(db, Q, D)
    got = paired_difference(ap_a, ap_b, n_resamples=200)
    assert got.estimate == pytest.approx(mean_average_precision(da, Q, D) - mean_average_precision(db, Q, D), abs=1e-12)


def test_identical_and_shifted_methods():
    a = np.random.default_rng(2).random(25)
    same = paired_difference(a, a, n_resamples=100)
    assert (same.estimate, same.low, same.high, same.verdict()) == (0.0, 0.0, 0.0, "tie")
    up = paired_difference(a + 0.01, a, n_resamples=100)
    assert up.low == pytest.approx(0.01) and up.high == pytest.approx(0.01) and up.verdict() == "higher"
    assert paired_difference(a, a + 0.01, n_resamples=100).verdict() == "lower"


def _t_cdf_by_integration(t, dof, steps=20_000):
    """Simpson's rule on the t density from 0 to t, plus 1/2."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    f = lambda x: c * (1 + x * x / dof) ** (-(dof + 1) / 2)  # noqa: E731
    h = t / steps
    s = f(0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 0.5 + s * h / 3


@pytest.mark.parametrize("t, dof", [(0.3, 1), (2.0, 2), (-1.5, 3), (4.0, 4), (1.0, 30)])
def test_t_cdf_matches_numerical_integration(t, dof):
    ref = _t_cdf_by_integration(abs(t), dof)
    assert t_cdf(t, dof) == pytest.approx(ref if t > 0 else 1 - ref, abs=1e-9)


@pytest.mark.parametrize("dof, q975", [(1, 12.7062047), (2, 4.30265273), (3, 3.18244631), (4, 2.77644511),
                                       (9, 2.26215716), (30, 2.04227246), (10**6, 1.95996656)])
def test_t_quantile_matches_the_printed_tables(dof, q975):
    assert t_quantile(0.975, dof) == pytest.approx(q975, abs=1e-6)
    assert t_quantile(0.025, dof) == pytest.approx(-q975, abs=1e-6)
    assert t_cdf(t_quantile(0.9, dof), dof) == pytest.approx(0.9, abs=1e-9)


def test_mean_interval_is_the_t_formula():
    maps = [0.8851, 0.8799, 0.8810]
    got = mean_interval(maps)
    m = sum(maps) / 3
    s = math.sqrt(sum((x - m) ** 2 for x in maps) / 2)
    half = 4.30265273 * s / math.sqrt(3)
    assert got.estimate == pytest.approx(m) and got.low == pytest.approx(m - half, abs=1e-8)
    assert got.high == pytest.approx(m + half, abs=1e-8) and got.n == 3 and got.method.startswith("t interval")
    assert mean_interval([0.5, 0.5, 0.5]) == Interval(0.5, 0.5, 0.5, 3, "t interval over 3 seeds")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same length, got 3 and 4"):
        paired_difference([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="NaN or infinite values \\(first at position 1\\)"):
        paired_difference([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_interval([0.9])
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_difference([1, 2], [1, 2], confidence=95)
    with pytest.raises(ValueError, match="n_resamples must be a positive integer"):
        paired_difference([1, 2], [1, 2], n_resamples=0)
    assert Interval(0.0012, -0.0003, 0.0027, 5, "t").format() == "+0.0012 [-0.0003, +0.0027]"


def test_seed_tables_pair_the_reference_with_each_ranking_seed_by_seed():
    from qadwh_ray.evaluation.seeds import format_seed_tables, seed_differences, seed_means

    ev = {
        0: [{"nbits": 12, "method": "QaDWH", "map_all": 0.80}, {"nbits": 12, "method": "NINH", "map_all": 0.78}],
        1: [{"nbits": 12, "method": "QaDWH", "map_all": 0.82}, {"nbits": 12, "method": "NINH", "map_all": 0.81}],
        2: [{"nbits": 12, "method": "QaDWH", "map_all": 0.79}, {"nbits": 12, "method": "ISDH", "map_all": 0.70}],
    }
    means = {m.method: m for m in seed_means(ev)}
    assert means["QaDWH"].seeds == [0, 1, 2] and means["QaDWH"].interval == mean_interval([0.80, 0.82, 0.79])
    assert means["ISDH"].interval is None and means["ISDH"].values == [0.70]
    (d,) = seed_differences(ev)  # ISDH shares one seed with QaDWH: no interval
    assert (d.other, d.seeds) == ("NINH", [0, 1])
    assert d.interval.estimate == pytest.approx(((0.80 - 0.78) + (0.82 - 0.81)) / 2)
    assert d.interval == mean_interval([0.80 - 0.78, 0.82 - 0.81])
    table = format_seed_tables(list(means.values()), [d])
    assert "| 12 | ISDH | 1 | 0.7000 (one seed) |" in table and "| 12 | QaDWH − NINH | 2 |" in table
