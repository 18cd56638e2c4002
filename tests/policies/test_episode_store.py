"""The per-episode store stateful policies keep on their replicas (BC-RNN, LeRobot's select_action)."""

from __future__ import annotations

import threading

from gauntlet.policies.episode_store import EpisodeStore


def test_the_least_recently_stored_episode_is_evicted_first() -> None:
    store: EpisodeStore[int] = EpisodeStore(max_episodes=2)
    with store.lock:
        store.put("a", 1)
        store.put("b", 2)
        store.put("a", 3)  # "a" is now the most recent
        store.put("c", 4)
        assert (store.get("a"), store.get("b"), store.get("c")) == (3, None, 4)
    assert len(store) == 2


def test_an_empty_id_holds_nothing_and_episodes_can_be_forgotten() -> None:
    store: EpisodeStore[str] = EpisodeStore(max_episodes=4)
    with store.lock:
        store.put("x", "state")
        store.put("y", "state")
        assert store.get("") is None
    store.end_episode("x")
    assert store.get("x") is None and store.get("y") == "state"
    store.reset()
    assert len(store) == 0


def test_forgetting_waits_for_a_batch_that_holds_the_lock() -> None:
    store: EpisodeStore[int] = EpisodeStore(max_episodes=4)
    forgot = threading.Event()
    with store.lock:
        store.put("a", 1)
        thread = threading.Thread(target=lambda: (store.reset(), forgot.set()))
        thread.start()
        assert not forgot.wait(0.2)  # the batch's read-run-store is not interleaved with a reset
        assert store.get("a") == 1
    thread.join(5)
    assert forgot.is_set() and store.get("a") is None
