"""Calls from the router to the other deployments: retries, and the coalesced shard fan-out.

:class:`Backends` calls a deployment method and retries (exponential back-off)
when a replica dies, is unavailable or too slow, until the request's deadline;
then the request fails with 503 ``{"error": "unavailable"}`` and
``Retry-After``.

:class:`Coalescer` sends queries to every shard: a unit of queries (one
search, or every query of a batch request) is sent at once when a slot is
free; while ``max_inflight`` calls are out, new units queue and leave together
in the next call (one call per shard for many requests instead of one per
request). No timer: an idle service adds no latency, a busy one makes fewer,
larger calls. A unit is never split, so a batch request is one pass per shard.
An answer is only ever built from every shard's complete reply, all from the
same index version and log position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from qadwh_ray.serving.errors import ApiError

__all__ = ["Backends", "Coalescer", "VersionGone", "check_shard_replies"]

log = logging.getLogger("ray.serve")


class VersionGone(Exception):
    """A shard no longer has (and cannot load) the version a request started with."""


def check_shard_replies(replies: list[dict], version: str, position: Optional[int] = None) -> None:
    """Refuse an answer unless every shard answered, from ``version`` and ``position``."""
    for r in replies:
        if not r.get("ok"):
            if r.get("error") == "version_unavailable":
                raise VersionGone(r.get("detail"))
            raise ApiError(422, r.get("error", "invalid_request"), r.get("detail", "the shard refused the query"))
        if r.get("version") != version or (position is not None and r.get("position") != position):
            raise VersionGone(f"shard {r.get('shard')} answered from {r.get('version')} at {r.get('position')}")


_RETRYABLE: tuple = ()
_ENCODER_STATUS = {"invalid_image": 422, "image_too_large": 413, "invalid_labels": 422}


def _retryable() -> tuple:
    global _RETRYABLE
    if not _RETRYABLE:
        import ray.exceptions as rex
        from ray.serve import exceptions as sex

        names = ("BackPressureError", "DeploymentUnavailableError", "ReplicaUnavailableError", "RequestCancelledError")
        _RETRYABLE = (
            rex.RayActorError,
            rex.OutOfMemoryError,
            rex.ObjectLostError,
            asyncio.TimeoutError,
            TimeoutError,
            *(getattr(sex, n) for n in names if hasattr(sex, n)),
        )
    return _RETRYABLE


class Backends:
    """Handles of the encoder, the shards and the control deployment, called with retries."""

    def __init__(self, encoder, shards: list, control, attempt_timeout_s: float, request_deadline_s: float, on_retry=None):
        self.encoder = encoder
        self.shards = shards
        self.control = control
        self.attempt_timeout_s = attempt_timeout_s
        self.request_deadline_s = request_deadline_s
        self.on_retry = on_retry  # called with the target of every retried call

    def deadline(self) -> float:
        return time.monotonic() + self.request_deadline_s

    async def call(self, target: str, method, *args, deadline: Optional[float] = None):
        """Call a deployment method, retrying dead/unavailable/slow replicas until the deadline."""
        end = deadline or self.deadline()
        delay = 0.05
        retryable = _retryable()
        while True:
            left = end - time.monotonic()
            try:
                return await asyncio.wait_for(method.remote(*args), timeout=max(0.05, min(self.attempt_timeout_s, left)))
            except retryable as exc:
                left = end - time.monotonic()
                if left <= delay:
                    raise ApiError(
                        503, "unavailable", f"{target} is unavailable ({type(exc).__name__}); try again", {"Retry-After": "1"}
                    ) from None
                if self.on_retry is not None:
                    self.on_retry(target)
                log.info("router: retrying %s after %s", target, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _encoder(self, method, *args, deadline: Optional[float]) -> dict:
        r = await self.call("encoder", method, *args, deadline=deadline)
        if not r.get("ok"):
            error = r.get("error", "encoder_error")
            raise ApiError(_ENCODER_STATUS.get(error, 503), error, r.get("detail", "the encoder failed"))
        return r

    async def encode(self, image, checkpoint: dict, deadline: Optional[float] = None) -> dict:
        """Code, weights and class probabilities of ``image`` (encoded bytes or pixels)."""
        return await self._encoder(self.encoder.encode, image, checkpoint, deadline=deadline)

    async def label_weights(self, labels: list, checkpoint: dict, deadline: Optional[float] = None) -> dict:
        return await self._encoder(self.encoder.label_weights, labels, checkpoint, deadline=deadline)

    async def thumbnail(self, image, checkpoint: dict, deadline: Optional[float] = None) -> dict:
        return await self._encoder(self.encoder.thumbnail, image, checkpoint, deadline=deadline)

    async def shard_search(self, i: int, version: str, position: int, queries: list, deadline: float) -> dict:
        t = time.perf_counter()
        r = await self.call(f"shard-{i}", self.shards[i].search_many, version, position, queries, deadline=deadline)
        r["_rtt_ms"] = (time.perf_counter() - t) * 1e3
        return r


class Coalescer:
    """Units of queries of one (version, position) sent to every shard together; see the module docstring."""

    def __init__(self, backends: Backends, max_batch: int, max_inflight: int, observe=None):
        self.backends = backends
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.observe = observe  # called with the per-shard timings of each call
        self.pending: list = []
        self.inflight = 0

    def submit(self, version: str, num_shards: int, position: int, queries: list, deadline: float) -> asyncio.Future:
        """A future of ``(per-query list of per-shard (d, ids, labels), per-shard timings)``."""
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(((version, num_shards, position), list(queries), deadline, fut))
        self._kick()
        return fut

    def _kick(self) -> None:
        while self.pending and self.inflight < self.max_inflight:
            key = self.pending[0][0]
            batch, rest, size = [], [], 0
            for p in self.pending:
                fits = not batch or size + len(p[1]) <= self.max_batch
                if p[0] == key and fits and not p[3].done():
                    batch.append(p)
                    size += len(p[1])
                elif not p[3].done():  # cancelled requests are dropped
                    rest.append(p)
            self.pending = rest
            if not batch:
                continue
            self.inflight += 1
            asyncio.get_running_loop().create_task(self._dispatch(batch))

    async def _dispatch(self, batch: list) -> None:
        try:
            (version, num_shards, position), _, _, _ = batch[0]
            deadline = min(p[2] for p in batch)
            queries = [q for p in batch for q in p[1]]
            replies = await asyncio.gather(
                *(self.backends.shard_search(i, version, position, queries, deadline) for i in range(num_shards))
            )
            check_shard_replies(replies, version, position)
            meta = [
                {"shard": r["shard"], "rtt_ms": round(r["_rtt_ms"], 3), "search_ms": round(r["search_ms"], 3),
                 "replica": r.get("replica"), "batch": len(queries)}
                for r in replies
            ]
            start = 0
            for _, qs, _, fut in batch:
                if not fut.done():
                    fut.set_result(([[r["results"][start + j] for r in replies] for j in range(len(qs))], meta))
                start += len(qs)
            if self.observe is not None:
                self.observe(meta)  # once per shard call, not once per query it carried
        except BaseException as exc:  # noqa: BLE001 — every waiting request gets the failure
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.inflight -= 1
            self._kick()
