"""Write the KubeRay manifests of cluster/base/ from one description: the RayService (its
serveConfigV2 is cluster/serve.yaml verbatim) and the RayJob templates (train, index, nightly).

    python scripts/make_cluster_manifests.py    (a test fails when the files drift from this script)

Every Ray pod runs the project image (`qadwh-ray`, named by cluster/image/*), reads its
locations from the `qadwh-settings` ConfigMap (cluster/settings/settings.env), authenticates
with KubeRay's token auth (`authOptions`, Secret `qadwh-ray-auth`) and reaches S3 through the
`qadwh-ray` ServiceAccount. The RayJobs are suspended templates: cluster/base/run-rayjob.sh
runs a copy of one (the nightly CronJob, or the bootstrap CronJob run by hand).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "cluster" / "base"
sys.path.insert(0, str(ROOT))

from qadwh_ray.serving.cluster_env import HAPROXY_ENV  # noqa: E402 — every Serve process needs the fast ingress

RAY_VERSION = "2.60.0"
IMAGE = "qadwh-ray"  # a name only: cluster/image/{cpu,gpu} set registry, tag and digest
APP_DIR = "/home/ray/qadwh"  # where the Containerfile puts jobs/ and configs/
SETTINGS = "qadwh-settings"
SERVICE_ACCOUNT = "qadwh-ray"
RAY_AUTH_SECRET = "qadwh-ray-auth"
SERVE_TOKEN_SECRET = "qadwh-serve-token"
SERVE_TOKEN_DIR = "/var/run/secrets/qadwh"
LABELS = {"app.kubernetes.io/part-of": "qadwh"}  # not app.kubernetes.io/name: KubeRay sets that one on its pods
TRAIN_WORKERS = 2  # Ray Train workers = the RayJob worker group's size (a test checks both)

ENTRYPOINTS = {
    # `$NAME`s are expanded by the submitter pod's shell from the qadwh-settings ConfigMap
    "train": (
        f'python {APP_DIR}/jobs/train.py --config "$QADWH_TRAIN_CONFIG" --data "$QADWH_DATA" '
        f'--storage "$QADWH_STORAGE" --name "$QADWH_RUN_NAME" '
        f"--set num_workers={TRAIN_WORKERS} --set use_gpu=$QADWH_USE_GPU"
    ),
    "index": (
        f'python {APP_DIR}/jobs/index.py --reindex --checkpoint "$QADWH_STORAGE/$QADWH_RUN_NAME" --data "$QADWH_DATA" '
        f'--out "$QADWH_INDEX_URI" --shards "$QADWH_SHARDS" --keep "$QADWH_KEEP_VERSIONS" --gpus "$QADWH_ENCODER_GPUS"'
    ),
    "nightly": (
        f'python {APP_DIR}/jobs/nightly.py --checkpoint "$QADWH_STORAGE/$QADWH_RUN_NAME" --data "$QADWH_DATA" '
        f'--out "$QADWH_INDEX_URI" --shards "$QADWH_SHARDS" --keep "$QADWH_KEEP_VERSIONS" --gpus "$QADWH_ENCODER_GPUS" '
        f'--service-url "$QADWH_SERVICE_URL" --swap-timeout 900'
    ),
}


def _resources(cpu: str, memory: str) -> dict:
    amount = {"cpu": cpu, "memory": memory}
    return {"requests": dict(amount), "limits": dict(amount)}


def _serve_token_env() -> dict:
    return {"name": "QADWH_SERVE_TOKEN", "valueFrom": {"secretKeyRef": {"name": SERVE_TOKEN_SECRET, "key": "token"}}}


def _ray_pod(name: str, cpu: str, memory: str, env: list | None = None, serve_token_file: bool = False) -> dict:
    container = {
        "name": name,
        "image": IMAGE,
        "envFrom": [{"configMapRef": {"name": SETTINGS}}],
        "resources": _resources(cpu, memory),
    }
    if env:
        container["env"] = env
    spec = {"serviceAccountName": SERVICE_ACCOUNT, "containers": [container]}  # S3 through the account's IAM role
    if serve_token_file:  # the service reads its bearer token from a file (never from runtime_env)
        container["volumeMounts"] = [{"name": "serve-token", "mountPath": SERVE_TOKEN_DIR, "readOnly": True}]
        spec["volumes"] = [{"name": "serve-token", "secret": {"secretName": SERVE_TOKEN_SECRET}}]
    return {"metadata": {"labels": dict(LABELS)}, "spec": spec}


def _cluster(head: dict, workers: list[dict], autoscaling: bool) -> dict:
    spec = {
        "rayVersion": RAY_VERSION,
        "authOptions": {"mode": "token", "secretName": RAY_AUTH_SECRET},  # KubeRay injects it into every pod
        "enableInTreeAutoscaling": autoscaling,
        # no dashboard-host: KubeRay binds the dashboard to 0.0.0.0 so that the operator and the
        # job submitter reach it through the head Service (NetworkPolicy qadwh-ray-head limits who may)
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": head},  # no work lands on the head
        "workerGroupSpecs": workers,
    }
    if autoscaling:
        spec["autoscalerOptions"] = {"idleTimeoutSeconds": 300, "upscalingMode": "Default"}
    return spec


def rayservice(serve_config_text: str) -> dict:
    env = [{"name": k, "value": v} for k, v in HAPROXY_ENV.items()]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "qadwh", "labels": dict(LABELS)},
        "spec": {
            "serveConfigV2": serve_config_text,
            "rayClusterConfig": _cluster(
                _ray_pod("ray-head", "2", "8Gi", env, serve_token_file=True),
                [{
                    "groupName": "serving",
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 12,
                    "rayStartParams": {},
                    "template": _ray_pod("ray-worker", "8", "32Gi", env, serve_token_file=True),
                }],
                autoscaling=True,
            ),
        },
    }


def rayjob(kind: str, head_cpu: str = "4", head_memory: str = "16Gi") -> dict:
    """A suspended template: the RayJob run-rayjob.sh copies (the copy runs, the template never does)."""
    env = [_serve_token_env()] if kind == "nightly" else None  # the nightly asks the service which version it serves
    workers = {
        "groupName": "workers",
        # a fixed size: workers that exist before the job starts and stay until it ends
        "replicas": TRAIN_WORKERS,
        "minReplicas": TRAIN_WORKERS,
        "maxReplicas": TRAIN_WORKERS,
        "rayStartParams": {},
        "template": _ray_pod("ray-worker", "8", "32Gi"),
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"qadwh-{kind}", "labels": {**LABELS, "qadwh.io/job": kind}},
        "spec": {
            "suspend": True,
            "entrypoint": ENTRYPOINTS[kind],
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 6 * 3600,
            "backoffLimit": 0,
            "submitterPodTemplate": {
                "metadata": {"labels": {**LABELS, "qadwh.io/role": "submitter"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{
                        "name": "ray-job-submitter",
                        "image": IMAGE,
                        "envFrom": [{"configMapRef": {"name": SETTINGS}}],  # the entrypoint's $NAMEs
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                    }],
                },
            },
            "rayClusterSpec": _cluster(_ray_pod("ray-head", head_cpu, head_memory, env), [workers], autoscaling=False),
        },
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so serveConfigV2 reads like serve.yaml."""


_BlockDumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def manifests() -> dict[str, str]:
    """File name under cluster/base/ -> its text."""
    lines = (ROOT / "cluster" / "serve.yaml").read_text().splitlines()
    serve_text = "\n".join(line.rstrip() for line in lines) + "\n"
    header = "# Generated by scripts/make_cluster_manifests.py; edit the script (or patch in an overlay), not this file.\n"
    objects = {"rayservice.yaml": rayservice(serve_text), **{f"rayjob-{k}.yaml": rayjob(k) for k in ENTRYPOINTS}}
    return {name: header + yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False, width=1000) for name, obj in objects.items()}


def main() -> None:
    for name, text in manifests().items():
        (BASE / name).write_text(text)
        print(f"wrote {BASE / name}")


if __name__ == "__main__":
    main()
