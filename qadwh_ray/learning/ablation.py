"""Train every method on one split and rank with every mode: the ablation table.

``run_ablation`` trains locally and evaluates; ``evaluate_checkpoints`` ranks
models trained elsewhere (Ray Train) from their checkpoints, by the naming
convention ``<method>-<bits>.pt`` (``ninh``, ``qadwh``, ``qadwh-ref``), or
from the Ray Train runs of those names.
"""

from __future__ import annotations

import json
import time

from qadwh_ray import storage
from qadwh_ray.core.baselines import fit_itq, fit_lsh
from qadwh_ray.core.stats import paired_difference
from qadwh_ray.learning.config import TrainConfig
from qadwh_ray.learning.datasets import RetrievalData, load_retrieval_data
from qadwh_ray.learning.evaluate import (
    Ranking, RankingMetrics, evaluate_ranking, format_paired_table, format_table, paired_comparisons,
)
from qadwh_ray.learning.local import train_local
from qadwh_ray.model.checkpoint import load_payload, model_from_payload, newest_checkpoint
from qadwh_ray.model.encode import encode
from qadwh_ray.model.network import HashingNetwork

FORM_NAMES = {"plain": "NINH", "paper": "QaDWH", "reference": "QaDWH-ref"}


def checkpoint_name(form: str, nbits: int) -> str:
    return f"{FORM_NAMES[form].lower()}-{nbits}.pt"


def model_checkpoint(checkpoint_dir: str, form: str, nbits: int) -> str:
    """``<dir>/<method>-<bits>.pt``, or the newest checkpoint of the Ray Train run ``<dir>/<method>-<bits>/``."""
    name = checkpoint_name(form, nbits)
    path = storage.join(checkpoint_dir, name)
    if storage.exists(path):
        return path
    run_dir = storage.join(checkpoint_dir, name[: -len(".pt")])
    if storage.exists(run_dir):
        return newest_checkpoint(run_dir)
    raise FileNotFoundError(f"no {name} and no training run {name[:-3]}/ under {checkpoint_dir}")


def rankings_for(form: str, nbits: int, model: HashingNetwork, data: RetrievalData) -> list[Ranking]:
    """Every ranking a trained model takes part in; the paper-form model also
    lends its penultimate features to the LSH and ITQ baselines."""
    baselines = form == "paper"
    q = encode(model, data.query_images, with_features=baselines)
    d = encode(model, data.db_images, with_features=baselines)
    if form == "plain":
        return [Ranking("NINH", nbits, q.codes, d.codes)]
    if form == "reference":
        return [Ranking("QaDWH (reference form)", nbits, q.codes, d.codes, q.qadwh_weights)]
    train = encode(model, data.train_images, with_features=True)
    lsh = fit_lsh(train.features, nbits, seed=nbits)
    itq = fit_itq(train.features, nbits, seed=nbits)
    return [
        Ranking("LSH (features)", nbits, lsh.encode(q.features), lsh.encode(d.features)),
        Ranking("ITQ (features)", nbits, itq.encode(q.features), itq.encode(d.features)),
        Ranking("QaDWH codes, plain Hamming", nbits, q.codes, d.codes),
        Ranking("DWH", nbits, q.codes, d.codes, q.dwh_weights),
        Ranking("QaDWH", nbits, q.codes, d.codes, q.qadwh_weights),
    ]


def evaluate_models(
    models: list[tuple[str, int, HashingNetwork]],
    data: RetrievalData,
    export_dir: str | None = None,
    log=print,
) -> list[RankingMetrics]:
    """Rank with every model and mode on ``data``; optionally export what was ranked."""
    from qadwh_ray.learning.export import export_ranking

    rows = []
    for form, nbits, model in models:
        for ranking in rankings_for(form, nbits, model, data):
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
        from qadwh_ray.learning.plots import plot_curves

        plot_curves(rows, storage.local_path(out_dir))


def run_ablation(
    base: TrainConfig,
    bits: list[int],
    forms: list[str],
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
        for form in forms:
            cfg = base.replace(nbits=nbits, triplet_form=form)
            log(f"training {FORM_NAMES[form]} at {nbits} bits ({cfg.epochs} epochs, backbone {cfg.backbone})")
            ckpt = storage.join(out_dir, checkpoint_name(form, nbits)) if out_dir else None
            result = train_local(cfg, data, checkpoint_uri=ckpt, progress=progress, log=log)
            t0 = time.perf_counter()
            rows += evaluate_models([(form, nbits, result.model)], data, export_dir, log)
            runs.append({
                "method": FORM_NAMES[form], "nbits": nbits, "train_seconds": round(result.seconds, 1),
                "eval_seconds": round(time.perf_counter() - t0, 1), "steps": result.steps,
                "final": result.history[-1] if result.history else {}, "checkpoint": ckpt,
            })
    if out_dir:
        write_report(out_dir, data, base, rows, runs)
    return rows, runs


def check_trained_on(payload: dict, dataset: str, split_seed: int, name: str) -> None:
    """Refuse a model trained on another dataset or split: with another split
    seed its own training images would sit among the queries and the database,
    and a model for 56x56 mosaics would silently accept 28x28 images."""
    trained = payload.get("train_config") or {}
    for key, ours in (("dataset", dataset), ("split_seed", split_seed)):
        if key in trained and trained[key] != ours:
            raise ValueError(
                f"{name} was trained with {key}={trained[key]!r} but this evaluation uses {key}={ours!r}; "
                f"evaluate it with --set {key}={trained[key]}"
            )


def evaluate_checkpoints(
    checkpoint_dir: str, bits: list[int], forms: list[str], base: TrainConfig, out_dir: str | None = None,
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
    for nbits in bits:
        for form in forms:
            payload = load_payload(model_checkpoint(checkpoint_dir, form, nbits))
            check_trained_on(payload, base.dataset, data.split.seed, checkpoint_name(form, nbits))
            if flip_average is not None:
                payload["model_config"] = {**payload["model_config"], "flip_average": flip_average}
            model = model_from_payload(payload)
            if model.config.nbits != nbits:
                raise ValueError(f"{checkpoint_name(form, nbits)} holds a {model.config.nbits}-bit model")
            models.append((form, nbits, model))
    rows = evaluate_models(models, data, export_dir, log)
    if out_dir:
        write_report(out_dir, data, base, rows, [])
    return rows


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
