"""Helpers shared by the indexing tests (tests/ray/test_indexing_*.py, tests/e2e/test_index_s3.py)."""

from __future__ import annotations

import numpy as np
import torch

from qadwh_ray.model import ModelConfig, build_model, encode, save_checkpoint


def spread_model(seed: int = 0, nbits: int = 16, degenerate: bool = False):
    """An untrained network whose hash head is re-centred on real images so its
    codes are diverse (an untrained head gives nearly one code for every image):
    random hyperplanes through the mean feature, scaled by the feature spread.
    ``degenerate=True`` gives one constant code (a model that must fail a MAP check)."""
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.model.encode import preprocess

    torch.manual_seed(seed)
    model = build_model(ModelConfig(nbits=nbits)).eval()
    images, _ = load_fashion_mnist()
    with torch.no_grad():
        f = model.backbone(preprocess(model, images[60_000:60_512]))
        mu, sd = f.mean(0), f.std(0) + 1e-6
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(nbits, f.shape[1], generator=g) / sd
        model.hash_head.weight.copy_(a)
        model.hash_head.bias.copy_(-(a @ mu))
        if degenerate:
            model.hash_head.weight.zero_()
            model.hash_head.bias.fill_(1.0)
    return model


def save_model(path, seed: int = 0, nbits: int = 16, degenerate: bool = False) -> str:
    save_checkpoint(str(path), spread_model(seed, nbits, degenerate))
    return str(path)


def local_codes(checkpoint: str, images: np.ndarray) -> np.ndarray:
    from qadwh_ray.model import load_checkpoint

    return encode(load_checkpoint(checkpoint), images).codes
