"""The index version a router serves, and how it gets ready to serve one.

A version is *prepared* before requests use it: the encoder loads the
checkpoint the version names (a query must be encoded by the model that made
the index's codes) and every shard deployment confirms it holds the version,
with the update log replayed up to ``position``. Only then does the router
switch to it, in one assignment of an :class:`ActiveVersion`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from qadwh_ray.serving.fanout import Backends

__all__ = ["ActiveVersion", "prepare_version"]


@dataclass(frozen=True)
class ActiveVersion:
    version: str
    num_shards: int
    code_bits: int
    num_items: int
    shard_rows: tuple
    checkpoint: dict
    in_channels: int
    num_classes: int
    dwh_weights: np.ndarray
    W: np.ndarray
    class_names: Optional[list]
    image_kind: Optional[str]
    created_at: str
    log_base: int = 0  # the update-log position the version was built with
    manifest: Any = field(repr=False, default=None)
    activated_at: float = field(default_factory=time.time)

    @property
    def image_mode(self) -> str:
        return "L" if self.in_channels == 1 else "RGB"


async def prepare_version(store, version: str, backends: Backends, checkpoint_override: Optional[str], position: int) -> ActiveVersion:
    """Read the version's manifest, load its model in the encoder and the version in every
    shard (at log ``position`` or later); raises when the version cannot be served."""
    from qadwh_ray.index.reader import IndexReader
    from qadwh_ray.serving.encoder import checkpoint_ref
    from qadwh_ray.serving.images import class_names, image_kind

    reader = await asyncio.to_thread(IndexReader, store, version)
    m = reader.manifest
    if m.num_shards > len(backends.shards):
        raise RuntimeError(
            f"index version {version} has {m.num_shards} shards but this application has {len(backends.shards)} shard "
            "deployments: redeploy with num_shards >= that"
        )
    ref = checkpoint_ref(m, checkpoint_override)
    info = await backends.call("encoder", backends.encoder.describe, ref)
    if info["nbits"] != m.code_bits:
        raise RuntimeError(f"checkpoint {ref['uri']} makes {info['nbits']}-bit codes; index version {version} holds {m.code_bits}-bit codes")
    position = max(position, m.log_position)
    replies = await asyncio.gather(
        *(backends.call(f"shard-{i}", backends.shards[i].prepare, version, position) for i in range(m.num_shards))
    )
    for r in replies:
        if not r.get("ok"):
            raise RuntimeError(r.get("detail", "shard refused the version"))
    return ActiveVersion(
        version=version,
        num_shards=m.num_shards,
        code_bits=m.code_bits,
        num_items=m.num_items,
        shard_rows=tuple(s.rows for s in m.shards),
        checkpoint={"uri": info["uri"], "sha256": info["sha256"]},
        in_channels=int(info["in_channels"]),
        num_classes=int(info["num_classes"]),
        dwh_weights=np.asarray(info["dwh_weights"]),
        W=np.asarray(info["W"]),
        class_names=class_names(m, info["num_classes"]),
        image_kind=image_kind(m),
        created_at=m.created_at,
        log_base=m.log_position,
        manifest=m,
    )
