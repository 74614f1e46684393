"""Turning the shards' replies to one query into the API's answer (pure: no Ray, no I/O).

Every shard returns its exact top k under ``(distance, id)``; the global top k
is their exact merge (:func:`qadwh_ray.core.topk.merge_topk`), so the answer
equals one search over the whole version. Class ids are given their names
when the version knows them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from qadwh_ray.core.topk import merge_topk

__all__ = ["merge_replies", "label_names"]


def label_names(labels: Optional[list], class_names: Optional[list]) -> Optional[list]:
    if not class_names or labels is None:
        return None
    return [class_names[c] for c in labels if 0 <= c < len(class_names)]


def merge_replies(per_shard: list, k: int, class_names: Optional[list]) -> dict:
    """``per_shard``: ``(distances (k,), ids (k,), label lists of the real ids)`` from every
    shard for one query. Returns ``ids``, ``distances``, ``labels`` and ``results``."""
    pairs = [(np.asarray(d)[None, :], np.asarray(ids)[None, :]) for d, ids, _ in per_shard]
    labels_of: dict = {}
    for d, ids, labels in per_shard:
        ids = np.asarray(ids)
        for i, lab in zip(ids[ids >= 0].tolist(), labels):
            labels_of[i] = lab
    d, ids = merge_topk(pairs, k)
    keep = ids[0] >= 0
    out_ids = ids[0][keep].tolist()
    out_d = d[0][keep].tolist()
    out_labels = [labels_of.get(i) for i in out_ids]
    results = [
        {"id": i, "distance": dist, "labels": lab, "label_names": label_names(lab, class_names)}
        for i, dist, lab in zip(out_ids, out_d, out_labels)
    ]
    return {"ids": out_ids, "distances": out_d, "labels": out_labels, "results": results}
