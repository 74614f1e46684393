"""A command's console shows its own lines and the training workers' own lines only: Ray's
INFO messages, Serve's deployment messages and every other worker output go to the
session's log files, and the command says where.

Runs a small script in its own process and its own local Ray cluster (as `qadwh run`
does): Ray Data, a task, an actor and a Serve application, each printing and logging.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCRIPT = textwrap.dedent('''
    import logging, os
    from qadwh_ray.ray_logs import init_ray
    logs = init_ray(address="local", num_cpus=2, include_dashboard=False)
    print("STAGE logs at", logs, flush=True)
    os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:1: a native notice\\n")  # as Ray's C++ core writes
    import ray
    from ray import serve

    @ray.remote
    def task(x):
        print("worker stdout from a task")
        logging.getLogger("ray").warning("a worker warning")
        return x + 1

    assert ray.get(task.remote(1)) == 2

    @ray.remote
    def notice():  # as the raylet warns every driver when many worker processes start at once
        from ray._private.utils import push_error_to_driver
        push_error_to_driver(ray._private.worker.global_worker, "worker_pool_large", "WARNING: a cluster notice")

    ray.get(notice.remote())

    @ray.remote(num_cpus=0.1)
    class Trainer:  # a worker's console_print lines (the training metrics) are relayed, nothing else
        def run(self):
            from qadwh_ray.ray_logs import console_print

            logging.getLogger("ray.train").warning("a train worker warning")
            print("worker stdout from an actor")
            console_print("epoch 1  step 3  loss 0.5000")
            return True

    w = Trainer.remote()
    assert ray.get(w.run.remote())
    import time
    time.sleep(3)  # the log monitor relays worker output about once a second
    print("STAGE train done", flush=True)
    ds = ray.data.range(100).map(lambda r: (print("worker stdout from ray data") or r))
    assert ds.count() == 100
    print("STAGE data done", flush=True)

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
    class Echo:
        def __call__(self, request):
            print("replica stdout")
            return "ok"

    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["PORT"])})
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    from qadwh_ray.ray_logs import quiet_ray_console
    quiet_ray_console()
    import urllib.request
    assert urllib.request.urlopen(f"http://127.0.0.1:{os.environ['PORT']}/echo", timeout=60).read() == b"ok"
    serve.delete("echo")  # as `qadwh run` stops its service
    print("STAGE serve done", flush=True)
    ray.shutdown()
''')


def test_console_shows_only_the_commands_lines(tmp_path):
    from serving_support import free_port

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PORT"] = str(free_port())
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 0, "\n".join(lines[-40:])
    noise = [ln for ln in lines if not ln.startswith("STAGE ") and ln != "epoch 1  step 3  loss 0.5000"]
    assert not noise, "\n".join(noise[:30])
    assert "epoch 1  step 3  loss 0.5000" in lines  # a training worker's own line reaches the console
    log_dir = next(ln.split(" at ", 1)[1] for ln in lines if ln.startswith("STAGE logs at"))
    assert os.path.isdir(log_dir)
    with open(os.path.join(log_dir, "driver.log")) as f:
        driver_log = f.read()
    assert "Started Serve" in driver_log  # Serve's INFO lines land here, not on the console
    assert "a cluster notice" in driver_log  # and the cluster's notices to the driver
    with open(os.path.join(log_dir, "driver-native.err")) as f:
        assert "a native notice" in f.read()
    worker_out = "".join(open(os.path.join(log_dir, n), errors="replace").read() for n in os.listdir(log_dir) if n.startswith("worker-") and n.endswith(".out"))
    assert "worker stdout from a task" in worker_out
