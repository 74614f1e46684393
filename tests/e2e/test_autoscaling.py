"""Autoscaling for real: Ray's autoscaler adds and removes nodes of a local multi-node cluster.

benchmarks/autoscaling_bench.py (its docstring has the details) starts a cluster of
ray-cluster.yaml's node types scaled down on Ray's fake multi-node provider, in its own
process and session (it is not the test session's cluster): a query burst makes Serve add
router replicas and the autoscaler add nodes, every query answers 200, and replicas and nodes go
away after; a Ray Train run whose workers need nodes that do not exist yet waits for them and
finishes. The script prints its measurements as JSON; they are checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(2400)


def test_the_autoscaler_adds_nodes_for_a_query_burst_and_for_waiting_training_and_removes_them_after():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "autoscaling_bench.py"), "--burst-s", "45", "--clients", "12"],
        cwd=REPO, capture_output=True, text=True, timeout=2300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    serve = out["serve"]
    assert serve["replicas_peak"] > 1, serve  # Serve scaled the router out under the burst ...
    assert serve["cpu_nodes_peak"] > serve["cpu_nodes_before"], serve  # ... onto nodes the autoscaler added
    assert serve["requests"] > 0 and serve["status_codes"] == {"200": serve["requests"]}, serve  # answered throughout
    assert serve["answers_after"] == 200  # and still answers once the extra replicas and nodes are gone

    train = out["train"]
    assert train["gpu_nodes_before"] == 0 and train["current_resources_would_refuse"], train  # no worker nodes at start
    # the autoscaler added both for the waiting run (a node it replaced can still be listed alive
    # for a few seconds until the GCS marks it dead, so a sample may count one more)
    assert train["gpu_nodes_peak"] >= 2, train
    assert train["steps"] == train["total_steps"] and train["checkpoint"], train
    assert out["leftover_processes"] == 0
