"""The nightly pipeline in one job:

1. **retrain** (optional): a Ray Train run (a fresh run, or a resumed one when
   its name is reused) whose newest checkpoint becomes the model;
2. **re-index**: build a new version from that checkpoint (or the newest one
   under ``checkpoint``) and the source — or append new items incrementally;
3. **verify**: the re-index checks (item count, checksums, brute-force sample
   queries, MAP not lower than the current version's, on the dataset's query
   part or ``--queries``: never skipped) — only then **publish**;
4. **swap**: wait until the running service answers from the new version.

Any failure leaves the previous version serving: a failed check never moves
``CURRENT``; a service that does not move to the new version in time gets the
pointer moved back to the previous version (so the service and ``CURRENT``
agree), and the job fails with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from qadwh_ray import storage

__all__ = ["NightlyOptions", "NightlyResult", "NightlyFailed", "run_nightly"]


class NightlyFailed(RuntimeError):
    """A stage failed; ``stage`` names it. The previous version still serves."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass
class NightlyOptions:
    index: str  # index root URI
    source: str = "fashion"
    checkpoint: str | None = None  # file or directory (its newest checkpoint); with retrain: ignored
    incremental: bool = False
    retrain: bool = False
    train_config: object | None = None  # a TrainConfig when retrain
    train_storage: str | None = None
    run_name: str | None = None
    service_url: str | None = None
    service_token: str | None = None
    swap_timeout_s: float = 300.0
    build: object | None = None  # indexing.BuildOptions
    checks: object | None = None  # indexing.CheckOptions
    ray_address: str | None = None


@dataclass
class NightlyResult:
    previous_version: str | None
    version: str
    checkpoint: str
    published: bool
    swapped: bool
    stages: dict = field(default_factory=dict)  # stage -> seconds
    checks: dict = field(default_factory=dict)
    train_run: str | None = None

    def summary(self) -> str:
        swap = "service answers from it" if self.swapped else "no service to swap"
        return (
            f"nightly: version {self.version} published (previous {self.previous_version}); {swap}; "
            f"checkpoint {self.checkpoint}; stages " + ", ".join(f"{k} {v:.0f} s" for k, v in self.stages.items())
        )


def _retrain(opts: NightlyOptions, log) -> tuple[str, str]:
    from qadwh_ray.ray_train.trainer import train_on_ray

    if opts.train_config is None:
        raise ValueError("retrain needs a training config")
    info = train_on_ray(opts.train_config, storage_path=opts.train_storage, run_name=opts.run_name, log=log,
                        progress=False)
    if info.steps < info.total_steps or not info.model_uri:
        raise NightlyFailed("retrain", f"run {info.run_name} stopped at step {info.steps} of {info.total_steps}")
    log(f"retrained: {info.summary()}")
    return info.model_uri, info.run_name


def run_nightly(opts: NightlyOptions, log=print) -> NightlyResult:
    """Run the pipeline; raises :class:`NightlyFailed` (or ValueError/FileNotFoundError for bad arguments)."""
    from qadwh_ray.index.store import IndexStore
    from qadwh_ray.index_build.pipeline import BuildOptions
    from qadwh_ray.client import Client, ServiceError
    from qadwh_ray.index_build.reindex import CheckFailed, CheckOptions, query_set, reindex

    checks = opts.checks or CheckOptions()
    if query_set(checks.queries, opts.source) is None:  # the quality gate is what makes a nightly safe to publish
        raise ValueError(f"the nightly always checks MAP on a query set: give --queries (a dataset URI) for {opts.source}")
    store = IndexStore(opts.index)
    previous = store.current_version()
    client = Client(opts.service_url, opts.service_token) if opts.service_url else None
    if client is not None:  # fail before any work when the service cannot be reached
        try:
            served = client.index().get("version")
        except ServiceError as exc:
            raise NightlyFailed("service", f"cannot reach the service before re-indexing: {exc}") from None
        log(f"service at {opts.service_url} answers from version {served}")
    stages: dict[str, float] = {}
    train_run = None

    checkpoint = opts.checkpoint
    if opts.retrain:
        t0 = time.perf_counter()
        try:
            checkpoint, train_run = _retrain(opts, log)
        except (ValueError, OSError, NightlyFailed):  # bad settings, unreachable storage: as they are
            raise
        except Exception as exc:  # a failed Ray Train run
            raise NightlyFailed("retrain", f"{type(exc).__name__}: {exc}") from exc
        stages["retrain"] = time.perf_counter() - t0
    elif checkpoint is None and not opts.incremental:
        raise ValueError("give a checkpoint (a file or a directory of checkpoints), or retrain")

    t0 = time.perf_counter()
    try:
        result = reindex(checkpoint, opts.source, opts.index, opts.build or BuildOptions(), checks,
                         incremental=opts.incremental, ray_address=opts.ray_address)
    except CheckFailed as exc:
        raise NightlyFailed("verify", f"re-index check failed, not published: {exc.reason}") from exc
    stages["reindex+verify+publish"] = time.perf_counter() - t0
    version = result.version
    log(result.summary())

    swapped = False
    if client is not None:
        t0 = time.perf_counter()
        try:
            client.wait_version(version, timeout_s=opts.swap_timeout_s)
            swapped = True
        except ServiceError as exc:
            if previous is not None:
                store.set_current(previous)  # keep the pointer on what the service still serves
            raise NightlyFailed("swap", f"{exc}; CURRENT moved back to {previous}") from None
        stages["swap"] = time.perf_counter() - t0
        log(f"service at {opts.service_url} now answers from version {version}")
    return NightlyResult(
        previous_version=previous,
        version=version,
        checkpoint=result.manifest.checkpoint.get("uri") or str(checkpoint),
        published=result.published,
        swapped=swapped,
        stages=stages,
        checks=dict(result.manifest.checks or {}),
        train_run=train_run,
    )


def describe_outputs(result: NightlyResult, index: str) -> list[str]:
    from qadwh_ray.index.store import IndexStore

    where = IndexStore(index).version_uri(result.version)
    return [f"index root: {index}", f"current version: {where}", f"manifest: {storage.join(where, 'manifest.json')}"]
