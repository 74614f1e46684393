"""The README's main command, end to end in its own process and its own local Ray cluster:
train (Ray Train) → evaluate → index the 64,000-image database (Ray Data) →
serve (Ray Serve) → sample queries over HTTP → keep serving until interrupted.

Kept short with a few training steps; everything else is the real default path
(the whole database is indexed and served). The printed ``curl`` line is run
as printed.
"""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from serving_support import free_port

pytestmark = pytest.mark.timeout(900)


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _wait_for(q: queue.Queue, lines: list[str], needle: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"the main job exited before {needle!r}:\n" + "".join(lines[-60:]))
        lines.append(line)
        if needle in line:
            return
    raise AssertionError(f"no {needle!r} within {timeout_s:.0f} s:\n" + "".join(lines[-60:]))


def test_main_command_trains_indexes_serves_and_answers_the_printed_curl(tmp_path):
    from qadwh_ray.index.store import IndexStore

    out = tmp_path / "main"
    port = free_port()
    qadwh = os.path.join(os.path.dirname(sys.executable), "qadwh")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster
    cmd = [qadwh, "run", "--bits", "16", "--epochs", "1", "--set", "max_steps=3", "--out", str(out),
           "--port", str(port), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
    lines: list[str] = []
    try:
        _wait_for(q, lines, "serving until interrupted", timeout_s=800)
        text = "".join(lines)
        for stage in ("[1/4] train on Ray Train", "[2/4] evaluate", "[3/4] index the database on Ray Data", "[4/4] serve on Ray Serve"):
            assert stage in text
        assert "16 bits: QaDWH" in text  # the ordering line of the ablation table
        assert f"search page: http://127.0.0.1:{port}/" in text
        # a quiet console: stages, progress and results; Ray's messages and worker output in its log files
        assert "Ray's own logs and the workers' output: " in text
        noise = [ln for ln in lines if re.search(r"\((\w+ )?pid=\d+|\(raylet\)|^\s*(INFO|WARNING|DEBUG)\b|"
                                                  r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+\s+(INFO|WARNING|DEBUG)|"
                                                  r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\]|Traceback", ln)]
        assert not noise, "".join(noise[:20])

        # the index: the whole 64,000-image database, published
        store = IndexStore(str(out / "index"))
        manifest = store.read_manifest(store.current_version())
        assert manifest.num_items == 64000 and manifest.num_shards == 2 and manifest.code_bits == 16
        report = json.loads((out / "report" / "ablation.json").read_text())
        assert {m["method"] for m in report["metrics"]} >= {"NINH", "DWH", "QaDWH", "LSH (features)", "ITQ (features)"}

        # the printed curl example works as printed, against the freshly published version
        curl = next(line.strip() for line in lines if line.strip().startswith("curl -s -X POST"))
        res = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        answer = json.loads(res.stdout)
        assert answer["version"] == manifest.version and len(answer["ids"]) == 5
        assert answer["distances"] == sorted(answer["distances"])
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()

        # still serving until interrupted; Ctrl-C stops it cleanly
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        while (line := q.get(timeout=10)) is not None:
            lines.append(line)
        assert "shutting down the service" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
