"""Whole-image channel means for networks that pool globally, computed tile by tile.

NAFNet's simplified channel attention multiplies every feature map by a function of its mean
over the *whole* image. A tile sees only its own mean, so tiled output drifts from the
whole-image output wherever tiles differ in content (a dark tile next to a bright one).

:class:`GlobalAvgPool2d` is a drop-in for ``nn.AdaptiveAvgPool2d(1)`` (no parameters, so state
dicts are unchanged). Inside a :class:`TiledPooling` session (opened by
:func:`~imagingflows.models.tiling.predict_tiles` when it tiles such a network) a pass may:

- ``measure``: behave as the plain pool (the tile's own mean) and add the sum of the map over the
  tile's *core* (the part of the padded image this tile owns; cores partition it) to a float64
  accumulator, one per image of the batch;
- ``fixed``: return the whole-image mean that the previous measure pass accumulated, instead of
  the tile's mean.

One measure pass then one fixed pass gives each pool the whole-image mean of features computed
with per-tile means upstream; measuring again during a fixed pass and repeating refines them.
The core is given in input pixels of the (network-padded) tile; a map of ``(h, w)`` at stride
``s`` uses ``core / s``, so core bounds must be multiples of the network's total stride (its
grid, ``ModelSpec.tile_grid``: NAFNet's ``padder_size``).

The session lives in a :class:`contextvars.ContextVar`, not on the modules: threads that share
one cached network (the thread runner with ``--workers N``) each see only their own session,
and a forward outside any session is the plain pool.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class _Accumulator:
    total: torch.Tensor | None = None  # (B, C) float64 sums over the cores seen so far
    pixels: int = 0  # pixels per image summed
    fixed: torch.Tensor | None = None  # (B, C, 1, 1) whole-image means of the last settled pass


class TiledPooling:
    """The per-call state of the pools of one network while it runs in tiles (see module doc)."""

    def __init__(self, pools: list["GlobalAvgPool2d"]) -> None:
        self.measure = False  # add each pool's map, summed over the tile's core, to its accumulator
        self.fixed = False  # return the means settled from the previous pass instead of the tile's own
        self.input_size: tuple[int, int] | None = None  # padded (H, W) of the next network input
        self.core: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) in padded-input pixels
        self.state = {id(pool): _Accumulator() for pool in pools}

    def set_tile(self, input_size: tuple[int, int], core: tuple[int, int, int, int]) -> None:
        """The padded size of the next network input and the part of it this tile owns."""
        self.input_size, self.core = input_size, core

    def settle(self) -> None:
        """Make every pool's accumulated mean its fixed one and start new accumulations."""
        for acc in self.state.values():
            if acc.total is None or acc.pixels == 0:
                raise RuntimeError("TiledPooling.settle: a pool measured nothing in the last pass")
            acc.fixed = (acc.total / acc.pixels).float()[..., None, None]
            acc.total, acc.pixels = None, 0

    def pool(self, module: "GlobalAvgPool2d", x: torch.Tensor) -> torch.Tensor:
        acc = self.state.get(id(module))
        if acc is not None and self.measure:
            self._accumulate(acc, x)
        if acc is None or not self.fixed:
            return F.adaptive_avg_pool2d(x, 1)
        if acc.fixed is None:
            raise RuntimeError("GlobalAvgPool2d asked for fixed means before any measuring pass")
        if acc.fixed.shape[:2] != x.shape[:2]:
            raise RuntimeError(f"GlobalAvgPool2d measured means of shape {tuple(acc.fixed.shape[:2])} "
                               f"but is given a batch of shape {tuple(x.shape[:2])}")
        return acc.fixed.to(device=x.device, dtype=x.dtype)

    def _accumulate(self, acc: _Accumulator, x: torch.Tensor) -> None:
        if self.core is None or self.input_size is None:
            raise RuntimeError("TiledPooling measuring without a core: call set_tile first")
        stride_h, stride_w = self.input_size[0] // x.shape[-2], self.input_size[1] // x.shape[-1]
        y0, y1, x0, x1 = self.core
        part = x[..., y0 // stride_h:y1 // stride_h, x0 // stride_w:x1 // stride_w]
        total = part.sum(dim=(2, 3), dtype=torch.float64)  # (B, C), on x's device (no sync per layer)
        acc.total = total if acc.total is None else acc.total + total
        acc.pixels += part.shape[-2] * part.shape[-1]


_SESSION: ContextVar[TiledPooling | None] = ContextVar("imagingflows_tiled_pooling", default=None)


class GlobalAvgPool2d(nn.Module):
    """``(B, C, H, W) -> (B, C, 1, 1)`` mean; inside a :func:`tiled_pooling` session, the measured whole-image mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = _SESSION.get()
        if session is None:
            return F.adaptive_avg_pool2d(x, 1)
        return session.pool(self, x)


def global_pools(net: nn.Module) -> list[GlobalAvgPool2d]:
    """Every :class:`GlobalAvgPool2d` in ``net`` (empty for networks without global pooling)."""
    return [m for m in net.modules() if isinstance(m, GlobalAvgPool2d)]


@contextmanager
def tiled_pooling(pools: list[GlobalAvgPool2d]) -> Iterator[TiledPooling]:
    """A session for ``pools`` in the current thread / context; plain pooling again on exit.

    A session without pools is not a no-op: it hides an outer session, so a forward nested in a
    measuring pass (another image, another call) neither adds to nor uses the outer sums.
    """
    session = TiledPooling(pools)
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)
