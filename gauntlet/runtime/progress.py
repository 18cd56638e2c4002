"""Unbuffered progress lines for long work: done/total, rate, ETA.

Job logs (`ray job logs`, CI) are files, not terminals, so a tqdm bar that redraws in place turns
into noise or, worse, sits in a buffer. Progress here is one flushed line per update, throttled.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or inf
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """`update(n)` after each unit of work; prints at most every `min_interval_s` (and at the end)."""

    def __init__(self, total: int, label: str, unit: str = "items", min_interval_s: float = 2.0,
                 stream: TextIO | None = None):
        self.total = total
        self.label = label
        self.unit = unit
        self.min_interval_s = min_interval_s
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = time.monotonic()
        self._last_print = 0.0
        self.extra = ""

    @property
    def rate_per_s(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate_per_s
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"[{self.label}] {self.done}/{self.total} {self.unit} ({pct:.0f}%) "
                f"{rate * 60:.1f} {self.unit}/min, ETA {format_duration(eta)}")
        return f"{text} {self.extra}".rstrip()

    def update(self, n: int = 1, extra: str | None = None) -> None:
        self.done += n
        if extra is not None:
            self.extra = extra
        now = time.monotonic()
        if self.done >= self.total or now - self._last_print >= self.min_interval_s:
            self._last_print = now
            print(self.line(), file=self.stream, flush=True)
