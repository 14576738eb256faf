"""Pick Prefect's task runner from ``--runner thread|process|dask[=tcp://host:8786]``.

With ``--item-timeout`` the process runner gets :class:`TimeoutProcessPool` in place of Python's
``ProcessPoolExecutor`` (which cannot end one worker without breaking the whole pool): each item
has ``item_timeout`` seconds from the moment a worker starts it; a worker still busy then is
killed (SIGKILL, so a call stuck in C ends too) and a fresh one started, and the item's future
fails with :class:`ItemTimedOut`. The thread runner cannot end a thread: flows/run.py reports
such an item failed at its deadline and discards its result when it returns.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import multiprocessing
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import wait as wait_connections
from typing import Any, Callable


class UsageError(ValueError):
    """Nothing can run (bad options, empty input, unreadable weights...): exit code 2."""


class ItemTimedOut(Exception):
    """An item ran past ``--item-timeout``; the message is its reason in run.json."""


def timeout_reason(seconds: float, how: str) -> str:
    return f"timed out after {seconds:g} s (--item-timeout); {how}"


def thread_timeout_reason(seconds: float) -> str:
    return timeout_reason(seconds, "the thread runner cannot stop a running item (a thread inside a C call "
                                   "cannot be interrupted): it was left to finish and its result discarded; "
                                   "--runner process ends it")


class ThreadDeadlines:
    """Thread runner with ``--item-timeout``: when each running item started, and which items the
    flow gave up on. Keys are ``(output folder, item id)`` (one run per folder: the output lock).

    :meth:`abandon` (the flow, at the deadline) and :meth:`finish` (the item's task, when it
    returns) race under one lock: whichever comes first decides whether the result stands.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[tuple[str, str], float] = {}
        self._abandoned: set[tuple[str, str]] = set()

    def begin(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._started[key] = time.monotonic()
            self._abandoned.discard(key)

    def overdue(self, key: tuple[str, str], timeout: float) -> bool:
        with self._lock:
            start = self._started.get(key)
            return start is not None and key not in self._abandoned and time.monotonic() - start >= timeout

    def abandon(self, key: tuple[str, str]) -> bool:
        """True when the item is still running (it is now given up on); False when it just finished."""
        with self._lock:
            if key not in self._started:
                return False
            self._abandoned.add(key)
            return True

    def finish(self, key: tuple[str, str]) -> bool:
        """True when the item's result stands; False when the flow had given up on it."""
        with self._lock:
            self._started.pop(key, None)
            if key in self._abandoned:
                self._abandoned.discard(key)
                return False
            return True


_DEADLINES = ThreadDeadlines()


def thread_deadlines() -> ThreadDeadlines:
    """This process's registry (flows reach module state through functions: runners pickle them)."""
    return _DEADLINES


#: extra threads a thread-runner batch with --item-timeout keeps per worker for items it gave up
#: on (they run on until they return), so the batch goes on while they do
ABANDONED_THREADS_PER_WORKER = 2


def make_task_runner(runner: str = "thread", workers: int = 1, item_timeout: float | None = None):
    """The Prefect task runner for ``--runner`` / ``--workers`` / ``--item-timeout``; a bad value is a
    :class:`UsageError`. Cheap: no worker starts until the runner is entered and sent a task."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if item_timeout is not None and not item_timeout > 0:
        raise UsageError(f"--item-timeout must be a positive number of seconds (got {item_timeout!r})")
    kind, _, address = runner.partition("=")
    if item_timeout is not None and kind == "dask":
        raise UsageError("--item-timeout is not available with --runner dask: a Dask task cannot be ended from "
                         "outside its worker yet; use --runner process (a killed worker is replaced)")
    if kind == "thread":
        spare = workers * ABANDONED_THREADS_PER_WORKER if item_timeout is not None else 0
        return ThreadPoolTaskRunner(max_workers=workers + spare)
    if kind == "process":
        if item_timeout is not None:
            return TimeoutProcessPoolTaskRunner(max_workers=workers, item_timeout=item_timeout)
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise UsageError("--runner dask needs prefect-dask: pip install 'imagingflows[dask]'") from e
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    raise UsageError(f"unknown runner {runner!r}; expected thread, process or dask[=tcp://host:port]")


def _task_runner_class():
    from prefect.task_runners import ProcessPoolTaskRunner, _initialize_process_pool_worker

    class _TimeoutProcessPoolTaskRunner(ProcessPoolTaskRunner):
        """Prefect's process runner (spawned workers, log/event forwarding) on a :class:`TimeoutProcessPool`."""

        def __init__(self, max_workers: int | None = None, item_timeout: float | None = None, **kwargs: Any):
            super().__init__(max_workers=max_workers, **kwargs)
            self.item_timeout = item_timeout

        def duplicate(self):
            twin = super().duplicate()
            twin.item_timeout = self.item_timeout
            return twin

        def __enter__(self):
            super().__enter__()
            self._executor.shutdown(wait=True)  # Prefect's pool has started no worker yet
            # no shared log/event queue: a worker killed while writing to it could leave it locked
            # or half-written for every other worker; each worker sends to the API itself
            self._executor = TimeoutProcessPool(
                self._max_workers, self.item_timeout, env=_server_env(), initializer=_initialize_process_pool_worker,
                initargs=(None, self._initializer, self._initargs))
            return self

    return _TimeoutProcessPoolTaskRunner


def _server_env() -> dict[str, str]:
    """``PREFECT_API_URL`` of the server this process uses, for pool workers: without it, each worker
    in ephemeral mode starts a server of its own, which a killed worker would leave running."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the one this process started (a per-port singleton)
        server.start()  # a no-op when running
        url = server.api_url
    return {"PREFECT_API_URL": url}


def TimeoutProcessPoolTaskRunner(max_workers: int, item_timeout: float):  # noqa: N802 - a class, built on use
    """A Prefect process runner whose workers are ended and replaced when an item overruns."""
    return _task_runner_class()(max_workers=max_workers, item_timeout=item_timeout)


#: modules a pool worker imports before it says it is ready, so the first item's clock does not
#: include them (the item's own model load does count)
PRELOAD = ("prefect.task_engine", "imagingflows.flows.run")


#: seconds a call may take from its hand-over to a worker until the item's own code starts (Prefect's
#: task engine setting up; the item's clock starts at :func:`item_started`)
START_ALLOWANCE_SECONDS = 120.0

_POOL_CONN = None  # in a TimeoutProcessPool worker: its pipe to the pool


def item_started() -> None:
    """Called by an item's task as its own code starts: in a :class:`TimeoutProcessPool` worker the
    item's ``timeout`` counts from now. Anywhere else it does nothing."""
    if _POOL_CONN is not None:
        _POOL_CONN.send(("started", None))


def _worker_main(conn, env: dict[str, str], initializer: Callable | None, initargs: tuple,
                 preload: tuple[str, ...]) -> None:
    """A pool worker: set up, say ready, then run calls (``fn() -> bytes``) until told to stop."""
    import importlib
    import os

    global _POOL_CONN
    _POOL_CONN = conn
    os.environ.update(env)

    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent run handles stops and ends its workers
        signal.signal(sig, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    for name in preload:
        importlib.import_module(name)
    conn.send(("ready", None))
    while True:
        try:
            fn = conn.recv()
        except EOFError:
            return
        if fn is None:
            return
        try:
            message = ("done", fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's future
            message = ("error", e)
        try:
            conn.send(message)
        except Exception as e:  # noqa: BLE001 - an exception that cannot be pickled
            conn.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]} ({e})")))


class _Worker:
    def __init__(self, ctx, env, initializer, initargs) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, env, initializer, initargs, PRELOAD))
        self.proc.start()
        child.close()
        self.ready = self.dead = False
        self.future: concurrent.futures.Future | None = None
        self.deadline = 0.0

    def end(self, kill: bool = False) -> None:
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class TimeoutProcessPool:
    """A process pool (``submit(fn) -> Future``, ``shutdown``) that gives each call ``timeout``
    seconds from the moment its item starts (:func:`item_started`; a call that never says so gets
    :data:`START_ALLOWANCE_SECONDS` more from its hand-over); an overrunning worker is killed and replaced,
    and the call's future fails with :class:`ItemTimedOut`. A worker that dies otherwise fails
    its call with ``RuntimeError`` naming the exit code, and is replaced too.

    Workers are spawned (as Prefect's own process runner does) and keep their module state
    (the backend's model cache) from call to call, like any pool worker.
    """

    def __init__(self, max_workers: int, timeout: float, *, env: dict[str, str] | None = None,
                 initializer: Callable | None = None, initargs: tuple = ()) -> None:
        self.timeout = float(timeout)
        self._ctx = multiprocessing.get_context("spawn")
        self._init = (dict(env or {}), initializer, initargs)
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._closing = False
        self.replaced = 0  # workers killed at a deadline and started again
        self._size = max(1, max_workers)
        self._workers: list[_Worker] = []
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        """Spawn the workers and the pool's thread, on the first call: Prefect enters a copy of the
        flow's task runner around every task inside a worker too, and a pool that spawned there at
        once would cost each item a worker start (seconds of imports) and its shutdown."""
        self._workers = [self._new_worker() for _ in range(self._size)]
        self._thread = threading.Thread(target=self._loop, name="imagingflows-timeout-pool", daemon=True)
        self._thread.start()
        # an interpreter leaving without shutdown() must not wait on busy workers (multiprocessing
        # joins its children at exit; this runs before that)
        atexit.register(self._kill_all)

    def _kill_all(self) -> None:
        for w in list(self._workers):
            with contextlib.suppress(Exception):
                w.proc.kill()

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, *self._init)

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot submit to a pool that is shutting down")
            self._queue.append((future, fn))
            if self._thread is None:
                self._start()
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closing = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
        if wait and self._thread is not None:
            self._thread.join()
            atexit.unregister(self._kill_all)

    # ------------------------------------------------------------------ the pool's own thread

    def _loop(self) -> None:
        while True:
            with self._lock:
                busy = any(w.future is not None for w in self._workers)
                if self._closing and not busy and not self._queue:
                    break
                self._dispatch()
            self._poll(timeout=0.1)
        for w in self._workers:
            w.end()

    def _dispatch(self) -> None:
        for w in self._workers:
            while w.ready and w.future is None and self._queue:
                future, fn = self._queue.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    w.conn.send(fn)
                except (OSError, ValueError) as e:
                    future.set_exception(RuntimeError(f"could not hand the call to a worker: {e}"))
                    continue
                w.future, w.deadline = future, time.monotonic() + self.timeout + START_ALLOWANCE_SECONDS

    def _poll(self, timeout: float) -> None:
        by_conn = {w.conn: w for w in self._workers}
        by_sentinel = {w.proc.sentinel: w for w in self._workers}
        for ready in wait_connections([*by_conn, *by_sentinel], timeout=timeout):
            w = by_conn.get(ready)
            if w is not None:
                self._receive(w)
        now = time.monotonic()
        for i, w in enumerate(self._workers):
            if w.future is not None and now >= w.deadline:
                w.end(kill=True)
                self.replaced += 1
                w.future.set_exception(ItemTimedOut(timeout_reason(
                    self.timeout, "its worker process was killed and a new one started")))
                self._workers[i] = self._new_worker()
            elif w.dead or not w.proc.is_alive():
                with contextlib.suppress(EOFError, OSError):  # what it sent before it ended
                    while not w.dead and w.conn.poll():
                        self._receive(w)
                if w.future is not None:
                    w.future.set_exception(RuntimeError(f"the worker process died (exit code {w.proc.exitcode})"))
                w.end(kill=True)
                self._workers[i] = self._new_worker()

    def _receive(self, w: _Worker) -> None:
        try:
            kind, value = w.conn.recv()
        except (EOFError, OSError):
            w.dead = True  # _poll fails its call and replaces it
            return
        if kind == "ready":
            w.ready = True
            return
        if kind == "started":
            w.deadline = time.monotonic() + self.timeout
            return
        future, w.future = w.future, None
        if future is None:
            return
        if kind == "done":
            future.set_result(value)
        else:
            future.set_exception(value)
