#!/usr/bin/env bash
# Ray across a Slurm allocation, then Gauntlet commands as Ray jobs, then Ray stopped.
#
#   ray_on_slurm.sh -- gauntlet train --dataset DS --out CKPT --workers 4 --placement SPREAD \
#                   -- gauntlet eval --scenes DB --policy bc_rnn=CKPT --out RUN
#
# Each `--` starts one command; the commands run in order as Ray jobs (`ray job submit`, the log streamed
# here), in the directory this script was started from; the first that fails ends the script (status
# 1). Run it on the allocation's first node (what `sbatch` does with gauntlet.sbatch): that node is
# the head (GCS, dashboard, and a worker raylet with its share of the work), every other node runs a
# worker raylet started with `srun`.
#
# Token auth is on: a fresh token per job directory, in a 0600 file in a 0700 job directory on the shared
# filesystem (the nodes read it through RAY_AUTH_TOKEN_PATH, which srun passes on with the rest of the
# environment). Ray's listeners bind each node's routable address, not 127.0.0.1: the nodes talk to each
# other over the network, so loopback would cut them off. The dashboard (job submission) stays on the
# head's 127.0.0.1. Ray Train's storage (--out) must be on the shared filesystem: every worker writes
# its checkpoints there.
#
# Environment (all optional on Slurm):
#   GAUNTLET_SLURM_NODES     comma-separated node names (default: SLURM_JOB_NODELIST, expanded by scontrol)
#   GAUNTLET_SRUN            how a node's command is launched: "srun" (default) or "local" (every node on
#                            this machine, in its own process group: no Slurm needed; with it, repeated
#                            names in GAUNTLET_SLURM_NODES are several raylets on this host)
#   GAUNTLET_RAY_JOB_DIR     token, addresses and logs (default: SUBMIT_DIR/.gauntlet-ray/JOB_ID)
#   GAUNTLET_RAY_PORT        the head's GCS port (default 6379)
#   GAUNTLET_DASHBOARD_PORT  the head's dashboard / job API port (default 8265)
#   GAUNTLET_RAY_PORT_BASE   when set, node i takes its ports from BASE + 10*i (needed for several
#                            raylets on one host; unset, each node uses Ray's defaults)
#   GAUNTLET_NODE_CPUS       CPUs each raylet offers (default: SLURM_CPUS_PER_TASK, the CPUs each srun
#                            step may use, else SLURM_CPUS_ON_NODE, else Ray's detection); GPUs are
#                            the ones Slurm gives the step (--gpus-per-task), which Ray detects
#   GAUNTLET_WAIT_S          seconds to wait for every node to join (default 300)
#   GAUNTLET_PYTHON          the Python with Gauntlet and Ray installed (default: python on PATH)
set -euo pipefail

log() { echo "[slurm] $*" >&2; }

if [[ "${1:-}" != "--" ]]; then
    echo "usage: $0 -- COMMAND [ARGS...] [-- COMMAND [ARGS...]]..." >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${GAUNTLET_PYTHON:-python}
WAIT_S=${GAUNTLET_WAIT_S:-300}
RAY=$(dirname "$(command -v "$PYTHON")")/ray
LAUNCH=${GAUNTLET_SRUN:-srun}
if [[ "$LAUNCH" == srun ]] && ! command -v srun >/dev/null; then
    echo "no srun on PATH: run inside a Slurm allocation, or set GAUNTLET_SRUN=local to run every node here" >&2
    exit 2
fi
if [[ -n "${GAUNTLET_SLURM_NODES:-}" ]]; then
    IFS=, read -r -a NODES <<<"$GAUNTLET_SLURM_NODES"
