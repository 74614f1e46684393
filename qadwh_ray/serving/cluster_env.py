"""How HTTP reaches the router: Ray Serve's classic proxy actor, or its
throughput-optimised ingress (HAProxy in front of routers that run their own
HTTP servers, gRPC between deployments; docs/serving.md compares them).

The fast path is a cluster-wide Ray Serve setting read from the
environment of every Serve process (controller, proxies, replicas), so it is
chosen when the cluster starts: this module sets it for the local clusters our
commands start; a long-lived cluster gets the same variables in its node
environment (ray-cluster.yaml, cluster/*.yaml).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket

INGRESS_MODES = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"

# Ray Serve >= 2.56: HAProxy in front of the ingress replicas' own HTTP servers, gRPC between deployments.
HAPROXY_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def check_ingress(mode: str) -> str:
    if mode not in INGRESS_MODES:
        raise ValueError(f"unknown ingress {mode!r}: choose one of {', '.join(INGRESS_MODES)}")
    return mode


def ingress_env(mode: str) -> dict[str, str]:
    """The environment variables every Serve process of the cluster needs for ``mode``."""
    return dict(HAPROXY_ENV) if check_ingress(mode) == "haproxy" else {}


# Fixed by default (8404, 9101): two clusters on one host would collide.
HAPROXY_PORT_VARS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


# HAProxy binds only at serve.start, so its ports come from between Ray's worker ports and the ephemeral range.
RAY_WORKER_PORTS_END = 20000
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def _ephemeral_start() -> int:
    try:
        with open(EPHEMERAL_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems use higher ones


def _bindable(port: int) -> bool:
    with socket.socket() as s:  # no SO_REUSEADDR: free on every address, as HAProxy binds 0.0.0.0
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def listen_port(exclude: set[int] = frozenset(), attempts: int = 200) -> int:
    """A free TCP port for a listener that binds later: outside Ray's worker ports and
    the ephemeral range where possible (falls back to a kernel-chosen port)."""
    low, high = RAY_WORKER_PORTS_END, _ephemeral_start()
    rng = random.SystemRandom()
    if high - low >= 100:
        for _ in range(attempts):
            port = rng.randrange(low, high)
            if port not in exclude and _bindable(port):
                return port
    while True:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


@contextlib.contextmanager
def local_cluster_env(mode: str):
    """Hold ``mode``'s variables in this process's environment while ``ray.init``
    starts a local cluster inside the block (its processes inherit them); they are
    removed afterwards, so later child processes (jobs, other clusters) do not
    inherit this cluster's HAProxy ports. Variables the user set already win.
    ``ray.serve`` is imported first so that this driver keeps the classic
    settings: its own handles stay usable from synchronous code."""
    from ray import serve  # noqa: F401 — evaluates Serve's constants with the driver's current environment

    env = ingress_env(mode)
    if env:
        taken: set[int] = set()
        for var in HAPROXY_PORT_VARS:
            port = listen_port(exclude=taken)
            taken.add(port)
            env[var] = str(port)
    added = [key for key in env if key not in os.environ]
    for key in added:
        os.environ[key] = env[key]
    try:
        yield {key: os.environ[key] for key in env}
    finally:
        for key in added:
            os.environ.pop(key, None)


def inter_deployment_handle_options() -> dict:
    """Options for the deployment handles a replica calls, matching the Serve settings
    of the process it runs in. Handles passed to ``.bind()`` carry the transport default
    of the process that built the app (often a driver started before these variables
    were set), so under the fast ingress they would keep the slower object-store path
    instead of gRPC."""
    from ray.serve._private import constants  # Ray exposes the per-process setting nowhere else

    return {"_by_reference": not constants.RAY_SERVE_USE_GRPC_BY_DEFAULT}


def add_ingress_argument(parser) -> None:
    parser.add_argument(
        "--ingress", default=DEFAULT_INGRESS, choices=INGRESS_MODES,
        help="HTTP ingress of a local cluster this command starts: haproxy (Serve's throughput-optimised path, "
             "default) or proxy (Serve's classic proxy actor); a running cluster keeps the one it was started with",
    )
