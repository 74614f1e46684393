"""Train every method on one split and rank with every mode: the ablation table."""

from __future__ import annotations

import json
import time

from qadwh_ray import storage
from qadwh_ray.learning.config import TrainConfig
from qadwh_ray.learning.datasets import RetrievalData, load_retrieval_data
from qadwh_ray.learning.evaluate import Ranking, RankingMetrics, evaluate_ranking, format_table
from qadwh_ray.learning.local import train_local
from qadwh_ray.model.encode import encode

FORM_NAMES = {"plain": "NINH", "paper": "QaDWH", "reference": "QaDWH-ref"}


def rankings_for(form: str, nbits: int, model, data: RetrievalData) -> list[Ranking]:
    q = encode(model, data.query_images)
    d = encode(model, data.db_images)
    if form == "plain":
        return [Ranking("NINH", nbits, q.codes, d.codes)]
    if form == "reference":
        return [Ranking("QaDWH (reference form)", nbits, q.codes, d.codes, q.qadwh_weights)]
    return [
        Ranking("QaDWH codes, plain Hamming", nbits, q.codes, d.codes),
        Ranking("DWH", nbits, q.codes, d.codes, q.dwh_weights),
        Ranking("QaDWH", nbits, q.codes, d.codes, q.qadwh_weights),
    ]


def run_ablation(
    base: TrainConfig,
    bits: list[int],
    forms: list[str],
    out_dir: str | None = None,
    progress: bool = True,
    log=print,
) -> tuple[list[RankingMetrics], list[dict]]:
    data = load_retrieval_data(base.dataset, base.split_seed, base.val_fraction)
    log(data.summary())
    if out_dir:
        data.split.save(storage.join(out_dir, "split.json"))
    rows: list[RankingMetrics] = []
    runs: list[dict] = []
    for nbits in bits:
        for form in forms:
            cfg = base.replace(nbits=nbits, triplet_form=form)
            log(f"training {FORM_NAMES[form]} at {nbits} bits ({cfg.epochs} epochs, backbone {cfg.backbone})")
            ckpt = storage.join(out_dir, f"{FORM_NAMES[form].lower()}-{nbits}.pt") if out_dir else None
            result = train_local(cfg, data, checkpoint_uri=ckpt, progress=progress, log=log)
            t0 = time.perf_counter()
            for ranking in rankings_for(form, nbits, result.model, data):
                rows.append(evaluate_ranking(ranking, data.query_labels, data.db_labels, data.db_ids))
                log(f"    {ranking.method:<28} MAP {rows[-1].map_all:.4f}")
            runs.append({
                "method": FORM_NAMES[form], "nbits": nbits, "train_seconds": round(result.seconds, 1),
                "eval_seconds": round(time.perf_counter() - t0, 1), "steps": result.steps,
                "final": result.history[-1] if result.history else {}, "checkpoint": ckpt,
            })
    if out_dir:
        report = {
            "dataset": data.name, "split_seed": base.split_seed, "config": base.to_dict(), "runs": runs,
            "metrics": [{k: v for k, v in vars(m).items()} for m in rows],
        }
        storage.write_bytes(storage.join(out_dir, "ablation.json"), json.dumps(report, indent=1).encode())
        storage.write_bytes(storage.join(out_dir, "ablation.md"), (format_table(rows) + "\n").encode())
    return rows, runs


def summarize_order(rows: list[RankingMetrics]) -> list[str]:
    """Check the paper's claim QaDWH > DWH > NINH per code length; one line per length."""
    lines = []
    for nbits in sorted({r.nbits for r in rows}):
        by = {r.method: r.map_all for r in rows if r.nbits == nbits}
        if {"QaDWH", "DWH", "NINH"} <= set(by):
            ok = by["QaDWH"] > by["DWH"] > by["NINH"]
            lines.append(
                f"{nbits} bits: QaDWH {by['QaDWH']:.4f} {'>' if by['QaDWH'] > by['DWH'] else '<='} DWH {by['DWH']:.4f} "
                f"{'>' if by['DWH'] > by['NINH'] else '<='} NINH {by['NINH']:.4f}  ({'holds' if ok else 'does not hold'})"
            )
    return lines
