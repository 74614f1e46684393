"""The router's Prometheus metrics (Ray's metrics agent) and the callbacks that feed them; all optional."""

from __future__ import annotations

import logging

__all__ = ["RouterMetrics"]

log = logging.getLogger("ray.serve")

_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 15000]


def _instruments() -> dict:
    try:
        from ray.serve.metrics import Counter, Gauge, Histogram

        return {
            "requests": Counter("qadwh_requests", description="HTTP requests by endpoint and status", tag_keys=("endpoint", "status")),
            "latency": Histogram("qadwh_request_latency_ms", description="HTTP request latency (ms)", boundaries=_MS, tag_keys=("endpoint",)),
            "shard": Histogram("qadwh_shard_latency_ms", description="per-shard search round trip from the router (ms)", boundaries=_MS, tag_keys=("shard",)),
            "shard_search": Histogram("qadwh_shard_search_ms", description="search time inside a shard replica (ms)", boundaries=_MS, tag_keys=("shard",)),
            "encode": Histogram("qadwh_encode_latency_ms", description="query encoding round trip (ms)", boundaries=_MS),
            "retries": Counter("qadwh_backend_retries", description="retried shard/encoder calls", tag_keys=("target",)),
            "swaps": Counter("qadwh_index_swaps", description="index version switches"),
            "items": Gauge("qadwh_index_items", description="items in the active index version"),
            "active": Gauge("qadwh_active_version", description="1 for the index version this router replica serves (others age out)", tag_keys=("version",)),
            "log_position": Gauge("qadwh_log_position", description="update-log position this router replica searches"),
            "log_unfolded": Gauge("qadwh_log_unfolded", description="update-log changes after the active version's build (replayed by every replica)"),
            "log_lag": Gauge("qadwh_log_lag_s", description="seconds since this router replica last read the end of the update log"),
            "updates": Counter("qadwh_updates", description="item updates stored in the update log", tag_keys=("op",)),
            "batch": Histogram("qadwh_batch_queries", description="queries per POST /v1/search/batch", boundaries=[1, 2, 4, 8, 16, 32, 64, 128]),
        }
    except Exception as exc:  # noqa: BLE001 — metrics are optional
        log.warning("metrics disabled: %s", exc)
        return {}


class RouterMetrics:
    """Each method records one event; none ever fails a request."""

    def __init__(self, instruments: dict | None = None):
        self.m = _instruments() if instruments is None else instruments

    def retry(self, target: str) -> None:
        if self.m:
            self.m["retries"].inc(tags={"target": target})

    def encode(self, ms: float) -> None:
        if self.m:
            self.m["encode"].observe(ms)

    def swap(self, new, old) -> None:
        if self.m:
            self.m["swaps"].inc()

    def update(self, op: str) -> None:
        if self.m:
            self.m["updates"].inc(tags={"op": op})

    def batch(self, n: int) -> None:
        if self.m:
            self.m["batch"].observe(n)

    def shard_calls(self, shard_meta: list) -> None:
        if not self.m:
            return
        try:
            for x in shard_meta:
                self.m["shard"].observe(x["rtt_ms"], tags={"shard": str(x["shard"])})
                self.m["shard_search"].observe(x["search_ms"], tags={"shard": str(x["shard"])})
        except Exception as exc:  # noqa: BLE001 — metrics never fail a request
            log.debug("router: shard metrics: %s", exc)

    def log_state(self, position: int, seconds_since_read: float, st) -> None:
        """Gauges, re-set on every poll of the log (Ray drops a gauge series that is not re-set)."""
        if not self.m:
            return
        self.m["log_position"].set(position)
        self.m["log_lag"].set(seconds_since_read)
        if st is not None:
            self.m["log_unfolded"].set(max(0, position - st.log_base))
            self.m["items"].set(st.num_items)
            self.m["active"].set(1, tags={"version": st.version})

    def request(self, scope: dict, status: int, seconds: float) -> None:
        if not self.m:
            return
        endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
        self.m["requests"].inc(tags={"endpoint": endpoint, "status": str(status)})
        self.m["latency"].observe(seconds * 1e3, tags={"endpoint": endpoint})
