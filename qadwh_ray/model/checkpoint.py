"""Checkpoints that carry their model config, so loading rebuilds the exact network.

One file (``torch.save`` of a plain dict) on any storage URI: a local path or
``s3://``. The same payload serves the local trainer, Ray Train checkpoints
(which put this file in their directory), indexing and serving.

Integrity: every checkpoint file ``X`` is followed by ``X.sha256`` (its SHA-256,
``sha256sum -c`` format), written after it. A checkpoint directory (``model.pt``
inside) is complete only when its ``model.pt.sha256`` is there and matches;
:func:`load_newest_good` walks a run back past incomplete or damaged ones.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import re
import uuid
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs
import torch

from qadwh_ray import storage
from qadwh_ray.model.config import ModelConfig
from qadwh_ray.model.network import build_model

FORMAT = "qadwh-checkpoint/1"
FILENAME = "model.pt"  # name inside a checkpoint directory
CHECKSUM_SUFFIX = ".sha256"  # "<file>.sha256" beside a checkpoint file holds its SHA-256
RUN_CHECKPOINT_PREFIX = "checkpoint_step"  # a training run's checkpoint directories: checkpoint_step<8-digit step>

_log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that must not be loaded: incomplete (no checksum file yet), damaged (the checksum
    does not match) or not a readable qadwh checkpoint."""


def checkpoint_dir_name(step: int) -> str:
    return f"{RUN_CHECKPOINT_PREFIX}{step:08d}"


def _dir_step(name: str) -> int | None:
    m = re.fullmatch(RUN_CHECKPOINT_PREFIX + r"(\d+)", name)
    return int(m.group(1)) if m else None


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


def _uri(fs: pafs.FileSystem, path: str) -> str:
    return f"s3://{path}" if fs.type_name == "s3" else path


def _put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write one file that is never seen half-written: S3 shows an object once its upload completes;
    locally a temporary file in the same directory is renamed over the target."""
    try:
        if fs.type_name != "local":
            with fs.open_output_stream(path) as out:
                out.write(data)
            return
        directory, name = posixpath.split(path)
        fs.create_dir(directory, recursive=True)
        tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except OSError as exc:
        raise storage.StorageError(f"cannot write {_uri(fs, path)}: {exc}") from exc


def write_with_checksum(fs: pafs.FileSystem, path: str, data: bytes) -> str:
    """Write checkpoint bytes to ``path`` on ``fs``, then their SHA-256 to ``path.sha256``; returns it.

    The checksum file goes last (an older one is removed first), so whoever sees it sees the whole file.
    """
    checksum_path = path + CHECKSUM_SUFFIX
    if fs.get_file_info(checksum_path).type != pafs.FileType.NotFound:
        fs.delete_file(checksum_path)
    _put(fs, path, data)
    digest = hashlib.sha256(data).hexdigest()
    _put(fs, checksum_path, f"{digest}  {posixpath.basename(path)}\n".encode())
    return digest


def save_checkpoint(uri: str, model: torch.nn.Module, **extra: Any) -> str:
    """Write a checkpoint to ``uri`` (a file path or object URI) and its checksum file; returns its SHA-256."""
    fs, path = storage.filesystem_and_path(uri)
    return write_with_checksum(fs, path, checkpoint_bytes(model, **extra))


def resolve_checkpoint_uri(uri: str) -> str:
    """Accept a checkpoint file or a directory holding ``model.pt`` (a Ray Train checkpoint)."""
    if storage.exists(storage.join(uri, FILENAME)):
        return storage.join(uri, FILENAME)
    return uri


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_file(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file or object: {_uri(fs, path)}") from None
    except OSError as exc:
        raise storage.StorageError(f"cannot read {_uri(fs, path)}: {exc}") from exc


def _read_verified(fs: pafs.FileSystem, path: str, uri: str, *, require_checksum: bool) -> bytes:
    """The bytes of the checkpoint file at ``path``, checked against ``path.sha256``; without that file
    the checkpoint is incomplete when ``require_checksum``, else (a lone file from before checksums) unchecked."""
    checksum_name = posixpath.basename(path) + CHECKSUM_SUFFIX
    try:
        recorded = _read(fs, path + CHECKSUM_SUFFIX).decode("ascii", "replace").split()
    except FileNotFoundError:
        if require_checksum:
            raise CheckpointError(f"{uri} is incomplete: no {checksum_name} beside it (written last)") from None
        recorded = None
    try:
        data = _read(fs, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {uri}") from None
    if recorded is not None:
        actual = hashlib.sha256(data).hexdigest()
        if not recorded or recorded[0] != actual:
            raise CheckpointError(
                f"{uri} is damaged: its {len(data)} bytes have SHA-256 {actual}, "
                f"but {checksum_name} records {recorded[0] if recorded else 'nothing'}"
            )
    return data


def _payload(data: bytes, uri: str) -> dict:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or truncated file
        raise CheckpointError(f"{uri} is not a readable qadwh checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{uri} is not a qadwh checkpoint (expected format {FORMAT})")
    payload["sha256"] = hashlib.sha256(data).hexdigest()
    payload["uri"] = uri
    return payload


def load_payload(uri: str) -> dict:
    """The raw checkpoint dict, verified against its checksum file (a checkpoint directory without
    one is incomplete); clear errors for a missing, incomplete, damaged or foreign checkpoint."""
    resolved = resolve_checkpoint_uri(uri)
    fs, path = storage.filesystem_and_path(resolved)
    return _payload(_read_verified(fs, path, resolved, require_checksum=resolved != uri), resolved)


def load_newest_good(
    fs: pafs.FileSystem, path: str, log: Callable[[str], None] = _log.warning
) -> tuple[str, dict]:
    """(URI, payload) of the checkpoint directory at ``path`` on ``fs`` or, when that one is incomplete
    or damaged, of the newest good one before it in its run; each one skipped is logged with why.

    The one loader for resuming: Ray Train workers restoring after a failure and a re-run's driver.
    """
    skipped = []
    for candidate in _this_and_older(fs, path.rstrip("/")):
        uri = _uri(fs, candidate)
        file = posixpath.join(candidate, FILENAME)
        try:
            return uri, _payload(_read_verified(fs, file, _uri(fs, file), require_checksum=True), _uri(fs, file))
        except (CheckpointError, FileNotFoundError) as exc:
            log(f"skipping checkpoint {uri}: {exc}")
            skipped.append(posixpath.basename(candidate))
    raise CheckpointError(
        f"no complete, undamaged checkpoint at or before {_uri(fs, path)} (skipped {', '.join(skipped)}); "
        f"start a new run under another name"
    )


def _this_and_older(fs: pafs.FileSystem, path: str) -> Iterator[str]:
    """``path``, then its run's earlier checkpoint_step<N> directories, newest first (listed only if needed)."""
    yield path
    parent, name = posixpath.split(path)
    step = _dir_step(name)
    if step is None:
        return
    infos = fs.get_file_info(pafs.FileSelector(parent))
    older = [(s, i.path) for i in infos if i.type == pafs.FileType.Directory and (s := _dir_step(i.base_name)) is not None]
    for _, p in sorted((x for x in older if x[0] < step), reverse=True):
        yield p


