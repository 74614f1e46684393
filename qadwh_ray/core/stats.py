"""Confidence intervals for retrieval comparisons (pure numpy).

* **Paired difference over queries.** Two methods ranked the same queries, so
  each query gives a difference ``d_i = AP_a(i) - AP_b(i)``; the estimate is
  ``mean(d)`` (= MAP_a - MAP_b). The 95% interval is the percentile bootstrap:
  resample the queries with replacement ``n_resamples`` times from a seeded
  generator, take each resample's mean, and read the 2.5% and 97.5% quantiles
  (numpy's default linear interpolation). Pairing removes the between-query
  spread that two separate intervals would carry.
* **Over training seeds.** The mean of a few per-seed values (MAP, or a paired
  MAP difference) with a Student-t interval, ``mean ± t(0.975, n-1) s / sqrt(n)``:
  with 3-5 seeds a bootstrap cannot reach past the values' own range and would
  understate the spread.

An interval that contains 0 is a tie (:meth:`Interval.verdict`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

_CELLS_PER_CHUNK = 1 << 22  # bootstrap index cells drawn at once (32 MiB of int64)


class Interval(NamedTuple):
    """An estimate with its two-sided interval."""

    estimate: float
    low: float
    high: float
    n: int  # queries (bootstrap) or seeds (t)
    method: str  # how the interval was computed, for the record

    def verdict(self) -> str:
        """``"higher"`` / ``"lower"`` when the interval excludes 0, else ``"tie"``."""
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "tie"

    def format(self, digits: int = 4, signed: bool = True) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"{f.format(self.estimate)} [{f.format(self.low)}, {f.format(self.high)}]"


def _check_values(values, name: str, minimum: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-item values, got shape {v.shape}")
    if v.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} values for an interval, got {v.size}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinite values (first at position {int(np.flatnonzero(~np.isfinite(v))[0])})")
    return v


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def bootstrap_means(values, n_resamples: int, rng: np.random.Generator, chunk: int | None = None) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``values``.

    Resample ``b`` takes the indices ``rng.integers(0, n, size=n)`` drawn in
    order, so the result equals a loop that draws one resample at a time from the
    same generator; ``chunk`` resamples are drawn per call (default: sized to
    bound memory) and do not change the result."""
    v = _check_values(values, "values", 1)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    n = v.size
    step = max(1, _CELLS_PER_CHUNK // n) if chunk is None else int(chunk)
    if step < 1:
        raise ValueError(f"chunk must be positive, got {chunk!r}")
    out = np.empty(int(n_resamples))
    for s in range(0, int(n_resamples), step):
        rows = min(step, int(n_resamples) - s)
        out[s : s + rows] = v[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    return out


def paired_difference(
    a, b, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0, chunk: int | None = None
) -> Interval:
    """Mean of ``a - b`` over paired items (per-query AP of two methods on the same
    queries) with its percentile-bootstrap interval (``n_resamples`` resamples of
    the queries, generator seeded with ``seed``)."""
    x = _check_values(a, "a", 2)
    y = _check_values(b, "b", 2)
    if x.shape != y.shape:
        raise ValueError(f"paired values must have the same length, got {x.size} and {y.size}")
    confidence = _check_confidence(confidence)
    d = x - y
    means = bootstrap_means(d, n_resamples, np.random.default_rng(seed), chunk)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(d.mean()), float(low), float(high), int(d.size),
                    f"paired bootstrap over {d.size} queries, {n_resamples} resamples, seed {seed}")


# --------------------------------------------------------------------------- Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof!r}")
    tail = 0.5 * _incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of a few values (one per training seed) with its Student-t interval."""
    v = _check_values(values, "values", 2)
    confidence = _check_confidence(confidence)
    n = v.size
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    m = float(v.mean())
    return Interval(m, m - half, m + half, int(n), f"t interval over {n} seeds")
