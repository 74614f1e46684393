"""Helpers shared by the indexing tests (tests/ray/test_indexing_*.py, tests/e2e/test_index_s3.py)."""

from __future__ import annotations

import numpy as np
import torch

from qadwh_ray.model import ModelConfig, build_model, encode, save_checkpoint


def spread_model(seed: int = 0, nbits: int = 16, degenerate: bool = False, images: np.ndarray | None = None, **config):
    """An untrained network whose hash head is re-centred on real images so its
    codes are diverse (an untrained head gives nearly one code for every image):
    random hyperplanes through the mean feature, scaled by the feature spread.
    ``degenerate=True`` gives one constant code (a model that must fail a MAP check).
    ``images``: the images to centre on (default: 512 Fashion-MNIST test images);
    ``config``: other ModelConfig fields (channels, classes, image size)."""
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.model.encode import preprocess

    torch.manual_seed(seed)
    model = build_model(ModelConfig(nbits=nbits, **config)).eval()
    if images is None:
        images = load_fashion_mnist()[0][60_000:60_512]
    with torch.no_grad():
        f = model.backbone(preprocess(model, images))
        mu, sd = f.mean(0), f.std(0) + 1e-6
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(nbits, f.shape[1], generator=g) / sd
        model.hash_head.weight.copy_(a)
        model.hash_head.bias.copy_(-(a @ mu))
        if degenerate:
            model.hash_head.weight.zero_()
            model.hash_head.bias.fill_(1.0)
    return model


def save_model(path, seed: int = 0, nbits: int = 16, degenerate: bool = False, **kw) -> str:
    save_checkpoint(str(path), spread_model(seed, nbits, degenerate, **kw))
    return str(path)


def rgb_folder(root: str, per_class: int = 8, size: int = 32) -> tuple[list, dict]:
    """A small :func:`own_data.make_rgb_folder` (5 classes that are not Fashion-MNIST's, RGB).

    Returns the class names (the sorted folder names, i.e. class indices) and
    ``{file path: (class, RGB pixels as decoded from the file)}`` in sorted path order."""
    from own_data import RGB_CLASSES, make_rgb_folder

    from qadwh_ray import storage
    from qadwh_ray.data.transforms import decode_image

    make_rgb_folder(root, per_class=per_class, size=size)
    names = sorted(RGB_CLASSES)
    files = {}
    for c, name in enumerate(names):
        for path in storage.list_files(storage.join(root, name), recursive=True):
            files[path] = (c, decode_image(storage.read_bytes(path), mode="RGB", source=path))
    return names, dict(sorted(files.items()))


def rgb_12bit_model(path, pixels: np.ndarray, num_classes: int) -> str:
    """A 12-bit model for RGB ``pixels`` (``(n, H, H, 3)``) with ``num_classes`` classes, centred on them."""
    return save_model(path, nbits=12, images=pixels, in_channels=3, num_classes=num_classes, image_size=pixels.shape[1])


def local_codes(checkpoint: str, images: np.ndarray) -> np.ndarray:
    from qadwh_ray.model import load_checkpoint

    return encode(load_checkpoint(checkpoint), images).codes
