"""Transforms: float conversion, resize, deterministic augmentation, codecs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from qadwh_ray.data.transforms import (
    FASHION_MEAN,
    FASHION_STD,
    ImageDecodeError,
    augment,
    decode_image,
    encode_png,
    resize,
    to_float_tensor,
    random_erase,
    train_augment,
)

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
RGB = RNG.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)


def test_to_float_tensor_gray_and_rgb():
    x = to_float_tensor(GRAY)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    expected = (GRAY.astype(np.float32) / 255 - FASHION_MEAN) / FASHION_STD
    assert np.allclose(x[:, 0].numpy(), expected, atol=1e-6)
    y = to_float_tensor(RGB, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25))
    assert y.shape == (4, 3, 32, 32)
    assert np.isclose(y[1, 2, 3, 4].item(), (RGB[1, 3, 4, 2] / 255 - 0.3) / 0.25, atol=1e-6)
    assert torch.equal(to_float_tensor(torch.from_numpy(GRAY)), x)
    with pytest.raises(TypeError, match="uint8"):
        to_float_tensor(GRAY.astype(np.float32))
    with pytest.raises(ValueError, match="2 values for 3 channels"):
        to_float_tensor(RGB, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="shape"):
        to_float_tensor(GRAY[0])


def test_resize():
    out = resize(GRAY, 56)
    assert out.shape == (6, 56, 56) and out.dtype == np.uint8
    assert resize(RGB, (16, 20)).shape == (4, 16, 20, 3)
    flat = np.full((2, 28, 28), 77, np.uint8)
    assert (resize(flat, 14) == 77).all()
    t = resize(to_float_tensor(GRAY), 224)
    assert t.shape == (6, 1, 224, 224) and t.dtype == torch.float32
    with pytest.raises(ValueError, match="size"):
        resize(GRAY, 0)


def test_augment_is_deterministic_and_bounded():
    a = augment(GRAY, seed=5)
    assert a.shape == GRAY.shape and a.dtype == np.uint8
    assert np.array_equal(a, augment(GRAY, seed=5))
    assert not np.array_equal(a, augment(GRAY, seed=6))
    assert np.array_equal(augment(GRAY, 0, max_shift=0, flip=False, brightness=0), GRAY)
    assert augment(RGB, 1).shape == RGB.shape


def test_augment_flip_and_shift_semantics():
    flipped = augment(GRAY, 3, max_shift=0, brightness=0)
    for img, out in zip(GRAY, flipped):
        assert np.array_equal(out, img) or np.array_equal(out, img[:, ::-1])
    shifted = augment(GRAY, 3, max_shift=2, flip=False, brightness=0)
    for img, out in zip(GRAY, shifted):
        padded = np.pad(img, 2)
        assert any(np.array_equal(out, padded[dy : dy + 28, dx : dx + 28]) for dy in range(5) for dx in range(5))


def test_train_augment():
    x = to_float_tensor(GRAY)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = train_augment(x, g1), train_augment(x, g2)
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(train_augment(x, torch.Generator(), padding=0, flip=False), x)
    flips = train_augment(x, torch.Generator().manual_seed(1), padding=0)
    for i in range(len(x)):
        assert torch.equal(flips[i], x[i]) or torch.equal(flips[i], x[i].flip(-1))
    crops = train_augment(x, torch.Generator().manual_seed(2), flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(len(x)):
        assert any(
            torch.equal(crops[i], padded[i, :, dy : dy + 28, dx : dx + 28]) for dy in range(5) for dx in range(5)
        )
    with pytest.raises(ValueError, match="float"):
        train_augment(torch.from_numpy(GRAY), None)


def test_random_erase_blanks_one_rectangle_per_chosen_image():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(200, 1, 28, 28, generator=g) + 1.0  # no pixel is 0 before erasing
    out = random_erase(x, 0.5, torch.Generator().manual_seed(4), scale=(0.02, 0.25))
    erased = 0
    for i in range(len(x)):
        zero = (out[i, 0] == 0).numpy()
        if not zero.any():
            assert torch.equal(out[i], x[i])
            continue
        erased += 1
        rows, cols = np.nonzero(zero.any(1))[0], np.nonzero(zero.any(0))[0]
        box = np.zeros_like(zero)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert np.array_equal(zero, box)  # one filled rectangle
        assert 0.02 * 784 * 0.5 <= box.sum() <= 0.25 * 784 * 1.5  # its area within the scale (rounding)
        assert torch.equal(out[i][:, ~torch.from_numpy(box)], x[i][:, ~torch.from_numpy(box)])
    assert 70 < erased < 130  # probability 0.5 of 200
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(4)), x)
    same = random_erase(x, 0.5, torch.Generator().manual_seed(4), scale=(0.02, 0.25))
    assert torch.equal(same, out)  # seeded: reproducible
    with pytest.raises(ValueError, match="probability"):
        random_erase(x, 1.5)


def test_train_augment_without_erasing_keeps_its_random_stream():
    x = to_float_tensor(GRAY)
    plain = train_augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(train_augment(x, torch.Generator().manual_seed(5), erase=0.0), plain)
    erased = train_augment(x, torch.Generator().manual_seed(5), erase=1.0)
    assert (erased == 0).any() and not torch.equal(erased, plain)


def test_png_round_trip():
    for img in (GRAY[0], RGB[0]):
        data = encode_png(img)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        mode = "L" if img.ndim == 2 else "RGB"
        assert np.array_equal(decode_image(data, expected_size=img.shape[:2], mode=mode), img)
    assert decode_image(encode_png(RGB[0]), mode="L").shape == (32, 32)
    with pytest.raises(TypeError):
        encode_png(GRAY[0].astype(np.float32))


def test_decode_jpeg():
    buf = io.BytesIO()
    Image.fromarray(RGB[0]).save(buf, format="JPEG")
    out = decode_image(buf.getvalue(), expected_size=32, mode="RGB")
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_decode_errors_name_the_source():
    with pytest.raises(ImageDecodeError, match="row 17") as err:
        decode_image(b"definitely not an image", source="row 17")
    assert isinstance(err.value, ValueError)
    truncated = encode_png(GRAY[0])[:40]
    with pytest.raises(ImageDecodeError, match="part-3.parquet"):
        decode_image(truncated, source="id 5 in part-3.parquet")
    with pytest.raises(ImageDecodeError, match=r"\(img-9\) is 28x28 \(HxW\), expected 32x32"):
        decode_image(encode_png(GRAY[0]), expected_size=(32, 32), source="img-9")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", source="x")
    with pytest.raises(ImageDecodeError, match="NoneType"):
        decode_image(None)


def test_read_only_inputs(recwarn):
    ro = GRAY.copy()
    ro.setflags(write=False)  # like the shared, cached Fashion-MNIST arrays
    assert torch.equal(to_float_tensor(ro), to_float_tensor(GRAY))
    assert np.array_equal(resize(ro, 14), resize(GRAY, 14))
    assert np.array_equal(augment(ro, 0), augment(GRAY, 0))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
