"""The nightly pipeline's failure paths: a service that cannot be reached stops it
before any work; a service that does not move to the new version gets CURRENT
moved back, so the previous version keeps serving and the pointer agrees.

The "service" is a real HTTP server on 127.0.0.1 that keeps answering
``GET /v1/index`` from the previous version (what a stuck deployment does).
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from index_helpers import save_model

from qadwh_ray.index import IndexStore
from qadwh_ray.index_build import BuildOptions, CheckOptions, reindex
from qadwh_ray.pipelines.nightly import NightlyFailed, NightlyOptions, run_nightly

pytestmark = pytest.mark.ray

FAST = dict(block_rows=200, batch_size=200, actors=1, shards=2)
CHECKS = dict(map_queries=100, sample_queries=4, k=20)


class _StuckService:
    """Answers /v1/index with a fixed version, like a service that never swaps."""

    def __init__(self, version: str):
        answer = json.dumps({"version": version}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200 if self.path == "/v1/index" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer if self.path == "/v1/index" else b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_nightly_that_the_service_does_not_follow_moves_current_back(ray_cluster, tmp_path):
    root = str(tmp_path / "index")
    first = save_model(tmp_path / "a" / "model.pt", seed=0)
    v1 = reindex(str(first), "fashion-augmented:400", root, BuildOptions(**FAST), CheckOptions(**CHECKS)).version
    store = IndexStore(root)

    # unreachable service: refused before anything is built
    dead = _StuckService(v1)
    dead_url = dead.url
    dead.close()
    with pytest.raises(NightlyFailed) as failed:
        run_nightly(NightlyOptions(index=root, source="fashion-augmented:400", checkpoint=str(first), service_url=dead_url,
                                   build=BuildOptions(**FAST), checks=CheckOptions(**CHECKS)))
    assert failed.value.stage == "service" and "cannot reach the service" in failed.value.reason
    assert store.list_versions() == [v1] and not store.list_staged()

    # the service keeps answering from v1: the new version is published, then CURRENT moves back to v1
    stuck = _StuckService(v1)
    try:
        second = save_model(tmp_path / "b" / "model.pt", seed=1)
        with pytest.raises(NightlyFailed) as failed:
            run_nightly(NightlyOptions(index=root, source="fashion-augmented:400", checkpoint=str(second),
                                       service_url=stuck.url, swap_timeout_s=2, build=BuildOptions(**FAST),
                                       checks=CheckOptions(**CHECKS, map_tolerance=1.0)))
    finally:
        stuck.close()
    assert failed.value.stage == "swap" and f"CURRENT moved back to {v1}" in failed.value.reason
    assert store.current_version() == v1
    assert len(store.list_versions()) == 2  # the new version stays on storage for a later publish
