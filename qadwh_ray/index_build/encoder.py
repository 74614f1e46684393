"""The build's encoder: a Ray Data callable class that turns decoded images into packed codes."""

from __future__ import annotations

import numpy as np

from qadwh_ray.core.bits import code_bytes
from qadwh_ray.index_build.errors import IndexBuildError
from qadwh_ray.index_build.faults import fault_point

__all__ = ["Encoder"]


class Encoder:
    """Loads the checkpoint once per actor and encodes image batches with
    :func:`qadwh_ray.model.encode` (the function local code uses, so codes match
    byte for byte); rows marked bad upstream get zero codes and pass through."""

    def __init__(self, checkpoint_uri: str, checkpoint_sha256: str, threads: int = 1, device: str = "cpu"):
        import torch

        from qadwh_ray.model.checkpoint import load_payload, model_from_payload

        payload = load_payload(checkpoint_uri)
        if payload["sha256"] != checkpoint_sha256:
            raise IndexBuildError(
                f"checkpoint {checkpoint_uri} changed during the build (SHA-256 {payload['sha256']}, expected {checkpoint_sha256})"
            )
        if device == "cpu":
            torch.set_num_threads(max(1, int(threads)))
        self.device = device
        self.model = model_from_payload(payload).to(device)
        self.nbytes = code_bytes(self.model.config.nbits)

    def __call__(self, batch: dict) -> dict:
        from qadwh_ray.model.encode import encode

        fault_point("encoder-batch")
        bad = np.asarray(batch["bad"], dtype=object)
        good = np.flatnonzero(bad == "")
        n = bad.shape[0]
        codes = np.zeros((n, self.nbytes), dtype=np.uint8)
        if good.size:
            images = np.asarray(batch["image"])
            sel = images if good.size == n else images[good]
            codes[good] = encode(self.model, sel, device=self.device).codes
        return {
            "_row": batch["_row"],
            "id": batch["id"],
            "code": codes,
            "labels": batch["labels"],
            "source": batch["source"],
            "bad": bad,
        }
