"""Stopping a batch cleanly on SIGINT (Ctrl-C) or SIGTERM (cron, systemd).

The run flow installs a :class:`StopRequest` while it submits and waits: the first signal stops
submitting and gives running items :data:`STOP_GRACE_SECONDS` to finish, a second stops waiting.
Worker processes ignore the signals (the parent ends them); whatever the run started and left is
ended at exit by :func:`end_child_processes`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from typing import Any


def _log() -> logging.Logger:
    return logging.getLogger("imagingflows")


def ignore_stop_signals_in_workers(config: dict) -> None:
    """In a worker process (process/dask runners), Ctrl-C and SIGTERM belong to the parent run,
    which stops submitting, lets running items finish and then ends its workers itself."""
    parent = config.get("parent_pid")
    if parent and os.getpid() != parent and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


#: seconds that running items get to finish after SIGINT/SIGTERM before the run stops without them
STOP_GRACE_SECONDS = 60.0


class StopRequest:
    """Signal handler state: the first SIGINT/SIGTERM stops submitting and lets running items
    finish (up to ``grace`` seconds); a second one stops waiting at once."""

    def __init__(self, grace: float = STOP_GRACE_SECONDS) -> None:
        self.grace, self.signal, self.deadline = grace, None, None

    def __call__(self, signum, frame) -> None:  # noqa: ARG002 - the signal module's signature
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            self.deadline = time.monotonic() + self.grace
            _log().warning("%s received: no new items; running items get %.0f s to finish", self.signal, self.grace)
        else:
            self.deadline = time.monotonic()

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT/SIGTERM while the block runs (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Completions:
    """Futures as they finish, waited for in short slices so a stop request is seen at once."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.pending: dict[int, Any] = {}

    def add(self, future, payload) -> None:
        self.pending[id(future)] = (future, payload)
        register = getattr(future, "_add_prefect_done_callback", None) or future.add_done_callback
        register(self.queue.put)

    def next(self, timeout: float = 0.5):
        """``(future, payload)`` of a finished future, or None after ``timeout``."""
        try:
            future = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return self.pending.pop(id(future), None)


def end_child_processes(timeout: float = 5.0) -> None:
    """Terminate what this process started and left running (Prefect's ephemeral server, local
    Dask or process-pool workers), then kill what does not stop within ``timeout``."""
    try:
        import psutil
    except ImportError:
        return
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
