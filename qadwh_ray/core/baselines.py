"""Classical hashing baselines on real-valued features: LSH and ITQ.

Both are fitted on the network's penultimate features of the training images
and encode to the same packed-code format as the learned hashes, so the same
metrics rank them (paper Table VII compares against such baselines).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qadwh_ray.core.bits import check_code_length, pack_bits


@dataclass
class LinearHash:
    """code = pack(((x - mean) @ projection) >= 0)."""

    mean: np.ndarray  # (d,)
    projection: np.ndarray  # (d, nbits)

    def encode(self, features: np.ndarray) -> np.ndarray:
        x = _check_features(features, self.mean.shape[0])
        return pack_bits(((x - self.mean) @ self.projection) >= 0)


def _check_features(features: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (n, d) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"features have {x.shape[1]} dimensions, the hash was fitted on {dim}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x


def fit_lsh(features: np.ndarray, nbits: int, seed: int = 0) -> LinearHash:
    """Sign random projections (Charikar's SimHash) of mean-centred features."""
    nbits = check_code_length(nbits)
    x = _check_features(features)
    rng = np.random.default_rng(seed)
    return LinearHash(x.mean(axis=0), rng.standard_normal((x.shape[1], nbits)))


def fit_itq(features: np.ndarray, nbits: int, iterations: int = 50, seed: int = 0) -> LinearHash:
    """Iterative Quantization (Gong & Lazebnik 2011): PCA to nbits, then a
    rotation R minimising ||B − V R||² by alternating B = sign(V R) and the
    orthogonal Procrustes solution for R."""
    nbits = check_code_length(nbits)
    x = _check_features(features)
    if nbits > min(x.shape):
        raise ValueError(f"ITQ needs at least {nbits} samples and feature dimensions, got {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca = vt[:nbits].T  # (d, nbits), top principal directions
    v = centred @ pca
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((nbits, nbits)))
    for _ in range(iterations):
        b = np.where(v @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        rotation = (u @ wt).T
    return LinearHash(mean, pca @ rotation)


def quantization_loss(features: np.ndarray, h: LinearHash) -> float:
    """||B − V R||²_F / n for a fitted hash (what ITQ minimises)."""
    proj = (_check_features(features, h.mean.shape[0]) - h.mean) @ h.projection
    return float(((np.where(proj >= 0, 1.0, -1.0) - proj) ** 2).sum() / len(proj))
