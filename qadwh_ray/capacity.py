"""What the connected Ray cluster can give a job: the resources it has now, or, when an
autoscaler may add nodes, the most its node types can reach.

Jobs check their needs against this before they start: on a fixed-size cluster a job that
cannot fit fails at once with the reason; on an autoscaling cluster it fails only when even
the largest cluster could not hold it, and otherwise waits while the autoscaler adds the
nodes it asked for (a GPU worker group that scales from zero has no GPUs when the job starts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["Capacity", "cluster_capacity"]


@dataclass(frozen=True)
class Capacity:
    now: dict  # resource -> amount the cluster has at this moment
    autoscaling: bool  # an autoscaler may add nodes
    most: dict | None = None  # the autoscaler's reachable maximum; None where Ray does not report it

    def limit(self) -> dict | None:
        """The amounts a job must fit in; None: an autoscaler of unknown reach (only waiting tells)."""
        if not self.autoscaling:
            return self.now
        if self.most is None:
            return None
        return {k: max(float(self.now.get(k, 0.0)), float(self.most.get(k, 0.0))) for k in {*self.now, *self.most}}

    def reachable(self, name: str) -> float:
        """How much of ``name`` a job can count on getting (the current amount where the reach is unknown)."""
        limit = self.limit()
        return float((self.now if limit is None else limit).get(name, 0.0))

    def describe(self) -> str:
        if not self.autoscaling:
            return "the Ray cluster"
        return "the Ray cluster " + ("at its largest (autoscaling)" if self.most is not None else
                                     "(autoscaling, to a size Ray does not report)")


def _autoscaler_adds_nodes() -> bool:
    """Ray's autoscaler v1 publishes a report on every cluster; on a fixed-size one its node
    provider is the read-only one, whose node types are the nodes themselves."""
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return False
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    try:
        report = json.loads(raw).get("autoscaler_report") or {} if raw else {}
    except ValueError:
        return False
    types = report.get("node_type_mapping") or {}
    return any(kind != format_readonly_node_type(node) for node, kind in types.items())


def cluster_capacity() -> Capacity:
    """The connected cluster's :class:`Capacity` (``ray.init`` first).

    The maximum comes from the cluster config that Ray's autoscaler v2 reports (KubeRay runs v2
    with Ray 2.60), read the way Ray Train checks its own worker groups; autoscaler v1 reports
    no maximum, so a job there waits for its nodes without a fail-fast check.
    """
    import ray
    from ray._private.state import state

    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    most = state.get_max_resources_from_cluster_config()
    if most:
        return Capacity(now=now, autoscaling=True, most={k: float(v) for k, v in most.items()})
    return Capacity(now=now, autoscaling=_autoscaler_adds_nodes())
