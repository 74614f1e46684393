"""The search benchmark's ``--gpu`` measurement, run on torch CPU tensors (the same
code the CUDA path runs): it times the torch path and catches any result that
differs from the CPU path's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import qadwh_ray.core.search as search_mod  # noqa: E402
from qadwh_ray.core.search import HashIndex  # noqa: E402

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "search_bench.py"


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("search_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = search_mod._resolve_device
    # "cuda" runs the torch path on CPU tensors: torch.device("cpu:0") is not the numba "cpu" path
    monkeypatch.setattr(search_mod, "_resolve_device", lambda d: "cpu:0" if d == "cuda" else real(d))
    return module


def _data(nbits=48, n=3000, nq=9):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, (n, nbits // 8), dtype=np.uint8)  # many ties
    index = HashIndex(nbits, device="cpu")
    index.add(codes, np.arange(n, dtype=np.int64) * 7)
    queries = codes[rng.integers(0, n, nq)]
    weights = rng.uniform(0, 2, (nq, nbits))
    return index, queries, weights


def test_gpu_timings_time_the_torch_path_and_match_the_cpu_path(bench):
    index, q, w = _data()
    g = bench.gpu_timings(index, q[:4], w[:4], q, w, 50, "cuda", rounds=2, cpu_threads=1)
    assert g["device"] == "cpu:0" and g["equals_cpu"] is True
    assert g["single_qps"] > 0 and g["batch_qps"] > 0


def test_gpu_timings_report_a_result_that_differs(bench, monkeypatch):
    from qadwh_ray.core import search_gpu

    index, q, w = _data()
    real_topk = search_gpu.TorchSearcher.topk

    def off_by_one(self, query_codes, w_int, k):
        d, p = real_topk(self, query_codes, w_int, k)
        return d, np.roll(p, 1, axis=1)  # same distances, ids out of order

    monkeypatch.setattr(search_gpu.TorchSearcher, "topk", off_by_one)
    g = bench.gpu_timings(index, q[:4], w[:4], q, w, 50, "cuda", rounds=1, cpu_threads=1)
    assert g["equals_cpu"] is False
