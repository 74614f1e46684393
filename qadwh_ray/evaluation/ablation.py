"""Train every method on one split and rank with every ranking: the comparison table.

``run_ablation`` trains locally and evaluates; ``evaluate_checkpoints`` ranks
models trained elsewhere (Ray Train) from their checkpoints, by the naming
convention ``<method>-<bits>.pt`` (``qadwh-48.pt``, ``ninh-paper-12.pt``, ...), or
from the Ray Train runs of those names. Methods: :mod:`qadwh_ray.training.methods`;
the rankings of each: :mod:`qadwh_ray.evaluation.rankings`.
"""

from __future__ import annotations

import json
import time

from qadwh_ray import storage
from qadwh_ray.core.stats import paired_difference
from qadwh_ray.training.config import TrainConfig
from qadwh_ray.training.datasets import RetrievalData, load_retrieval_data
from qadwh_ray.evaluation.evaluate import (
    RankingMetrics, evaluate_ranking, format_paired_table, format_table, paired_comparisons,
)
from qadwh_ray.training.local import train_local
from qadwh_ray.training.methods import LEGACY_TRIPLET_FORMS, get_method
from qadwh_ray.evaluation.rankings import method_rankings
from qadwh_ray.model.checkpoint import load_payload, model_from_payload, newest_checkpoint


def checkpoint_name(method: str, nbits: int) -> str:
    return f"{get_method(method).name}-{nbits}.pt"


def model_checkpoint(checkpoint_dir: str, method: str, nbits: int) -> str:
    """``<dir>/<method>-<bits>.pt``, or the newest checkpoint of the Ray Train run ``<dir>/<method>-<bits>/``."""
    name = checkpoint_name(method, nbits)
    path = storage.join(checkpoint_dir, name)
    if storage.exists(path):
        return path
    run_dir = storage.join(checkpoint_dir, name[: -len(".pt")])
    if storage.exists(run_dir):
        return newest_checkpoint(run_dir)
    raise FileNotFoundError(f"no {name} and no training run {name[:-3]}/ under {checkpoint_dir}")


def evaluate_models(
    models: list[tuple[str, int, object]],
    data: RetrievalData,
    export_dir: str | None = None,
    log=print,
) -> list[RankingMetrics]:
    """Rank with every ``(method, bits, model)``'s rankings on ``data``; optionally export what was ranked."""
    from qadwh_ray.evaluation.export import export_ranking

    rows = []
    for method, nbits, model in models:
        for ranking in method_rankings(method, model, data.query_images, data.db_images, data.train_images):
            rows.append(evaluate_ranking(ranking, data.query_labels, data.db_labels, data.db_ids))
            log(f"    {ranking.method:<28} {nbits:>3} bits  MAP {rows[-1].map_all:.4f}")
            if export_dir:
                export_ranking(ranking, data.query_ids, data.query_labels, data.db_ids, data.db_labels, export_dir,
                               ap=rows[-1].ap)
    return rows


def write_report(out_dir: str, data: RetrievalData, cfg: TrainConfig, rows: list[RankingMetrics], runs: list[dict],
                 plots: bool = True) -> None:
    pairs = paired_comparisons(rows)
    report = {
        "dataset": data.name, "split_seed": cfg.split_seed, "evaluated_on": data.evaluated_on,
        "config": cfg.to_dict(), "runs": runs,
        "metrics": [m.summary() for m in rows], "paired": [p.summary() for p in pairs],
    }
    storage.write_bytes(storage.join(out_dir, "ablation.json"), json.dumps(report, indent=1).encode())
    storage.write_bytes(storage.join(out_dir, "ablation.md"),
                        (format_table(rows) + "\n\n" + format_paired_table(pairs) + "\n").encode())
    if plots and storage.is_local(out_dir):
        from qadwh_ray.evaluation.plots import plot_curves

        plot_curves(rows, storage.local_path(out_dir))


def run_ablation(
    base: TrainConfig,
    bits: list[int],
    methods: list[str],
    out_dir: str | None = None,
    progress: bool = True,
    log=print,
    data: RetrievalData | None = None,
    export_dir: str | None = None,
    on: str = "validation",
) -> tuple[list[RankingMetrics], list[dict]]:
    """Train every (method, bits) locally and rank on ``on``'s queries and database
    (``validation`` to choose settings, ``test`` to report a chosen one)."""
    data = data or load_retrieval_data(base.dataset, base.split_seed, base.val_fraction, evaluate_on=on)
    log(data.summary())
    if out_dir:
        data.split.save(storage.join(out_dir, "split.json"))
    rows: list[RankingMetrics] = []
    runs: list[dict] = []
    for nbits in bits:
        for method in methods:
            cfg = base.replace(nbits=nbits, method=method)
            log(f"training {cfg.method_spec.title} at {nbits} bits ({cfg.epochs} epochs, backbone {cfg.backbone})")
            ckpt = storage.join(out_dir, checkpoint_name(method, nbits)) if out_dir else None
            result = train_local(cfg, data, checkpoint_uri=ckpt, progress=progress, log=log)
            t0 = time.perf_counter()
            rows += evaluate_models([(method, nbits, result.model)], data, export_dir, log)
            runs.append({
                "method": method, "nbits": nbits, "seed": cfg.seed, "train_seconds": round(result.seconds, 1),
                "eval_seconds": round(time.perf_counter() - t0, 1), "steps": result.steps,
                "final": result.history[-1] if result.history else {}, "checkpoint": ckpt,
            })
    if out_dir:
        write_report(out_dir, data, base, rows, runs)
    return rows, runs


