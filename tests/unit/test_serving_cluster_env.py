"""The ingress choice: its environment variables, held only while a local cluster starts,
with free HAProxy ports, and a user's own settings winning."""

import os
import socket

import pytest

from qadwh_ray.serving import cluster_env
from qadwh_ray.serving.cluster_env import HAPROXY_ENV, HAPROXY_PORT_VARS, check_ingress, ingress_env, listen_port, local_cluster_env


def test_modes_and_their_environment():
    assert ingress_env("haproxy") == HAPROXY_ENV
    assert HAPROXY_ENV == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert ingress_env("proxy") == {}
    with pytest.raises(ValueError, match="unknown ingress 'nginx'"):
        check_ingress("nginx")


def test_variables_are_held_for_the_start_only_and_the_users_win(monkeypatch):
    for key in (*HAPROXY_ENV, *HAPROXY_PORT_VARS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the operator turned HAProxy off
    with local_cluster_env("haproxy") as applied:
        assert applied["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and applied["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
        assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        ports = [int(os.environ[var]) for var in HAPROXY_PORT_VARS]
        # free ports between Ray's worker ports and the ephemeral range, not 8404/9101
        assert len(set(ports)) == 2 and all(cluster_env.RAY_WORKER_PORTS_END <= p < cluster_env._ephemeral_start() for p in ports)
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ and not any(v in os.environ for v in HAPROXY_PORT_VARS)
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


def test_proxy_mode_sets_nothing(monkeypatch):
    for key in (*HAPROXY_ENV, *HAPROXY_PORT_VARS):
        monkeypatch.delenv(key, raising=False)
    with local_cluster_env("proxy") as applied:
        assert applied == {} and not any(key in os.environ for key in (*HAPROXY_ENV, *HAPROXY_PORT_VARS))


def test_listen_ports_avoid_ray_worker_and_ephemeral_ports_and_taken_ones(monkeypatch):
    with open(cluster_env.EPHEMERAL_RANGE_FILE) as f:
        ephemeral_start = int(f.read().split()[0])
    for _ in range(50):
        assert cluster_env.RAY_WORKER_PORTS_END <= listen_port() < ephemeral_start
    # a port in use on any address is never handed out, nor an excluded one
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", listen_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(cluster_env.random.SystemRandom, "randrange", lambda self, lo, hi: taken)
        port = listen_port(attempts=5)  # every candidate is taken: the kernel picks one
        assert port != taken and port > 0
        assert listen_port(exclude={port}, attempts=0) != port
