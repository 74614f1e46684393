#!/usr/bin/env bash
# The whole test suite; does its own set-up first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
QADWH_BROWSER=1 bash scripts/setup.sh  # also chromium + chromium-driver for the search-page test
exec .venv/bin/python -m pytest -q -ra --durations=25 "$@"  # the slowest tests, to keep the suite near 20 min
