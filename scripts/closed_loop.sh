#!/usr/bin/env bash
# The closed loop at small scale, on task `lift`:
#   D0 expert demos -> full-train a base VLA -> D1 demos -> LoRA-fine-tune the base on them ->
#   D1 error-recovery scenes -> evaluate base and base@adapter (plus the scripted oracle as a
#   reference row) on those scenes -> report with Wilson intervals.
#
#   bash scripts/closed_loop.sh [OUT]        (default OUT: closed_loop_out; `make closed-loop`)
#
# Sized to run in about 15 minutes on a 2-core CPU host. Every knob below can be overridden from
# the environment, e.g. `D0_EPISODES=60 BASE_STEPS=3000 bash scripts/closed_loop.sh big_out`.
# Each stage's full output goes to OUT/logs/<stage>.log. A re-run replaces OUT's stage outputs.
set -euo pipefail

caller_pwd=$PWD
cd "$(dirname "$0")/.."

OUT=${1:-closed_loop_out}
case "$OUT" in /*) ;; *) OUT="$caller_pwd/$OUT" ;; esac
GAUNTLET=${GAUNTLET:-.venv/bin/gauntlet}
export MUJOCO_GL=${MUJOCO_GL:-egl}

TASK=lift
IMAGE_SIZE=${IMAGE_SIZE:-32}        # what the tiny VLA preset consumes
# Cameras are rendered at RENDER_SIZE and resized (INTER_AREA) to IMAGE_SIZE, for demos and, at
# eval, by rollout.filter_obs; scenes are generated with the same camera size, so training images
# are exactly what the policy is sent at evaluation. 64 renders ~1.4x faster than 128 on a CPU.
RENDER_SIZE=${RENDER_SIZE:-64}
D0_EPISODES=${D0_EPISODES:-30}      # ~35 frames each, ~7 s each with two cameras on a busy 2-core host
D1_EPISODES=${D1_EPISODES:-10}
BASE_STEPS=${BASE_STEPS:-1500}      # full training of the tiny preset: ~12 steps/s on a CPU
LORA_STEPS=${LORA_STEPS:-500}
BATCH_SIZE=${BATCH_SIZE:-32}
PER_COMBO=${PER_COMBO:-2}           # scenes per lift error type (8 types) -> 16 D1 scenes
TRIALS=${TRIALS:-1}
HORIZON=${HORIZON:-100}             # the oracle recovers these scenes within ~40 steps
ACTORS=${ACTORS:-2}
ADAPTER_NAME=lora_d1                # the report labels the adapter row vla@$ADAPTER_NAME

D0="$OUT/data/d0"
D1="$OUT/data/d1"
BASE="$OUT/base"
ADAPTER="$OUT/adapters/$ADAPTER_NAME"  # its parent is the adapters directory Serve loads by name
SCENES="$OUT/scenes"
RUN="$OUT/run"
LOGS="$OUT/logs"

ts() { date '+%Y-%m-%d %H:%M:%S'; }
say() { echo "[closed-loop $(ts)] $*"; }

TIMINGS=()
CURRENT=""
trap 'rc=$?; if [ -n "$CURRENT" ]; then say "stage $CURRENT FAILED (exit $rc); full output: $LOGS/$CURRENT.log"; fi' EXIT

# stage NAME CMD...: runs CMD, its output to the terminal (minus Ray Train's per-report metric dumps
# and robosuite's import warnings) and, complete, to $LOGS/NAME.log; records the wall time.
stage() {
  local name=$1; shift
  CURRENT=$name
  say ">>> $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$LOGS/$name.log" \
    | { grep --line-buffered -vE 'Reporting training result|robosuite WARNING' || true; }
  local dt=$((SECONDS - t0))
  TIMINGS+=("$(printf '%-14s %5ds' "$name" "$dt")")
  say "<<< $name done in ${dt}s"
  CURRENT=""
}

say "closed loop on $TASK -> $OUT (demos D0=$D0_EPISODES D1=$D1_EPISODES, cameras ${RENDER_SIZE}->${IMAGE_SIZE}px," \
    "base $BASE_STEPS steps, LoRA $LORA_STEPS steps, $PER_COMBO scene(s) per error type, horizon $HORIZON)"
rm -rf "$D0" "$D1" "$BASE" "$ADAPTER" "$SCENES" "$RUN" "$LOGS"
mkdir -p "$OUT/data" "$LOGS"
t_all=$SECONDS

# 1-2. Expert demonstrations: D0 for the base, D1 (fewer) for the adapter; normalisation stats.
stage collect_d0 "$GAUNTLET" data collect --task "$TASK" --variant D0 --episodes "$D0_EPISODES" \
  --cameras --image-size "$IMAGE_SIZE" --render-size "$RENDER_SIZE" --seed 0 --out "$D0"
stage collect_d1 "$GAUNTLET" data collect --task "$TASK" --variant D1 --episodes "$D1_EPISODES" \
  --cameras --image-size "$IMAGE_SIZE" --render-size "$RENDER_SIZE" --seed 10000 --out "$D1"
stage stats_d0 "$GAUNTLET" data stats "$D0"
stage stats_d1 "$GAUNTLET" data stats "$D1"

# 3. Base: every parameter of a fresh tiny VLA, on D0 (cosine decay over the run).
stage train_base "$GAUNTLET" train --dataset "$D0" --out "$BASE" --mode full --steps "$BASE_STEPS" \
  --batch-size "$BATCH_SIZE" --decay-steps "$BASE_STEPS" --log-every 100 --report-every 100 \
  --checkpoint-every "$BASE_STEPS"

# 4. Adapter: LoRA on the frozen base, on D1.
stage train_lora "$GAUNTLET" train --dataset "$D1" --out "$ADAPTER" --mode lora --base "$BASE" \
  --steps "$LORA_STEPS" --batch-size "$BATCH_SIZE" --decay-steps "$LORA_STEPS" --log-every 100 \
  --report-every 100 --checkpoint-every "$LORA_STEPS"

# 5. D1 error-recovery scenes, cameras at the demos' render size.
stage scenes "$GAUNTLET" scenes generate --out "$SCENES" --tasks "$TASK" --variants D1 \
  --per-combo "$PER_COMBO" --image-size "$RENDER_SIZE" --workers 2

# 6. Base and base@adapter on one Serve deployment (the adapter multiplexed), oracle as reference.
stage eval "$GAUNTLET" eval --scenes "$SCENES" --policy scripted --policy "vla=$BASE" \
  --policy "vla=$BASE@$ADAPTER" --out "$RUN" --trials "$TRIALS" --actors "$ACTORS" --horizon "$HORIZON"

# 7. Report: tables, plots, one HTML page.
stage report "$GAUNTLET" report "$RUN" --html

say "done in $((SECONDS - t_all))s; report: $RUN/report/report.html"
echo
echo "stage timings:"
printf '  %s\n' "${TIMINGS[@]}"
echo
echo "training loss (first step -> last step):"
for d in "$BASE" "$ADAPTER"; do
  "${PYTHON:-python3}" - "$d/train/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"  {s['mode']:<5} {s['steps']:>5} steps  {s['first_loss']:.4f} -> {s['final_loss']:.4f}  ({s['out']})")
EOF
done
echo
# The report's per-policy block: from its header to the first blank line.
awk '/^success rate per policy/ {p = 1} p && /^$/ {exit} p' "$LOGS/report.log"
