"""The ingress choice: its environment variables, and that a user's own settings win."""

import pytest

from qadwh_ray.serving.ingress import HAPROXY_ENV, check_ingress, ingress_env, prepare_local_cluster_env


def test_modes_and_their_environment():
    assert ingress_env("haproxy") == HAPROXY_ENV
    assert HAPROXY_ENV == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert ingress_env("proxy") == {}
    with pytest.raises(ValueError, match="unknown ingress 'nginx'"):
        check_ingress("nginx")


def test_prepare_sets_missing_variables_and_keeps_the_users(monkeypatch):
    for key in HAPROXY_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the operator turned HAProxy off
    applied = prepare_local_cluster_env("haproxy")
    assert applied == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    import os

    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


def test_proxy_mode_sets_nothing(monkeypatch):
    for key in HAPROXY_ENV:
        monkeypatch.delenv(key, raising=False)
    assert prepare_local_cluster_env("proxy") == {}
    import os

    assert not any(key in os.environ for key in HAPROXY_ENV)
