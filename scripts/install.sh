#!/usr/bin/env bash
# Installs Gauntlet into .venv at the repo root. Idempotent: a second run only checks.
#   GAUNTLET_ACCEL=auto|cpu|cuda  which torch/JAX builds (auto, the default: cuda when `nvidia-smi -L`
#                                 lists a GPU, else cpu)
#   GAUNTLET_INSTALL_PLAN=1       print the mode and the pip installs a real run would do, touch nothing
set -euo pipefail
cd "$(dirname "$0")/.."

accel=${GAUNTLET_ACCEL:-auto}
case "$accel" in
  auto)
    # No nvidia-smi, or one that lists no GPU (no driver loaded), means the CPU builds.
    gpus=$(nvidia-smi -L 2>/dev/null || true)
    if grep -q '^GPU ' <<<"$gpus"; then accel=cuda; why="nvidia-smi -L lists a GPU"
    else accel=cpu; why="no GPU listed by nvidia-smi -L"; fi ;;
  cpu | cuda) why="GAUNTLET_ACCEL=$accel" ;;
  *) echo "[install] GAUNTLET_ACCEL must be auto, cpu or cuda, not '$accel'" >&2; exit 2 ;;
esac
# torch goes in first and pinned to one build: an unpinned torch resolves to the newest CUDA wheel
# and GBs of NVIDIA libraries (and, on cpu, would replace the CPU wheel this project's machines have).
if [ "$accel" = cuda ]; then
  # PyPI's torch 2.14.1 is built against CUDA 13, so JAX takes the matching cuda13 extra: both then
  # share one set of nvidia-* CUDA 13 wheels (NVIDIA driver >= 580). One pip call, so they agree.
  accel_reqs=("torch==2.14.1" "jax[cuda13]")
else
  accel_reqs=("torch==2.13.0")  # the CPU wheel here; JAX stays the plain (CPU) jax from pyproject.toml
fi
plan=${GAUNTLET_INSTALL_PLAN:-0}
[ "$plan" = 0 ] && plan=""
echo "[install] mode: $accel ($why)"

PIP=".venv/bin/python -m pip"
pip_install() {  # every install goes through here, so a plan lists exactly what a real run does
  if [ -n "$plan" ]; then echo "pip install $*"; else $PIP install -q "$@"; fi
}
stamp=.venv/.gauntlet-installed
if [ -z "$plan" ]; then
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  # The mode is part of the stamp: switching GAUNTLET_ACCEL reinstalls.
  want=$({ echo "accel=$accel"; cat pyproject.toml scripts/install.sh; } | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[install] .venv is up to date"
    exit 0
  fi
fi
pip_install --upgrade pip setuptools wheel
pip_install "${accel_reqs[@]}"
pip_install -e ".[dev]"
# robosuite without its metadata deps (mink==0.0.5 -> numpy<2); pyproject lists what it needs.
pip_install --no-deps "robosuite==1.5.2"
# openpi's own client, for interop tests against our WebSocket endpoint. Its metadata pins
# numpy<2 although the client code runs on NumPy 2, so it too goes in without its deps.
pip_install --no-deps "openpi-client==0.1.2"
if [ -n "$plan" ]; then exit 0; fi

# Never the PyPI placeholder that squats the `mimicgen` import name.
if .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('mimicgen') is None)"; then
  echo "[install] removing the unrelated PyPI 'mimicgen' placeholder"; $PIP uninstall -y mimicgen
fi
# Back from cuda to cpu: JAX would go on using its CUDA plugin if it stayed.
if [ "$accel" = cpu ] && .venv/bin/python -c "import importlib.metadata as m; m.version('jax-cuda13-plugin')" 2>/dev/null; then
  echo "[install] removing JAX's CUDA plugin (cpu mode)"; $PIP uninstall -y jax-cuda13-plugin jax-cuda13-pjrt
fi
if [ "$accel" = cuda ]; then
  # One line on what the CUDA builds see. An unusable GPU (old driver, none visible) still leaves a
  # working install on the CPU, so it is a warning, not a failure.
  .venv/bin/python - <<'EOF' || echo "[install] warning: the CUDA check could not run (see above)"
import jax
import torch

torch_gpu = torch.cuda.is_available()
devices = jax.devices()
print(f"[install] cuda check: torch {torch.__version__} cuda.is_available()={torch_gpu}; jax.devices()={devices}")
if not torch_gpu or jax.default_backend() != "gpu":
    print("[install] warning: no usable CUDA GPU for torch and JAX (CUDA 13 needs an NVIDIA driver >= 580);"
          " they run on the CPU")
EOF
fi
echo "$want" > "$stamp"
echo "[install] done"
