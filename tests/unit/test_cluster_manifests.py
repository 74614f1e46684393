"""KubeRay manifests parse, carry their required fields, point at files that exist, and inline no secrets."""

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def _docs(name):
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _entrypoint_files_exist(entrypoint: str):
    words = shlex.split(entrypoint)
    assert words[0] == "python" and (ROOT / words[1]).is_file(), entrypoint
    for flag, value in zip(words, words[1:]):
        if flag == "--config":
            assert (ROOT / value).is_file(), value


def _rayjobs():
    jobs = [d for name in ("rayjob-train.yaml", "rayjob-index.yaml") for d in _docs(name)]
    for d in _docs("cronjob-nightly.yaml"):
        if d["kind"] == "ConfigMap":
            jobs.append(yaml.safe_load(d["data"]["rayjob.yaml"]))
    return jobs


@pytest.mark.parametrize("job", _rayjobs(), ids=lambda j: j["metadata"].get("name") or j["metadata"]["generateName"])
def test_rayjobs(job):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    _entrypoint_files_exist(spec["entrypoint"])
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    shared = yaml.safe_load((CLUSTER / "runtime-env.yaml").read_text())
    assert env["pip"] == shared["pip"] and env["env_vars"] == shared["env_vars"]
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["workerGroupSpecs"] and all(g["maxReplicas"] >= g["minReplicas"] for g in cluster["workerGroupSpecs"])


def test_rayservice_serves_the_projects_own_serve_config():
    (svc,) = _docs("rayservice.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    served = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert served == yaml.safe_load((CLUSTER / "serve.yaml").read_text()), "run scripts/make_rayservice.py"
    (app,) = served["applications"]
    module, func = app["import_path"].split(":")
    sys.path.insert(0, str(ROOT))
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))


def test_cronjob_submits_the_nightly_reindex():
    kinds = {d["kind"]: d for d in _docs("cronjob-nightly.yaml")}
    assert {"CronJob", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"} <= set(kinds)
    cron = kinds["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and len(cron["schedule"].split()) == 5
    job = yaml.safe_load(kinds["ConfigMap"]["data"]["rayjob.yaml"])
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("python jobs/nightly.py") and "--service-url" in entry and "--checkpoint" in entry
    assert any(r["resources"] == ["rayjobs"] and "create" in r["verbs"] for r in kinds["Role"]["rules"])


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")) + [ROOT / "ray-cluster.yaml"], ids=lambda p: p.name)
def test_no_inline_credentials(path):
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{12,}", text)
    for needle in ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id"):
        assert needle not in text
    for doc in yaml.safe_load_all(text):
        _no_literal_token(doc)


def _no_literal_token(node):
    if isinstance(node, dict):
        if node.get("name") in ("RAY_AUTH_TOKEN", "QADWH_SERVE_TOKEN"):
            assert "value" not in node, "tokens come from secrets, never inline"
        for v in node.values():
            _no_literal_token(v)
    elif isinstance(node, list):
        for v in node:
            _no_literal_token(v)


def test_serving_clusters_start_with_the_fast_ingress():
    """Serve reads its ingress settings from each node's environment at start: the RayService pods
    and ray-cluster.yaml's start commands carry them (qadwh_ray/serving/ingress.py)."""
    from qadwh_ray.serving.ingress import HAPROXY_ENV

    (svc,) = _docs("rayservice.yaml")
    spec = svc["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert all(env.get(k) == v for k, v in HAPROXY_ENV.items()), container["name"]
    cluster = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert all(f"{k}={v}" in command.split() for k, v in HAPROXY_ENV.items()), command
