"""Whole-image channel means for networks that pool globally, computed tile by tile.

NAFNet's simplified channel attention multiplies every feature map by a function of its mean
over the *whole* image. A tile sees only its own mean, so tiled output drifts from the
whole-image output wherever tiles differ in content (a dark tile next to a bright one).

:class:`GlobalAvgPool2d` is a drop-in for ``nn.AdaptiveAvgPool2d(1)`` (no parameters, so state
dicts are unchanged) with two extra modes that :func:`~imagingflows.models.tiling.predict_tiles`
switches on when it tiles such a network:

- ``measure``: behave as the plain pool (the tile's own mean) and add the sum of the map over the
  tile's *core* (the part of the padded image this tile owns; cores partition it) to a float64
  accumulator;
- ``fixed``: return the whole-image mean that the previous measure pass accumulated, instead of
  the tile's mean.

One measure pass then one fixed pass ("two passes") gives each pool the whole-image mean of
features computed with per-tile means upstream; measuring again during the fixed pass and
repeating refines them. The core is given in input pixels of the (network-padded) tile; a map
of ``(h, w)`` at stride ``s`` uses ``core / s``, so core bounds must be multiples of the
network's total stride (its ``padder_size``), as tile origins already are.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


class GlobalAvgPool2d(nn.Module):
    """``(B, C, H, W) -> (B, C, 1, 1)`` mean, or a whole-image mean measured over tiles (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode: str | None = None  # None (plain), "measure", "fixed", "measure+fixed"
        self.core: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) in padded-input pixels
        self.input_size: tuple[int, int] | None = None  # padded (H, W) of the network input
        self._sum: torch.Tensor | None = None  # (B, C) float64: each image of a batch has its own mean
        self._count = 0  # pixels per image
        self._fixed: torch.Tensor | None = None  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is None:
            return F.adaptive_avg_pool2d(x, 1)
        if "measure" in self.mode:
            self._accumulate(x)
        if "fixed" in self.mode:
            if self._fixed is None:
                raise RuntimeError("GlobalAvgPool2d in 'fixed' mode before any measure pass")
            if self._fixed.shape[:2] != x.shape[:2]:
                raise RuntimeError(f"GlobalAvgPool2d measured means of shape {tuple(self._fixed.shape[:2])} "
                                   f"but is given a batch of shape {tuple(x.shape[:2])}")
            return self._fixed.to(device=x.device, dtype=x.dtype)
        return F.adaptive_avg_pool2d(x, 1)

    def _accumulate(self, x: torch.Tensor) -> None:
        if self.core is None or self.input_size is None:
            raise RuntimeError("GlobalAvgPool2d measuring without a core: call set_tile first")
        stride_h, stride_w = self.input_size[0] // x.shape[-2], self.input_size[1] // x.shape[-1]
        y0, y1, x0, x1 = self.core
        part = x[..., y0 // stride_h:y1 // stride_h, x0 // stride_w:x1 // stride_w]
        total = part.sum(dim=(2, 3), dtype=torch.float64).cpu()
        self._sum = total if self._sum is None else self._sum + total
        self._count += part.shape[-2] * part.shape[-1]

    def settle(self) -> None:
        """Make the accumulated mean the fixed one and start a new accumulation."""
        if self._sum is None or self._count == 0:
            raise RuntimeError("GlobalAvgPool2d.settle with nothing measured")
        self._fixed = (self._sum / self._count).float()[..., None, None]
        self._sum, self._count = None, 0

    def reset(self) -> None:
        self.mode, self.core, self.input_size = None, None, None
        self._sum, self._count, self._fixed = None, 0, None


def global_pools(net: nn.Module) -> list[GlobalAvgPool2d]:
    """Every :class:`GlobalAvgPool2d` in ``net`` (empty for networks without global pooling)."""
    return [m for m in net.modules() if isinstance(m, GlobalAvgPool2d)]


def set_tile(pools: list[GlobalAvgPool2d], input_size: tuple[int, int], core: tuple[int, int, int, int]) -> None:
    """Tell every pool the padded size of the next network input and the part of it this tile owns."""
    for pool in pools:
        pool.input_size, pool.core = input_size, core


@contextmanager
def pooled_mode(pools: list[GlobalAvgPool2d], mode: str | None) -> Iterator[None]:
    """Set every pool's mode for the duration of a pass."""
    for pool in pools:
        pool.mode = mode
    try:
        yield
    finally:
        for pool in pools:
            pool.mode = None


def settle_all(pools: list[GlobalAvgPool2d]) -> None:
    for pool in pools:
        pool.settle()


def reset_all(pools: list[GlobalAvgPool2d]) -> None:
    for pool in pools:
        pool.reset()
