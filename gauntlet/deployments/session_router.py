"""Session affinity for policy deployments: a request that names a session reaches the replica that
session was first given, for as long as that replica lives.

A policy with per-episode memory (PolicyMetadata.episode_memory: BC-RNN's hidden state, the scripted
oracle's experts) keeps it in one replica's process. Serve's default router (power of two choices)
sends each request to whichever of two random replicas has the shorter queue, so with `--replicas N`
an episode's next request would land on a replica that never saw it. Clients of such a policy send
their requests with a Serve session id (`handle.options(session_id=...)`); this router pins each
session to one replica:

- the first request of a session goes where power of two choices would send it (the shorter cached
  queue of two random replicas), and the session stays there: while that replica is busy its
  requests wait for it (with Serve's backoff), they never go elsewhere;
- when the replica leaves the deployment (it died, or was scaled away) its sessions are pinned anew
  on their next request. The memory they had is gone; the policy's answers say so (EPISODE_CALLS_KEY)
  and the client restarts those episodes (see platform/eval/episode.py);
- requests without a session keep plain power-of-two-choices load balancing.

A chosen replica is handed to the very request it was chosen for (Serve's exact matching), never to
whichever request has waited longest as the default router's FIFO matching does: that would send a
session's request to a replica it is not pinned to.

Pins live in each caller's process (every DeploymentHandle has its own router), so they cost one
small entry per session per caller, bounded by MAX_SESSIONS (least recently used dropped first).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import (
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

# Sessions one caller's router remembers. A rollout actor uses one session per served policy; the
# bound only matters for callers that name many (Serve's proxy, which passes each request's session
# header (policies.remote.SESSION_HEADER) on as its session id; an ingress replica, one per episode).
MAX_SESSIONS = 65536


class SessionAffinityRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    """Power of two choices, except that requests naming a session stick to one replica."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pins: OrderedDict[str, ReplicaID] = OrderedDict()  # session id -> its replica

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        session = pending_request.metadata.session_id if pending_request is not None else ""
        if not session:
            return self._two_choices(pending_request)
        replica = self._pinned(session)
        if replica is None:
            replica = self._place(pending_request)
            if replica is None:
                return []
            self._pins[session] = replica.replica_id
            while len(self._pins) > MAX_SESSIONS:
                self._pins.popitem(last=False)
        # Its one replica busy (queue full) or not answering a probe: back off and ask it again.
        pending_request.routing_context.should_backoff = True
        return [[replica]]

    def _pinned(self, session: str) -> RunningReplica | None:
        replica_id = self._pins.get(session)
        replica = self.curr_replicas.get(replica_id) if replica_id is not None else None
        if replica is not None:
            self._pins.move_to_end(session)
        return replica

    def _place(self, pending_request: PendingRequest) -> RunningReplica | None:
        """A new session's replica: of two random candidates, the one with the shorter cached queue
        (an unknown queue counts as empty; ties go to the first, already in random order)."""
        ranks = self._two_choices(pending_request)
        if not ranks:
            return None
        cache = self.replica_queue_len_cache
        return min(ranks[0], key=lambda r: cache.get(r.replica_id) or 0)

    def _two_choices(self, pending_request: PendingRequest | None) -> list[list[RunningReplica]]:
        """Serve's power of two choices: candidates by multiplexed model id (LoRA adapters) or
        locality, then two of them at random, in random order."""
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            ids = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        replicas = self.curr_replicas
        chosen = [replicas[i] for i in random.sample(list(ids), min(2, len(ids))) if i in replicas]
        return [chosen] if chosen else []


def request_router_config() -> Any:
    """The deployment option that puts SessionAffinityRouter in front of a policy deployment."""
    from ray.serve.config import RequestRouterConfig

    return RequestRouterConfig(request_router_class=SessionAffinityRouter)
