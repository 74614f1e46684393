"""One Serve deployment per index shard: exact weighted-Hamming top-k over its items.

Each replica loads shard ``i`` of an index version, verified against the
manifest (size, SHA-256, schema, ids) by :class:`qadwh_ray.index.IndexReader`,
into a :class:`qadwh_ray.core.live.LiveIndex`, and replays the update log
(:mod:`qadwh_ray.index.update_log`) past the position the version was built
at. Several versions can be held at once; every request names the version and
the log position it wants, so an answer never mixes versions or positions:

* the version the router asks for is answered from exactly that version; a
  replica that does not hold it yet loads it first (one load shared by all the
  requests waiting for it), which is how replicas started by the autoscaler,
  or replicas the router's preparation call did not reach, catch up;
* a log position the replica has not reached yet is read from the log first
  (one read shared by the waiting requests); a background loop follows the
  log so that this is rare;
* a background watcher preloads the version the deployment should serve next
  (the pinned one from ``user_config``, else the index's ``CURRENT`` pointer),
  so by the time the router switches, the replicas are normally ready;
* a version that is no longer wanted is dropped once it has not been used for
  ``swap_grace_s`` seconds (and beyond ``max_versions_loaded``, the least
  recently used goes first).

Replies are plain dicts (``{"ok": False, "error": ..., "detail": ...}`` for a
refusal) so the router never has to unwrap remote exceptions for expected
outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from qadwh_ray.core.live import Change, LiveIndex, LiveQuery
from qadwh_ray.serving.config import AppArgs, RuntimeConfig

__all__ = ["LoadedShard", "load_shard_version", "changes_for_shard", "Shard"]

log = logging.getLogger("ray.serve")


# ---------------------------------------------------------------- pure helpers


@dataclass
class LoadedShard:
    """One shard of one index version in memory, with the log applied up to ``live.position``."""

    version: str
    shard: int
    num_shards: int
    checkpoint: dict  # the version's checkpoint record: codes in the log are valid only for its sha256
    live: LiveIndex
    sources: Optional[list]  # per base row
    images: dict = field(default_factory=dict)  # put item id -> image SHA-256 in the log
    stale: int = 0  # puts whose code came from another model and had no image to re-encode
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)


def load_shard_version(root: str, version: str, shard: int, device: str = "cpu", threads: int = 1) -> LoadedShard:
    """Read, verify and index shard ``shard`` of ``version`` (an empty shard when the
    version has fewer shards), at the log position the version was built at."""
    from qadwh_ray.index.reader import IndexReader

    reader = IndexReader(root, version)
    m = reader.manifest
    if shard >= m.num_shards:
        ids, codes, labels, sources = np.zeros(0, np.int64), np.zeros((0, m.code_bytes), np.uint8), None, None
    else:
        d = reader.read_shard(shard)
        ids, codes, labels, sources = d.ids, d.codes, d.labels, d.sources
    live = LiveIndex(m.code_bits, ids, codes, labels, base_position=m.log_position, num_classes=m.num_classes, device=device,
                     threads=threads)
    return LoadedShard(reader.version, shard, m.num_shards, dict(m.checkpoint or {}), live, sources)


def changes_for_shard(entries: list, shard: int, num_shards: int, checkpoint_sha: Optional[str]) -> tuple[list, list]:
    """This shard's changes among log ``entries``: ``(changes, to_encode)``.

    A put whose code came from this version's model (``checkpoint_sha``; None
    accepts every code) is a change as it is; one from another model leaves a
    ``None`` slot in ``changes`` and ``(slot, entry)`` in ``to_encode``: the
    caller re-encodes its image with this version's model, or, without an
    image, makes it a delete (its old content is no longer valid either).
    """
    from qadwh_ray.index.format import shard_of_ids

    if not entries:
        return [], []
    home = shard_of_ids(np.asarray([e.id for e in entries], dtype=np.int64), num_shards)
    changes, to_encode = [], []
    for e, h in zip(entries, home.tolist()):
        if h != shard:
            continue
        if e.op == "delete":
            changes.append(Change(e.seq, e.id))
        elif checkpoint_sha is None or e.checkpoint == checkpoint_sha:
            changes.append(Change(e.seq, e.id, bytes.fromhex(e.code), tuple(e.labels or ())))
        else:
            changes.append(None)  # placeholder keeps log order; filled by the caller
            to_encode.append((len(changes) - 1, e))
    return changes, to_encode


def _warm_up(data: LoadedShard) -> None:
    """One tiny query per search path (numba compiles or loads its cache on first use)."""
    live = data.live
    if not len(live):
        return
    q = live.codes[0]
    w = np.ones(live.nbits, np.float64)
    view = live.view(live.base_position)
    live.search_many([LiveQuery(q, w, "qadwh", 2), LiveQuery(q, None, "hamming", 2), LiveQuery(q, w, "qadwh", 2, 1)], view)


# ---------------------------------------------------------------- deployment

# Up to this many queries x rows (a few ms) a search runs on the event loop: the thread hop would cost as much.
INLINE_SCAN_ITEMS = 4_000_000


async def _run_search(fn, n_queries: int, rows: int, *args):
    if n_queries * rows <= INLINE_SCAN_ITEMS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


class Shard:
    """Serve deployment body (wrapped by :func:`qadwh_ray.serving.app.build_app`)."""

    async def __init__(self, shard: int, args: dict, encoder=None):
        from qadwh_ray.index.store import IndexStore
        from qadwh_ray.index.update_log import UpdateLog
        from qadwh_ray.serving.cluster_env import inter_deployment_handle_options

        self.args = AppArgs.parse(args)
        self.shard = int(shard)
        self.encoder = encoder.options(**inter_deployment_handle_options()) if encoder is not None else None
        self.pin: Optional[str] = self.args.version
        self.loaded: dict[str, LoadedShard] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._catching_up: dict[str, asyncio.Task] = {}
        self._desired: Optional[str] = None
        self._load_error: Optional[str] = None
        self.store = IndexStore(self.args.index)
        self.update_log = UpdateLog(self.args.index)
        self._replica = _replica_tag()
        # reconfigure() loads the first version before traffic (build_app always sets user_config); else the watcher
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch())
        self._follower = loop.create_task(self._follow_log())

    # -- versions ---------------------------------------------------------

    def _resolve_desired(self) -> str:
        self._desired = self.store.resolve(self.pin)
        return self._desired

    async def _ensure(self, version: str) -> LoadedShard:
        got = self.loaded.get(version)
        if got is not None:
            return got
        task = self._loading.get(version)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(version))
            self._loading[version] = task
        return await asyncio.shield(task)

    async def _load(self, version: str) -> LoadedShard:
        try:
            t0 = time.perf_counter()
            sa = self.args.shard
            data = await asyncio.to_thread(load_shard_version, self.args.index, version, self.shard, sa.device, sa.search_threads)
            await asyncio.to_thread(_warm_up, data)  # compile / load the kernels of every path off the request path
            await self._catch_up(data, None)
            self.loaded[version] = data
            log.info("shard %d loaded index version %s (%d items, log position %d) in %.2f s",
                     self.shard, version, len(data.live), data.live.position, time.perf_counter() - t0)
            self._evict()
            return data
        finally:
            self._loading.pop(version, None)

    def _evict(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        keep = {self._desired, self.pin} - {None}
        for v, d in list(self.loaded.items()):
            if v not in keep and now - d.last_used > self.args.swap_grace_s and len(self.loaded) > 1:
                del self.loaded[v]
                log.info("shard %d dropped index version %s (unused for %.0f s)", self.shard, v, now - d.last_used)
        while len(self.loaded) > self.args.shard.max_versions_loaded:
            victims = sorted((d.last_used, v) for v, d in self.loaded.items() if v not in keep)
            if not victims:
                break
            del self.loaded[victims[0][1]]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.args.poll_interval_s)
            try:
                await self._load_desired()
                self._evict()
            except asyncio.CancelledError:
                raise
            except RuntimeError as exc:
                if "shutdown" in str(exc):  # the replica is stopping
                    return
                log.warning("shard %d: cannot follow the index (%s: %s)", self.shard, type(exc).__name__, exc)
            except Exception as exc:  # noqa: BLE001 — keep serving what is loaded
                log.warning("shard %d: cannot follow the index (%s: %s)", self.shard, type(exc).__name__, exc)

    async def reconfigure(self, user_config: dict) -> None:
        """``user_config`` changed (``serve deploy``) or the replica starts: follow its pin.

        At start-up the version is loaded before this returns (so the replica is
        ready when Serve sends it traffic); later the load runs in the background
        while the loaded versions keep serving.
        """
        cfg = RuntimeConfig.parse(user_config)
        self.pin = cfg.version
        if not self.loaded:
            await self._load_desired()
            return

        async def preload():
            try:
                await self._load_desired()
            except Exception as exc:  # noqa: BLE001
                log.warning("shard %d: cannot preload version %s: %s", self.shard, self.pin or "CURRENT", exc)

        asyncio.get_running_loop().create_task(preload())

    async def _load_desired(self) -> LoadedShard:
        try:
            v = await asyncio.to_thread(self._resolve_desired)
            data = await self._ensure(v)
            self._load_error = None
            return data
        except Exception as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            raise

    async def _get(self, version: str, position: Optional[int] = None) -> tuple[Optional[LoadedShard], Optional[dict]]:
        data = self.loaded.get(version)
        try:
            if data is None:
                data = await self._ensure(version)
            if position is not None and data.live.position < position:
                await self._catch_up_shared(data, position)
        except Exception as exc:  # noqa: BLE001 — deleted, damaged, never published, or its log is gone
            return None, {"ok": False, "error": "version_unavailable", "detail": f"shard {self.shard}: index version {version}: {exc}"}
        data.last_used = time.monotonic()
        return data, None

    # -- the update log -----------------------------------------------------

    async def _catch_up_shared(self, data: LoadedShard, position: int) -> None:
        """Reach ``position`` (one read of the log shared by every request waiting for it)."""
        while data.live.position < position:
            task = self._catching_up.get(data.version)
            if task is None or task.done():  # a finished read (for a lower position) is replaced, never re-awaited
                task = asyncio.get_running_loop().create_task(self._catch_up(data, position))
                self._catching_up[data.version] = task
            await asyncio.shield(task)

    async def _catch_up(self, data: LoadedShard, position: Optional[int]) -> None:
        """Apply the log's changes past ``data.live.position`` (up to ``position``, or to its end)."""
        entries, reached = await asyncio.to_thread(self.update_log.read, data.live.position, position)
        if reached <= data.live.position:
            return
        # with a checkpoint given to the app (args.checkpoint), every logged code is taken as the served model's
        model_sha = None if self.args.checkpoint else data.checkpoint.get("sha256")
        changes, to_encode = changes_for_shard(entries, self.shard, data.num_shards, model_sha)
        for slot, entry in to_encode:
            changes[slot] = await self._reencoded(data, entry)
        image_of = {e.seq: e.image for e in entries if e.image}
        for c in changes:
            if c.code is not None and c.seq in image_of:
                data.images[c.id] = image_of[c.seq]
            else:
                data.images.pop(c.id, None)
        data.live.apply(changes, reached)

    async def _reencoded(self, data: LoadedShard, entry) -> Change:
        """A put made with another model, re-encoded from its image by this version's model."""
        if not entry.image or self.encoder is None:
            data.stale += 1
            log.warning("shard %d: item %d (log %d) has a code from another model and no image: hidden in version %s",
                        self.shard, entry.id, entry.seq, data.version)
            return Change(entry.seq, entry.id)
        raw = await asyncio.to_thread(self.update_log.read_image, entry.image)
        ref = {"uri": data.checkpoint.get("uri"), "sha256": data.checkpoint.get("sha256")}
        r = await self.encoder.encode.remote(raw, ref)  # the encoder decodes it in its model's colour mode
        if not r.get("ok"):
            raise RuntimeError(f"cannot re-encode item {entry.id} of the update log: {r.get('detail')}")
        return Change(entry.seq, entry.id, r["code"], tuple(entry.labels or ()))

    async def _follow_log(self) -> None:
        """Keep every loaded version at the end of the log (so requests rarely wait for a read)."""
        while True:
            await asyncio.sleep(self.args.updates.poll_interval_s)
            for data in list(self.loaded.values()):
                try:
                    end = await asyncio.to_thread(self.update_log.end, data.live.position)
                    if end > data.live.position:
                        await self._catch_up_shared(data, end)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 — the next request reads what it needs
                    log.debug("shard %d: following the update log: %s", self.shard, exc)

    # -- requests -----------------------------------------------------------

    async def prepare(self, version: str, position: Optional[int] = None) -> dict:
        """Load ``version`` (if needed), reach ``position``, and report what this replica holds."""
        data, err = await self._get(version, position)
        if err:
            return err
        return {"ok": True, "shard": self.shard, "version": version, "items": len(data.live), "position": data.live.position,
                "replica": self._replica}

    async def search_many(self, version: str, position: int, queries: list) -> dict:
        """Several :class:`LiveQuery` answered as of log ``position`` (the router coalesces requests)."""
        t0 = time.perf_counter()
        data, err = await self._get(version, position)
        if err:
            return err
        try:
            view = data.live.view(position)
            res = await _run_search(data.live.search_many, len(queries), len(data.live), queries, view)
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": "invalid_request", "detail": str(exc)}
        return {
            "ok": True,
            "version": version,
            "position": position,
            "shard": self.shard,
            "results": [(d, ids, data.live.labels_of(ids[ids >= 0], view)) for d, ids in res],
            "search_ms": (time.perf_counter() - t0) * 1e3,
            "replica": self._replica,
        }

    async def items(self, version: str, position: int, ids: list) -> dict:
        data, err = await self._get(version, position)
        if err:
            return err
        view = data.live.view(position)
        out = []
        for i in ids:
            item = data.live.item(int(i), view)
            if item is not None:
                row = item.pop("base_row")
                item["source"] = data.sources[row] if (row is not None and data.sources is not None) else None
                item["from_log"] = row is None
                item["log_image"] = data.images.get(int(i)) if row is None else None
            out.append(item)
        return {"ok": True, "version": version, "position": position, "shard": self.shard, "items": out}

    async def sample_ids(self, version: str, position: int, n: int, seed: int) -> dict:
        data, err = await self._get(version, position)
        if err:
            return err
        return {"ok": True, "ids": data.live.sample_ids(data.live.view(position), n, np.random.default_rng(seed))}

    async def status(self) -> dict:
        return {
            "shard": self.shard,
            "replica": self._replica,
            "pin": self.pin,
            "desired": self._desired,
            "loaded": {v: {"items": len(d.live), "position": d.live.position, "stale": d.stale} for v, d in self.loaded.items()},
            "loading": sorted(self._loading),
        }

    async def check_health(self) -> None:
        if not self.loaded and self._load_error:
            raise RuntimeError(f"shard {self.shard} holds no index version: {self._load_error}")


def _replica_tag() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_tag
    except Exception:  # noqa: BLE001 — outside Serve (unit use)
        return "local"

