"""Checkpoints that carry their model config, so loading rebuilds the exact network.

One file (``torch.save`` of a plain dict) on any storage URI: a local path or
``s3://``. The same payload serves the local trainer, Ray Train checkpoints
(which put this file in their directory), indexing and serving.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch

from qadwh_ray import storage
from qadwh_ray.model.config import ModelConfig
from qadwh_ray.model.network import build_model

FORMAT = "qadwh-checkpoint/1"
FILENAME = "model.pt"  # name inside a checkpoint directory


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the network
    if not isinstance(getattr(inner, "config", None), ModelConfig):
        raise TypeError(f"expected a hashing network (from build_model), got {type(inner).__name__}")
    return inner


def checkpoint_bytes(model: torch.nn.Module, **extra: Any) -> bytes:
    """Serialise the model (config + weights, W included) plus any extra state."""
    net = _unwrap(model)
    payload = {
        "format": FORMAT,
        "model_config": net.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(uri: str, model: torch.nn.Module, **extra: Any) -> str:
    """Write a checkpoint to ``uri`` (a file path or object URI); returns its SHA-256."""
    data = checkpoint_bytes(model, **extra)
    storage.write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


def resolve_checkpoint_uri(uri: str) -> str:
    """Accept a checkpoint file or a directory holding ``model.pt`` (a Ray Train checkpoint)."""
    if storage.exists(storage.join(uri, FILENAME)):
        return storage.join(uri, FILENAME)
    return uri


def load_payload(uri: str) -> dict:
    """The raw checkpoint dict; clear errors for a missing or foreign file."""
    uri = resolve_checkpoint_uri(uri)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"checkpoint not found: {uri}") from exc
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or truncated file
        raise ValueError(f"{uri} is not a readable qadwh checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{uri} is not a qadwh checkpoint (expected format {FORMAT})")
    payload["sha256"] = hashlib.sha256(data).hexdigest()
    payload["uri"] = uri
    return payload


def model_from_payload(payload: dict) -> torch.nn.Module:
    """The network the checkpoint's model config describes (any architecture), weights loaded."""
    model = build_model(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    # Channels-last conv weights make oneDNN's CPU convolutions and max-pooling 1.3-1.75x
    # faster for inference (benchmarks/encode_bench.py); same values, same codes there.
    return model.to(memory_format=torch.channels_last).eval()


def load_checkpoint(uri: str) -> torch.nn.Module:
    """Rebuild the network from a checkpoint for inference: eval mode, on the CPU,
    conv weights channels-last."""
    return model_from_payload(load_payload(uri))



def newest_checkpoint(uri: str) -> str:
    """``uri`` itself when it is a checkpoint file or a directory holding
    ``model.pt``; otherwise the most recently written ``model.pt`` / ``*.pt``
    below it (e.g. the newest of a Ray Train run's checkpoint directories)."""
    import pyarrow.fs as pafs

    if storage.exists(uri) and not storage.is_dir(uri):
        return uri
    if storage.exists(storage.join(uri, FILENAME)):
        return storage.join(uri, FILENAME)
    if not storage.is_dir(uri):
        raise FileNotFoundError(f"no checkpoint at {uri}")
    fs, path = storage.filesystem_and_path(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    cands = [
        i for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(".pt") and not any(p.startswith((".", "_")) for p in i.path[len(path):].split("/") if p)
    ]
    if not cands:
        raise FileNotFoundError(f"no checkpoint (*.pt) under {uri}")
    best = max(cands, key=lambda i: (i.mtime.timestamp() if i.mtime else 0.0, i.path))
    return storage.join(uri, best.path[len(path):].lstrip("/"))
