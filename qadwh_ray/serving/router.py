"""The router deployment: the ingress replica that wires the serving parts together.

Each part is plain Python, testable without Ray: version tracking
(versions.py), calls with retries and the coalesced fan-out (fanout.py), query
resolution (queries.py), answering on the active version (searcher.py), exact
merging (answers.py), live updates (updates.py), auth (auth.py), metrics
(metrics.py) and the HTTP routes (routes.py). ``build_app`` wraps this class
with Serve's late-bound FastAPI ingress: Serve calls
:meth:`Router.__serve_build_asgi_app__` once the replica is constructed.
"""

from __future__ import annotations

import asyncio
import logging

from qadwh_ray.serving.auth import BearerAuth
from qadwh_ray.serving.config import AppArgs, RuntimeConfig
from qadwh_ray.serving.fanout import Backends, Coalescer
from qadwh_ray.serving.cluster_env import inter_deployment_handle_options
from qadwh_ray.serving.metrics import RouterMetrics
from qadwh_ray.serving.queries import QueryResolver
from qadwh_ray.serving.searcher import Searcher
from qadwh_ray.serving.versions import VersionTracker

__all__ = ["Router"]

log = logging.getLogger("ray.serve")


def _replica_tag() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_tag
    except Exception:  # noqa: BLE001 — outside Serve (unit use)
        return "local"


class Router:
    """Serve deployment body (wrapped by :func:`qadwh_ray.serving.app.build_app`).

    ``encoder``, ``shards`` and ``control`` are deployment handles, or any objects with the
    same interface (``handle.options(**kw)``, ``await handle.method.remote(*args)``).
    """

    async def __init__(self, args: dict, encoder, shards: list, control, metrics: RouterMetrics | None = None):
        from qadwh_ray.index.store import IndexStore
        from qadwh_ray.index.update_log import UpdateLog
        from qadwh_ray.serving.updates import ItemUpdates, LogPosition, UpdateWriter

        self.args = a = AppArgs.parse(args)
        self.metrics = metrics or RouterMetrics()
        self.replica = _replica_tag()
        # Handles made by whoever built the app carry that process's transport; use this cluster's (serving/cluster_env.py).
        opts = inter_deployment_handle_options()
        self.backends = Backends(encoder.options(**opts), [h.options(**opts) for h in shards], control.options(**opts),
                                 a.attempt_timeout_s, a.request_deadline_s, self.metrics.retry)
        self.store = IndexStore(a.index)
        update_log = UpdateLog(a.index)
        self.auth = BearerAuth(a)
        self.log_position = LogPosition(update_log, a.updates.poll_interval_s,
                                        lambda pos, lag: self.metrics.log_state(pos, lag, self.versions.active))
        self.resolver = QueryResolver(self.backends, update_log, a.images_from_sources, self.metrics.encode)
        self.versions = VersionTracker(self.store, self.backends, a.checkpoint, lambda: self.log_position.value, a.version,
                                       self._switched)
        coalescer = Coalescer(self.backends, a.router.max_batch, a.router.max_inflight_batches, self.metrics.shard_calls)
        self.searcher = Searcher(self.backends, self.versions, self.resolver, coalescer, self.log_position)
        self.updates = ItemUpdates(self.backends, update_log, UpdateWriter(update_log, self.log_position, a.updates.max_batch),
                                   self.metrics.update)
        await self.log_position.refresh()
        # reconfigure() activates the first version before traffic (build_app always sets user_config); else the watcher
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.versions.watch(a.poll_interval_s)), loop.create_task(self.log_position.follow())]

    def _switched(self, new, old) -> None:
        self.log_position.advance(new.log_base)
        self.resolver.clear()
        self.metrics.swap(new, old)

    def __serve_build_asgi_app__(self):
        from qadwh_ray.serving.routes import http_app

        return http_app(self)

    async def reconfigure(self, user_config: dict) -> None:
        """``serve deploy`` changed ``user_config``: follow the new pin (switches on the next watcher tick)."""
        self.versions.user_pin = RuntimeConfig.parse(user_config).version
        if self.versions.active is None:
            await self.versions.tick()  # start-up: activate before taking traffic (failures leave it not ready)
        else:
            asyncio.get_running_loop().create_task(self.versions.tick())

    def close(self) -> None:
        """Stop the background loops (unit use; Serve ends the replica's process)."""
        for t in self._tasks:
            t.cancel()
