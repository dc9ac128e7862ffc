"""A one-line progress report on stderr (no dependency)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress report on stderr, redrawn at most twice a second; drawn only on a
    terminal (logs and pipes get the report lines alone). Call :meth:`clear` before printing
    anything else so that no line starts with the bar."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label = total, label
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.start, self.last = 0, time.monotonic(), 0.0
        self.drawn = False

    def clear(self) -> None:
        """Erase the bar (it comes back at the next update)."""
        if self.enabled and self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.5 or self.done >= self.total):
            rate = self.done / max(now - self.start, 1e-9)
            self.stream.write(f"\r{self.label}: {self.done}/{self.total} images ({rate:.1f} img/s)")
            self.stream.flush()
            self.last, self.drawn = now, True

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
