"""The per-episode state a stateful policy keeps on its replica, keyed by `episode_id`.

A bounded LRU: `max_episodes` entries, the least recently stored evicted first (an evicted episode's
next answer says so through its `episode_calls`, and the client restarts it: `EpisodeMemoryLost`).
One store per loaded policy; BC-RNN keeps its recurrent state here, LeRobot's stateful policies their
`select_action` queues and ensembles.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

State = TypeVar("State")


class EpisodeStore(Generic[State]):
    """Episode id -> state. Callers hold `lock` around a whole batch (read every row's state, run the
    model, store the new states), so concurrent batches of one replica never interleave."""

    def __init__(self, max_episodes: int):
        self.max_episodes = max_episodes
        self.lock = threading.Lock()  # a replica may call from several threads
        self._held: OrderedDict[str, State] = OrderedDict()

    def get(self, episode_id: str) -> State | None:
        """The stored state, None for an unknown (or empty) id. Call with `lock` held."""
        return self._held.get(episode_id) if episode_id else None

    def put(self, episode_id: str, state: State) -> None:
        """Stores `state` as the most recent episode, evicting the oldest beyond max_episodes. Call with
        `lock` held."""
        self._held.pop(episode_id, None)
        self._held[episode_id] = state
        while len(self._held) > self.max_episodes:
            self._held.popitem(last=False)

    def reset(self) -> None:
        """Forgets every episode."""
        with self.lock:
            self._held.clear()

    def end_episode(self, episode_id: str) -> None:
        """Forgets one episode (frees its slot early)."""
        with self.lock:
            self._held.pop(str(episode_id), None)

    def __len__(self) -> int:
        return len(self._held)
