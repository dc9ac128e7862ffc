"""Peak memory of a piece of work, for the benchmarks: on CUDA the allocator's peak above what was
allocated before; on the CPU the resident set sampled every millisecond on a thread, above where
it started (run the work in a fresh process for a number that means something).

    with PeakMemory(device) as peak:
        work()
    peak.bytes
"""

from __future__ import annotations

import resource
import threading
import time

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


class PeakMemory:
    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self.bytes = 0
        self._samples: list[int] = []
        self._done = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            self._before = rss_bytes()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self._samples.append(rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc_info: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self._before
        else:
            self._done.set()
            self._sampler.join()
            self.bytes = max([*self._samples, rss_bytes()]) - self._before
