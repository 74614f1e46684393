"""Typed arguments of the serving application (``build_app(args)``).

The same model validates the ``args:`` block of a Serve config file
(``cluster/serve.yaml``), the options of ``qadwh serve`` and the ``user_config``
that ``serve deploy`` pushes to running replicas. Unknown keys are refused
(docs/architecture.md, "Conventions"), so a typo in a config file is an error,
not a silent default.

Defaults fit the 2-core test machine: every replica asks for a fraction of a
CPU, and the shard deployments autoscale between ``shard.min_replicas`` and
``shard.max_replicas``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DeploymentArgs", "EncoderArgs", "ShardArgs", "UpdatesArgs", "AppArgs", "RuntimeConfig", "DEFAULT_TOKEN_ENV",
           "INDEX_ENV"]

DEFAULT_TOKEN_ENV = "QADWH_SERVE_TOKEN"
INDEX_ENV = "QADWH_INDEX_URI"  # the index root when args give none (as for `qadwh index --out`)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentArgs(_Strict):
    """Resources and autoscaling of one deployment (every replica identical)."""

    num_cpus: float = Field(0.25, ge=0, description="logical CPUs per replica (fractions are fine)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    initial_replicas: Optional[int] = Field(None, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0, description="autoscaling target of in-flight requests per replica")
    max_ongoing_requests: int = Field(64, ge=1, description="requests one replica accepts at once (the rest queue)")
    upscale_delay_s: float = Field(2.0, ge=0)
    downscale_delay_s: float = Field(15.0, ge=0)
    look_back_period_s: float = Field(30.0, gt=0, description="autoscaling averages over this window (> the metrics push interval, 10 s by default)")
    env_vars: Dict[str, str] = Field(
        default_factory=dict,
        description="environment of the replicas (runtime_env.env_vars; visible in the dashboard: never secrets)",
    )

    @model_validator(mode="after")
    def _bounds(self) -> "DeploymentArgs":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self

    def autoscaling_config(self) -> dict:
        cfg = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
        }
        if self.initial_replicas is not None:
            cfg["initial_replicas"] = self.initial_replicas
        return cfg

    def actor_options(self, gpus: float | None = None) -> dict:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        g = self.num_gpus if gpus is None else gpus
        if g > 0:
            opts["num_gpus"] = g
        if self.env_vars:
            opts["runtime_env"] = {"env_vars": dict(self.env_vars)}
        return opts


class EncoderArgs(DeploymentArgs):
    """The query encoder: ``@serve.batch`` settings and torch threads."""

    num_gpus: Optional[float] = Field(  # type: ignore[assignment]
        None, ge=0, description="GPUs per encoder replica; None = a quarter GPU when the cluster has GPUs, else 0"
    )
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.004, ge=0)
    max_concurrent_batches: int = Field(1, ge=1)
    torch_threads: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _batching(self) -> "EncoderArgs":
        need = self.max_batch_size * self.max_concurrent_batches
        if self.max_ongoing_requests < need:
            raise ValueError(
                f"encoder.max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size x "
                f"max_concurrent_batches ({need}) or batches never fill (a batch only holds requests the replica has accepted)"
            )
        return self


class ShardArgs(DeploymentArgs):
    """One deployment per index shard (all shards share these settings)."""

    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    search_threads: int = Field(1, ge=1, description="numba threads per search in one replica")
    device: str = Field("cpu", description="'cpu', 'auto' (CUDA when the replica has a GPU) or 'cuda'")
    max_versions_loaded: int = Field(3, ge=2, description="index versions a replica keeps in memory (>= 2 for swaps)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "auto", "cuda") and not v.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'auto', 'cuda' or 'cuda:N', got {v!r}")
        return v


class RouterArgs(DeploymentArgs):
    max_ongoing_requests: int = Field(256, ge=1)
    target_ongoing_requests: float = Field(32.0, gt=0)
    max_batch: int = Field(32, ge=1, description="queries per coalesced shard call")
    # 1: Serve's handle routing and gRPC cost per call, so fewer, larger calls cost less per query
    max_inflight_batches: int = Field(1, ge=1, description="coalesced calls in flight at once; new queries wait for a slot")


class UpdatesArgs(_Strict):
    """Live updates (``PUT``/``DELETE /v1/items/{id}``) through the index's update log."""

    poll_interval_s: float = Field(0.25, gt=0, description="how often replicas look for new changes in the update log")
    max_batch: int = Field(64, ge=1, description="changes written together as one log segment")


