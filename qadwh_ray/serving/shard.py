"""One Serve deployment per index shard: exact weighted-Hamming top-k over its items.

Each replica loads shard ``i`` of an index version, verified against the
manifest (size, SHA-256, schema, ids) by :class:`qadwh_ray.index.IndexReader`,
into a :class:`qadwh_ray.core.search.HashIndex`. Several versions can be held
at once; every request names the version it wants, so an answer never mixes
versions:

* the version the router asks for is answered from exactly that version; a
  replica that does not hold it yet loads it first (one load shared by all the
  requests waiting for it), which is how replicas started by the autoscaler,
  or replicas the router's preparation call did not reach, catch up;
* a background watcher preloads the version the deployment should serve next
  (the pinned one from ``user_config``, else the index's ``CURRENT`` pointer),
  so by the time the router switches, the replicas are normally ready;
* a version that is no longer wanted is dropped once it has not been used for
  ``swap_grace_s`` seconds (and beyond ``max_versions_loaded``, the least
  recently used goes first).

Replies are plain dicts (``{"ok": False, "error": ..., "detail": ...}`` for a
refusal) so the router never has to unwrap remote exceptions for expected
outcomes. The search helpers below are pure (no Ray) and are what the
deployment calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from qadwh_ray.serving.config import AppArgs, RuntimeConfig

__all__ = ["LoadedShard", "load_shard_version", "search_loaded", "radius_topk", "Shard"]

log = logging.getLogger("ray.serve")

_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool)


# ---------------------------------------------------------------- pure helpers


@dataclass
class LoadedShard:
    """One shard of one index version in memory."""

    version: str
    shard: int
    code_bits: int
    ids: np.ndarray  # (n,) int64 ascending
    codes: np.ndarray  # (n, ceil(nbits/8)) uint8 in id order
    labels: Optional[np.ndarray]  # (n, c) uint8 or None
    sources: Optional[list]
    index: Any  # HashIndex (None when the shard is empty)
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``ids`` and a mask of which were found."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self) == 0:
            return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
        pos = np.searchsorted(self.ids, ids)
        pos_c = np.minimum(pos, len(self) - 1)
        found = self.ids[pos_c] == ids
        return pos_c, found

    def label_lists(self, ids: np.ndarray) -> list:
        if self.labels is None:
            return [None] * len(ids)
        pos, found = self.positions(ids)
        out = []
        for p, ok in zip(pos.tolist(), found.tolist()):
            out.append(np.flatnonzero(self.labels[p]).tolist() if ok else None)
        return out


def load_shard_version(root: str, version: str, shard: int, device: str = "cpu") -> LoadedShard:
    """Read, verify and index shard ``shard`` of ``version`` (an empty shard when the
    version has fewer shards)."""
    from qadwh_ray.core.search import HashIndex
    from qadwh_ray.index.reader import IndexReader

    reader = IndexReader(root, version)
    m = reader.manifest
    nb = m.code_bytes
    if shard >= m.num_shards:
        return LoadedShard(reader.version, shard, m.code_bits, np.zeros(0, np.int64), np.zeros((0, nb), np.uint8), None, None, None)
    d = reader.read_shard(shard)
    index = None
    if len(d):
        index = HashIndex(m.code_bits, device=device)
        if d.labels is not None:
            index.add(d.codes, d.ids, labels=d.labels)
        else:
            index.add(d.codes, d.ids)
    return LoadedShard(reader.version, shard, m.code_bits, d.ids, np.ascontiguousarray(d.codes), d.labels, d.sources, index)


def _int_distances(query: np.ndarray, codes: np.ndarray, w_int: np.ndarray) -> np.ndarray:
    """Exact integer weighted Hamming sums of one query against ``codes`` (per-byte tables, int64)."""
    nb = codes.shape[1]
    qbits = np.unpackbits(query, bitorder="little").astype(bool).reshape(nb, 8)
    w = w_int.reshape(nb, 8)
    # T[j, v] = sum_t W[8j+t] * [bit_t(v) != q bit 8j+t]
    differs = _BYTE_BITS[None, :, :] != qbits[:, None, :]  # (nb, 256, 8)
    tables = (differs * w[:, None, :]).sum(axis=2)  # int64 (nb, 256)
    out = np.zeros(codes.shape[0], dtype=np.int64)
    for j in range(nb):
        out += tables[j][codes[:, j]]
    return out


def radius_topk(data: LoadedShard, query_codes: np.ndarray, weights, mode: str, k: int, radius: int):
    """Top ``k`` under ``(distance, id)`` among the items within Hamming ``radius`` of each query.

    Distances follow the canonical definition of :mod:`qadwh_ray.core.search`
    (snapped integer weights), so they equal what ``HashIndex.search`` returns
    for the same items. Returns ``(distances (nq, k), ids (nq, k))`` padded with
    ``inf`` / ``-1``.
    """
    from qadwh_ray.core.search import query_weights

    nq = query_codes.shape[0]
    dist = np.full((nq, k), np.inf)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    if len(data) == 0 or nq == 0:
        return dist, out_ids
    w_int, exps = query_weights(weights, mode, nq, data.code_bits)
    lims, _, ids = data.index.range_search(query_codes, int(radius))
    for i in range(nq):
        cand = ids[lims[i] : lims[i + 1]]
        if cand.size == 0:
            continue
        pos, _ = data.positions(cand)
        d = np.ldexp(_int_distances(query_codes[i], data.codes[pos], w_int[i]).astype(np.float64), int(exps[i]))
        order = np.lexsort((cand, d))[:k]
        dist[i, : order.size] = d[order]
        out_ids[i, : order.size] = cand[order]
    return dist, out_ids


def search_loaded(
    data: LoadedShard,
    query_codes: np.ndarray,
    weights,
    mode: str,
    k: int,
    radius: Optional[int] = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of one loaded shard (radius-limited when ``radius`` is given)."""
    nq = query_codes.shape[0]
    if len(data) == 0:
        return np.full((nq, k), np.inf), np.full((nq, k), -1, dtype=np.int64)
    if radius is not None and radius < data.code_bits:
        return radius_topk(data, query_codes, weights, mode, k, radius)
    return data.index.search(query_codes, k, None if mode == "hamming" else weights, mode=mode, num_threads=threads)


