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


#: Classes of the RGB test folder: not Fashion-MNIST's, and not ten of them.
RGB_CLASSES = ("amber", "cobalt", "fern", "plum", "slate")
_TINTS = np.array([(255, 170, 40), (40, 90, 255), (60, 200, 80), (170, 60, 200), (150, 160, 170)], dtype=np.float64)


def rgb_folder(root, per_class: int = 8, size: int = 32) -> dict:
    """An RGB image folder ``root/<class>/<i>.png|jpg`` of the classes :data:`RGB_CLASSES`:
    Fashion-MNIST images regrouped (label mod 5), tinted by class, resized to
    ``size`` x ``size``, every other one a JPEG. Returns ``{file path: (class, RGB pixels
    as decoded from the file)}`` in sorted path order."""
    import io
    import os

    from PIL import Image

    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.transforms import decode_image

    images, labels = load_fashion_mnist()
    out = {}
    for c, name in enumerate(RGB_CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        rows = np.flatnonzero(labels[:5000] % len(RGB_CLASSES) == c)[:per_class]
        for j, r in enumerate(rows.tolist()):
            rgb = (images[r][..., None] * (_TINTS[c] / 255.0)).astype(np.uint8)
            img = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
            fmt, ext = ("JPEG", "jpg") if j % 2 else ("PNG", "png")
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            path = os.path.join(root, name, f"{j:03d}.{ext}")
            with open(path, "wb") as f:
                f.write(buf.getvalue())
            out[path] = (c, decode_image(buf.getvalue(), mode="RGB"))
    return dict(sorted(out.items()))


def rgb_12bit_model(path, pixels: np.ndarray) -> str:
    """A 12-bit model for :func:`rgb_folder` images (RGB, 5 classes), centred on ``pixels``."""
    return save_model(path, nbits=12, images=pixels, in_channels=3, num_classes=len(RGB_CLASSES), image_size=pixels.shape[1])


def local_codes(checkpoint: str, images: np.ndarray) -> np.ndarray:
    from qadwh_ray.model import load_checkpoint

    return encode(load_checkpoint(checkpoint), images).codes
