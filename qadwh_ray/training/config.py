"""Training configuration: a dataclass loaded from YAML that rejects unknown keys.

Defaults are the setting measured in docs/results.md for the compact backbone on
Fashion-MNIST; the paper's VGG-19 setting is ``configs/paper-vgg19.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass

import yaml

from qadwh_ray.core.bits import check_code_length
from qadwh_ray.training.methods import LEGACY_TRIPLET_FORMS, METHODS, Method, get_method
from qadwh_ray.model.config import BACKBONES, CLASS_INPUTS, ModelConfig

SYMBOL_BITS = (1, 2, 4)  # DOH: K = 2, 4 or 16 scores per symbol
LR_SCHEDULES = ("step", "cosine")
TRIPLET_AVERAGES = ("all", "active")


@dataclass
class TrainConfig:
    # data: a dataset URI (image folder, Parquet, s3://...) or a built-in name (qadwh_ray.data.catalog)
    dataset: str = "fashion"
    split: str | None = None  # a saved split.json (default: the seeded split of the dataset)
    split_seed: int = 0
    val_fraction: float = 0.1  # held out of the training images for validation MAP
    train_limit: int | None = None  # cap on training images (a seeded subset; for smoke runs and tests)
    # model
    backbone: str = "compact"
    nbits: int = 48
    pretrained: str | None = None
    image_size: int | None = None  # the model's input side; default: the data's own (first image's larger side)
    class_input: str = "features"  # features (the paper's two streams) | codes: the classifier reads h
    flip_average: bool = False  # encode as the mean over the image and its mirror (ModelConfig)
    # the method trained (training/methods.py): qadwh | qadwh-ref | ninh | ninh-paper | isdh | doh | adsq
    method: str = "qadwh"
    # triplet methods (qadwh, qadwh-ref, ninh, ninh-paper): L = L_tri + λ L_cls (eq. 10, 11)
    margin: float = 2.0
    cls_weight: float = 1.0  # λ, for the methods with a classification stream (qadwh, qadwh-ref, ninh)
    triplets: str = "all"  # all valid triplets of the (global) batch, or `sample`
    triplets_per_anchor: int = 16
    # all: L_tri is the mean over every mined triplet (NINH; satisfied ones count 0);
    # active: over the triplets that still violate the margin, so the ranking term
    # keeps its weight against λ L_cls as training satisfies most triplets
    triplet_average: str = "all"
    weight_norm: bool = True  # keep each class row of W at mean 1 (see docs/results.md)
    # share s of the uniform weight 1 in the triplet loss's weight rows, (1 - s) W_a + s:
    # the loss becomes (1 - s) D_w + s D_plain, so the codes also rank well under equal
    # weights (the DWH/plain-Hamming ablation); 0 is the paper's loss (docs/results.md)
    uniform_weight_share: float = 0.0
    # keep W ≡ 1 (frozen) for the first this many epochs: the codes first learn as NINH's
    # do, then W and the codes adapt together; 0 is the paper's joint training throughout.
    # Allowed with the methods that never train W (it is frozen there anyway), so one
    # config serves every method of the comparison
    weight_warmup_epochs: int = 0
    # W's learning rate as a multiple of lr (same schedule): after a warm-up, W has only
    # the low end of the schedule left to move in (docs/results.md); 1 = one rate for all
    weight_lr_scale: float = 1.0
    # ISDH and ADSQ: weight of the term pulling continuous outputs to ±1
    quantization_weight: float = 0.1
    # DOH: bits per ordinal symbol; each symbol is the argmax of 2**symbol_bits scores
    symbol_bits: int = 2
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"  # step: the paper's step decay; cosine: anneal to 0 over `epochs`
    lr_step_epochs: int = 20  # step: divide lr by 1/lr_gamma every this many epochs
    lr_gamma: float = 0.1
    epochs: int = 30
    classes_per_batch: int = 8
    images_per_class: int = 8  # batch = classes_per_batch × images_per_class
    augment: bool = True
    erase_probability: float = 0.0  # random erasing per training image (with augment); 0 = off
    seed: int = 0
    max_steps: int | None = None
    # distributed (Ray Train)
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    worker_resources: dict | None = None  # extra Ray resources per worker, e.g. {"accelerator": 1} (node types)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(f"dataset must be a dataset URI or a built-in name, got {self.dataset!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 8):
            raise ValueError(f"image_size must be an integer of at least 8 pixels, got {self.image_size!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        check_code_length(self.nbits)
        if not isinstance(self.flip_average, bool):  # fail at load, not when the model is built
            raise ValueError(f"flip_average must be true or false, got {self.flip_average!r}")
        if self.class_input not in CLASS_INPUTS:
            raise ValueError(f"unknown class_input {self.class_input!r}; choose one of {', '.join(CLASS_INPUTS)}")
        spec = get_method(self.method)
        if self.triplets not in ("all", "sample"):
            raise ValueError(f"triplets must be 'all' or 'sample', got {self.triplets!r}")
        if self.triplet_average not in TRIPLET_AVERAGES:
            raise ValueError(
                f"unknown triplet_average {self.triplet_average!r}; choose one of {', '.join(TRIPLET_AVERAGES)}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        for name in ("lr", "margin", "epochs", "classes_per_batch", "images_per_class", "num_workers", "cpus_per_worker"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.classes_per_batch < 2 or self.images_per_class < 2:
            raise ValueError("batches need ≥2 classes and ≥2 images per class so every anchor has a positive and a negative")
        if self.train_limit is not None and (isinstance(self.train_limit, bool) or self.train_limit < 2):
            raise ValueError(f"train_limit must be None or an integer >= 2, got {self.train_limit!r}")
        if not 0 <= self.erase_probability <= 1:
            raise ValueError(f"erase_probability must be in [0, 1], got {self.erase_probability}")
        if self.erase_probability and not self.augment:
            raise ValueError("erase_probability needs augment: true (erasing is part of the training augmentation)")
        if not 0 <= self.uniform_weight_share <= 1:
            raise ValueError(f"uniform_weight_share must be in [0, 1], got {self.uniform_weight_share}")
        if self.uniform_weight_share and not spec.learns_weights:
            raise ValueError(f"uniform_weight_share applies to the weighted methods; method {self.method} has no weights to mix")
        if isinstance(self.weight_warmup_epochs, bool) or not isinstance(self.weight_warmup_epochs, int) \
                or not 0 <= self.weight_warmup_epochs < self.epochs:
            raise ValueError(
                f"weight_warmup_epochs must be an integer in [0, epochs={self.epochs}), got {self.weight_warmup_epochs!r}"
            )
        if isinstance(self.weight_lr_scale, bool) or not isinstance(self.weight_lr_scale, (int, float)) \
                or not self.weight_lr_scale > 0:
            raise ValueError(f"weight_lr_scale must be a positive number, got {self.weight_lr_scale!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.worker_resources is not None:
            if not isinstance(self.worker_resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for k, v in self.worker_resources.items()
            ):
                raise ValueError(f"worker_resources must map resource names to positive amounts, got {self.worker_resources!r}")
            if {"CPU", "GPU"} & set(self.worker_resources):
                raise ValueError("set CPUs and GPUs with cpus_per_worker and use_gpu, not worker_resources")
        if self.cls_weight < 0 or self.weight_decay < 0:
            raise ValueError("cls_weight and weight_decay must be non-negative")
        if spec.class_stream and self.cls_weight == 0:
            raise ValueError(
                f"cls_weight 0 removes the classification stream that method {self.method} trains; NINH without it "
                "is method ninh-paper (qadwh and qadwh-ref need it for their query weights)"
            )
        if self.quantization_weight < 0:
            raise ValueError(f"quantization_weight must be non-negative, got {self.quantization_weight}")
        if self.method == "doh":
            if self.symbol_bits not in SYMBOL_BITS:
                raise ValueError(f"symbol_bits must be one of {SYMBOL_BITS}, got {self.symbol_bits!r}")
            if self.nbits % self.symbol_bits:
                raise ValueError(f"nbits={self.nbits} must be a whole number of {self.symbol_bits}-bit DOH symbols")

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    def model_config(self, info, image_size: int, normalisation: tuple[list, list] | None = None) -> ModelConfig:
        """The network for this config on a dataset (a :class:`~qadwh_ray.data.catalog.DatasetInfo`):
        classes and channels come from the data; ``normalisation`` (per-channel mean, std) from its
        training images (None: the built-in Fashion-MNIST statistics); the architecture from the method."""
        extra = {}
        if normalisation is not None:
            extra = {"mean": tuple(normalisation[0]), "std": tuple(normalisation[1])}
        arch = self.method_spec.architecture
        return ModelConfig(backbone=self.backbone, nbits=self.nbits, num_classes=info.num_classes,
                           in_channels=info.in_channels, image_size=int(image_size), class_input=self.class_input,
                           flip_average=self.flip_average, architecture=arch,
                           symbol_bits=self.symbol_bits if arch == "ordinal" else 1, **extra)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "TrainConfig":
        data = _migrate(dict(data or {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _migrate(data: dict) -> dict:
    """Read the former ``triplet_form`` key as the method it named (old configs and checkpoints)."""
    if "triplet_form" not in data:
        return data
    form = data.pop("triplet_form")
    if form not in LEGACY_TRIPLET_FORMS:
        raise ValueError(f"unknown triplet_form {form!r} (now `method`; choose one of {', '.join(METHODS)})")
    method = LEGACY_TRIPLET_FORMS[form]
    if data.get("method", method) != method:
        raise ValueError(f"triplet_form {form!r} (method {method}) contradicts method {data['method']!r}; keep only method")
    data["method"] = method
    return data


def _coerce(name: str, text: str, annotation) -> object:
    """Turn a ``--set`` value into the field's type (YAML scalars for the rest)."""
    value = yaml.safe_load(text)
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None and type(None) in hints:
        return None
    if float in hints and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not any(isinstance(value, h) and not (h is int and isinstance(value, bool)) for h in hints if isinstance(h, type)):
        raise ValueError(f"--set {name}={text}: expected {annotation}, got {type(value).__name__}")
    return value


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["lr=0.01", "nbits=32"]`` → typed dict; unknown keys and bad values are errors."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip()
        if key == "triplet_form":  # the former key: the method it named
            out.update(_migrate({key: text.strip(), **({"method": out["method"]} if "method" in out else {})}))
            continue
        if key not in hints:
            raise ValueError(f"unknown config key {key!r} in --set {pair}")
        out[key] = _coerce(key, text, hints[key])
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + ``--set key=value`` overrides → a validated TrainConfig."""
    data: dict = {}
    if path:
        from qadwh_ray import storage

        try:
            data = yaml.safe_load(storage.read_bytes(path)) or {}
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"config file not found: {path}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping of config keys")
    data = _migrate(data)  # so a --set method=... override replaces a file's old triplet_form
    data.update(parse_overrides(overrides))
    return TrainConfig.from_dict(data)
