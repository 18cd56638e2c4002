"""An LRU cache of whole episodes' PNG bytes, capped in bytes and shared by a loader's threads.

A thread that misses reads the episode outside the lock (reads of different episodes run in
parallel); others asking for the same episode meanwhile wait for that read instead of repeating it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from gauntlet.data.dataset_reader import Dataset


class EpisodeImageCache:
    """LRU cache of whole episodes' PNG bytes, capped in bytes; thread-safe."""

    def __init__(self, ds: Dataset, cameras: list[str], cap_bytes: int):
        self.ds = ds
        self.cameras = cameras
        self.cap_bytes = cap_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[int, tuple[dict[str, list[bytes]], int]] = OrderedDict()
        self._loading: dict[int, threading.Event] = {}  # episodes being read right now
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, episode: int) -> dict[str, list[bytes]]:
        event: threading.Event | None = None  # set when this thread is the one reading the episode
        while event is None:
            with self._lock:
                item = self._items.get(episode)
                if item is not None:
                    self._items.move_to_end(episode)
                    self.hits += 1
                    return item[0]
                loading = self._loading.get(episode)
                if loading is None:  # this thread reads it; others asking meanwhile wait for it
                    event = self._loading[episode] = threading.Event()
                    self.misses += 1
            if event is None:
                loading.wait()  # then look again (an episode too large to cache is read again)
        try:
            data = self.ds.read_image_bytes(episode, self.cameras)  # outside the lock: parallel reads
            size = sum(len(b) for frames in data.values() for b in frames)
            with self._lock:
                if size <= self.cap_bytes and episode not in self._items:
                    self._items[episode] = (data, size)
                    self.bytes += size
                    while self.bytes > self.cap_bytes and self._items:
                        _, (_, evicted) = self._items.popitem(last=False)
                        self.bytes -= evicted
        finally:
            with self._lock:
                del self._loading[episode]
            event.set()
        return data
