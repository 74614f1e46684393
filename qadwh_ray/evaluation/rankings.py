"""Which rankings each method's trained model gives: the same code evaluates every method.

* ``qadwh``: QaDWH (query-adaptive weights, eq. 14-15), DWH (one fixed weight
  vector, the mean of the class rows: the paper's Table VII ablation), the same
  codes under plain Hamming (what the weights add), and, on the same model's
  penultimate features, the LSH and ITQ baselines.
* ``qadwh-ref``, ``ninh``, ``ninh-paper``, ``isdh``: their codes, weighted
  (qadwh-ref) or plain Hamming.
* ``doh``: ordinal codes by the number of differing symbols.
* ``adsq``: the query ImgNet's real-valued output against the database ImgNet's
  binary codes, ``-<u, b>``, exactly (as a weighted Hamming distance,
  :func:`qadwh_ray.core.weights.asymmetric_query`).

:func:`main_ranking` is a method's own ranking (QaDWH for ``qadwh``), the one
its per-epoch validation MAP uses.
"""

from __future__ import annotations

import numpy as np
import torch

from qadwh_ray.core.baselines import fit_itq, fit_lsh
from qadwh_ray.core.weights import asymmetric_query
from qadwh_ray.evaluation.evaluate import Ranking
from qadwh_ray.training.methods import get_method
from qadwh_ray.model.encode import encode

PLAIN_CODES = "QaDWH codes, plain Hamming"


def main_ranking(
    method: str, model: torch.nn.Module, query_images: np.ndarray, db_images: np.ndarray,
    flip_average: bool | None = None,
) -> Ranking:
    """The method's own ranking of the queries against the database."""
    spec = get_method(method)
    nbits = model.config.nbits
    if spec.architecture == "asymmetric":
        q = encode(model, query_images, role="query", with_activations=True, flip_average=flip_average)
        d = encode(model, db_images, role="database", flip_average=flip_average)
        codes, weights = asymmetric_query(2.0 * q.activations.astype(np.float64) - 1.0)
        return Ranking(spec.title, nbits, codes, d.codes, weights)
    q = encode(model, query_images, flip_average=flip_average)
    d = encode(model, db_images, flip_average=flip_average)
    if spec.architecture == "ordinal":
        return Ranking(spec.title, nbits, q.codes, d.codes, symbol_bits=model.config.symbol_bits)
    return Ranking(spec.title, nbits, q.codes, d.codes, q.qadwh_weights if spec.learns_weights else None)


def method_rankings(
    method: str, model: torch.nn.Module, query_images: np.ndarray, db_images: np.ndarray, train_images: np.ndarray,
) -> list[Ranking]:
    """Every ranking ``method``'s model takes part in (see the module docstring); the main one last,
    as the tables have always listed QaDWH after its ablation rows."""
    if method != "qadwh":
        return [main_ranking(method, model, query_images, db_images)]
    nbits = model.config.nbits
    q = encode(model, query_images, with_features=True)
    d = encode(model, db_images, with_features=True)
    train = encode(model, train_images, with_features=True)
    lsh = fit_lsh(train.features, nbits, seed=nbits)
    itq = fit_itq(train.features, nbits, seed=nbits)
    return [
        Ranking("LSH (features)", nbits, lsh.encode(q.features), lsh.encode(d.features)),
        Ranking("ITQ (features)", nbits, itq.encode(q.features), itq.encode(d.features)),
        Ranking(PLAIN_CODES, nbits, q.codes, d.codes),
        Ranking("DWH", nbits, q.codes, d.codes, q.dwh_weights),
        Ranking("QaDWH", nbits, q.codes, d.codes, q.qadwh_weights),
    ]
