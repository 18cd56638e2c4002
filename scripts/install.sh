#!/usr/bin/env bash
# Installs Gauntlet into .venv at the repo root. Idempotent: a second run only checks.
#   GAUNTLET_ACCEL=auto|cpu|cuda  which torch/JAX builds (auto, the default: cuda when `nvidia-smi -L`
#                                 lists a GPU, else cpu)
#   GAUNTLET_INSTALL_PLAN=1       print the mode and the pip installs a real run would do, touch nothing
#   PYTHON=/path/to/python3.12    the interpreter .venv is made from (default: found, see below)
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.12 exactly: LeRobot >= 0.5 needs >= 3.12, Ray 2.60 publishes no 3.13 wheels.
want_py=3.12
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
find_python() {  # prints the first interpreter that answers $want_py: PATH, then pyenv, then uv
  local cand root
  if cand=$(command -v "python$want_py") && [ "$(py_version "$cand")" = "$want_py" ]; then
    echo "$cand"; return; fi  # (pyenv's shim is on PATH but answers only with PYENV_VERSION set)
  root=${PYENV_ROOT:-}
  [ -z "$root" ] && command -v pyenv >/dev/null && root=$(pyenv root)
  [ -z "$root" ] && root="$HOME/.pyenv"
  for cand in "$root"/versions/"$want_py".*/bin/"python$want_py"; do
    if [ -x "$cand" ] && [ "$(py_version "$cand")" = "$want_py" ]; then echo "$cand"; return; fi
  done
  if command -v uv >/dev/null && cand=$(uv python find "$want_py" 2>/dev/null) \
    && [ "$(py_version "$cand")" = "$want_py" ]; then echo "$cand"; return; fi
  return 1
}
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
  got=$(py_version "$python" || true)
  if [ "$got" != "$want_py" ]; then
    echo "[install] PYTHON=$python is Python ${got:-?} (or does not run); Gauntlet needs Python $want_py" >&2; exit 2
  fi
elif ! python=$(find_python); then
  echo "[install] no Python $want_py found (looked for python$want_py on PATH, pyenv's versions/$want_py.*, uv python find)." >&2
  echo "[install] install one: 'pyenv install $want_py', 'uv python install $want_py', or your OS's python$want_py" \
       "package (with its venv module), or point PYTHON=/path/to/python$want_py at one" >&2
  exit 2
fi
echo "[install] python: $python"

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
# torch goes in first and pinned to one release LeRobot accepts (lerobot 0.6.1: torch>=2.7,<2.12), so a
# LeRobot replica's environment, a clone of this venv, keeps it and downloads no second torch. PyPI
# publishes one Linux build of 2.11.0, against CUDA 13; it runs on the CPU too. In cuda mode JAX takes
# the matching cuda13 extra: both then share one set of nvidia-* CUDA 13 wheels (NVIDIA driver >= 580).
# One pip call, so they agree.
torch_req="torch==2.11.0"
if [ "$accel" = cuda ]; then
  accel_reqs=("$torch_req" "jax[cuda13]")
else
  accel_reqs=("$torch_req")  # JAX stays the plain (CPU) jax from pyproject.toml
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
  if [ -x .venv/bin/python ] && [ "$(py_version .venv/bin/python)" != "$want_py" ]; then
    echo "[install] .venv is Python $(py_version .venv/bin/python || echo '?'), not $want_py: recreating it"
    "$python" -m venv --clear .venv
  elif [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
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
