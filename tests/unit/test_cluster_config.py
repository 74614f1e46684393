"""ray-cluster.yaml validates against the schema shipped in the installed ray package."""

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def launcher_config():
    return yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())


def test_matches_rays_json_schema(launcher_config):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher_config, schema)


def test_passes_rays_own_validation(launcher_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher_config)))


def test_node_roles_image_and_setup(launcher_config):
    import ray

    types = launcher_config["available_node_types"]
    head = types[launcher_config["head_node_type"]]
    assert head["resources"]["CPU"] == 0  # the head runs no training work
    assert "--num-cpus=0" in " ".join(launcher_config["head_start_ray_commands"])
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("c", "m")) and t is not head]
    assert gpu and cpu
    for t in gpu + cpu:
        assert t["max_workers"] >= t.get("min_workers", 0)
    image = launcher_config["docker"]["image"]
    assert re.fullmatch(r"[\w.\-/]+/qadwh-ray:[\w.\-]+-gpu", image)  # the project image (Containerfile), GPU variant
    assert f"rayproject/ray:{ray.__version__}-py311" in (ROOT / "Containerfile").read_text()  # same Ray as the project pins
    # nothing installed or synced at run time: the image holds the project
    assert not launcher_config.get("setup_commands") and not launcher_config.get("worker_setup_commands")
    assert all(not str(src).startswith(".") for src in launcher_config.get("file_mounts", {}).values())


def test_no_credentials_in_the_file():
    text = (ROOT / "ray-cluster.yaml").read_text()
    for needle in ("aws_access_key_id", "aws_secret_access_key", "AKIA", "AWS_SECRET", "RAY_AUTH_TOKEN="):
        assert needle not in text
    assert os.path.exists(ROOT / "ray-cluster.yaml")
