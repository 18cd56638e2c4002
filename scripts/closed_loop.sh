#!/usr/bin/env bash
# The closed loop: does recovery data improve recovery? For each task in TASKS (lift and a harder one):
#   nominal expert demos (object state)            -> BC-RNN `nominal`
#   recovery-source scenes (seed REC_SEED) -> the oracle recovering from them, recorded as demos;
#   nominal + recovery demos (data merge)          -> BC-RNN `recovery` (same recipe, steps and batch)
#   held-out scenes (seed EVAL_SEED: other scenes, other starts; error scenes and nominal ones)
#   -> evaluate both on them -> `report compare RUN_recovery RUN_nominal`: McNemar's exact test and
#   Newcombe's paired interval of the difference recovery - nominal (the gain), overall, per origin
#   (injected = the held-out error scenes, nominal = the untouched starts) and per error type.
# Then two small stages that only have to run end to end (no gain expected at their size):
#   the VLA path: a camera dataset (nominal + recovery), a tiny VLA base, a LoRA adapter on it,
#   evaluated on a few held-out scenes; the LeRobot path: the mixed dataset exported to LeRobot v3.0
#   and imported back.
#
#   bash scripts/closed_loop.sh [OUT]        (default OUT: closed_loop_out; `make closed-loop`)
#
# Every knob below can be overridden from the environment, e.g. `STEPS=2000 bash scripts/closed_loop.sh`.
# Both policies see the same number of training windows: STEPS optimizer steps of BATCH_SIZE each;
# their datasets' frame counts are printed. Each stage's full output goes to OUT/logs/<stage>.log;
# a re-run replaces OUT.
set -euo pipefail

caller_pwd=$PWD
cd "$(dirname "$0")/.."

