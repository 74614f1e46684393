"""Online query serving on Ray Serve (the only Serve code of the project).

``build_app(args)`` (:mod:`qadwh_ray.serving.app`) assembles a router (FastAPI
ingress, HTTP API and search page), a batched query encoder and one shard
deployment per index shard; ``qadwh serve`` (:mod:`qadwh_ray.serving.cli`)
runs it. Importing this package does not import Ray: submodules do.
"""

__all__ = ["build_app", "AppArgs"]


def __getattr__(name):  # lazy: `from qadwh_ray.serving import build_app` without importing Ray eagerly
    if name == "build_app":
        from qadwh_ray.serving.app import build_app

        return build_app
    if name == "AppArgs":
        from qadwh_ray.serving.config import AppArgs

        return AppArgs
    raise AttributeError(name)
