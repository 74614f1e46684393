"""The index version a router serves: how one gets ready, and which one to serve.

A version is *prepared* before requests use it: the encoder loads the
checkpoint the version names (a query must be encoded by the model that made
the index's codes) and every shard deployment confirms it holds the version,
with the update log replayed up to the router's position. Only then does
:class:`VersionTracker` switch to it, in one assignment of an
:class:`ActiveVersion`: a request reads ``active`` once when it starts, so one
answer never mixes versions.

The version to serve is the admin pin (held by the control deployment, shared
by all router replicas), else the ``user_config`` pin, else the index's
``CURRENT`` pointer; :meth:`VersionTracker.tick` (every ``poll_interval_s``)
follows it and keeps serving the active version when the next cannot be
prepared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from qadwh_ray.serving.errors import ApiError
from qadwh_ray.serving.fanout import Backends

__all__ = ["ActiveVersion", "prepare_version", "VersionTracker"]

log = logging.getLogger("ray.serve")


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
        class_names=class_names(m, info["num_classes"]),
        image_kind=image_kind(m),
        created_at=m.created_at,
        log_base=m.log_position,
        manifest=m,
    )


class VersionTracker:
    """Which version this router replica serves (``active``) and which it should (see the module docstring).

    ``position()`` is the replica's update-log position; ``on_switch(new, old)`` runs after each switch.
    """

    def __init__(self, store, backends: Backends, checkpoint_override: Optional[str], position: Callable[[], int],
                 user_pin: Optional[str], on_switch: Optional[Callable] = None):
        self.store = store
        self.backends = backends
        self.checkpoint_override = checkpoint_override
        self.position = position
        self.user_pin = user_pin
        self.admin_pin: Optional[str] = None
        self.on_switch = on_switch
        self.active: Optional[ActiveVersion] = None
        self.last_error: Optional[str] = None
        self.swaps = 0
        self._lock = asyncio.Lock()

    @property
    def following(self) -> str:
        return "admin_pin" if self.admin_pin else ("user_config_pin" if self.user_pin else "CURRENT")

    async def desired(self) -> str:
        if self.admin_pin:
            return self.admin_pin
        if self.user_pin:
            return self.user_pin
        return await asyncio.to_thread(self.store.resolve, None)

    async def tick(self) -> None:
        """Read the admin pin and switch to the desired version; failures keep the active one."""
        try:
            try:
                got = await asyncio.wait_for(self.backends.control.get.remote(), timeout=5)
                self.admin_pin = got.get("pin")
            except Exception as exc:  # noqa: BLE001 — keep the last known admin pin
                log.debug("router: control unreachable: %s", exc)
            desired = await self.desired()
            if self.active is None or desired != self.active.version:
                await self.switch_to(desired)
            self.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 — keep serving the active version
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self.last_error:
                log.warning("router: staying on %s: %s", self.active.version if self.active else None, msg)
            self.last_error = msg

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.tick()

    async def switch_to(self, version: str) -> ActiveVersion:
        async with self._lock:
            if self.active is not None and self.active.version == version:
                return self.active
            st = await prepare_version(self.store, version, self.backends, self.checkpoint_override, self.position())
            old = self.active
            self.active = st  # one assignment: requests started before keep the old version
            self.swaps += 1
            if self.on_switch is not None:
                self.on_switch(st, old)
            log.info("router: now serving index version %s (was %s)", version, old.version if old else None)
            return st

    async def pin(self, version: Optional[str]) -> ActiveVersion:
        """Pin ``version`` for every router replica (None: unpin) and serve what is desired now."""
        await self.backends.call("control", self.backends.control.set, version)
        self.admin_pin = version
        return await self.switch_to(await self.desired())

    def require_active(self) -> ActiveVersion:
        st = self.active
        if st is None:
            raise ApiError(503, "not_ready", f"no index version is loaded yet ({self.last_error or 'starting'})", {"Retry-After": "2"})
        return st