OUT=${1:-closed_loop_out}
case "$OUT" in /*) ;; *) OUT="$caller_pwd/$OUT" ;; esac
GAUNTLET=${GAUNTLET:-.venv/bin/gauntlet}
PYTHON=${PYTHON:-.venv/bin/python}
export MUJOCO_GL=${MUJOCO_GL:-egl}

TASKS=${TASKS:-"lift square"}
NOMINAL_DEMOS=${NOMINAL_DEMOS:-5}    # expert demos per task and variant (D0, D1)
REC_PER_COMBO=${REC_PER_COMBO:-3}    # recovery-source scenes per task x variant x error type
REC_TRIALS=${REC_TRIALS:-2}          # oracle recoveries recorded per source scene (noisy, distinct)
REC_NOISE=${REC_NOISE:-0.05}         # the oracle's action noise for those recoveries
EVAL_PER_COMBO=${EVAL_PER_COMBO:-3}  # held-out error scenes per task x variant x error type (8 types)
EVAL_NOMINAL=${EVAL_NOMINAL:-10}     # held-out nominal scenes per task x variant
STEPS=${STEPS:-1000}                 # BC-RNN optimizer steps, A and B alike
BATCH_SIZE=${BATCH_SIZE:-32}
HORIZON=${HORIZON:-250}              # evaluation steps per episode
TRIALS=${TRIALS:-1}                  # the BC-RNN and the restored scenes are deterministic
ACTORS=${ACTORS:-2}
WORKERS=${WORKERS:-2}                # scene-generation processes
DEMO_SEED=${DEMO_SEED:-10000}        # nominal demos' first env seed
REC_SEED=${REC_SEED:-1000}           # recovery-source scenes
EVAL_SEED=${EVAL_SEED:-2000}         # held-out evaluation scenes
VLA_TASK=${VLA_TASK:-lift}
VLA_DEMOS=${VLA_DEMOS:-3}            # camera demos per variant for the VLA stage
VLA_RECOVERIES=${VLA_RECOVERIES:-6}  # camera recoveries for the VLA stage
VLA_STEPS=${VLA_STEPS:-60}           # base and LoRA steps each
VLA_SCENES=${VLA_SCENES:-6}          # held-out scenes the VLA and its adapter are evaluated on
IMAGE_SIZE=${IMAGE_SIZE:-32}         # what the tiny VLA preset consumes
RENDER_SIZE=${RENDER_SIZE:-64}       # camera size of every env (scenes, demos): one env config, so data merges
SKIP_VLA=${SKIP_VLA:-0}              # 1: leave out the VLA and LeRobot stages

REC_SCENES="$OUT/scenes_recovery_source"
EVAL_SCENES="$OUT/scenes_heldout"
LOGS="$OUT/logs"

ts() { date '+%Y-%m-%d %H:%M:%S'; }
say() { echo "[closed-loop $(ts)] $*"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

TIMINGS=()
CURRENT=""
trap 'rc=$?; if [ -n "$CURRENT" ]; then say "stage $CURRENT FAILED (exit $rc); full output: $LOGS/$CURRENT.log"; fi' EXIT

# stage NAME CMD...: runs CMD, its output to the terminal (minus Ray Train's per-report metric dumps
# and robosuite's import warnings) and, complete, to $LOGS/NAME.log; records wall time and load.
stage() {
  local name=$1; shift
  CURRENT=$name
  say ">>> $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$LOGS/$name.log" \
    | { grep --line-buffered -vE 'Reporting training result|robosuite WARNING' || true; }
  local dt=$((SECONDS - t0))
  TIMINGS+=("$(printf '%-24s %5ds   load after: %s' "$name" "$dt" "$(load)")")
  say "<<< $name done in ${dt}s"
  CURRENT=""
}

# frames DS: the dataset's frame count (meta/info.json).
frames() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/meta/info.json"))["total_frames"])' "$1"; }

train_bc_rnn() {  # DATASET OUT: the one BC-RNN recipe both policies share
  "$GAUNTLET" train --policy bc_rnn --mode full --dataset "$1" --out "$2" --steps "$STEPS" \
    --batch-size "$BATCH_SIZE" --learning-rate 1e-3 --weight-decay 0 --seed 0 \
    --checkpoint-every "$STEPS" --keep-checkpoints 1 --log-every $((STEPS / 4)) --report-every $((STEPS / 4))
}

eval_bc_rnn() {  # TASK CKPT RUN
  "$GAUNTLET" eval --scenes "$EVAL_SCENES" --tasks "$1" --policy "bc_rnn=$2" --out "$3" \
    --trials "$TRIALS" --actors "$ACTORS" --horizon "$HORIZON"
}

say "closed loop on $TASKS -> $OUT (load $(load))"
say "nominal demos $NOMINAL_DEMOS per variant; recovery sources $REC_PER_COMBO per combo x $REC_TRIALS trials" \
    "(seed $REC_SEED); held out $EVAL_PER_COMBO per combo + $EVAL_NOMINAL nominal per variant (seed $EVAL_SEED);" \
    "BC-RNN $STEPS steps x batch $BATCH_SIZE; horizon $HORIZON"
rm -rf "$OUT"
mkdir -p "$OUT" "$LOGS"
t_all=$SECONDS
task_list=${TASKS// /,}

# 1. Scenes. Recovery data comes from one database, evaluation from another built with another seed:
#    no held-out scene (nor its start state) is ever a source of recovery data.
stage scenes_recovery_source "$GAUNTLET" scenes generate --out "$REC_SCENES" --tasks "$task_list" \
  --per-combo "$REC_PER_COMBO" --seed "$REC_SEED" --image-size "$RENDER_SIZE" --workers "$WORKERS"
stage scenes_heldout "$GAUNTLET" scenes generate --out "$EVAL_SCENES" --tasks "$task_list" \
  --per-combo "$EVAL_PER_COMBO" --seed "$EVAL_SEED" --image-size "$RENDER_SIZE" --workers "$WORKERS"
stage scenes_heldout_nominal "$GAUNTLET" scenes generate --out "$EVAL_SCENES" --tasks "$task_list" \
  --error-types none --nominal --per-combo "$EVAL_NOMINAL" --seed "$EVAL_SEED" --image-size "$RENDER_SIZE" \
  --workers "$WORKERS"
stage heldout_check "$PYTHON" - "$REC_SCENES" "$EVAL_SCENES" <<'EOF'
import sys
from gauntlet.envs.scene_db import SceneDB
rec, held = (SceneDB.open(p).metadata() for p in sys.argv[1:3])
shared = set(zip(rec["task"], rec["seed"])) & set(zip(held["task"], held["seed"]))
print(f"recovery-source scenes {len(rec)}, held-out scenes {len(held)}; (task, env seed) in both: {len(shared)}")
print(held.groupby(["task", "origin"]).size().to_string())
sys.exit(1 if shared else 0)
EOF

# 2-5. Per task: demos, recoveries, the two datasets, the two policies, their evaluations, the paired
#      comparison.
for task in $TASKS; do
  T="$OUT/$task"
  mkdir -p "$T"
  stage "${task}_nominal_demos" "$GAUNTLET" data collect --task "$task" --variant D0,D1 \
    --episodes "$NOMINAL_DEMOS" --object-state --render-size "$RENDER_SIZE" --horizon 400 --seed "$DEMO_SEED" \
    --out "$T/nominal"
  stage "${task}_heldout_check" "$PYTHON" - "$T/nominal" "$EVAL_SCENES" "$task" <<'EOF'
import sys
from gauntlet.data.dataset_reader import open_dataset
from gauntlet.envs.scene_db import SceneDB
demos, held = open_dataset(sys.argv[1]).episodes, SceneDB.open(sys.argv[2]).metadata()
shared = set(demos["seed"].dropna().astype(int)) & set(held.loc[held["task"] == sys.argv[3], "seed"])
print(f"{len(demos)} nominal demos; env seeds shared with held-out {sys.argv[3]} scenes: {len(shared)}")
sys.exit(1 if shared else 0)
EOF
  stage "${task}_recovery_demos" "$GAUNTLET" data collect --from-scenes "$REC_SCENES" --tasks "$task" \
    --object-state --trials "$REC_TRIALS" --noise-std "$REC_NOISE" --horizon 300 --out "$T/recovery"
  stage "${task}_merge" "$GAUNTLET" data merge "$T/nominal" "$T/recovery" --out "$T/mixed"
  stage "${task}_stats" bash -c "'$GAUNTLET' data stats '$T/nominal' && '$GAUNTLET' data stats '$T/mixed'"
  say "$task: policy nominal trains on $(frames "$T/nominal") frames, policy recovery on" \
      "$(frames "$T/mixed") (nominal + recovery); each sees $STEPS x $BATCH_SIZE = $((STEPS * BATCH_SIZE)) windows"
  stage "${task}_train_nominal" train_bc_rnn "$T/nominal" "$T/bc_rnn_nominal"
  stage "${task}_train_recovery" train_bc_rnn "$T/mixed" "$T/bc_rnn_recovery"
  stage "${task}_eval_nominal" eval_bc_rnn "$task" "$T/bc_rnn_nominal" "$T/run_nominal"
  stage "${task}_eval_recovery" eval_bc_rnn "$task" "$T/bc_rnn_recovery" "$T/run_recovery"
  # RUN_A = recovery, RUN_B = nominal: the table's "A - B" is the gain of the recovery data.
  stage "${task}_compare" "$GAUNTLET" report compare "$T/run_recovery" "$T/run_nominal" --out "$T/compare"
done

# 6. The VLA path: camera demos (nominal + recovery), a tiny base, a LoRA adapter on the mixed data,
#    both evaluated (the adapter multiplexed on the base's deployment) on a few held-out scenes.
if [ "$SKIP_VLA" != 1 ]; then
  V="$OUT/vla"
  mkdir -p "$V/adapters"
  stage vla_nominal_demos "$GAUNTLET" data collect --task "$VLA_TASK" --variant D0,D1 --episodes "$VLA_DEMOS" \
    --cameras --image-size "$IMAGE_SIZE" --render-size "$RENDER_SIZE" --seed "$DEMO_SEED" --out "$V/nominal"
  stage vla_recovery_demos "$GAUNTLET" data collect --from-scenes "$REC_SCENES" --tasks "$VLA_TASK" \
    --cameras --image-size "$IMAGE_SIZE" --limit "$VLA_RECOVERIES" --horizon 300 --out "$V/recovery"
  stage vla_merge "$GAUNTLET" data merge "$V/nominal" "$V/recovery" --out "$V/mixed"
  stage vla_stats bash -c "'$GAUNTLET' data stats '$V/nominal' && '$GAUNTLET' data stats '$V/mixed'"
  stage vla_train_base "$GAUNTLET" train --dataset "$V/nominal" --out "$V/base" --mode full --steps "$VLA_STEPS" \
    --batch-size "$BATCH_SIZE" --checkpoint-every "$VLA_STEPS" --log-every $((VLA_STEPS / 2)) \
    --report-every "$VLA_STEPS"
  stage vla_train_lora "$GAUNTLET" train --dataset "$V/mixed" --out "$V/adapters/mixed" --mode lora \
    --base "$V/base" --steps "$VLA_STEPS" --batch-size "$BATCH_SIZE" --checkpoint-every "$VLA_STEPS" \
    --log-every $((VLA_STEPS / 2)) --report-every "$VLA_STEPS"
  stage vla_eval "$GAUNTLET" eval --scenes "$EVAL_SCENES" --tasks "$VLA_TASK" --limit "$VLA_SCENES" \
    --policy "vla=$V/base" --policy "vla=$V/base@$V/adapters/mixed" --out "$V/run" --actors "$ACTORS" \
    --horizon 100
  stage vla_report "$GAUNTLET" report "$V/run"

  # 7. The LeRobot path: the mixed dataset (with its recovery tags) out to LeRobot v3.0 and back.
  stage lerobot_export "$GAUNTLET" data export-lerobot "$V/mixed" --out "$V/lerobot"
  stage lerobot_import "$GAUNTLET" data import-lerobot "$V/lerobot" --out "$V/from_lerobot"
  stage lerobot_check "$PYTHON" - "$V/mixed" "$V/from_lerobot" <<'EOF'
import sys
from gauntlet.data.dataset_reader import open_dataset
a, b = (open_dataset(p).episodes for p in sys.argv[1:3])
cols = ["recovery", "scene_id", "error_type", "origin"]
same = len(a) == len(b) and a[cols].reset_index(drop=True).equals(b[cols].reset_index(drop=True))
print(f"episodes out {len(a)}, back {len(b)}; recovery episodes {int(a['recovery'].sum())}; tags equal: {same}")
sys.exit(0 if same else 1)
EOF
fi

say "done in $((SECONDS - t_all))s (load $(load))"
echo
echo "stage timings:"
printf '  %s\n' "${TIMINGS[@]}"
for task in $TASKS; do
  echo
  echo "== $task: A = BC-RNN on nominal + recovery demos, B = the same recipe on nominal demos only =="
  grep -E '^\[data merge\] .* frames \(' "$LOGS/${task}_merge.log" || true
  for side in recovery nominal; do
    "$PYTHON" - "$OUT/$task/bc_rnn_$side/train/summary.json" "$side" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"  {sys.argv[2]:<8} {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}")
EOF
  done
  # rows overall, per origin (injected = held-out error scenes, nominal) and the coverage line
  awk '/^paired comparison/ {p = 1} p' "$LOGS/${task}_compare.log" | grep -E 'paired|policy A|^-|all +all|coverage'
done
if [ "$SKIP_VLA" != 1 ]; then
  echo
  echo "== VLA path ($VLA_TASK, $VLA_SCENES held-out scenes; runs end to end, no gain expected at this size) =="
  awk '/^success rate per policy/ {p = 1} p && /^$/ {exit} p' "$LOGS/vla_report.log"
  tail -n 1 "$LOGS/lerobot_check.log"
fi
