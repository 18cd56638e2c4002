"""Per-replica serving metrics: exported through Ray's metrics and kept locally for `stats()`.

Ray's metrics (Prometheus, dashboard) are what operators watch; the local copy is what a benchmark or
test asks a replica for, so both read the same numbers. Batches are recorded on the replica's
inference thread, requests and snapshots on its event loop: a lock keeps a snapshot consistent.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
_MS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]


@dataclass
class ReplicaStats:
    policy: str  # policy name, the metrics' tag
    batch_sizes: Counter = field(default_factory=Counter)  # real batch size -> count
    requests: Counter = field(default_factory=Counter)  # status -> count
    queue_wait_ms_sum: float = 0.0
    inference_ms_sum: float = 0.0
    batches: int = 0

    def __post_init__(self) -> None:
        from ray.util import metrics

        self._lock = threading.Lock()
        tags = {"policy": self.policy}
        self._batch = metrics.Histogram("gauntlet_batch_size", "requests per executed batch",
                                        boundaries=_BATCH_BOUNDARIES, tag_keys=("policy",))
        self._wait = metrics.Histogram("gauntlet_queue_wait_ms", "time a request waited for its batch",
                                       boundaries=_MS_BOUNDARIES, tag_keys=("policy",))
        self._infer = metrics.Histogram("gauntlet_inference_ms", "policy.infer time per batch",
                                        boundaries=_MS_BOUNDARIES, tag_keys=("policy",))
        self._count = metrics.Counter("gauntlet_requests_total", "requests by status",
                                      tag_keys=("policy", "status"))
        for m in (self._batch, self._wait, self._infer):
            m.set_default_tags(tags)

    def record_batch(self, size: int, waits_ms: list[float], inference_ms: float) -> None:
        with self._lock:
            self.batches += 1
            self.batch_sizes[size] += 1
            self.inference_ms_sum += inference_ms
            self.queue_wait_ms_sum += sum(waits_ms)
        self._batch.observe(size)
        self._infer.observe(inference_ms)
        for w in waits_ms:
            self._wait.observe(w)

    def record_request(self, status: str) -> None:
        with self._lock:
            self.requests[status] += 1
        self._count.inc(tags={"policy": self.policy, "status": status})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        served = sum(size * n for size, n in self.batch_sizes.items())
        return {
            "policy": self.policy,
            "batches": self.batches,
            "batch_sizes": {int(k): int(v) for k, v in sorted(self.batch_sizes.items())},
            "mean_batch_size": served / self.batches if self.batches else 0.0,
            "max_batch_size_seen": max(self.batch_sizes) if self.batch_sizes else 0,
            "requests": dict(self.requests),
            "mean_queue_wait_ms": self.queue_wait_ms_sum / served if served else 0.0,
            "mean_inference_ms": self.inference_ms_sum / self.batches if self.batches else 0.0,
        }
