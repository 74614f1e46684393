"""The two-stream hashing network, its backbones, checkpoints and encoding."""

from qadwh_ray.model.checkpoint import load_checkpoint, save_checkpoint
from qadwh_ray.model.config import ModelConfig
from qadwh_ray.model.encode import EncodeResult, encode
from qadwh_ray.model.network import HashingNetwork, HashOutput, build_model

__all__ = [
    "EncodeResult",
    "HashOutput",
    "HashingNetwork",
    "ModelConfig",
    "build_model",
    "encode",
    "load_checkpoint",
    "save_checkpoint",
]
