"""Backbones: torchvision's VGG-19 (fc7, as in the paper), ResNets, and a compact CNN.

Nothing downloads: ImageNet weights load only from a path or URI the user gives.
"""

from __future__ import annotations

import io

import torch
from torch import nn
from torchvision import models

from qadwh_ray import storage


class CompactCNN(nn.Module):
    """A small VGG-style CNN for 28×28 (or 56×56 mosaic) grayscale images; 512-d features."""

    feature_dim = 512

    def __init__(self, in_channels: int = 1):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128), *block(128, 128),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(0.3), nn.Linear(128, self.feature_dim), nn.BatchNorm1d(self.feature_dim), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _RepeatGray(nn.Module):
    """ImageNet backbones expect 3 channels: repeat a grayscale channel."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.inner(x)


class _VGGFc7(nn.Module):
    """VGG-19 up to fc7 (4096-d), the layer the paper's heads sit on."""

    feature_dim = 4096

    def __init__(self, vgg: models.VGG):
        super().__init__()
        self.features, self.avgpool = vgg.features, vgg.avgpool
        self.fc67 = nn.Sequential(*list(vgg.classifier.children())[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc67(torch.flatten(self.avgpool(self.features(x)), 1))


def load_pretrained_state(uri: str) -> dict:
    """A torchvision state dict from a local path or object-storage URI."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"pretrained backbone weights not found: {uri}") from exc
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{uri} does not hold a state dict")
    return state


def build_backbone(name: str, in_channels: int = 1, pretrained: str | None = None) -> tuple[nn.Module, int]:
    """Return ``(module, feature_dim)``; ``pretrained`` is a torchvision state-dict path/URI."""
    if name == "compact":
        if pretrained:
            raise ValueError("the compact backbone has no pretrained weights; leave `pretrained` empty")
        net = CompactCNN(in_channels)
        return net, net.feature_dim
    if name == "vgg19":
        vgg = models.vgg19(weights=None)
        if pretrained:
            vgg.load_state_dict(load_pretrained_state(pretrained))
        net, dim = _VGGFc7(vgg), _VGGFc7.feature_dim
    elif name in ("resnet18", "resnet50"):
        resnet = getattr(models, name)(weights=None)
        if pretrained:
            resnet.load_state_dict(load_pretrained_state(pretrained))
        dim = resnet.fc.in_features
        resnet.fc = nn.Identity()
        net = resnet
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of compact, resnet18, resnet50, vgg19")
    return (_RepeatGray(net) if in_channels == 1 else net), dim


# --------------------------------------------------------------------------- spatial view (DOH's local stream)

FEATURE_MAP_CHANNELS = {"compact": 128, "resnet18": 512, "resnet50": 2048, "vgg19": 512}


def _compact_pool_index(net: CompactCNN) -> int:
    return next(i for i, m in enumerate(net.body) if isinstance(m, nn.AdaptiveAvgPool2d))


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last convolutional feature map ``(n, C, h, w)`` of a backbone from :func:`build_backbone`
    (the same modules and weights; :func:`pool_features` of it is the backbone's output)."""
    if isinstance(backbone, _RepeatGray):
        return feature_map(backbone.inner, x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
    if isinstance(backbone, CompactCNN):
        return backbone.body[: _compact_pool_index(backbone)](x)
    if isinstance(backbone, _VGGFc7):
        return backbone.features(x)
    if isinstance(backbone, models.ResNet):
        r = backbone
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))
    raise TypeError(f"no spatial view of a {type(backbone).__name__} backbone")


def pool_features(backbone: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    """The backbone's feature vector from its :func:`feature_map`."""
    if isinstance(backbone, _RepeatGray):
        return pool_features(backbone.inner, fmap)
    if isinstance(backbone, CompactCNN):
        return backbone.body[_compact_pool_index(backbone) :](fmap)
    if isinstance(backbone, _VGGFc7):
        return backbone.fc67(torch.flatten(backbone.avgpool(fmap), 1))
    if isinstance(backbone, models.ResNet):
        return backbone.fc(torch.flatten(backbone.avgpool(fmap), 1))
    raise TypeError(f"no spatial view of a {type(backbone).__name__} backbone")
