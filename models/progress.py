"""Progress inside one item: tiles (2D) or windows (3D) done out of total.

Inference loops call :func:`report` after each unit of work; whoever runs an item (the run
flow) listens with :func:`listen`. The listener lives in a ``ContextVar``, so items running in
parallel threads each report to their own listener, and a loop with no listener costs nothing.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

#: ``(unit, done, total)``, e.g. ``("tile", 3, 12)``
Listener = Callable[[str, int, int], None]

_LISTENER: ContextVar[Listener | None] = ContextVar("imagingflows_progress", default=None)


@contextlib.contextmanager
def listen(listener: Listener | None) -> Iterator[None]:
    """Route :func:`report` calls made in this context (this thread) to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def report(unit: str, done: int, total: int) -> None:
    """Tell the current listener, if any, that ``done`` of ``total`` units are finished."""
    listener = _LISTENER.get()
    if listener is not None:
        try:
            listener(unit, done, total)
        except Exception:  # noqa: BLE001 - progress display must never fail an item
            pass
