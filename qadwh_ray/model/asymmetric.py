"""ADSQ's three streams: a LabelNet and two ImgNets of the same structure with separate weights.

Asymmetric Deep Semantic Quantization (Yang et al., IEEE Access 2019, arXiv
1903.12493): the LabelNet (three fully connected layers) maps a label vector to
a semantic code that guides both image networks; the query ImgNet encodes
queries, the database ImgNet encodes the database. Retrieval is asymmetric: a
query's real-valued output ``u`` against the database's binary codes ``b``,
ranked by ``-<u, b>`` with ``b`` in ``{-1, +1}`` (evaluated exactly by
:func:`qadwh_ray.core.hamming.asymmetric_distances`). Both ImgNets use the
backbone every other method uses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from qadwh_ray.model.backbones import build_backbone
from qadwh_ray.model.config import ModelConfig
from qadwh_ray.model.network import HashOutput

LABEL_HIDDEN = 512
ROLES = ("query", "database")


class AsymmetricOutput(NamedTuple):
    query: torch.Tensor  # (n, q) tanh outputs of the query ImgNet
    database: torch.Tensor  # (n, q) tanh outputs of the database ImgNet
    label: torch.Tensor | None  # (n, q) tanh outputs of the LabelNet on the batch's labels


class AsymmetricHashingNetwork(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: str | None = None):
        super().__init__()
        if config.architecture != "asymmetric":
            raise ValueError(f"AsymmetricHashingNetwork needs architecture 'asymmetric', got {config.architecture!r}")
        self.config = config
        q = config.nbits
        self.query_backbone, dim = build_backbone(config.backbone, config.in_channels, pretrained)
        self.database_backbone, _ = build_backbone(config.backbone, config.in_channels, pretrained)
        self.query_head = nn.Linear(dim, q)
        self.database_head = nn.Linear(dim, q)
        self.label_net = nn.Sequential(
            nn.Linear(config.num_classes, LABEL_HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(LABEL_HIDDEN, LABEL_HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(LABEL_HIDDEN, q),
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> AsymmetricOutput:
        """Training: both ImgNets on the images and the LabelNet on their ``labels`` (one forward,
        so data parallelism sees every parameter used)."""
        u = torch.tanh(self.query_head(self.query_backbone(x)))
        w = torch.tanh(self.database_head(self.database_backbone(x)))
        v = None if labels is None else torch.tanh(self.label_net(labels.to(u.dtype)))
        return AsymmetricOutput(u, w, v)

    def encoding(self, x: torch.Tensor, role: str = "database") -> HashOutput:
        """One ImgNet: ``h = (tanh + 1) / 2`` in (0, 1), so the code is ``h >= 0.5`` and a query's
        real-valued output is ``2h - 1``."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        backbone, head = ((self.query_backbone, self.query_head) if role == "query"
                          else (self.database_backbone, self.database_head))
        f = backbone(x)
        return HashOutput(f, torch.sigmoid(2 * head(f)), None)  # sigmoid(2a) = (tanh(a) + 1) / 2

    @staticmethod
    def code_bits(h: torch.Tensor) -> torch.Tensor:
        return h >= 0.5
