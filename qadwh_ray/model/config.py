"""What a checkpoint needs to rebuild the exact architecture."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qadwh_ray.core.bits import check_code_length

BACKBONES = ("compact", "resnet18", "resnet50", "vgg19")
CLASS_INPUTS = ("features", "codes")
# two-stream: QaDWH's hash + classification streams with W (also NINH, ISDH);
# ordinal: DOH's ranking-based codes over global and spatially attended local features;
# asymmetric: ADSQ's query and database networks plus its LabelNet
ARCHITECTURES = ("two-stream", "ordinal", "asymmetric")


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
    # Encode each image as the mean of the outputs on it and its mirror: a small MAP
    # gain for twice the encoding compute (docs/results.md), so off by default.
    flip_average: bool = False
    # Normalisation applied by encode(); stored so a checkpoint encodes raw pixels on its own.
    mean: float | tuple[float, ...] = 0.2860  # one value, or one per channel
    std: float | tuple[float, ...] = 0.3530
    architecture: str = "two-stream"
    # ordinal only: each code symbol is the argmax of 2**symbol_bits scores, stored in symbol_bits bits
    symbol_bits: int = 1

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
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if isinstance(self.symbol_bits, bool) or not isinstance(self.symbol_bits, int) or self.symbol_bits < 1:
            raise ValueError(f"symbol_bits must be a positive integer, got {self.symbol_bits!r}")
        if self.architecture != "ordinal" and self.symbol_bits != 1:
            raise ValueError(f"symbol_bits applies to the ordinal architecture only, got {self.symbol_bits} for {self.architecture}")
        if self.nbits % self.symbol_bits:
            raise ValueError(f"nbits={self.nbits} must be a whole number of {self.symbol_bits}-bit ordinal symbols")

    def require_searchable(self, source: str) -> None:
        """Refuse, naming ``source``, a model whose codes the weighted-Hamming index and service
        cannot rank: DOH's ordinal codes and ADSQ's asymmetric distance are evaluated offline only."""
        if self.architecture != "two-stream":
            raise ValueError(
                f"{source} holds a {self.architecture} model, whose codes the weighted-Hamming index cannot rank; "
                "index and serve a two-stream model (methods qadwh, qadwh-ref, ninh, ninh-paper, isdh)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)
