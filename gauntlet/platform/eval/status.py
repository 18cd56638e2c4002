"""An evaluation run directory's files, and RUN/status.json: the live progress of a run."""

from __future__ import annotations

RUN_MANIFEST = "run.json"  # identity + config of the run (what --resume checks)
STATUS_FILE = "status.json"  # live progress, rewritten atomically as episodes finish
SERVING_STATS_FILE = "serving_stats.json"  # what the policy replicas saw (batch sizes, latencies)
