"""The two-stream hashing network of QaDWH (docs/architecture.md, 'The method').

backbone → f;  h = sigmoid(A f + a) ∈ (0,1)^q;  z = C f + c (class logits; or
z = C h + c with ``class_input="codes"``, so the class information runs through the code);
W ∈ R≥0^{c×q}, the class-wise bit weights, initialised to 1 and kept inside the
module so that DDP synchronises it like any other parameter.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from qadwh_ray.model.backbones import build_backbone
from qadwh_ray.model.config import ModelConfig


class HashOutput(NamedTuple):
    features: torch.Tensor  # (n, d) penultimate features (LSH/ITQ baselines use them)
    h: torch.Tensor  # (n, q) sigmoid activations; code = h >= 0.5 (the ordinal network: per-symbol probabilities)
    logits: torch.Tensor | None  # (n, c); None for a network without a classification stream


class HashingNetwork(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: str | None = None):
        super().__init__()
        self.config = config
        self.backbone, dim = build_backbone(config.backbone, config.in_channels, pretrained)
        self.hash_head = nn.Linear(dim, config.nbits)
        self.class_head = nn.Linear(config.nbits if config.class_input == "codes" else dim, config.num_classes)
        self.W = nn.Parameter(torch.ones(config.num_classes, config.nbits))

    def forward(self, x: torch.Tensor) -> HashOutput:
        f = self.backbone(x)
        h = torch.sigmoid(self.hash_head(f))
        return HashOutput(f, h, self.class_head(h if self.config.class_input == "codes" else f))

    def encoding(self, x: torch.Tensor, role: str = "database") -> HashOutput:
        """What :func:`~qadwh_ray.model.encode.encode` reads; queries and database items alike."""
        return self(x)

    @staticmethod
    def code_bits(h: torch.Tensor) -> torch.Tensor:
        """The binary code of each row: ``h >= 0.5``."""
        return h >= 0.5

    def query_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Query-adaptive bit weights w_q = softmax(z_q)ᵀ W (eq. 14)."""
        return torch.softmax(logits, dim=1) @ self.W.clamp(min=0)

    def dwh_weights(self) -> torch.Tensor:
        """DWH's one fixed weight vector: the mean of the class rows."""
        return self.W.clamp(min=0).mean(dim=0)


def build_model(config: ModelConfig, pretrained: str | None = None) -> nn.Module:
    """The network of ``config.architecture`` (two-stream unless the config says otherwise)."""
    if config.architecture == "ordinal":
        from qadwh_ray.model.ordinal import OrdinalHashingNetwork

        return OrdinalHashingNetwork(config, pretrained)
    if config.architecture == "asymmetric":
        from qadwh_ray.model.asymmetric import AsymmetricHashingNetwork

        return AsymmetricHashingNetwork(config, pretrained)
    return HashingNetwork(config, pretrained)
