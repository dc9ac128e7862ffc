"""A one-line progress report on stderr (no dependency)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress report on stderr, redrawn at most twice a second."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.done, self.start, self.last = 0, time.monotonic(), 0.0

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.5 or self.done >= self.total):
            rate = self.done / max(now - self.start, 1e-9)
            self.stream.write(f"\r{self.label}: {self.done}/{self.total} images ({rate:.1f} img/s)")
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