def search_many(data: LoadedShard, queries: list, threads: int = 1) -> list:
    """Answer several independent queries of one version with as few scans as possible.

    ``queries``: ``(code (nbytes,) uint8, weights (nbits,) or None, mode, k, radius)``.
    Weighted queries (qadwh, and dwh, whose one vector is just every row's
    weights) without a radius are searched together as one multi-query scan, as
    are plain Hamming ones, with the largest k of the group; each query keeps
    the first k of its row, which is its exact top k (a prefix under the same
    total order). Radius queries run one by one. Returns ``(distances, ids)``
    per query, in order.
    """
    out: list = [None] * len(queries)
    groups: dict = {}
    for j, (code, w, mode, k, radius) in enumerate(queries):
        if radius is not None and radius < data.code_bits:
            wq = None if mode == "hamming" else (np.asarray(w)[None, :] if mode == "qadwh" else np.asarray(w))
            d, ids = search_loaded(data, code[None, :], wq, mode, k, radius, threads)
            out[j] = (d[0], ids[0])
        else:
            groups.setdefault("hamming" if mode == "hamming" else "weighted", []).append(j)
    for kind, idx in groups.items():
        codes = np.stack([queries[j][0] for j in idx])
        kmax = max(queries[j][3] for j in idx)
        if kind == "hamming":
            d, ids = search_loaded(data, codes, None, "hamming", kmax, None, threads)
        else:
            w = np.stack([np.asarray(queries[j][1], dtype=np.float64) for j in idx])
            d, ids = search_loaded(data, codes, w, "qadwh", kmax, None, threads)
        for row, j in enumerate(idx):
            k = queries[j][3]
            out[j] = (d[row, :k], ids[row, :k])
    return out


def _warm_up(data: LoadedShard, threads: int) -> None:
    """One tiny query per search path (numba compiles or loads its cache on first use)."""
    q = data.codes[:1]
    nb = data.code_bits
    search_loaded(data, q, np.ones((1, nb), np.float32), "qadwh", 2, None, threads)
    search_loaded(data, q, np.ones(nb, np.float32), "dwh", 2, None, threads)
    search_loaded(data, q, None, "hamming", 2, None, threads)
    search_loaded(data, q, np.ones((1, nb), np.float32), "qadwh", 2, 1, threads)


# ---------------------------------------------------------------- deployment

# A short search runs inline on the replica's event loop: on small coalesced batches the
# hop to a worker thread showed up in the shard's profile next to the search itself
# (docs/benchmarks.md, serving). Longer ones (queries x rows above this, i.e. more than a few ms
# of scanning) go to a thread, so health checks and other calls never wait long.
INLINE_SCAN_ITEMS = 4_000_000


async def _run_search(fn, n_queries: int, rows: int, *args):
    if n_queries * rows <= INLINE_SCAN_ITEMS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