elif [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
else
    echo "no nodes: set GAUNTLET_SLURM_NODES or run inside a Slurm allocation" >&2
    exit 2
fi

JOB_DIR=${GAUNTLET_RAY_JOB_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/.gauntlet-ray/${SLURM_JOB_ID:-$$}}
(umask 077 && mkdir -p "$JOB_DIR")
chmod 700 "$JOB_DIR"  # an existing directory too: the token file inside must stay private
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$JOB_DIR/auth_token"
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what an embedded Gauntlet Ray sets for its children) would make
# Ray refuse worker nodes; the token comes from the file above, and no outer cluster is joined.
unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
"$PYTHON" -c 'import sys; from pathlib import Path; from gauntlet.runtime.ray_session import ensure_private_token
ensure_private_token(Path(sys.argv[1]), "slurm")' "$RAY_AUTH_TOKEN_PATH"

GCS_PORT=${GAUNTLET_RAY_PORT:-6379}
DASH_PORT=${GAUNTLET_DASHBOARD_PORT:-8265}
# The address Ray itself picks for this (the head) node: the one the other nodes reach it on.
HEAD_IP=$("$PYTHON" -c 'from ray._private.services import get_node_ip_address; print(get_node_ip_address())')
HEAD="$HEAD_IP:$GCS_PORT"

node_args() {  # node_args INDEX: the `ray start` flags common to every node
    local i=$1 args=(--block --disable-usage-stats)
    local cpus=${GAUNTLET_NODE_CPUS:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-}}}
    [[ -n "$cpus" ]] && args+=(--num-cpus="$cpus")
    if [[ -n "${GAUNTLET_RAY_PORT_BASE:-}" ]]; then
        local p=$((GAUNTLET_RAY_PORT_BASE + 10 * i))
        args+=(--node-manager-port=$p --object-manager-port=$((p + 1)) --dashboard-agent-listen-port=$((p + 2))
               --dashboard-agent-grpc-port=$((p + 3)) --metrics-export-port=$((p + 4))
               --runtime-env-agent-port=$((p + 5)) --min-worker-port=0 --max-worker-port=0)
        ((i == 0)) && args+=(--ray-client-server-port=$((p + 6)))
    fi
    printf '%q ' "${args[@]}"
}

PIDS=()
on_node() {  # on_node NODE LOGFILE COMMAND: runs COMMAND on NODE in the background
    local node=$1 logfile=$2 command=$3
    if [[ "$LAUNCH" == local ]]; then
        setsid bash -c "$command" >"$logfile" 2>&1 </dev/null &
    else
        srun --nodes=1 --ntasks=1 --overlap -w "$node" bash -c "$command" >"$logfile" 2>&1 </dev/null &
    fi
    PIDS+=($!)
}

stop_ray() {
    log "stopping Ray on ${#NODES[@]} node(s)"
    local pid
    for pid in "${PIDS[@]}"; do
        # local: the node's process group (ray start and every daemon it spawned); srun: the step,
        # which Slurm ends with every process in it.
        if [[ "$LAUNCH" == local ]]; then kill -TERM -- "-$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_ray EXIT
trap 'exit 143' TERM INT  # scancel, a time limit: through the EXIT trap

log "head ${NODES[0]} at $HEAD, ${#NODES[@]} node(s), token auth on ($RAY_AUTH_TOKEN_PATH), job dir $JOB_DIR"
on_node "${NODES[0]}" "$JOB_DIR/node0.log" "exec $(printf %q "$RAY") start --head --node-ip-address=$HEAD_IP \
    --port=$GCS_PORT --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=$DASH_PORT $(node_args 0)"
"$PYTHON" "$HERE/ray_jobs.py" wait-port "$HEAD" "$WAIT_S"
for i in "${!NODES[@]}"; do
    ((i == 0)) && continue
    # Each node binds its own routable address (Ray's choice on that node), found from the head's.
    on_node "${NODES[$i]}" "$JOB_DIR/node$i.log" "exec $(printf %q "$RAY") start --address=$HEAD $(node_args "$i")"
done

"$PYTHON" "$HERE/ray_jobs.py" wait-nodes "$HEAD" "${#NODES[@]}" "$WAIT_S"

# The jobs run on the head, in this directory, one after another; the first failure ends the script.
"$PYTHON" "$HERE/ray_jobs.py" submit "http://127.0.0.1:$DASH_PORT" "$PWD" "$WAIT_S" "$@"
