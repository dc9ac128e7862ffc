"""The progress bar of a run on stderr (tqdm): images done, a bar, images/s and the time left."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A tqdm bar on stderr, drawn only on a terminal (logs and pipes get the report lines alone).
    Call ``clear`` before printing anything else so that no line starts with the bar.

    ``update`` counts work done now; ``skip`` counts work found done by an earlier run. The bar
    appears when the first work is done, counting that work and the skipped work as already
    there: the rate and the time left come from work done after the model's warm-up (the first
    batch), not from the warm-up itself or from an earlier run.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label = total, label
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = self.skipped = 0
        self._bar: Any = None  # a tqdm bar once work is done

    @property
    def finished(self) -> int:
        return self.done + self.skipped

    def clear(self) -> None:
        """Erase the bar (it comes back at the next update)."""
        if self._bar is not None:
            self._bar.clear()

    def skip(self, count: int) -> None:
        self.skipped += count
        if self._bar is not None:
            self._bar.update(count)

    def update(self, count: int) -> None:
        self.done += count
        if not self.enabled or count == 0:
            return
        if self._bar is None:  # the first work done: the clock starts now
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.finished, desc=self.label, unit="img", file=self.stream,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1, leave=True,
            )  # fmt: skip
            self._bar.refresh()
            return
        self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
