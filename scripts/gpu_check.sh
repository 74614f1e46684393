#!/usr/bin/env bash
# The GPU checks that CI (no GPU) cannot run, as one command for a lent CUDA machine
# (docs/benchmarks.md, "GPU search path"): the CUDA exactness tests, then the search
# benchmark with the index's torch path on the GPU beside the CPU and FAISS figures.
#
#   bash scripts/gpu_check.sh OUT_DIR [SIZES]      # SIZES: comma-separated, default 10000000
#
# Needs python3 with numpy, numba, torch (CUDA) and pytest; faiss-cpu is taken from
# .whl/ when present (the device machine cannot download). Ray is not needed.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [SIZES]}
sizes=${2:-10000000}
py=${PYTHON:-python3}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
# --noconftest: the suite's conftest starts Ray and S3 fixtures; the GPU tests need neither
set +e
"$py" -m pytest -q -ra --noconftest -p no:cacheprovider tests/gpu tests/unit/test_search_bench_gpu.py \
    2>&1 | tee "$out/pytest-gpu.log"
tests_rc=${PIPESTATUS[0]}
set -e
for n in ${sizes//,/ }; do
    "$py" benchmarks/search_bench.py --sizes "$n" --bits 64 --rounds 3 --single-queries 16 --gpu cuda \
        2> "$out/search-bench-$n.log" | tail -n 1 > "$out/search-bench-$n.json"
    "$py" - "$out/search-bench-$n.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("gpu", d["machine"]["gpu"], "equals_cpu", d["targets"]["gpu_equals_cpu"])
for r in d["results"]:
    print(r["n"], r["nbits"], r["codes"], json.dumps(r["gpu"]))
PY
done
exit "$tests_rc"
