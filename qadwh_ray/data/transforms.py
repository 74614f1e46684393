"""Image transforms shared by training, indexing, serving and benchmarks.

Images travel as uint8 numpy arrays ``(n, H, W)`` (grayscale) or
``(n, H, W, 3)`` (RGB) everywhere until the model needs floats; then
:func:`to_float_tensor` makes the one ``(n, C, H, W)`` float32 layout the
networks take. Every random transform is vectorised and driven by an explicit
seed or ``torch.Generator`` so results are reproducible.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FASHION_MEAN",
    "FASHION_STD",
    "ImageDecodeError",
    "to_float_tensor",
    "resize",
    "augment",
    "train_augment",
    "random_erase",
    "decode_image",
    "encode_png",
]

FASHION_MEAN = 0.2860
FASHION_STD = 0.3530


class ImageDecodeError(ValueError):
    """An encoded image could not be decoded or has the wrong size/mode."""


def _check_batch(images: np.ndarray, what: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8, got {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
        raise ValueError(f"{what} must be (n, H, W) grayscale or (n, H, W, 3) RGB, got shape {images.shape}")
    return images


def _per_channel(value: float | Sequence[float], channels: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{name} has {t.numel()} values for {channels} channels")
    if name == "std" and (t <= 0).any():
        raise ValueError(f"std must be positive, got {t.tolist()}")
    return t.view(1, channels, 1, 1)


def to_float_tensor(
    images: np.ndarray | torch.Tensor,
    mean: float | Sequence[float] = FASHION_MEAN,
    std: float | Sequence[float] = FASHION_STD,
) -> torch.Tensor:
    """uint8 ``(n, H, W)`` / ``(n, H, W, 3)`` -> float32 ``(n, C, H, W)``:
    scaled to [0, 1], then ``(x - mean) / std`` (scalars or per channel)."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        t = images
        if not (t.ndim == 3 or (t.ndim == 4 and t.shape[-1] in (1, 3))):
            raise ValueError(f"images must be (n, H, W) or (n, H, W, 3), got shape {tuple(t.shape)}")
        t = t.to(torch.float32)
    else:  # convert in numpy: works on read-only arrays (the shared dataset) without a uint8 copy
        t = torch.from_numpy(_check_batch(images).astype(np.float32))
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    x = t.div_(255.0)
    c = x.shape[1]
    return ((x - _per_channel(mean, c, "mean").to(x.device)) / _per_channel(std, c, "std").to(x.device)).contiguous()


