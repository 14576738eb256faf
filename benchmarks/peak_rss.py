"""Peak resident memory of this process, sampled from /proc in a thread (shared by the benchmarks)."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time


class PeakRSS:
    """Samples this process's resident memory every few ms while active (bytes), per named phase."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self._stop = interval, threading.Event()
        self.phase, self.phases = "start", {}

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    def _sample(self) -> None:
        rss = self.current()
        self.phases[self.phase] = max(self.phases.get(self.phase, 0), rss)

    def mark(self, phase: str) -> None:
        """Start a new phase; the samples from now on count towards it."""
        self._sample()
        self.phase = phase
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        release_memory()
        self.start = self.current()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def release_memory() -> None:
    gc.collect()
    try:  # hand freed heap back to the OS so every measurement starts from the same floor
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
