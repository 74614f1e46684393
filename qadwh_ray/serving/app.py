"""``build_app(args) -> Application``: the serving application, for ``serve run`` /
``serve deploy`` (``import_path: qadwh_ray.serving.app:build_app``) and ``qadwh serve``.

Deployments (every one autoscaled, fractional CPUs)::

    router      FastAPI ingress: HTTP API + search page, fan-out, exact merge, swaps, update writes
    encoder     QueryEncoder: image bytes -> pixels -> @serve.batch code + query-adaptive weights (GPU when present);
                label-set weights and thumbnails (everything that needs the model or image decoding)
    shard-0..   one deployment per index shard (exact weighted-Hamming top-k, update log replayed)
    control     one replica: the runtime pin set through the admin API

The pinned version travels as ``user_config`` (``{"version": ...}``) of the
router and the shards, never as a constructor argument, so changing the pin
with ``serve deploy`` reconfigures the running replicas in place.
"""

from __future__ import annotations

import logging
import time

from ray import serve
from ray.serve import Application

from qadwh_ray.serving.config import AppArgs, RuntimeConfig
from qadwh_ray.serving.version_pin import VersionControl
from qadwh_ray.serving.encoder import QueryEncoder
from qadwh_ray.serving.router import Router
from qadwh_ray.serving.shard import Shard

__all__ = ["build_app", "wait_for_index", "shard_count", "encoder_gpus"]

log = logging.getLogger(__name__)


def wait_for_index(args: AppArgs, poll_s: float = 10.0) -> None:
    """Block until the served version exists, for at most ``args.wait_for_index_s`` seconds (then
    build_app fails with the reason): a service deployed before its first index starts with it."""
    from qadwh_ray.index.reader import IndexReader

    deadline = time.monotonic() + args.wait_for_index_s
    while True:
        try:
            IndexReader(args.index, args.version)
            return
        except FileNotFoundError as exc:
            if time.monotonic() + poll_s > deadline:
                return  # shard_count names what is missing
            log.warning("waiting for an index version at %s: %s", args.index, exc)
        time.sleep(poll_s)


def shard_count(args: AppArgs) -> int:
    """Shard deployments to create: ``num_shards`` or the served version's shard count."""
    if args.num_shards:
        return args.num_shards
    from qadwh_ray.index.reader import IndexReader

    try:
        return IndexReader(args.index, args.version).num_shards
    except FileNotFoundError as exc:
        raise ValueError(
            f"cannot size the shard deployments: {exc}. Publish an index version first or pass num_shards"
        ) from exc


def encoder_gpus(args: AppArgs) -> float:
    if args.encoder.num_gpus is not None:
        return float(args.encoder.num_gpus)
    try:
        import ray

        if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
            return 0.25
    except Exception:  # noqa: BLE001 — no cluster yet: CPU
        pass
    return 0.0


def build_app(args: "AppArgs | dict") -> Application:
    """The application for ``args`` (a dict, e.g. a Serve config's ``args:``, or :class:`AppArgs`)."""
    a = AppArgs.parse(args)
    wait_for_index(a)
    n = shard_count(a)
    ctor = a.model_dump(exclude={"version"}, mode="json")  # the pin goes through user_config only
    user_config = RuntimeConfig(version=a.version).model_dump()

    def opts(d, name: str, gpus: float | None = None, **extra) -> dict:
        return dict(
            name=name,
            autoscaling_config=d.autoscaling_config(),
            ray_actor_options=d.actor_options(gpus),
            max_ongoing_requests=d.max_ongoing_requests,
            **extra,
        )

    encoder = serve.deployment(QueryEncoder).options(**opts(a.encoder, "encoder", encoder_gpus(a))).bind(ctor)
    shard_dep = serve.deployment(Shard)
    shards = [  # the encoder re-encodes logged images for a version built with another model
        shard_dep.options(
            **opts(a.shard, f"shard-{i}", user_config=user_config, health_check_period_s=5, graceful_shutdown_timeout_s=10)
        ).bind(i, ctor, encoder)
        for i in range(n)
    ]
    control = (
        serve.deployment(VersionControl)
        .options(name="control", num_replicas=1, ray_actor_options={"num_cpus": 0.01}, max_ongoing_requests=100)
        .bind()
    )
    # Serve's late-bound FastAPI ingress: each replica builds its app in Router.__serve_build_asgi_app__
    ingress = serve.ingress()(Router)
    router = serve.deployment(ingress).options(**opts(a.router, "router", user_config=user_config)).bind(ctor, encoder, shards, control)
    return router
