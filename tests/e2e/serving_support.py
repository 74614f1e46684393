"""Helpers shared by the serving end-to-end tests (tests/e2e/test_serving_*.py).

A small real index: Fashion-MNIST images encoded by a small untrained model
whose class-wise weights ``W`` are randomised (so QaDWH, DWH and Hamming rank
differently), written as a versioned index in 2 shards under ``tmp_path``.
Serve's HTTP proxy listens on a free port of 127.0.0.1 only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import requests

NBITS = 16


@dataclass
class IndexFixture:
    root: str
    checkpoint: str
    version: str
    ids: np.ndarray
    codes: np.ndarray
    labels: np.ndarray
    images: np.ndarray  # uint8 (n, 28, 28) of the indexed items (same order as ids)


def free_port() -> int:
    """A port Serve's HTTP listener binds later (outside the ranges where it could be taken first)."""
    from qadwh_ray.serving.cluster_env import listen_port

    return listen_port()


def make_checkpoint(path: str, seed: int = 0, nbits: int = NBITS) -> str:
    """An untrained model made informative enough for search tests: each hash
    bit's bias is set at the median of its pre-activation on real images (so
    every bit splits the data about in half and codes differ), the class head is
    scaled so that softmax outputs vary by image, and ``W`` is random positive
    (so QaDWH, DWH and Hamming rank differently)."""
    import torch

    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.data.transforms import to_float_tensor
    from qadwh_ray.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(ModelConfig(nbits=nbits)).eval()
    images, _ = load_fashion_mnist()
    rng = np.random.default_rng(seed)
    sample = images[rng.choice(images.shape[0], 512, replace=False)]
    with torch.no_grad():
        f = model.backbone(to_float_tensor(sample, model.config.mean, model.config.std))
        pre = f @ model.hash_head.weight.T
        model.hash_head.bias.copy_(-pre.median(dim=0).values)
        z = f @ model.class_head.weight.T
        scale = 3.0 / (z.std(dim=0) + 1e-6)
        model.class_head.weight.mul_(scale[:, None])
        model.class_head.bias.copy_(-(z * scale).mean(dim=0))
        g = torch.Generator().manual_seed(seed + 1)
        model.W.copy_(0.2 + 1.8 * torch.rand(model.W.shape, generator=g))
    save_checkpoint(path, model)
    return path


def encode_rows(checkpoint: str, rows: np.ndarray):
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.model import encode, load_checkpoint

    images, labels = load_fashion_mnist()
    model = load_checkpoint(checkpoint)
    res = encode(model, images[rows], batch_size=1024)
    lab = np.zeros((rows.size, 10), dtype=np.uint8)
    lab[np.arange(rows.size), labels[rows]] = 1
    return res, lab, images[rows]


def build_index(root: str, checkpoint: str, rows: np.ndarray, num_shards: int = 2, version: str | None = None, publish: bool = True) -> IndexFixture:
    from qadwh_ray.data.fashion import CLASS_NAMES
    from qadwh_ray.index import checkpoint_record, write_index
    from qadwh_ray.model.checkpoint import load_payload

    res, lab, imgs = encode_rows(checkpoint, rows)
    v = write_index(
        root,
        rows,
        res.codes,
        lab,
        num_shards=num_shards,
        checkpoint=checkpoint_record(load_payload(checkpoint)),
        sources=[{"kind": "fashion", "uri": "fashion:all", "rows": int(rows.size)}],
        class_names=CLASS_NAMES,
        version=version,
        publish=publish,
    ).version
    return IndexFixture(root, checkpoint, v, rows, res.codes, lab, imgs)


_SERVE = {"port": None}


def start_serve() -> int:
    """Start Serve's proxy on a free 127.0.0.1 port (once per session; restarted after a shutdown)."""
    from ray import serve

    port = _SERVE["port"] or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _SERVE["port"] = port
    return port


def app_args(root: str, **over) -> dict:
    """App args sized for the 2-core test machine."""
    args = {
        "index": root,
        "poll_interval_s": 0.5,
        "swap_grace_s": 5.0,
        "request_deadline_s": 20.0,
        "attempt_timeout_s": 8.0,
        "max_k": 200,
        "router": {"num_cpus": 0.1, "min_replicas": 1, "max_replicas": 1},
        "encoder": {"num_cpus": 0.1, "min_replicas": 1, "max_replicas": 1, "max_batch_size": 8, "max_ongoing_requests": 32},
        "shard": {"num_cpus": 0.1, "min_replicas": 1, "max_replicas": 1},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(args.get(k), dict):
            args[k] = {**args[k], **v}
        else:
            args[k] = v
    return args


def deploy(args: dict, name: str, route_prefix: str = "/") -> str:
    """serve.run the app and wait until its /readyz answers; returns its base URL.

    The search page and API work under any route prefix, so each test module's
    app gets its own prefix and several can be deployed side by side.
    """
    from ray import serve

    from qadwh_ray.serving.app import build_app

    port = start_serve()
    serve.run(build_app(args), name=name, route_prefix=route_prefix, logging_config={"enable_access_log": False})
    base = f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}"
    wait_ready(base)
    return base


def wait_ready(base: str, timeout: float = 120.0) -> dict:
    # 120 s: on a 2-core machine shared with a training job, replicas and the
    # proxy take well over a minute to start; a quiet machine needs ~10 s
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            r = requests.get(base + "/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.3)
    raise AssertionError(f"service at {base} not ready after {timeout} s: {last}")


def teardown(name: str) -> None:
    """Delete the app; shut Serve down when it was the last one."""
    from ray import serve

    try:
        serve.delete(name)
    finally:
        try:
            remaining = serve.status().applications
        except Exception:  # noqa: BLE001
            remaining = {}
        if not remaining:
            serve.shutdown()
            _SERVE["port"] = None


def in_process_index(root: str, version: str):
    from qadwh_ray.index import load_index

    return load_index(root, version)


def png(img: np.ndarray) -> bytes:
    from qadwh_ray.data.transforms import encode_png

    return encode_png(img)