def check_trained_on(payload: dict, dataset: str, split_seed: int, name: str, method: str | None = None) -> None:
    """Refuse a model trained on another dataset or split: with another split
    seed its own training images would sit among the queries and the database,
    and a model for 56x56 mosaics would silently accept 28x28 images; and one
    trained as another method than its name says."""
    trained = payload.get("train_config") or {}
    was = trained.get("method") or LEGACY_TRIPLET_FORMS.get(trained.get("triplet_form"))
    if method is not None and was is not None and was != method:
        raise ValueError(f"{name} was trained as method {was!r}, not {method!r}")
    for key, ours in (("dataset", dataset), ("split_seed", split_seed)):
        if key in trained and trained[key] != ours:
            raise ValueError(
                f"{name} was trained with {key}={trained[key]!r} but this evaluation uses {key}={ours!r}; "
                f"evaluate it with --set {key}={trained[key]}"
            )


def evaluate_checkpoints(
    checkpoint_dir: str, bits: list[int], methods: list[str], base: TrainConfig, out_dir: str | None = None,
    export_dir: str | None = None, log=print, data: RetrievalData | None = None, flip_average: bool | None = None,
    on: str = "validation",
) -> list[RankingMetrics]:
    """The ablation table from the models in ``checkpoint_dir`` (see :func:`model_checkpoint`),
    ranked on ``on``'s queries and database (ignored when ``data`` is given).

    ``flip_average`` (True / False) overrides the checkpoints' own encoding setting
    (:class:`~qadwh_ray.model.config.ModelConfig`); None keeps it."""
    data = data or load_retrieval_data(base.dataset, base.split_seed, base.val_fraction, evaluate_on=on)
    log(data.summary())
    models = []
    trained = []  # what each ranked model is, for the report (its training seed pairs it across reports)
    for nbits in bits:
        for method in methods:
            name = checkpoint_name(method, nbits)
            payload = load_payload(model_checkpoint(checkpoint_dir, method, nbits))
            check_trained_on(payload, base.dataset, data.split.seed, name, method)
            trained.append({"method": method, "nbits": nbits, "seed": (payload.get("train_config") or {}).get("seed"),
                            "checkpoint": payload["uri"], "sha256": payload["sha256"]})
            if flip_average is not None:
                payload["model_config"] = {**payload["model_config"], "flip_average": flip_average}
            model = model_from_payload(payload)
            if model.config.nbits != nbits:
                raise ValueError(f"{name} holds a {model.config.nbits}-bit model")
            models.append((method, nbits, model))
    rows = evaluate_models(models, data, export_dir, log)
    if out_dir:
        write_report(out_dir, data, base, rows, trained)
    return rows


def report_seed(report: dict, source: str) -> int:
    """The training seed of an ``ablation.json``'s models (one per report, so reports pair by seed)."""
    seeds = {r.get("seed") for r in report.get("runs") or []}
    if len(seeds) != 1 or None in seeds:
        raise ValueError(f"{source}: its models were trained with seeds {sorted(map(str, seeds))}; "
                         "an over-seed summary needs one training seed per report")
    return int(seeds.pop())


def summarize_order(rows: list[RankingMetrics], n_resamples: int = 10_000) -> list[str]:
    """The paper's claim QaDWH > DWH > NINH per code length, each step as a paired
    difference over the queries with its 95% bootstrap interval; a step whose
    interval holds 0 is a tie, and then the order is not shown."""
    lines = []
    for nbits in sorted({r.nbits for r in rows}):
        by = {r.method: r for r in rows if r.nbits == nbits}
        if not {"QaDWH", "DWH", "NINH"} <= set(by):
            continue
        steps = []
        shown = True
        for a, b in (("QaDWH", "DWH"), ("DWH", "NINH")):
            d = paired_difference(by[a].ap, by[b].ap, n_resamples=n_resamples)
            shown &= d.verdict() == "higher"
            steps.append(f"{a} − {b} {d.format()} ({'higher' if d.verdict() == 'higher' else d.verdict()})")
        lines.append(f"{nbits} bits: " + "; ".join(steps) +
                     f"  → QaDWH > DWH > NINH {'holds' if shown else 'is not shown'} on these queries")
    return lines
