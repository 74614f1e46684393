"""The query encoder deployment: images → packed code + query-adaptive weights.

Everything that needs the model or image decoding lives here, so the router
never imports torch: uploaded bytes are decoded (pixel count checked from the
header first) in the model's colour mode, an item's label set becomes bit
weights through :func:`qadwh_ray.core.weights.class_weight_rows`, and item
images become PNG thumbnails.

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

from qadwh_ray.core.weights import softmax
from qadwh_ray.serving.config import AppArgs

__all__ = ["QueryEncoder", "CheckpointRef", "load_model_info", "ImageRejected", "decode_upload", "checkpoint_ref"]

log = logging.getLogger("ray.serve")

CheckpointRef = dict  # {"uri": str, "sha256": str | None}
_CACHE = 2
_DECODE_INLINE_BYTES = 65536  # larger images decode off the event loop


class ImageRejected(ValueError):
    """Image bytes that cannot be served: ``error`` is the API error code."""

    def __init__(self, error: str, detail: str):
        super().__init__(detail)
        self.error = error


def decode_upload(data: bytes, mode: str, max_pixels: int) -> np.ndarray:
    """Encoded image bytes → uint8 pixels in ``mode``; the size is checked from the header before decoding."""
    import io

    from PIL import Image

    from qadwh_ray.data.transforms import ImageDecodeError, decode_image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 — PIL raises many types
        raise ImageRejected("invalid_image", "the uploaded file is not a decodable image (PNG, JPEG, GIF, BMP, WebP ...)") from None
    if w * h > max_pixels:
        raise ImageRejected("image_too_large", f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    try:
        return decode_image(data, mode=mode, source="upload")
    except ImageDecodeError as exc:
        raise ImageRejected("invalid_image", str(exc)) from None


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
        """Model facts the router needs (code length, channels, classes, DWH weights)."""
        _, info = await self._model(ref)
        return dict(info)

    async def _pixels(self, image, ref: CheckpointRef) -> np.ndarray:
        """Decoded pixels of ``image`` (encoded bytes, or pixels already) in the model's colour mode."""
        if isinstance(image, np.ndarray):
            return image
        _, info = await self._model(ref)
        mode = "RGB" if info["in_channels"] == 3 else "L"
        if len(image) > _DECODE_INLINE_BYTES:
            return await asyncio.to_thread(decode_upload, image, mode, self.args.max_image_pixels)
        return decode_upload(image, mode, self.args.max_image_pixels)

    async def encode(self, image, ref: CheckpointRef) -> dict:
        """One image (encoded bytes or uint8 pixels) → its code (bytes), QaDWH weights, class probabilities."""
        t = time.perf_counter()
        try:
            pixels = await self._pixels(image, ref)
        except ImageRejected as exc:
            return {"ok": False, "error": exc.error, "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001 — the model cannot be loaded
            return {"ok": False, "error": "model_unavailable", "detail": str(exc)}
        decode_ms = (time.perf_counter() - t) * 1e3
        r = await self._batched((pixels, ref))
        return {**r, "decode_ms": decode_ms} if r.get("ok") else r

    async def thumbnail(self, image, ref: CheckpointRef) -> dict:
        """An item's image (encoded bytes or uint8 pixels) as PNG bytes in the model's colour mode."""
        from qadwh_ray.data.transforms import encode_png

        try:
            pixels = await self._pixels(image, ref)
        except ImageRejected as exc:
            return {"ok": False, "error": exc.error, "detail": str(exc)}
        return {"ok": True, "png": await asyncio.to_thread(encode_png, pixels)}

    async def label_weights(self, labels: list, ref: CheckpointRef) -> dict:
        """Bit weights of a label set: the mean of its classes' rows of the model's ``W``."""
        import torch

        from qadwh_ray.core.weights import class_weight_rows

        model, info = await self._model(ref)
        n = int(info["num_classes"])
        bad = [c for c in labels if not 0 <= int(c) < n]
        if not labels or bad:
            return {"ok": False, "error": "invalid_labels", "detail": f"labels {labels} are not a non-empty set of class ids 0..{n - 1}"}
        y = np.zeros((1, n), dtype=np.float32)
        y[0, [int(c) for c in labels]] = 1
        with torch.no_grad():
            rows = class_weight_rows(y, model.W.detach().clamp(min=0).float().cpu())
        return {"ok": True, "weights": rows[0].double().numpy()}

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
            probs = softmax(res.logits, axis=1)
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
