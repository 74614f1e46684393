"""DOH's network: ranking-based (ordinal) codes from global and spatially attended local features.

Deep Ordinal Hashing (Jin et al., IEEE TIP 2019, arXiv 1805.02459): each code
symbol is the index of the largest of ``K = 2**symbol_bits`` scores (a
winner-take-all over a group), so a code is robust to the scale of the
features; the scores come from a global stream (the backbone's pooled features)
and a local stream (the last convolutional map pooled by a learned spatial
attention). Here both streams share one backbone trunk, so every method of the
comparison runs on the same backbone; the paper gives the local stream its own
fully convolutional network. Symbols are stored as ``symbol_bits`` bits each,
little-endian, and ranked by the number of differing symbols
(:func:`qadwh_ray.core.hamming.symbol_hamming_distances`).
"""

from __future__ import annotations

import torch
from torch import nn

from qadwh_ray.model.backbones import FEATURE_MAP_CHANNELS, build_backbone, feature_map, pool_features
from qadwh_ray.model.config import ModelConfig
from qadwh_ray.model.network import HashOutput


class OrdinalHashingNetwork(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: str | None = None):
        super().__init__()
        if config.architecture != "ordinal":
            raise ValueError(f"OrdinalHashingNetwork needs architecture 'ordinal', got {config.architecture!r}")
        self.config = config
        self.symbols = config.nbits // config.symbol_bits
        self.group = 2**config.symbol_bits
        self.backbone, dim = build_backbone(config.backbone, config.in_channels, pretrained)
        channels = FEATURE_MAP_CHANNELS[config.backbone]
        self.attention = nn.Conv2d(channels, 1, kernel_size=1)  # one logit per location
        self.global_scores = nn.Linear(dim, self.symbols * self.group)
        self.local_scores = nn.Linear(channels, self.symbols * self.group)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (n, d), scores (n, symbols, K))``."""
        fmap = feature_map(self.backbone, x)
        f = pool_features(self.backbone, fmap)
        attn = torch.softmax(self.attention(fmap).flatten(2), dim=-1)  # (n, 1, h*w), sums to 1 over locations
        local = (fmap.flatten(2) * attn).sum(dim=-1)  # (n, C)
        z = self.global_scores(f) + self.local_scores(local)
        return f, z.view(-1, self.symbols, self.group)

    def forward(self, x: torch.Tensor) -> HashOutput:
        """``h``: each symbol's softmax over its K scores, flattened to ``(n, symbols * K)``."""
        f, z = self.scores(x)
        return HashOutput(f, torch.softmax(z, dim=-1).flatten(1), None)

    def encoding(self, x: torch.Tensor, role: str = "database") -> HashOutput:
        return self(x)

    def code_bits(self, h: torch.Tensor) -> torch.Tensor:
        """Each symbol's argmax index, written as ``symbol_bits`` bits, lowest bit first: ``(n, nbits)`` bool."""
        idx = h.view(h.shape[0], self.symbols, self.group).argmax(dim=-1)
        shifts = torch.arange(self.config.symbol_bits, device=h.device)
        return ((idx[..., None] >> shifts) & 1).bool().flatten(1)
