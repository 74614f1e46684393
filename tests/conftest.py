"""Shared pytest fixtures: the S3 server (fixtures_s3.py) and one local Ray cluster per session."""

import os

import pytest

pytest_plugins = ["fixtures_s3"]

# Logical CPUs for the shared test cluster: more than the 2 real cores, so that
# Train workers, Data actors and Serve replicas with fractional CPUs all fit
# without deadlocking.
RAY_TEST_CPUS = int(os.environ.get("QADWH_TEST_RAY_CPUS", "8"))


@pytest.fixture(scope="session")
def ray_cluster():
    """Start Ray once for the whole session; every Ray test shares it."""
    import ray

    if not ray.is_initialized():
        from qadwh_ray.serving.cluster_env import DEFAULT_INGRESS, local_cluster_env

        # Serve tests run against the ingress our commands deploy by default.
        with local_cluster_env(os.environ.get("QADWH_TEST_INGRESS", DEFAULT_INGRESS)):
            ray.init(
                num_cpus=RAY_TEST_CPUS,
                include_dashboard=False,
                object_store_memory=1_500_000_000,
                logging_level="WARNING",
            )
    yield ray
    ray.shutdown()
