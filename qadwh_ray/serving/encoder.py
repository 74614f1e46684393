"""The query encoder deployment: images → packed code + query-adaptive weights.

One model is loaded per checkpoint (each index version names the checkpoint
its codes came from; a query must be encoded by that same model, so the router
passes the checkpoint of the version it serves). Models are cached (the two
most recent: the served version and the next one during a swap). Concurrent
requests are grouped by ``@serve.batch`` and encoded by
:func:`qadwh_ray.model.encode` — the one definition shared with indexing — so
the code of a query image is byte-identical to the code the index stored for
the same image. The forward pass runs in a worker thread so the replica keeps
accepting requests while a batch computes; on a GPU replica the model lives on
the GPU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Optional

import numpy as np

from qadwh_ray.serving.config import AppArgs

__all__ = ["QueryEncoder", "CheckpointRef", "load_model_info"]

log = logging.getLogger("ray.serve")

CheckpointRef = dict  # {"uri": str, "sha256": str | None}
_CACHE = 2


def load_model_info(ref: CheckpointRef, device: str = "cpu"):
    """Load a checkpoint, check its SHA-256 against ``ref`` and describe it."""
    from qadwh_ray.model.checkpoint import load_payload, model_from_payload

    payload = load_payload(ref["uri"])
    want = ref.get("sha256")
    if want and payload["sha256"] != want:
        raise ValueError(
            f"checkpoint {ref['uri']} has SHA-256 {payload['sha256'][:16]}…, but the index was built from "
            f"{want[:16]}…: it was replaced; re-index or pin the checkpoint explicitly"
        )
    model = model_from_payload(payload).to(device)
    cfg = model.config
    cfg.require_searchable(f"checkpoint {ref['uri']}")
    # one forward pass now: the first one in a process is slow (kernel selection, allocator)
    from qadwh_ray.model.encode import encode

    shape = (1, cfg.image_size, cfg.image_size) + ((3,) if cfg.in_channels == 3 else ())
    encode(model, np.zeros(shape, dtype=np.uint8), batch_size=1)
    info = {
        "uri": payload["uri"],
        "sha256": payload["sha256"],
        "nbits": cfg.nbits,
        "num_classes": cfg.num_classes,
        "in_channels": cfg.in_channels,
        "image_size": cfg.image_size,
        "dwh_weights": model.dwh_weights().detach().float().cpu().numpy(),
        "W": model.W.detach().clamp(min=0).float().cpu().numpy(),
    }
    return model, info


class QueryEncoder:
    """Serve deployment body (wrapped by :func:`qadwh_ray.serving.app.build_app`)."""

    def __init__(self, args: dict):
        import torch
        from ray import serve

        self.args = AppArgs.parse(args)
        e = self.args.encoder
        torch.set_num_threads(e.torch_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._models: OrderedDict[str, tuple] = OrderedDict()
        self._loading: dict[str, asyncio.Task] = {}
        # @serve.batch built here so the batch settings come from the app args.
        self._batched = serve.batch(
            max_batch_size=e.max_batch_size,
            batch_wait_timeout_s=e.batch_wait_timeout_s,
            max_concurrent_batches=e.max_concurrent_batches,
        )(self._encode_many)
        self._batch_hist = None
        try:
            from ray.serve.metrics import Histogram

            self._batch_hist = Histogram(
                "qadwh_encoder_batch_size", description="images per encoder batch", boundaries=[1, 2, 4, 8, 16, 32, 64]
            )
        except Exception:  # noqa: BLE001 — metrics are optional
            pass

    async def _model(self, ref: CheckpointRef):
        key = ref["uri"]
        got = self._models.get(key)
        if got is not None:
            self._models.move_to_end(key)
            return got
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(load_model_info, ref, self.device))
            self._loading[key] = task
        try:
            got = await asyncio.shield(task)
        finally:
            self._loading.pop(key, None)
        self._models[key] = got
        while len(self._models) > _CACHE:
            self._models.popitem(last=False)
        return got

    async def describe(self, ref: CheckpointRef) -> dict:
        """Model facts the router needs (code length, channels, DWH weights, W)."""
        _, info = await self._model(ref)
        return dict(info)

    async def encode(self, image: np.ndarray, ref: CheckpointRef) -> dict:
        """One decoded uint8 image → its code (bytes), QaDWH weights, class probabilities."""
        return await self._batched((image, ref))

    async def _encode_many(self, items: list) -> list:
        t0 = time.perf_counter()
        if self._batch_hist is not None:
            self._batch_hist.observe(len(items))
        out: list = [None] * len(items)
        groups: dict = {}
        for i, (img, ref) in enumerate(items):
            groups.setdefault((ref["uri"], img.shape), []).append(i)
        for (_, _), idx in groups.items():
            ref = items[idx[0]][1]
            try:
                model, info = await self._model(ref)
            except Exception as exc:  # noqa: BLE001 — reported per item
                for i in idx:
                    out[i] = {"ok": False, "error": "model_unavailable", "detail": str(exc)}
                continue
            batch = np.stack([items[i][0] for i in idx])
            try:
                res = await asyncio.to_thread(_run_encode, model, batch)
            except (ValueError, TypeError) as exc:
                for i in idx:
                    out[i] = {"ok": False, "error": "invalid_image", "detail": str(exc)}
                continue
            ms = (time.perf_counter() - t0) * 1e3
            probs = _softmax(res.logits)
            for j, i in enumerate(idx):
                out[i] = {
                    "ok": True,
                    "code": res.codes[j].tobytes(),
                    "weights": res.qadwh_weights[j],
                    "probs": probs[j],
                    "batch_size": len(items),
                    "encode_ms": ms,
                }
        return out


def _run_encode(model, batch: np.ndarray):
    from qadwh_ray.model.encode import encode

    return encode(model, batch, batch_size=max(1, len(batch)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def checkpoint_ref(manifest, override: Optional[str]) -> CheckpointRef:
    """The checkpoint to encode queries for an index version with."""
    if override:
        return {"uri": override, "sha256": None}
    ck = manifest.checkpoint or {}
    uri = ck.get("uri")
    if not uri:
        raise ValueError(
            f"index version {manifest.version} does not name the checkpoint it was built from; "
            "give the serving app a checkpoint explicitly"
        )
    return {"uri": uri, "sha256": ck.get("sha256")}
