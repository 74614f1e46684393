"""The Kubernetes deployment (cluster/) as `kubectl apply -k` would send it.

Each deployment (cluster/ = the GPU overlay, cluster/overlays/cpu, cluster/overlays/gpu) is
rendered with kustomize (the one in kubectl, from scripts/setup.sh) and checked: RayJobs and
RayServices against the KubeRay v1.7.0 CRD schemas (tests/fixtures/kuberay-v1.7.0, unknown
fields refused), core kinds against the Kubernetes schemas (kubernetes-validate, strict); no
loopback dashboard; token auth through authOptions; every referenced ServiceAccount, Secret,
ConfigMap, Role and RayJob template defined; every entry point exists and its arguments parse
with the settings substituted as the submitter's shell does; images pinned.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
FIXTURES = ROOT / "tests" / "fixtures" / "kuberay-v1.7.0"
APP_DIR = "/home/ray/qadwh"  # the Containerfile's WORKDIR: jobs/ and configs/ live there
DEPLOYMENTS = {"default": CLUSTER, "cpu": CLUSTER / "overlays" / "cpu", "gpu": CLUSTER / "overlays" / "gpu"}
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest Kubernetes the docs name, and the newest schemas at hand
PROJECT_IMAGE = re.compile(r"[\w.\-/:]+/qadwh-ray:[\w.\-]+(@sha256:[0-9a-f]{64})?")

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl (with its kustomize) is needed to render cluster/: run scripts/setup.sh")
    return found


@functools.lru_cache(maxsize=None)
def _render_dir(tmp: str) -> str:
    """A copy of cluster/ with the two token files a site creates (cluster/settings/secrets/README.md)."""
    dst = Path(tmp) / "cluster"
    shutil.copytree(CLUSTER, dst, ignore=shutil.ignore_patterns("ray-auth-token", "serve-token"))
    (dst / "settings" / "secrets" / "ray-auth-token").write_text("test-ray-token\n")
    (dst / "settings" / "secrets" / "serve-token").write_text("test-serve-token\n")
    return str(dst)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    base = _render_dir(str(tmp_path_factory.mktemp("render")))
    out = {}
    for name, path in DEPLOYMENTS.items():
        target = Path(base) / path.relative_to(CLUSTER)
        proc = subprocess.run([_kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kustomize {path}: {proc.stderr}"
        out[name] = [d for d in yaml.load_all(proc.stdout, Loader=_Loader) if d]
    return out


def _of(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def _named(objs, kind, name):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found[0] if found else None


def _ray_clusters(objs):
    """(owner, RayClusterSpec) of every RayService and RayJob."""
    for o in objs:
        if o["kind"] == "RayService":
            yield o["metadata"]["name"], o["spec"]["rayClusterConfig"]
        elif o["kind"] == "RayJob":
            yield o["metadata"]["name"], o["spec"]["rayClusterSpec"]


def _pod_specs(obj):
    """Every pod spec inside an object (Ray head/worker groups, submitters, CronJob pods)."""
    if obj["kind"] == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for _, cluster in _ray_clusters([obj]):
        yield cluster["headGroupSpec"]["template"]["spec"]
        for g in cluster.get("workerGroupSpecs", []):
            yield g["template"]["spec"]
    if obj["kind"] == "RayJob" and obj["spec"].get("submitterPodTemplate"):
        yield obj["spec"]["submitterPodTemplate"]["spec"]


def _containers(obj):
    for pod in _pod_specs(obj):
        yield from pod.get("containers", []) + pod.get("initContainers", [])


# ----------------------------------------------------------------------------- schemas


@functools.lru_cache(maxsize=None)
def _crd_schema(kind: str) -> dict:
    with gzip.open(FIXTURES / f"ray.io_{kind.lower()}s.yaml.gz", "rt") as f:
        crd = yaml.load(f, Loader=_Loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def _strict(node):
    """Unknown fields refused wherever the schema lists the known ones (structural schemas prune them)."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_kuberay_objects_match_the_v1_7_crds_with_no_unknown_fields(rendered, deployment):
    objs = [o for o in rendered[deployment] if o["apiVersion"] == "ray.io/v1"]
    assert {o["kind"] for o in objs} == {"RayService", "RayJob"}
    for o in objs:
        errors = sorted(jsonschema.Draft7Validator(_crd_schema(o["kind"])).iter_errors(o), key=lambda e: list(e.path))
        assert not errors, f"{o['kind']} {o['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_core_kinds_match_the_kubernetes_schemas(rendered, deployment, k8s):
    import kubernetes_validate

    core = [o for o in rendered[deployment] if o["apiVersion"] != "ray.io/v1"]
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap", "Secret", "CronJob"} <= {
        o["kind"] for o in core}
    for o in core:
        try:
            kubernetes_validate.validate(o, k8s, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{o['kind']} {o['metadata']['name']} (Kubernetes {k8s}): {exc.message}") from None


def test_the_pod_templates_kuberay_runs_are_valid_pod_specs(rendered):
    """KubeRay copies these into Pods: check them against the core PodSpec schema too."""
    import kubernetes_validate

    for o in rendered["default"]:
        for spec in _pod_specs(o):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
            kubernetes_validate.validate(pod, K8S_VERSIONS[0], strict=True)


# ----------------------------------------------------------------- what KubeRay needs to run it


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_the_dashboard_is_reachable_inside_the_cluster(rendered, deployment):
    """KubeRay binds it to 0.0.0.0 only when dashboard-host is absent; the operator and the job
    submitter reach it through the head Service."""
    for owner, cluster in _ray_clusters(rendered[deployment]):
        host = cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0")
        assert host == "0.0.0.0", f"{owner}: dashboard-host {host}"
    text = yaml.safe_dump_all(rendered[deployment])
    assert "127.0.0.1" not in text and "localhost" not in text


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_token_auth_through_auth_options(rendered, deployment):
    objs = rendered[deployment]
    for owner, cluster in _ray_clusters(objs):
        auth = cluster.get("authOptions") or {}
        assert auth.get("mode") == "token", owner
        secret = _named(objs, "Secret", auth["secretName"])
        assert secret is not None and "auth_token" in secret["data"], f"{owner}: Secret {auth['secretName']} with key auth_token"
    for o in objs:  # KubeRay injects the token where it is needed; a hand-wired one would disagree with it
        for c in _containers(o):
            names = {e["name"] for e in c.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, f"{o['metadata']['name']}/{c['name']}"


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_every_referenced_object_is_defined(rendered, deployment):
    objs = rendered[deployment]
    ns = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert ns == {"qadwh"} and _named(objs, "Namespace", "qadwh") is not None

    def need(kind, name, key=None, where=""):
        obj = _named(objs, kind, name)
        assert obj is not None, f"{where}: {kind} {name} is not defined"
        if key is not None:
            assert key in (obj.get("data") or {}), f"{where}: {kind} {name} has no key {key}"

    for o in objs:
        where = f"{o['kind']} {o['metadata']['name']}"
        for pod in _pod_specs(o):
            if pod.get("serviceAccountName"):
                need("ServiceAccount", pod["serviceAccountName"], where=where)
            for v in pod.get("volumes", []):
                if "configMap" in v:
                    need("ConfigMap", v["configMap"]["name"], where=where)
                if "secret" in v:
                    need("Secret", v["secret"]["secretName"], where=where)
            for c in pod.get("containers", []):
                for src in c.get("envFrom", []):
                    if "configMapRef" in src:
                        need("ConfigMap", src["configMapRef"]["name"], where=where)
                    if "secretRef" in src:
                        need("Secret", src["secretRef"]["name"], where=where)
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {})
                    if "secretKeyRef" in ref:
                        need("Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"], where)
                    if "configMapKeyRef" in ref:
                        need("ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"], where)
        if o["kind"] == "RoleBinding":
            need(o["roleRef"]["kind"], o["roleRef"]["name"], where=where)
            for s in o["subjects"]:
                need(s["kind"], s["name"], where=where)
        if o["kind"] == "CronJob":  # run-rayjob.sh TEMPLATE...: the script and each RayJob template
            (c,) = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
            script, *templates = c["command"][1:]
            mount = c["volumeMounts"][0]
            volume = next(v for v in o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
            need("ConfigMap", volume["configMap"]["name"], Path(script).name, where)
            assert templates and all(_named(objs, "RayJob", t) for t in templates), f"{where}: {templates}"


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_network_policies_select_the_ray_pods_and_open_the_dashboard_to_the_operator_and_submitters(rendered, deployment):
    objs = rendered[deployment]
    head = _named(objs, "NetworkPolicy", "qadwh-ray-head")
    workers = _named(objs, "NetworkPolicy", "qadwh-ray-workers")
    for owner, cluster in _ray_clusters(objs):  # KubeRay adds ray.io/node-type; the rest comes from our templates
        labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
        selector = {k: v for k, v in head["spec"]["podSelector"]["matchLabels"].items() if not k.startswith("ray.io/")}
        assert selector.items() <= labels.items(), owner
    dashboard = [r for r in head["spec"]["ingress"] if any(p["port"] == 8265 for p in r.get("ports", []))]
    assert len(dashboard) == 1 and all("from" in r for r in dashboard)
    submitters = [o["spec"]["submitterPodTemplate"]["metadata"]["labels"] for o in _of(objs, "RayJob")]
    peers = [p["podSelector"]["matchLabels"] for p in dashboard[0]["from"]]
    assert all(any(peer.items() <= s.items() for peer in peers) for s in submitters)
    assert any(p.get("app.kubernetes.io/name") == "kuberay-operator" for p in peers)
    assert workers["spec"]["policyTypes"] == ["Ingress"]


# ----------------------------------------------------------------------------- the jobs


def _settings(objs, configmap: str) -> dict:
    return dict(_named(objs, "ConfigMap", configmap)["data"])


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _substitute(entrypoint: str, env: dict) -> str:
    """``$NAME``/``${NAME}`` as the submitter's shell expands them; an unset name is an error here."""
    missing = [a or b for a, b in _VAR.findall(entrypoint) if (a or b) not in env]
    assert not missing, f"{missing} not in the settings ConfigMap: {entrypoint}"
    return _VAR.sub(lambda m: env[m.group(1) or m.group(2)], entrypoint)


def _parse(script: str, args: list[str]) -> argparse.Namespace:
    """The job script's own parser (jobs/*.py builds it from these)."""
    if script == "jobs/train.py":
        from qadwh_ray.ray_train.cli import add_train_arguments

        return add_train_arguments(argparse.ArgumentParser(prog=script, exit_on_error=False)).parse_args(args)
    if script == "jobs/nightly.py":
        from qadwh_ray.pipelines.cli import add_nightly_arguments

        return add_nightly_arguments(argparse.ArgumentParser(prog=script, exit_on_error=False)).parse_args(args)
    if script == "jobs/index.py":
        from qadwh_ray.index_build.cli import build_parser

        return build_parser().parse_args(["index", *args])
    if script == "jobs/evaluate.py":
        from qadwh_ray.cli import build_parser

        return build_parser().parse_args(["evaluate", *args])
    raise AssertionError(f"no parser known for {script}")


def _in_repo(path: str) -> Path:
    assert path.startswith(APP_DIR + "/"), f"{path} is not inside the image's {APP_DIR}"
    return ROOT / path[len(APP_DIR) + 1:]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_every_entrypoint_exists_and_its_arguments_parse(rendered, deployment):
    from qadwh_ray.training.config import load_config

    objs = rendered[deployment]
    jobs = _of(objs, "RayJob")
    assert {j["metadata"]["name"] for j in jobs} == {"qadwh-train", "qadwh-index", "qadwh-nightly"}
    for job in jobs:
        (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
        env = {}
        for src in submitter["envFrom"]:
            env.update(_settings(objs, src["configMapRef"]["name"]))
        words = shlex.split(_substitute(job["spec"]["entrypoint"], env))
        assert words[0] == "python", job["spec"]["entrypoint"]
        script = _in_repo(words[1])
        assert script.is_file(), script
        args = _parse(str(script.relative_to(ROOT)), words[2:])
        config = getattr(args, "config", None) or getattr(args, "train_config", None)
        if config:
            overrides = getattr(args, "set", None) or getattr(args, "train_set", None) or []
            cfg = load_config(str(_in_repo(config)), overrides)  # unknown keys and bad values are errors
            if job["metadata"]["name"] == "qadwh-train":
                workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
                assert cfg.num_workers == sum(g["replicas"] for g in workers)
                assert cfg.use_gpu == (deployment != "cpu")
        data = getattr(args, "data", None) or getattr(args, "source", None)
        assert data == env["QADWH_DATA"], f"{job['metadata']['name']} reads {data}"  # one dataset for every stage
        if hasattr(args, "out"):
            assert args.out == env["QADWH_INDEX_URI"]


def test_one_settings_map_names_every_location(rendered):
    objs = rendered["default"]
    env = _settings(objs, "qadwh-settings")
    for key in ("QADWH_DATA", "QADWH_STORAGE", "QADWH_RUN_NAME", "QADWH_INDEX_URI", "QADWH_SERVICE_URL"):
        assert env.get(key), key
    (svc,) = _of(objs, "RayService")
    served = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (app,) = served["applications"]
    assert app["args"]["index"] is None  # the replicas read $QADWH_INDEX_URI from the same ConfigMap
    assert env["QADWH_SERVICE_URL"].startswith(f"http://{svc['metadata']['name']}-serve-svc:")  # KubeRay's Service name
    for owner, cluster in _ray_clusters(objs):
        for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            (c,) = spec["template"]["spec"]["containers"]
            assert {"configMapRef": {"name": "qadwh-settings"}} in c["envFrom"], owner


def test_gpu_overlays_put_the_job_workers_on_gpus_and_the_cpu_overlay_does_not(rendered):
    for name in ("default", "gpu", "cpu"):
        objs = rendered[name]
        gpu = name != "cpu"
        assert _settings(objs, "qadwh-settings")["QADWH_USE_GPU"] == str(gpu).lower()
        for job in _of(objs, "RayJob"):
            for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
                limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
                assert (limits.get("nvidia.com/gpu") == "1") == gpu, (name, job["metadata"]["name"])
        (svc,) = _of(objs, "RayService")
        for g in svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            assert "nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_job_workers_exist_before_the_job_starts_and_cannot_vanish_under_it(rendered, deployment):
    for job in _of(rendered[deployment], "RayJob"):
        spec = job["spec"]
        assert spec["suspend"] is True and spec["shutdownAfterJobFinishes"] is True  # templates, run as copies
        cluster = spec["rayClusterSpec"]
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for g in cluster["workerGroupSpecs"]:
            assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] >= 1, job["metadata"]["name"]
        assert not spec.get("runtimeEnvYAML"), "nothing is installed at run time: the image has it all"
    (svc,) = _of(rendered[deployment], "RayService")
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True and cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"]


def test_the_cronjob_waits_for_its_rayjob_and_keeps_few(rendered):
    objs = rendered["default"]
    nightly = _named(objs, "CronJob", "qadwh-nightly")["spec"]
    assert nightly["concurrencyPolicy"] == "Forbid" and len(nightly["schedule"].split()) == 5
    assert nightly["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert _named(objs, "CronJob", "qadwh-bootstrap")["spec"]["suspend"] is True
    role = _named(objs, "Role", "qadwh-rayjob-runner")
    verbs = {v for r in role["rules"] if "rayjobs" in r["resources"] for v in r["verbs"]}
    assert {"get", "create", "list", "delete"} <= verbs
    script = (CLUSTER / "base" / "run-rayjob.sh").read_text()
    assert subprocess.run(["bash", "-n", str(CLUSTER / "base" / "run-rayjob.sh")]).returncode == 0
    # the status fields it polls exist in the RayJob schema
    status = _crd_schema("RayJob")["properties"]["status"]["properties"]
    for field in re.findall(r"\.status\.(\w+)", script):
        assert field in status, field


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_images_are_pinned_and_every_ray_pod_runs_the_project_image(rendered, deployment):
    import ray

    for o in rendered[deployment]:
        for c in _containers(o):
            image = c["image"]
            name, _, tag = image.split("@")[0].rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, f"{o['metadata']['name']}: {image} is not pinned"
            if o["kind"] in ("RayJob", "RayService"):
                assert PROJECT_IMAGE.fullmatch(image), f"{o['metadata']['name']}/{c['name']}: {image}"
                assert tag.endswith("-gpu") == (deployment != "cpu"), image
    assert ray.__version__ == "2.60.0"  # the Containerfile's rayproject/ray base carries the same Ray


def test_the_containerfile_builds_from_the_pinned_ray_images_and_installs_the_package():
    import ray

    text = (ROOT / "Containerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-py311" in text
    build = (ROOT / "scripts" / "build_image.sh").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311-gpu" in build
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.M):
        assert (ROOT / src).exists(), src
    assert re.search(r"pip install [^\n]*--no-cache-dir \.$", text, re.M)
    assert f"WORKDIR {APP_DIR}" in text
    launcher = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    gpu_image = yaml.safe_load((CLUSTER / "image" / "gpu" / "kustomization.yaml").read_text())["images"][0]
    assert launcher["docker"]["image"] == f"{gpu_image['newName']}:{gpu_image['newTag']}"


# ----------------------------------------------------------------------------- sources


def test_the_base_manifests_are_what_the_generator_writes():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_cluster_manifests
    finally:
        sys.path.pop(0)
    for name, text in make_cluster_manifests.manifests().items():
        assert (CLUSTER / "base" / name).read_text() == text, f"run scripts/make_cluster_manifests.py ({name})"


def test_the_service_serves_the_projects_own_serve_config(rendered):
    (svc,) = _of(rendered["default"], "RayService")
    served = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert served == yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    (app,) = served["applications"]
    module, func = app["import_path"].split(":")
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))
    from qadwh_ray.serving.config import AppArgs

    assert AppArgs.model_fields.keys() >= app["args"].keys()


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.env")) + [ROOT / "ray-cluster.yaml"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_inline_credentials(path):
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{12,}", text)
    for needle in ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN"):
        assert needle not in text


def test_serving_clusters_start_with_the_fast_ingress(rendered):
    """Serve reads its ingress settings from each node's environment at start: the RayService pods
    and ray-cluster.yaml's start commands carry them (qadwh_ray/serving/cluster_env.py)."""
    from qadwh_ray.serving.cluster_env import HAPROXY_ENV

    (svc,) = _of(rendered["default"], "RayService")
    spec = svc["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert all(env.get(k) == v for k, v in HAPROXY_ENV.items()), container["name"]
    cluster = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert all(f"{k}={v}" in command.split() for k, v in HAPROXY_ENV.items()), command