class AppArgs(_Strict):
    """Everything ``build_app`` needs. Only ``index`` is required."""

    index: str = Field(..., min_length=1, description=f"index root URI (local path or s3://); null: ${INDEX_ENV}")
    wait_for_index_s: float = Field(
        0.0, ge=0, description="at start, wait this long for the index to have a version (a service deployed before its first index)"
    )
    version: Optional[str] = Field(None, description="pin this index version; None = follow the CURRENT pointer")
    checkpoint: Optional[str] = Field(
        None, description="query encoder checkpoint; None = the one named in each index version's manifest"
    )
    num_shards: Optional[int] = Field(None, ge=1, description="shard deployments; None = the served version's shard count")
    default_k: int = Field(10, ge=1)
    max_k: int = Field(1000, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4_000_000, ge=64, description="largest decoded image (width x height)")
    auth_token_env: Optional[str] = Field(DEFAULT_TOKEN_ENV, description="environment variable holding the bearer token")
    auth_token_file: Optional[str] = Field(None, description="file holding the bearer token (a mounted secret)")
    require_auth: bool = Field(False, description="refuse to start without a token")
    poll_interval_s: float = Field(5.0, gt=0, description="how often the index CURRENT pointer is checked")
    swap_grace_s: float = Field(20.0, ge=0, description="a replaced version stays loaded this long after its last use")
    request_deadline_s: float = Field(15.0, gt=0, description="retry window for a shard or encoder that fails")
    attempt_timeout_s: float = Field(10.0, gt=0, description="one shard/encoder call's limit before it is retried")
    page: bool = Field(True, description="serve the search page at /")
    images_from_sources: bool = Field(True, description="serve item images when the index knows their source")
    max_batch_queries: int = Field(64, ge=1, description="queries one POST /v1/search/batch may hold")
    updates: UpdatesArgs = Field(default_factory=UpdatesArgs)
    router: RouterArgs = Field(default_factory=RouterArgs)
    encoder: EncoderArgs = Field(default_factory=EncoderArgs)
    shard: ShardArgs = Field(default_factory=ShardArgs)

    @field_validator("version")
    @classmethod
    def _version(cls, v: Optional[str]) -> Optional[str]:
        if v in (None, "", "current", "CURRENT"):
            return None
        from qadwh_ray.index.format import validate_version_name

        return validate_version_name(v)

    @model_validator(mode="after")
    def _k(self) -> "AppArgs":
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        return self

    @classmethod
    def parse(cls, args: "AppArgs | dict | None") -> "AppArgs":
        if isinstance(args, AppArgs):
            return args
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise TypeError(f"app args must be a dict or AppArgs, got {type(args).__name__}")
        if args.get("index") is None:
            if not os.environ.get(INDEX_ENV):
                raise ValueError(f"serving needs the index root: args.index, or ${INDEX_ENV} in the replicas' environment")
            args = {**args, "index": os.environ[INDEX_ENV]}
        return cls.model_validate(args)

    def runtime(self) -> "RuntimeConfig":
        return RuntimeConfig(version=self.version)


class RuntimeConfig(_Strict):
    """The ``user_config`` of every deployment: what may change without restarting replicas.

    ``serve deploy`` with a new ``user_config`` calls ``reconfigure`` on every
    running replica (router, encoder, shards) in place.
    """

    version: Optional[str] = Field(None, description="pinned index version; None = follow CURRENT")

    @field_validator("version")
    @classmethod
    def _version(cls, v: Optional[str]) -> Optional[str]:
        return AppArgs._version(v)

    @classmethod
    def parse(cls, cfg: Any) -> "RuntimeConfig":
        if cfg is None:
            return cls()
        if isinstance(cfg, RuntimeConfig):
            return cfg
        return cls.model_validate(dict(cfg))


def read_token(args: AppArgs) -> Optional[str]:
    """The bearer token from the secret file (preferred) or the environment; None when auth is off."""
    if args.auth_token_file:
        try:
            with open(args.auth_token_file, "r", encoding="utf-8") as f:
                tok = f.read().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read the auth token file {args.auth_token_file}: {exc}") from exc
        if not tok:
            raise RuntimeError(f"auth token file {args.auth_token_file} is empty")
        return tok
    if args.auth_token_env:
        tok = os.environ.get(args.auth_token_env, "").strip()
        if tok:
            return tok
    if args.require_auth:
        raise RuntimeError(
            "require_auth is set but no token is configured "
            f"(set ${args.auth_token_env or DEFAULT_TOKEN_ENV} or auth_token_file)"
        )
    return None
