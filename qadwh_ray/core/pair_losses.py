"""Pairwise hashing losses (torch, differentiable) of the compared methods: ISDH, DOH, ADSQ.

All three score pairs of the batch with a likelihood in the style of DPSH:
``l(theta, s) = log(1 + e^theta) - s * theta``, the negative log-likelihood of a
similarity ``s`` under ``sigmoid(theta)``. ``anchors`` are the rows this worker
owns in the global batch (every row in a single process); each pair term is
summed over the anchors' pairs and divided by the number of pairs of the whole
batch, so the workers' losses add up to the single-process mean (the
objective scales by the world size for DDP's gradient averaging, as for
the triplet losses). These are our reading of the papers; the docstrings say
where a choice was ours.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

_EXACT = 1e-6  # similarities within this of 0 or 1 count as completely (dis)similar


def pair_likelihood(theta: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log(1 + e^theta) - s * theta`` (stable for large |theta|)."""
    return F.softplus(theta) - s * theta


def instance_similarity(anchor_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ISDH's instance similarity: the cosine of two 0/1 label vectors, in [0, 1] ``(A, N)``."""
    a = anchor_labels / anchor_labels.norm(dim=1, keepdim=True).clamp(min=1e-12)
    b = labels / labels.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return a @ b.T


def shares_label(anchor_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where two items share at least one label (the project's relevance), ``(A, N)``."""
    return ((anchor_labels @ labels.T) > 0).to(labels.dtype)


def _not_self(anchors: torch.Tensor, n: int) -> torch.Tensor:
    """``(A, N)`` mask that drops each anchor's pair with itself."""
    mask = torch.ones(anchors.numel(), n, dtype=torch.bool, device=anchors.device)
    mask[torch.arange(anchors.numel(), device=anchors.device), anchors] = False
    return mask


class IsdhLoss(NamedTuple):
    total: torch.Tensor
    cross_entropy: torch.Tensor
    squared_error: torch.Tensor
    quantization: torch.Tensor


def isdh_loss(
    u: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, mse_weight: float = 1.0,
    quantization_weight: float = 0.1,
) -> IsdhLoss:
    """Instance Similarity Deep Hashing (Zhang et al., arXiv 1803.02987).

    ``u`` ``(N, q)`` in [-1, 1] (the relaxed codes of the whole batch), ``labels``
    ``(N, c)``. With ``s_ij`` the instance similarity and ``theta_ij = <u_i, u_j> / 2``:

    * pairs with ``s`` 0 or 1: weighted cross-entropy ``w_ij l(theta_ij, s_ij)``, the
      weights balancing similar against dissimilar pairs (each group weighs as much
      in total; weights average 1 over these pairs, counted over the whole batch);
    * pairs with ``0 < s < 1``: squared error between ``s_ij`` and the codes'
      agreement ``(1 + <u_i, u_j> / q) / 2`` (for binary codes, the fraction of equal
      bits: our choice of how the codes express a percentage);
    * quantization ``| |u| - 1 |``, averaged over the anchors' entries.

    Single-label data has no partial pair, and the loss is a class-balanced DPSH.
    """
    n, q = u.shape
    s_all = instance_similarity(labels, labels)
    off = ~torch.eye(n, dtype=torch.bool, device=u.device)
    similar_all = (s_all >= 1 - _EXACT) & off
    dissimilar_all = (s_all <= _EXACT) & off
    n_sim, n_dis = int(similar_all.sum()), int(dissimilar_all.sum())
    n_complete = n_sim + n_dis
    groups = int(n_sim > 0) + int(n_dis > 0)
    w_sim = n_complete / (groups * n_sim) if n_sim else 0.0
    w_dis = n_complete / (groups * n_dis) if n_dis else 0.0
    pairs = n * (n - 1)

    s = s_all[anchors]
    keep = _not_self(anchors, n)
    similar, dissimilar = similar_all[anchors], dissimilar_all[anchors]
    partial = keep & ~similar & ~dissimilar
    inner = u[anchors] @ u.T
    weight = similar.to(u.dtype) * w_sim + dissimilar.to(u.dtype) * w_dis
    ce = (weight * pair_likelihood(inner / 2, s)).sum() / pairs
    mse = torch.where(partial, ((1 + inner / q) / 2 - s) ** 2, torch.zeros_like(inner)).sum() / pairs
    quant = (u[anchors].abs() - 1).abs().sum() / (n * q)
    total = ce + mse_weight * mse + quantization_weight * quant
    return IsdhLoss(total, ce, mse, quant)


def ordinal_pair_loss(probabilities: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Deep Ordinal Hashing's ranking-to-hashing objective (Jin et al., arXiv 1805.02459), as we read it.

    ``probabilities`` ``(N, S, K)``: each of the S symbols' softmax over its K
    scores. The soft agreement of two items is the expected number of equal
    symbols, ``A_ij = sum_s <p_i^s, p_j^s>`` in [0, S]; the pair likelihood uses
    ``theta_ij = A_ij - S / 2`` (the ordinal analogue of ``<u_i, u_j> / 2`` for
    binary codes) against ``s_ij`` = the items share a label.
    """
    n, symbols, _ = probabilities.shape
    agree = torch.einsum("ask,nsk->an", probabilities[anchors], probabilities)
    s = shares_label(labels[anchors], labels)
    terms = pair_likelihood(agree - symbols / 2, s)
    return torch.where(_not_self(anchors, n), terms, torch.zeros_like(terms)).sum() / (n * (n - 1))


class AdsqLoss(NamedTuple):
    total: torch.Tensor
    label: torch.Tensor  # LabelNet's pair likelihood
    asymmetric: torch.Tensor  # query ImgNet vs database ImgNet pair likelihood
    semantic: torch.Tensor  # both ImgNets pulled to the LabelNet's binary codes
    quantization: torch.Tensor


def adsq_loss(
    query_u: torch.Tensor, database_w: torch.Tensor, label_v: torch.Tensor, labels: torch.Tensor,
    anchors: torch.Tensor, quantization_weight: float = 0.1,
) -> AdsqLoss:
    """Asymmetric Deep Semantic Quantization (Yang et al., arXiv 1903.12493), as we read it.

    ``query_u`` ``(A, q)``: the query ImgNet on the anchors; ``database_w`` ``(N, q)``:
    the database ImgNet on the whole batch; ``label_v`` ``(N, q)``: the LabelNet on
    the batch's labels; all tanh outputs; ``s_ij`` = the items share a label.

    * LabelNet: ``l(<v_i, v_j> / 2, s_ij)`` over pairs ``i != j``, so the semantic
      codes ``B = sign(v)`` preserve the label similarity;
    * asymmetric: ``l(<u_i, w_j> / 2, s_ij)`` over every pair, ``j = i`` included
      (an image's query output should match its own database code);
    * semantic guidance: ``||u_i - B_i||^2 + ||w_i - B_i||^2`` per bit, ``B`` fixed
      (the LabelNet guides the ImgNets, not the other way);
    * quantization: ``(|v| - 1)^2 + (|w| - 1)^2`` per bit, the gap between the
      continuous outputs and the binary codes they stand for.
    """
    n, q = database_w.shape
    s = shares_label(labels[anchors], labels)
    v_a, w_a = label_v[anchors], database_w[anchors]
    label_terms = pair_likelihood(v_a @ label_v.T / 2, s)
    label = torch.where(_not_self(anchors, n), label_terms, torch.zeros_like(label_terms)).sum() / (n * (n - 1))
    asymmetric = pair_likelihood(query_u @ database_w.T / 2, s).sum() / (n * n)
    target = torch.where(v_a >= 0, 1.0, -1.0).to(v_a.dtype).detach()
    semantic = (((query_u - target) ** 2).sum() + ((w_a - target) ** 2).sum()) / (n * q)
    quant = (((v_a.abs() - 1) ** 2).sum() + ((w_a.abs() - 1) ** 2).sum()) / (n * q)
    total = label + asymmetric + semantic + quantization_weight * quant
    return AdsqLoss(total, label, asymmetric, semantic, quant)
