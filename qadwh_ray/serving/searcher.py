"""Answering queries on the active index version: resolve, fan out, merge (no HTTP, no Ray).

A request reads the active version once and searches it at one update-log
position (never before the version's own), so one answer never mixes versions
or positions. Every query of a request goes to the shards in one coalesced pass
(serving/fanout.py); a query that fails alone (a bad code, an unknown item)
gets its own error while the others are answered. If a shard reports the
request's version gone, the whole request restarts on the newer active version.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np

from qadwh_ray.serving.answers import merge_replies
from qadwh_ray.serving.errors import ApiError
from qadwh_ray.serving.fanout import Backends, Coalescer, VersionGone
from qadwh_ray.serving.queries import QueryResolver
from qadwh_ray.serving.versions import ActiveVersion, VersionTracker

__all__ = ["Searcher"]

_RESTARTS = 3


class Searcher:
    def __init__(self, backends: Backends, versions: VersionTracker, resolver: QueryResolver, coalescer: Coalescer, log_position):
        self.backends = backends
        self.versions = versions
        self.resolver = resolver
        self.coalescer = coalescer
        self.log_position = log_position  # .value: the newest update-log position this replica knows

    def position(self, st: ActiveVersion) -> int:
        """The log position a request started now searches (never before its version's)."""
        return max(self.log_position.value, st.log_base)

    async def _answer(self, st: ActiveVersion, queries: list, timings: list) -> list:
        """Answers (dicts) or ApiErrors for ``queries``, searched in one coalesced pass per shard."""
        deadline = self.backends.deadline()
        position = self.position(st)

        async def resolve(q, t):
            try:
                return await self.resolver.resolve(st, q, position, deadline, t)
            except ApiError as exc:
                return exc

        if len(queries) == 1:  # the common case: no task for gather to schedule
            resolved = [await resolve(queries[0], timings[0])]
        else:
            resolved = await asyncio.gather(*(resolve(q, t) for q, t in zip(queries, timings)))
        ok = [j for j, r in enumerate(resolved) if not isinstance(r, ApiError)]
        out: list = list(resolved)
        if not ok:
            return out
        t = time.perf_counter()
        per_query, meta = await self.coalescer.submit(st.version, st.num_shards, position, [resolved[j][0] for j in ok], deadline)
        fanout_ms = (time.perf_counter() - t) * 1e3
        for j, per_shard in zip(ok, per_query):
            q, (_, info) = queries[j], resolved[j]
            t = time.perf_counter()
            merged = merge_replies(per_shard, q.k, st.class_names)
            timings[j].update(fanout_ms=fanout_ms, merge_ms=(time.perf_counter() - t) * 1e3, shards=meta)
            out[j] = {"version": st.version, "log_position": position, "mode": q.mode, "k": q.k, "radius": q.radius,
                      "query": info, **merged}
        return out

    async def answer(self, queries: list, timings: list) -> list:
        """Answers or ApiErrors for ``queries`` (parsed :class:`qadwh_ray.serving.api.Query`) on the
        active version; ``timings[i]`` receives query i's debug timings."""
        st = self.versions.require_active()
        for attempt in range(_RESTARTS):
            try:
                return await self._answer(st, queries, timings)
            except VersionGone as exc:
                newer = self.versions.active
                if newer is None or newer.version == st.version or attempt == _RESTARTS - 1:
                    raise ApiError(503, "unavailable", f"index version {st.version} is no longer available ({exc})",
                                   {"Retry-After": "1"}) from None
                st = newer
        raise AssertionError("unreachable")

    async def item(self, st: ActiveVersion, item_id: int) -> tuple[dict, int]:
        """``(the item as of the current log position, that position)``."""
        position = self.position(st)
        try:
            return await self.resolver.item(st, position, item_id), position
        except VersionGone:
            raise ApiError(503, "unavailable", "the index version changed; try again", {"Retry-After": "1"}) from None

    async def random_ids(self, st: ActiveVersion, n: int) -> tuple[list, int]:
        """``(up to n random item ids of one shard, picked by its share of rows; the log position)``;
        ``([], None)`` for an empty version."""
        rows = np.asarray(st.shard_rows, dtype=np.float64)
        if rows.sum() == 0:
            return [], None
        position = self.position(st)
        shard = int(np.random.default_rng().choice(len(rows), p=rows / rows.sum()))
        r = await self.backends.call(f"shard-{shard}", self.backends.shards[shard].sample_ids, st.version, position, n,
                                     random.randrange(2**31))
        if not r.get("ok"):
            raise ApiError(503, "unavailable", r.get("detail", "shard unavailable"), {"Retry-After": "1"})
        return r["ids"], position
