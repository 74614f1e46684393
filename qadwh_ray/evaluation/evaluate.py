"""Every ranking on the same queries, every metric, and paired comparisons between them.

A :class:`Ranking` is what gets ranked: packed codes under plain Hamming, under a
weighted Hamming distance (QaDWH's query-adaptive weights, DWH's fixed ones, or
ADSQ's asymmetric distance written as weights), or under DOH's count of
differing symbols. Which rankings each method's model gives is in
:mod:`qadwh_ray.evaluation.rankings`. Ties are ordered by item id everywhere
(core.metrics). Weighted rankings use :mod:`qadwh_ray.core.hamming`'s canonical
distance, the search service's own, so a reported MAP is that of the service's ranking.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from qadwh_ray.core.hamming import hamming_distances, symbol_hamming_distances, weighted_hamming_distances
from qadwh_ray.core.metrics import precision_within_radius, ranking_summary
from qadwh_ray.core.stats import Interval, paired_difference

QUERY_CHUNK = 200  # bounds the (queries × database) distance block to ~100 MB
PR_POINTS = 50


@dataclass
class Ranking:
    """What gets ranked: codes plus, for weighted modes, the query weights."""

    method: str
    nbits: int
    query_codes: np.ndarray
    db_codes: np.ndarray
    query_weights: np.ndarray | None = None  # (nq, nbits) query-adaptive, or (nbits,) fixed; None = Hamming
    symbol_bits: int = 1  # > 1: rank by the count of differing symbols of this many bits (DOH)


@dataclass
class RankingMetrics:
    method: str
    nbits: int
    map_all: float
    map_at_1000: float
    precision_at_500: float
    precision_r2: float | None  # None for symbol codes: bit flips are not their neighbourhood
    pk_curve: dict = field(default_factory=dict, repr=False)  # k -> mean precision@k
    pr_curve: dict = field(default_factory=dict, repr=False)  # {"precision": [...], "recall": [...]} at rank cutoffs
    ap: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # each query's AP@all; map_all = ap.mean()

    def summary(self) -> dict:
        """Everything but the per-query APs (those go to the Parquet export)."""
        return {k: v for k, v in vars(self).items() if k != "ap"}


def distances_for(r: Ranking, rows: slice) -> np.ndarray:
    q = r.query_codes[rows]
    if r.symbol_bits > 1:
        return symbol_hamming_distances(q, r.db_codes, r.symbol_bits).astype(np.float64)
    if r.query_weights is None:
        return hamming_distances(q, r.db_codes).astype(np.float64)
    w = r.query_weights if r.query_weights.ndim == 1 else r.query_weights[rows]
    return weighted_hamming_distances(q, r.db_codes, w)  # the service's distance: its ranking is scored


def evaluate_ranking(
    r: Ranking,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    db_ids: np.ndarray,
    pk_points: tuple[int, ...] = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
) -> RankingMetrics:
    nq = len(r.query_codes)
    ks = tuple(k for k in pk_points if k <= len(r.db_codes))
    map_1000 = 0.0
    ap = []
    pk = np.zeros(len(ks))
    pr_p = pr_r = 0.0
    for start in range(0, nq, QUERY_CHUNK):
        rows = slice(start, min(start + QUERY_CHUNK, nq))
        w = rows.stop - rows.start
        summ = ranking_summary(distances_for(r, rows), query_labels[rows], db_labels, ks, map_top_k=1000,
                               pr_points=PR_POINTS, db_ids=db_ids)
        ap.append(summ.ap_all)
        map_1000 += w * summ.map_at_k
        pk += w * summ.precision_at
        pr_p, pr_r = pr_p + w * summ.pr.precision, pr_r + w * summ.pr.recall
    p500 = pk[ks.index(500)] / nq if 500 in ks else 0.0
    p_r2 = None if r.symbol_bits > 1 else precision_within_radius(
        r.query_codes, r.db_codes, query_labels, db_labels, radius=2)
    ap = np.concatenate(ap)
    return RankingMetrics(
        method=r.method,
        nbits=r.nbits,
        map_all=float(ap.mean()),
        map_at_1000=map_1000 / nq,
        precision_at_500=float(p500),
        precision_r2=None if p_r2 is None else float(p_r2),
        pk_curve={k: float(v / nq) for k, v in zip(ks, pk)},
        pr_curve={"precision": (pr_p / nq).tolist(), "recall": (pr_r / nq).tolist()},
        ap=ap,
    )


def format_table(rows: list[RankingMetrics]) -> str:
    """Markdown: one line per (method, bits)."""
    lines = [
        "| method | bits | MAP (whole db) | MAP@1000 | P@500 | P (Hamming r≤2) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        lines.append(
            f"| {m.method} | {m.nbits} | {m.map_all:.4f} | {m.map_at_1000:.4f} | {m.precision_at_500:.4f} | "
            f"{'n/a' if m.precision_r2 is None else f'{m.precision_r2:.4f}'} |"
        )
    return "\n".join(lines)


@dataclass
class PairedComparison:
    """``better − worse`` in MAP over the same queries, with its paired bootstrap interval."""

    nbits: int
    better: str  # the ranking with the higher MAP (the first listed on equal MAP)
    worse: str
    difference: Interval

    def summary(self) -> dict:
        d = self.difference
        return {"nbits": self.nbits, "better": self.better, "worse": self.worse, "difference": d.estimate,
                "low": d.low, "high": d.high, "verdict": d.verdict(), "method": d.method}


def paired_comparisons(rows: list[RankingMetrics], n_resamples: int = 10_000, seed: int = 0) -> list[PairedComparison]:
    """Every pair of rankings at the same code length (so on the same queries), as the
    higher-MAP one minus the other, with a 95% paired bootstrap interval over queries."""
    out = []
    for nbits in sorted({r.nbits for r in rows}):
        group = [r for r in rows if r.nbits == nbits]
        for x, y in itertools.combinations(group, 2):
            if len(x.ap) != len(y.ap):
                raise ValueError(f"{x.method} and {y.method} at {nbits} bits were ranked on different query sets")
            hi, lo = (x, y) if x.map_all >= y.map_all else (y, x)
            out.append(PairedComparison(nbits, hi.method, lo.method,
                                        paired_difference(hi.ap, lo.ap, n_resamples=n_resamples, seed=seed)))
    return out


def format_paired_table(pairs: list[PairedComparison]) -> str:
    """Markdown: one line per pair; an interval containing 0 is a tie."""
    lines = [
        "| bits | better | worse | MAP difference [95% CI] | verdict |",
        "|---:|---|---|---|---|",
    ]
    for p in pairs:
        lines.append(f"| {p.nbits} | {p.better} | {p.worse} | {p.difference.format()} | "
                     f"{'tie' if p.difference.verdict() == 'tie' else 'better'} |")
    return "\n".join(lines)
