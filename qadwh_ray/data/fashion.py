"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist``.

The 70,000 real 28x28 grayscale images are the project's main benchmark data
(docs/architecture.md, 'Data'). The files are gzip-compressed IDX; torchvision's reader
(``torchvision.datasets.mnist.read_image_file``) only opens uncompressed files,
so the IDX format (a big-endian header: magic, dims, then raw data) is parsed
here directly with a strict check of every header field. Uncompressed files
(e.g. torchvision's ``FashionMNIST/raw`` directory) are accepted as well.
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

__all__ = ["FASHION_MNIST_DIR", "CLASS_NAMES", "NUM_CLASSES", "fashion_mnist_dir", "load_fashion_mnist", "read_idx",
           "AUGMENT_CHUNK", "fashion_augmented_images"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` installs the files; override with
the ``QADWH_FASHION_MNIST_DIR`` environment variable or the ``root`` argument."""

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
NUM_CLASSES = len(CLASS_NAMES)

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX type codes -> numpy dtypes (big-endian where it matters)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def fashion_mnist_dir(root: str | None = None) -> str:
    """The directory to read: ``root``, else ``$QADWH_FASHION_MNIST_DIR``, else the Debian path."""
    return os.path.abspath(root or os.environ.get("QADWH_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array, validating the header."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES or not 1 <= ndim <= 4:
        raise ValueError(f"{path}: unsupported IDX type 0x{type_code:02x} / {ndim} dimensions")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}: install the Debian package "
        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or point "
        f"QADWH_FASHION_MNIST_DIR / root= at a directory holding the IDX files"
    )


@functools.lru_cache(maxsize=2)
def _load(directory: str) -> tuple[np.ndarray, np.ndarray]:
    parts = {key: read_idx(_find(directory, stem)) for key, stem in _FILES.items()}
    images = np.concatenate([parts["train_images"], parts["test_images"]])
    labels = np.concatenate([parts["train_labels"], parts["test_labels"]]).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"Fashion-MNIST images in {directory} have shape {images.shape} / {images.dtype}, expected (n, 28, 28) uint8")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"Fashion-MNIST in {directory}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"Fashion-MNIST labels in {directory} outside [0, {NUM_CLASSES})")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images: ``(images uint8 (70000, 28, 28), labels int64 (70000,))``,
    the 60,000 training images first, then the 10,000 test images.

    Decoded once per process and shared: the arrays are read-only (copy them
    before modifying).
    """
    return _load(fashion_mnist_dir(root))


AUGMENT_CHUNK = 1000  # augmentation is drawn per aligned chunk of item ids: independent of block boundaries


def fashion_augmented_images(
    ids: np.ndarray, images: np.ndarray | None = None, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images and class indices of ``fashion-augmented`` items ``ids``.

    Item ``i`` shows real image ``i % 70000``; items past the first 70,000 are
    augmented (:func:`qadwh_ray.data.transforms.augment`) with a seed drawn per
    aligned chunk of :data:`AUGMENT_CHUNK` ids, so an item's pixels never
    depend on which other items are read with it. ``images``/``labels``: the
    70,000 base images (default: :func:`~qadwh_ray.data.fashion.load_fashion_mnist`).
    """
    from qadwh_ray.data.transforms import augment

    if images is None or labels is None:
        images, labels = load_fashion_mnist()
    base_n = images.shape[0]
    ids = np.asarray(ids, dtype=np.int64)
    out = images[ids % base_n]  # fancy indexing copies
    aug = ids >= base_n
    if aug.any():
        chunks = np.unique(ids[aug] // AUGMENT_CHUNK)
        for c in chunks.tolist():
            lo = c * AUGMENT_CHUNK
            chunk_ids = np.arange(lo, lo + AUGMENT_CHUNK, dtype=np.int64)
            variants = augment(images[chunk_ids % base_n], seed=int(c))
            sel = np.flatnonzero(aug & (ids // AUGMENT_CHUNK == c))
            out[sel] = variants[ids[sel] - lo]
    return out, labels[ids % base_n]
