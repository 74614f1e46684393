"""Over training seeds: each ranking's mean MAP with its 95% t interval, and paired differences.

The input is one evaluation per training seed (the ``metrics`` of an
``ablation.json``: method, nbits, map_all), all on the same queries. A paired
difference ``reference − other`` is taken seed by seed (both models of a seed
share the split, the queries and, for rankings of one model, the model), and
its mean gets the t interval of :func:`qadwh_ray.core.stats.mean_interval`.
Rankings with fewer than two seeds get no interval.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from qadwh_ray.core.stats import Interval, mean_interval


@dataclass
class SeedMean:
    nbits: int
    method: str
    seeds: list[int]
    interval: Interval | None  # None with a single seed
    values: list[float]


@dataclass
class SeedDifference:
    nbits: int
    reference: str
    other: str
    seeds: list[int]
    interval: Interval


def _by_ranking(evaluations: dict[int, list[dict]]) -> dict[tuple[int, str], dict[int, float]]:
    out: dict[tuple[int, str], dict[int, float]] = defaultdict(dict)
    for seed, metrics in evaluations.items():
        for m in metrics:
            out[(int(m["nbits"]), str(m["method"]))][int(seed)] = float(m["map_all"])
    return out


def seed_means(evaluations: dict[int, list[dict]]) -> list[SeedMean]:
    """``{seed: metrics}`` → one row per (bits, ranking): mean MAP over its seeds with a t interval."""
    rows = []
    for (nbits, method), per_seed in sorted(_by_ranking(evaluations).items()):
        seeds = sorted(per_seed)
        values = [per_seed[s] for s in seeds]
        rows.append(SeedMean(nbits, method, seeds, mean_interval(values) if len(values) > 1 else None, values))
    return rows


def seed_differences(evaluations: dict[int, list[dict]], reference: str = "QaDWH") -> list[SeedDifference]:
    """``reference − other`` in MAP, paired seed by seed, for every other ranking sharing ≥ 2 seeds with it."""
    by = _by_ranking(evaluations)
    out = []
    for nbits in sorted({b for b, _ in by}):
        ref = by.get((nbits, reference))
        if not ref:
            continue
        for (b, method), per_seed in sorted(by.items()):
            if b != nbits or method == reference:
                continue
            seeds = sorted(set(ref) & set(per_seed))
            if len(seeds) < 2:
                continue
            diffs = [ref[s] - per_seed[s] for s in seeds]
            out.append(SeedDifference(nbits, reference, method, seeds, mean_interval(diffs)))
    return out


def format_seed_tables(means: list[SeedMean], differences: list[SeedDifference]) -> str:
    """Markdown: mean MAP [95% t interval] per ranking, then the paired differences (a tie when 0 is inside)."""
    lines = ["| bits | ranking | seeds | mean MAP [95% CI] | per seed |", "|---:|---|---:|---|---|"]
    for m in means:
        ci = m.interval.format(signed=False) if m.interval else f"{m.values[0]:.4f} (one seed)"
        lines.append(f"| {m.nbits} | {m.method} | {len(m.seeds)} | {ci} | "
                     + ", ".join(f"{v:.4f}" for v in m.values) + " |")
    lines += ["", "| bits | difference | seeds | mean [95% CI] | verdict |", "|---:|---|---:|---|---|"]
    for d in differences:
        lines.append(f"| {d.nbits} | {d.reference} − {d.other} | {len(d.seeds)} | {d.interval.format()} | "
                     f"{d.interval.verdict()} |")
    return "\n".join(lines)
