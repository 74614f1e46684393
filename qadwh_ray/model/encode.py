"""Raw images → packed codes and query-adaptive weights, in batches, one definition.

Indexing, serving, evaluation and benchmarks all call ``encode`` so a database
code and a query code of the same image are the same bytes everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qadwh_ray.core.bits import code_bytes, pack_bits
from qadwh_ray.data.transforms import resize, to_float_tensor
from qadwh_ray.model.network import HashingNetwork, HashOutput


# Images per forward pass when the caller does not choose: on CPU a small chunk keeps the
# activations in cache (docs/benchmarks.md, "Encoder chunk size"); GPUs want large batches.
CPU_CHUNK = 128
GPU_CHUNK = 1024


def default_chunk(device: str | torch.device) -> int:
    return CPU_CHUNK if torch.device(device).type == "cpu" else GPU_CHUNK


@dataclass
class EncodeResult:
    codes: np.ndarray  # (n, ceil(nbits/8)) uint8, packed little-endian, padding bits 0
    qadwh_weights: np.ndarray | None  # (n, nbits) float32, eq. 14; None without a class stream and W
    dwh_weights: np.ndarray | None  # (nbits,) float32
    logits: np.ndarray | None  # (n, c) float32
    features: np.ndarray | None = None  # (n, d) float32 when asked for
    activations: np.ndarray | None = None  # (n, width of h) float32 when asked for (ADSQ's real-valued queries)


def preprocess(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """uint8 pixels → the normalised float tensor the network was trained on."""
    cfg = model.config
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 pixels, got dtype {images.dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (n, H, W) or (n, H, W, C), got shape {images.shape}")
    channels = 1 if images.ndim == 3 else images.shape[-1]
    if channels != cfg.in_channels:
        want = "grey (n, H, W)" if cfg.in_channels == 1 else "RGB (n, H, W, 3)"
        raise ValueError(f"this model takes {want} images, got {channels}-channel images of shape {images.shape}")
    x = to_float_tensor(images, mean=cfg.mean, std=cfg.std)
    if x.shape[-2:] != (cfg.image_size, cfg.image_size):
        x = resize(x, cfg.image_size)  # e.g. 28×28 Fashion-MNIST into a 224×224 VGG-19
    return x


def _flip_averaged(model: torch.nn.Module, x: torch.Tensor, role: str) -> HashOutput:
    """The network's outputs on ``x`` and its horizontal mirror, averaged in one
    forward pass. The logits returned are the log of the mean class probabilities,
    so ``query_weights`` (a softmax of them) weights by the mean probabilities."""
    both = model.encoding(torch.cat([x, x.flip(-1)]), role)
    n = x.shape[0]
    mean_log_probs = None
    if both.logits is not None:
        log_probs = torch.log_softmax(both.logits, dim=1)
        # log of the mean probability, in log space: finite even where a probability underflows
        mean_log_probs = torch.logaddexp(log_probs[:n], log_probs[n:]) - math.log(2.0)
    return HashOutput(
        features=(both.features[:n] + both.features[n:]) / 2,
        h=(both.h[:n] + both.h[n:]) / 2,
        logits=mean_log_probs,
    )


@torch.inference_mode()
def encode(
    model: torch.nn.Module,
    images: np.ndarray,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    with_features: bool = False,
    flip_average: bool | None = None,
    role: str = "database",
    with_activations: bool = False,
) -> EncodeResult:
    """``batch_size``: images per forward pass (default: :func:`default_chunk`; with
    flip averaging a pass holds them and their mirrors, and the default is halved);
    it does not change the result. ``flip_average``: None follows the model's config.
    ``role``: ``query`` or ``database``, which matters only to an asymmetric network
    (ADSQ encodes each with its own ImgNet). Query-adaptive and DWH weights come back
    for the two-stream network only."""
    if device is None:
        device = next(model.parameters()).device
    flip = model.config.flip_average if flip_average is None else flip_average
    if batch_size is None:
        # flip averaging runs each chunk twice in one pass: halve it to keep the pass's size
        batch_size = max(1, default_chunk(device) // (2 if flip else 1))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    weighted = isinstance(model, HashingNetwork)
    codes, weights, logits, feats, acts = [], [], [], [], []
    for start in range(0, len(images), batch_size):
        x = preprocess(model, images[start : start + batch_size]).to(device)
        out = _flip_averaged(model, x, role) if flip else model.encoding(x, role)
        codes.append(pack_bits(model.code_bits(out.h).cpu().numpy()))
        if weighted:
            weights.append(model.query_weights(out.logits).float().cpu().numpy())
            logits.append(out.logits.float().cpu().numpy())
        if with_features:
            feats.append(out.features.float().cpu().numpy())
        if with_activations:
            acts.append(out.h.float().cpu().numpy())
    nbytes = code_bytes(model.config.nbits)
    return EncodeResult(
        codes=np.concatenate(codes) if codes else np.zeros((0, nbytes), np.uint8),
        qadwh_weights=(np.concatenate(weights) if weights else np.zeros((0, model.config.nbits), np.float32))
        if weighted else None,
        dwh_weights=model.dwh_weights().detach().float().cpu().numpy() if weighted else None,
        logits=(np.concatenate(logits) if logits else np.zeros((0, model.config.num_classes), np.float32))
        if weighted else None,
        features=(np.concatenate(feats) if feats else None) if with_features else None,
        activations=(np.concatenate(acts) if acts else None) if with_activations else None,
    )
