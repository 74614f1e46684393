"""What a checkpoint needs to rebuild the exact architecture."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qadwh_ray.core.bits import check_code_length

BACKBONES = ("compact", "resnet18", "resnet50", "vgg19")
CLASS_INPUTS = ("features", "codes")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "compact"
    nbits: int = 48
    num_classes: int = 10
    in_channels: int = 1  # 1 = grayscale input (repeated to 3 channels for ImageNet backbones)
    image_size: int = 28
    # What the classification head reads: the backbone features f (the paper's
    # two streams), or the hash layer's activations h, so that the class
    # information must pass through the code (docs/results.md).
    class_input: str = "features"
    # Encode each image as the mean of the network's outputs on it and on its
    # horizontal mirror (sigmoid activations before the threshold, class
    # probabilities for the weights): +0.0045 MAP at 48 bits on Fashion-MNIST
    # for twice the encoding compute (docs/results.md). Off by default.
    flip_average: bool = False
    # Normalisation applied by encode(); stored so a checkpoint encodes raw pixels on its own.
    mean: float | tuple[float, ...] = 0.2860  # one value, or one per channel
    std: float | tuple[float, ...] = 0.3530

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        check_code_length(self.nbits)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}")
        if self.class_input not in CLASS_INPUTS:
            raise ValueError(f"unknown class_input {self.class_input!r}; choose one of {', '.join(CLASS_INPUTS)}")
        if not isinstance(self.flip_average, bool):
            raise ValueError(f"flip_average must be true or false, got {self.flip_average!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):  # from a checkpoint's JSON-like dict
                object.__setattr__(self, name, tuple(float(v) for v in value))
                value = getattr(self, name)
            if isinstance(value, tuple) and len(value) not in (1, self.in_channels):
                raise ValueError(f"{name} has {len(value)} values for {self.in_channels} channel(s)")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {self.image_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)
