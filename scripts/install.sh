#!/usr/bin/env bash
# Installs Gauntlet into .venv at the repo root. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
stamp=.venv/.gauntlet-installed
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] .venv is up to date"
  exit 0
fi
$PIP install -q --upgrade pip setuptools wheel
# The CPU build of torch first: an unpinned torch would pull GBs of CUDA packages.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev]"
# robosuite without its metadata deps (mink==0.0.5 -> numpy<2); pyproject lists what it needs.
$PIP install -q --no-deps "robosuite==1.5.2"
# openpi's own client, for interop tests against our WebSocket endpoint. Its metadata pins
# numpy<2 although the client code runs on NumPy 2, so it too goes in without its deps.
$PIP install -q --no-deps "openpi-client==0.1.2"
# Never the PyPI placeholder that squats the `mimicgen` import name.
if .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('mimicgen') is None)"; then
  echo "[install] removing the unrelated PyPI 'mimicgen' placeholder"; $PIP uninstall -y mimicgen
fi
echo "$want" > "$stamp"
echo "[install] done"