def resize(images: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> np.ndarray | torch.Tensor:
    """Resize a batch (bilinear, antialiased when shrinking).

    uint8 numpy ``(n, H, W[, 3])`` -> uint8 numpy ``(n, h, w[, 3])``; a float
    tensor ``(n, C, H, W)`` -> float tensor ``(n, C, h, w)`` (e.g. after
    :func:`to_float_tensor`, to feed a 224x224 backbone).
    """
    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4:
            raise ValueError(f"a float tensor batch must be (n, C, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[2:]) == hw:
            return images
        shrink = hw[0] < images.shape[2] or hw[1] < images.shape[3]
        return F.interpolate(images, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    arr = _check_batch(images.numpy() if isinstance(images, torch.Tensor) else images)
    if arr.shape[1:3] == hw:
        return arr.copy()
    t = torch.from_numpy(arr.astype(np.float32))
    t = t.unsqueeze(1) if arr.ndim == 3 else t.permute(0, 3, 1, 2)
    shrink = hw[0] < arr.shape[1] or hw[1] < arr.shape[2]
    out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    out = out[:, 0] if arr.ndim == 3 else out.permute(0, 2, 3, 1)
    return np.ascontiguousarray(out.numpy())


def augment(
    images: np.ndarray,
    seed: int,
    *,
    max_shift: int = 2,
    flip: bool = True,
    brightness: float = 0.1,
) -> np.ndarray:
    """Deterministic photometric/geometric variants of real images (uint8 in,
    uint8 out, same shape): a random shift of up to ``max_shift`` pixels in
    each direction (zero fill), a horizontal flip with probability 1/2 and a
    brightness factor in ``[1 - brightness, 1 + brightness]``.

    Used by the benchmarks to grow 70,000 real images into 1M/10M-item
    databases; the same ``(images, seed)`` always gives the same output.
    """
    images = _check_batch(images)
    if max_shift < 0 or not 0 <= brightness < 1:
        raise ValueError(f"need max_shift >= 0 and 0 <= brightness < 1, got {max_shift}, {brightness}")
    n, h, w = images.shape[:3]
    rng = np.random.default_rng(seed)
    p = int(max_shift)
    dy = rng.integers(0, 2 * p + 1, size=n)
    dx = rng.integers(0, 2 * p + 1, size=n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    factor = rng.uniform(1 - brightness, 1 + brightness, size=n).astype(np.float32)

    pad = [(0, 0), (p, p), (p, p)] + [(0, 0)] * (images.ndim - 3)
    padded = np.pad(images, pad)
    out = np.empty_like(images)
    # one strided copy per (dy, dx, flip) group: far faster than per-pixel fancy indexing
    group = (dy * (2 * p + 1) + dx) * 2 + flips
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for sel in np.split(order, bounds):
        if sel.size == 0:
            continue
        y0, x0 = int(dy[sel[0]]), int(dx[sel[0]])
        window = padded[sel, y0 : y0 + h, x0 : x0 + w]
        out[sel] = window[:, :, ::-1] if flips[sel[0]] else window
    if brightness > 0:
        # fixed-point scaling (factor in 1/256 steps): exact enough, much faster than floats
        scale = np.rint(factor * 256).astype(np.uint16).reshape((n,) + (1,) * (out.ndim - 1))
        scaled = (out.astype(np.uint16) * scale + 128) >> 8
        out = np.minimum(scaled, 255).astype(np.uint8)
    return out


def train_augment(
    batch: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    padding: int = 2,
    flip: bool = True,
    padding_mode: str = "replicate",
    erase: float = 0.0,
) -> torch.Tensor:
    """Light training augmentation on a float batch ``(n, C, H, W)``: random
    crop after padding by ``padding`` pixels, then a random horizontal flip,
    then (with probability ``erase`` per image) :func:`random_erase`.

    Padding replicates the border by default, which is correct whether or not
    the batch is already normalised (zero-padding a normalised batch would
    paint mean-grey borders). Random numbers come from ``generator`` (on the
    CPU) so DDP workers can seed their own streams.
    """
    if batch.ndim != 4 or not batch.is_floating_point():
        raise ValueError(f"train_augment needs a float (n, C, H, W) batch, got {batch.dtype} {tuple(batch.shape)}")
    n, c, h, w = batch.shape
    p = int(padding)
    if p < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    offs = torch.randint(0, 2 * p + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    padded = F.pad(batch, (p, p, p, p), mode=padding_mode) if p else batch
    dev = batch.device
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    rows = (offs[0][:, None] + ar_h[None, :]).to(dev)  # (n, h)
    cols = torch.where(flips[:, None], ar_w.flip(0)[None, :], ar_w[None, :]) + offs[1][:, None]
    cols = cols.to(dev)  # (n, w)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    out = padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    # no draws at erase=0, so runs without erasing keep their random streams
    return random_erase(out, erase, generator) if erase else out


def random_erase(
    batch: torch.Tensor,
    probability: float,
    generator: torch.Generator | None = None,
    *,
    scale: tuple[float, float] = (0.02, 0.25),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> torch.Tensor:
    """Random erasing (Zhong et al., 2017), vectorised: each image of a float
    ``(n, C, H, W)`` batch, with probability ``probability``, gets one
    rectangle of ``scale`` × its area and aspect ratio in ``ratio`` (log-uniform)
    set to ``value`` (0 = the dataset mean once normalised).
    """
    if batch.ndim != 4 or not batch.is_floating_point():
        raise ValueError(f"random_erase needs a float (n, C, H, W) batch, got {batch.dtype} {tuple(batch.shape)}")
    if not 0 <= probability <= 1:
        raise ValueError(f"erase probability must be in [0, 1], got {probability}")
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"bad erase scale {scale} or ratio {ratio}")
    n, _, h, w = batch.shape
    u = torch.rand(5, n, generator=generator, dtype=torch.float64)
    apply = u[0] < probability
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[1])
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[2])
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (u[3] * (h - eh + 1)).floor().long()
    left = (u[4] * (w - ew + 1)).floor().long()
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    in_rows = (ar_h[None, :] >= top[:, None]) & (ar_h[None, :] < (top + eh)[:, None])  # (n, h)
    in_cols = (ar_w[None, :] >= left[:, None]) & (ar_w[None, :] < (left + ew)[:, None])  # (n, w)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    return batch.masked_fill(mask[:, None].to(batch.device), value)


def decode_image(
    data: bytes,
    expected_size: int | tuple[int, int] | None = None,
    mode: str = "L",
    *,
    source: str | None = None,
) -> np.ndarray:
    """Decode PNG/JPEG/... bytes into a uint8 array (``(H, W)`` for mode
    ``"L"``, ``(H, W, 3)`` for ``"RGB"``).

    ``expected_size`` is ``(height, width)`` (or one int for a square); a
    mismatch, undecodable bytes or a truncated file raise
    :class:`ImageDecodeError` whose message names ``source`` (a row id, a file
    URI) so the bad item can be found in a large pipeline.
    """
    from PIL import Image

    where = f" ({source})" if source else ""
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise ImageDecodeError(f"expected encoded image bytes{where}, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError(f"empty image data{where}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError ...)
        raise ImageDecodeError(f"cannot decode image{where}: {type(exc).__name__}: {exc}") from exc
    if expected_size is not None:
        want = (int(expected_size), int(expected_size)) if np.isscalar(expected_size) else tuple(int(s) for s in expected_size)
        if arr.shape[:2] != want:
            raise ImageDecodeError(
                f"image{where} is {arr.shape[0]}x{arr.shape[1]} (HxW), expected {want[0]}x{want[1]}"
            )
    return arr


def encode_png(array: np.ndarray) -> bytes:
    """Encode one uint8 ``(H, W)`` grayscale or ``(H, W, 3)`` RGB image as PNG."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"encode_png needs a uint8 image, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"encode_png needs (H, W) or (H, W, 3), got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
