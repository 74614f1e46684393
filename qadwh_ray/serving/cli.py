"""``qadwh serve``: run the serving application (wired into ``qadwh_ray.cli`` by
``add_serve_parser(subparsers)``).

Examples::

    qadwh serve --index runs/index                       # local Ray, http://127.0.0.1:8000/
    qadwh serve --index s3://bucket/idx --address auto --host 0.0.0.0 --config serve-args.yaml
    qadwh serve --index runs/index --version v20260101T000000000Z-abc123 --set shard.max_replicas=8

The same arguments as the ``args:`` block of ``cluster/serve.yaml``
(:class:`qadwh_ray.serving.config.AppArgs`); ``--config`` reads them from a
YAML file, ``--set key=value`` overrides one (dotted for nested keys).
"""

from __future__ import annotations

import argparse
import sys

from qadwh_ray.serving.cluster_env import add_ingress_argument

__all__ = ["add_serve_parser", "cmd_serve", "serve_args_from_cli"]


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve the index over HTTP on Ray Serve (search API + page)")
    p.add_argument("--index", help="index root URI (local path or s3://); required unless in --config")
    p.add_argument("--version", help="pin this index version (default: follow the CURRENT pointer)")
    p.add_argument("--checkpoint", help="query encoder checkpoint (default: the one the index version names)")
    p.add_argument("--config", help="YAML file with the app args (the args: block of cluster/serve.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one app arg, e.g. shard.max_replicas=8")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' to join a running cluster; default: start a local one)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; 0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default="qadwh", help="Serve application name")
    p.add_argument("--route-prefix", default="/")
    p.add_argument("--proxy-location", default="EveryNode", choices=["EveryNode", "HeadOnly", "Disabled"],
                   help="where Serve runs HTTP proxies (HeadOnly when several nodes share one host)")
    add_ingress_argument(p)
    p.add_argument("--no-block", action="store_true", help="deploy and return instead of serving until Ctrl-C")
    p.set_defaults(func=cmd_serve)
    return p


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def serve_args_from_cli(args: argparse.Namespace) -> dict:
    """The app args dict from --config, --index/--version/--checkpoint and --set (validated)."""
    from qadwh_ray import storage
    from qadwh_ray.serving.config import AppArgs

    d: dict = {}
    if args.config:
        import yaml

        loaded = yaml.safe_load(storage.read_bytes(args.config)) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config} must hold a mapping of app args")
        if "applications" in loaded:  # a Serve config file: the first application's args
            apps = loaded["applications"] or [{}]
            loaded = apps[0].get("args") or {}
        elif "args" in loaded:
            loaded = loaded["args"] or {}
        d.update(loaded)
    for key in ("index", "version", "checkpoint"):
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(value)
    if "index" not in d:
        raise ValueError("give the index root with --index (or index: in --config)")
    try:
        return AppArgs.parse(d).model_dump(mode="json", exclude_none=False)
    except Exception as exc:  # pydantic.ValidationError: one clear message
        raise ValueError(f"invalid serve arguments: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from qadwh_ray.serving.app import build_app
    from qadwh_ray.serving.cluster_env import local_cluster_env

    app_args = serve_args_from_cli(args)
    from qadwh_ray.ray_logs import init_ray, quiet_ray_console

    logs = None
    if not ray.is_initialized():
        with local_cluster_env(args.ingress):  # only a cluster this call starts takes it
            logs = init_ray(address=args.address)
    serve.start(proxy_location=args.proxy_location, http_options={"host": args.host, "port": args.port})
    serve.run(build_app(app_args), name=args.name, route_prefix=args.route_prefix)
    quiet_ray_console()  # Serve set up its loggers just now
    prefix = args.route_prefix.rstrip("/")
    print(f"qadwh serve: {args.name} ready at http://{args.host}:{args.port}{prefix}/ (API docs at {prefix}/docs)", flush=True)
    if logs:
        print(f"qadwh serve: Ray's own logs and the replicas' output: {logs}", flush=True)
    if args.no_block:
        return 0
    try:
        while True:
            import time

            time.sleep(3600)
    except KeyboardInterrupt:
        print("qadwh serve: shutting down", file=sys.stderr)
        serve.delete(args.name)  # only this application: others on a shared cluster keep serving
    return 0