def model_from_payload(payload: dict) -> torch.nn.Module:
    """The network the checkpoint's model config describes (any architecture), weights loaded."""
    model = build_model(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    # channels-last: oneDNN's fastest CPU convolutions, same codes (docs/benchmarks.md, "Weight layout")
    return model.to(memory_format=torch.channels_last).eval()


def load_checkpoint(uri: str) -> torch.nn.Module:
    """Rebuild the network from a checkpoint for inference: eval mode, on the CPU,
    conv weights channels-last."""
    return model_from_payload(load_payload(uri))



def newest_checkpoint(uri: str) -> str:
    """``uri`` itself when it is a checkpoint file or a directory holding
    ``model.pt``; otherwise the most recently written ``model.pt`` / ``*.pt``
    below it (e.g. the newest of a Ray Train run's checkpoint directories),
    leaving out ``model.pt`` files whose checksum file is not written yet."""
    if storage.exists(uri) and not storage.is_dir(uri):
        return uri
    if storage.exists(storage.join(uri, FILENAME)):
        return storage.join(uri, FILENAME)
    if not storage.is_dir(uri):
        raise FileNotFoundError(f"no checkpoint at {uri}")
    fs, path = storage.filesystem_and_path(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = {i.path for i in infos if i.type == pafs.FileType.File}
    cands = [
        i for i in infos
        if i.path in files and i.base_name.endswith(".pt") and not any(p.startswith((".", "_")) for p in i.path[len(path):].split("/") if p)
        and (i.base_name != FILENAME or i.path + CHECKSUM_SUFFIX in files)
    ]
    if not cands:
        raise FileNotFoundError(f"no checkpoint (*.pt) under {uri}")
    best = max(cands, key=lambda i: (i.mtime.timestamp() if i.mtime else 0.0, i.path))
    return storage.join(uri, best.path[len(path):].lstrip("/"))
