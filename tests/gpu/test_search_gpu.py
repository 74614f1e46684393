"""The CUDA search path gives exactly the CPU path's results (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

from qadwh_ray.core.search import HashIndex  # noqa: E402
from qadwh_ray.core.topk import merge_topk  # noqa: E402


@pytest.mark.parametrize("nbits", [8, 24, 32, 48, 64, 72, 128, 136])
@pytest.mark.parametrize("mode", ["qadwh", "dwh", "hamming"])
def test_cuda_equals_cpu(nbits, mode):
    rng = np.random.default_rng(nbits)
    n = 20_000
    centres = rng.integers(0, 256, (4, nbits // 8), dtype=np.uint8)
    codes = centres[rng.integers(0, 4, n)] ^ ((rng.random((n, nbits // 8)) < 0.05)
                                               * rng.integers(0, 256, (n, nbits // 8))).astype(np.uint8)
    ids = rng.choice(10**9, size=n, replace=False)
    queries = codes[rng.integers(0, n, 33)]
    w = rng.lognormal(0, 0.4, (33, nbits))
    w[:, :2] = 0.0
    weights = {"qadwh": w, "dwh": w[0], "hamming": None}[mode]
    cpu = HashIndex(nbits, device="cpu")
    gpu = HashIndex(nbits, device="cuda")
    cpu.add(codes, ids)
    gpu.add(codes, ids)
    for k in (1, 100, 5000, n + 7):
        want = cpu.search(queries, k, weights, mode=mode)
        got = gpu.search(queries, k, weights, mode=mode)
        assert gpu.last_search.device.startswith("cuda")
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_auto_device_uses_cuda_and_shards_merge():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, (5000, 8), dtype=np.uint8)  # heavy ties
    ids = np.arange(5000) * 3
    whole = HashIndex(64)  # device="auto"
    whole.add(codes, ids)
    q = codes[:7]
    w = rng.uniform(0, 2, (7, 64))
    want = whole.search(q, 50, w)
    assert whole.last_search.device.startswith("cuda")
    parts = []
    for s in range(3):
        shard = HashIndex(64)
        shard.add(codes[s::3], ids[s::3])
        parts.append(shard.search(q, 50, w))
    got = merge_topk(parts, 50)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
