#!/usr/bin/env bash
# The main job end to end on embedded defaults; does its own set-up first.
# Extra arguments go to `qadwh run` (e.g. --full for the full-length run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/qadwh run "$@"