class Shard:
    """Serve deployment body (wrapped by :func:`qadwh_ray.serving.app.build_app`)."""

    async def __init__(self, shard: int, args: dict):
        from qadwh_ray.index.store import IndexStore

        self.args = AppArgs.parse(args)
        self.shard = int(shard)
        self.pin: Optional[str] = self.args.version
        self.loaded: dict[str, LoadedShard] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._desired: Optional[str] = None
        self._load_error: Optional[str] = None
        self.store = IndexStore(self.args.index)
        self._replica = _replica_tag()
        # The first version is loaded by the first reconfigure() (build_app always sets a
        # user_config), which Serve awaits before the replica takes traffic; the watcher
        # covers a deployment made without one.
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

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
            data = await asyncio.to_thread(load_shard_version, self.args.index, version, self.shard, self.args.shard.device)
            if data.index is not None:  # compile / load the kernels of every path off the request path
                await asyncio.to_thread(_warm_up, data, self.args.shard.search_threads)
            self.loaded[version] = data
            log.info("shard %d loaded index version %s (%d items) in %.2f s", self.shard, version, len(data), time.perf_counter() - t0)
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

    async def _get(self, version: str) -> tuple[Optional[LoadedShard], Optional[dict]]:
        data = self.loaded.get(version)
        if data is None:
            try:
                data = await self._ensure(version)
            except Exception as exc:  # noqa: BLE001 — deleted, damaged or never published
                return None, {"ok": False, "error": "version_unavailable", "detail": f"shard {self.shard}: index version {version}: {exc}"}
        data.last_used = time.monotonic()
        return data, None

    # -- requests -----------------------------------------------------------

    async def prepare(self, version: str) -> dict:
        """Load ``version`` (if needed) and report what this replica holds."""
        data, err = await self._get(version)
        if err:
            return err
        return {"ok": True, "shard": self.shard, "version": version, "items": len(data), "replica": self._replica}

    async def search(self, version: str, query_codes: np.ndarray, weights, mode: str, k: int, radius: Optional[int] = None) -> dict:
        t0 = time.perf_counter()
        data, err = await self._get(version)
        if err:
            return err
        try:
            d, ids = await _run_search(
                search_loaded, len(query_codes), len(data), data, query_codes, weights, mode, k, radius, self.args.shard.search_threads
            )
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": "invalid_request", "detail": str(exc)}
        labels = [data.label_lists(row[row >= 0]) for row in ids]
        return {
            "ok": True,
            "version": version,
            "shard": self.shard,
            "distances": d,
            "ids": ids,
            "labels": labels,
            "search_ms": (time.perf_counter() - t0) * 1e3,
            "replica": self._replica,
        }

    async def search_many(self, version: str, queries: list) -> dict:
        """Several queries in one call (the router coalesces concurrent requests)."""
        t0 = time.perf_counter()
        data, err = await self._get(version)
        if err:
            return err
        try:
            res = await _run_search(search_many, len(queries), len(data), data, queries, self.args.shard.search_threads)
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": "invalid_request", "detail": str(exc)}
        return {
            "ok": True,
            "version": version,
            "shard": self.shard,
            "results": [(d, ids, data.label_lists(ids[ids >= 0])) for d, ids in res],
            "search_ms": (time.perf_counter() - t0) * 1e3,
            "replica": self._replica,
        }

    async def items(self, version: str, ids: list) -> dict:
        data, err = await self._get(version)
        if err:
            return err
        arr = np.asarray(ids, dtype=np.int64)
        pos, found = data.positions(arr)
        out = []
        for i, p, ok in zip(arr.tolist(), pos.tolist(), found.tolist()):
            if not ok:
                out.append(None)
                continue
            out.append(
                {
                    "id": i,
                    "code": data.codes[p].tobytes(),
                    "labels": None if data.labels is None else np.flatnonzero(data.labels[p]).tolist(),
                    "source": None if data.sources is None else data.sources[p],
                }
            )
        return {"ok": True, "version": version, "shard": self.shard, "items": out}

    async def sample_ids(self, version: str, n: int, seed: int) -> dict:
        data, err = await self._get(version)
        if err:
            return err
        if len(data) == 0:
            return {"ok": True, "ids": []}
        rng = np.random.default_rng(seed)
        return {"ok": True, "ids": data.ids[rng.integers(0, len(data), size=int(n))].tolist()}

    async def status(self) -> dict:
        return {
            "shard": self.shard,
            "replica": self._replica,
            "pin": self.pin,
            "desired": self._desired,
            "loaded": {v: len(d) for v, d in self.loaded.items()},
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
