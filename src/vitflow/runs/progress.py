"""A one-line progress report on stderr (no dependency): images done, images/s, time left."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A one-line progress report on stderr, redrawn at most twice a second; drawn only on a
    terminal (logs and pipes get the report lines alone). Call :meth:`clear` before printing
    anything else so that no line starts with the bar.

    ``update`` counts work done now; ``skip`` counts work found done by an earlier run (it counts
    toward the total but not toward the rate, so the time left stays honest on a resumed run).
    """

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label = total, label
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.skipped, self.start, self.last = 0, 0, time.monotonic(), 0.0
        self.drawn = False

    def clear(self) -> None:
        """Erase the bar (it comes back at the next update)."""
        if self.enabled and self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False

    def skip(self, count: int) -> None:
        self.skipped += count
        self.update(0)

    def line(self) -> str:
        """``label: done/total images (rate img/s, time left)``."""
        now = time.monotonic()
        rate = self.done / max(now - self.start, 1e-9)
        finished = self.done + self.skipped
        text = f"{self.label}: {finished}/{self.total} images ({rate:.1f} img/s"
        if 0 < finished < self.total and rate > 0:
            text += f", {_duration((self.total - finished) / rate)} left"
        return text + ")"

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.5 or self.done + self.skipped >= self.total):
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self.last, self.drawn = now, True

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
