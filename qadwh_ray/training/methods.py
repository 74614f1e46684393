"""The trainable hashing methods compared under one backbone, data and budget (``method:`` of the config).

Each method fixes a network architecture, an objective and whether it uses a
classification stream and class-wise bit weights W. The rankings evaluated per
method are in :mod:`qadwh_ray.evaluation.rankings`: a ``qadwh`` model gives the
QaDWH, DWH (the same model with one fixed weight vector, the paper's ablation)
and plain-Hamming rankings, and lends its features to the LSH and ITQ
baselines, so DWH, LSH and ITQ are rankings, not methods to train.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str  # the config value and the checkpoint name stem (<name>-<bits>.pt)
    title: str  # how tables name its main ranking
    architecture: str  # ModelConfig.architecture
    objective: str  # triplet | isdh | doh | adsq
    class_stream: bool  # trains the classification head with L = L_rank + λ L_cls
    learns_weights: bool  # trains W (else W stays at its initial 1s)
    triplet_form: str | None = None  # the triplet objective's distance: paper | reference | plain


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("qadwh", "QaDWH", "two-stream", "triplet", True, True, "paper"),
    Method("qadwh-ref", "QaDWH (reference form)", "two-stream", "triplet", True, True, "reference"),
    Method("ninh", "NINH", "two-stream", "triplet", True, False, "plain"),
    Method("ninh-paper", "NINH (paper, no class stream)", "two-stream", "triplet", False, False, "plain"),
    Method("isdh", "ISDH", "two-stream", "isdh", False, False),
    Method("doh", "DOH", "ordinal", "doh", False, False),
    Method("adsq", "ADSQ", "asymmetric", "adsq", False, False),
)}

# The former `triplet_form` key, read from old configs and `--set triplet_form=...`.
LEGACY_TRIPLET_FORMS = {"paper": "qadwh", "reference": "qadwh-ref", "plain": "ninh"}
RANKINGS_NOT_METHODS = {
    "dwh": "DWH is the qadwh model ranked with one fixed weight vector: train method qadwh, and evaluation "
           "reports its QaDWH and DWH rankings side by side",
    "lsh": "LSH is fitted on a trained qadwh model's features at evaluation: train method qadwh",
    "itq": "ITQ is fitted on a trained qadwh model's features at evaluation: train method qadwh",
}


def get_method(name: str) -> Method:
    """The method called ``name``, or a clear error naming the choices."""
    if name in METHODS:
        return METHODS[name]
    if name in RANKINGS_NOT_METHODS:
        raise ValueError(f"method {name!r} is not trained on its own: {RANKINGS_NOT_METHODS[name]}")
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
