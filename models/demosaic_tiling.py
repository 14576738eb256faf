"""Shared machinery of the classical demosaickers: input checks, CFA-parity padding,
tiles, phase planes.

**Padding rule (CFA parity kept).** A method whose output at a pixel depends on the mosaic up to
``r`` pixels away pads by ``halo = 2 * ceil(r / 2)`` pixels (an even number) on every side with
the *whole-sample mirror* about the border pixels: padded index ``-i`` copies ``i`` and
``n - 1 + i`` copies ``n - 1 - i`` (``torch.nn.functional.pad(mode="reflect")``, numpy
``reflect``, scipy ``mirror``; for a pad wider than the image the mirror is folded again, period
``2 (n - 1)``). Both maps keep the parity of every index, so each padded pixel copies a pixel of
the *same CFA colour*; the even width keeps the padded mosaic's top-left 2x2 block equal to
the pattern. (scipy's ``reflect``, the half-sample mirror ``... b a | a b ...`` that
colour-demosaicing's bilinear and Malvar use, maps ``-1 -> 0`` and so puts a green next to a
green where a red should be: a constant input comes back as 0.75 / 2.25 along the borders.)
In CFA terms: each colour's sub-lattice is mirrored on its own (the phase plane holding the
border row is mirrored about that row, the other phase plane about the half-way line), which is
why the mirror is smooth *and* parity-safe. Copying whole 2x2 blocks in mirrored order
(``-2 <- 0``, ``-1 <- 1``) would keep the parity too but shift the image by a pixel at the
border; the whole-sample mirror is the parity-keeping reflection.

**Tiles.** The image is cut into cores of ``tile - 2 * halo`` pixels per axis (rounded down to
an even number, so every tile starts on the CFA grid and keeps the same pattern name); each
tile reads its core plus ``halo`` pixels of context (real pixels inside the image, mirrored
ones outside), runs the method, and keeps the core. The methods compute every pixel with the
same elementwise operations on the CFA's phase planes (:class:`PhaseField`: shifts and adds,
not a convolution routine whose summation order could depend on the tensor size), so tiled
and untiled results are bit-identical. Memory is bounded by ``tile ** 2`` times the method's
working planes, not by the image.

Tensor shapes: mosaics ``(B, 1, H, W)`` float (any floating dtype, any device); results
``(B, 3, H, W)`` of the same dtype and device. H and W must be even.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from imagingflows.models.cfa import channel_index, check_pattern

Core = Callable[[torch.Tensor, str], list]  # tile, pattern -> [R, G, B] phase-plane dicts


def check_mosaic(mosaic: torch.Tensor, pattern: str, who: str = "demosaic") -> str:
    """Validate a ``(B, 1, H, W)`` float mosaic with even H and W; return the checked pattern."""
    if not isinstance(mosaic, torch.Tensor):
        raise TypeError(f"{who}: mosaic must be a torch.Tensor (B, 1, H, W), got {type(mosaic).__name__}")
    if mosaic.ndim != 4 or mosaic.shape[1] != 1:
        hint = " (a 3-channel image is not a mosaic)" if mosaic.ndim == 4 and mosaic.shape[1] == 3 else ""
        raise ValueError(f"{who}: mosaic must have shape (B, 1, H, W), got {tuple(mosaic.shape)}{hint}")
    if not mosaic.is_floating_point():
        raise TypeError(f"{who}: mosaic must be a floating-point tensor (scale integers to [0, 1] first), "
                        f"got {mosaic.dtype}")
    h, w = mosaic.shape[2:]
    odd = [f"{name} {n}" for name, n in (("height", h), ("width", w)) if n % 2]
    if odd:
        raise ValueError(f"{who}: mosaic {' and '.join(odd)} {'are' if len(odd) > 1 else 'is'} odd; a Bayer mosaic needs an even height and "
                         "width (crop one row/column so the CFA period is whole)")
    if h == 0 or w == 0 or mosaic.shape[0] == 0:
        raise ValueError(f"{who}: mosaic is empty, shape {tuple(mosaic.shape)}")
    return check_pattern(pattern)


def mirror_index(lo: int, hi: int, n: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices of positions ``lo .. hi - 1`` of an axis of ``n`` mirrored about pixels 0 and n - 1.

    ``-i -> i`` and ``n - 1 + i -> n - 1 - i``, folded with period ``2 (n - 1)``: parity kept.
    """
    i = torch.arange(lo, hi, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i > n - 1, period - i, i)


def tile_steps(tile: int | None, halo: int, shape: tuple[int, int], who: str, grid: int = 2) -> tuple[int, int]:
    """``(step_h, step_w)``: the core side of a ``tile`` that reads ``halo`` pixels of context per side,
    ``tile - 2 halo`` rounded down to a multiple of ``grid`` (the CFA period, or the network's stride);
    the whole ``shape`` when ``tile`` is None. TypeError / ValueError when ``tile`` cannot work."""
    if tile is None:
        return shape
    if isinstance(tile, bool) or not isinstance(tile, int):
        raise TypeError(f"{who}: tile must be an int or None, got {tile!r}")
    step = (tile - 2 * halo) // grid * grid
    if step < grid:
        raise ValueError(f"{who}: tile={tile} is too small: it must exceed twice the halo ({2 * halo}) by at "
                         f"least {grid} pixel{'s' if grid > 1 else ''}")
    return step, step


Phase = tuple[int, int]


def site_phases(pattern: str) -> dict[str, Phase]:
    """Position in the 2x2 block of each site: ``R``, ``B``, ``Gr`` (green in a red row), ``Gb``."""
    index = channel_index(pattern)
    ry, rx = next((y, x) for y in range(2) for x in range(2) if index[y][x] == 0)
    return {"R": (ry, rx), "B": (1 - ry, 1 - rx), "Gr": (ry, 1 - rx), "Gb": (1 - ry, rx)}


class PhaseField:
    """A full-resolution quantity held as its 2x2 phase planes, ``(B, 1, h / 2, w / 2)`` each.

    ``field[phase]`` is the plane of pixels ``(2 I + py, 2 J + px)``; :meth:`nb` gives, for every
    pixel of one phase, the value at offset ``(dy, dx)`` (|dy|, |dx| <= 2) as a view, zero
    beyond the tile. Methods compute each value only where the CFA needs it, with elementwise
    operations, so every pixel's arithmetic is independent of the tile size.
    """

    def __init__(self, planes: dict[Phase, torch.Tensor]) -> None:
        self.planes = planes
        self._padded: dict[Phase, torch.Tensor] = {}

    def __getitem__(self, phase: Phase) -> torch.Tensor:
        return self.planes[phase]

    def nb(self, phase: Phase, dy: int, dx: int) -> torch.Tensor:
        qy, sy = divmod(phase[0] + dy, 2)[::-1]
        qx, sx = divmod(phase[1] + dx, 2)[::-1]
        plane = self.planes[(qy, qx)]
        if sy == 0 and sx == 0:
            return plane
        padded = self._padded.get((qy, qx))
        if padded is None:
            padded = self._padded[(qy, qx)] = F.pad(plane, (1, 1, 1, 1))
        h2, w2 = plane.shape[-2:]
        return padded[..., 1 + sy:1 + sy + h2, 1 + sx:1 + sx + w2]

    def pair(self, phase: Phase, d: int, axis: str) -> torch.Tensor:
        """``q[j - d] + q[j + d]`` along columns (``"h"``) or rows (``"v"``) at ``phase``."""
        if axis == "h":
            return self.nb(phase, 0, -d) + self.nb(phase, 0, d)
        return self.nb(phase, -d, 0) + self.nb(phase, d, 0)


def split_phases(x: torch.Tensor) -> PhaseField:
    """``(B, 1, h, w)`` -> its four phase planes."""
    u = F.pixel_unshuffle(x, 2)  # (B, 4, h/2, w/2), channel 2 * py + px
    return PhaseField({(py, px): u[:, 2 * py + px:2 * py + px + 1] for py in range(2) for px in range(2)})


def _read(mosaic: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """Rows ``r0 .. r1 - 1`` and columns ``c0 .. c1 - 1`` of ``mosaic``, mirrored beyond its edges."""
    h, w = mosaic.shape[-2:]
    inner = mosaic[..., max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
    pads = (max(0, -c0), max(0, c1 - w), max(0, -r0), max(0, r1 - h))
    if not any(pads):
        return inner
    if max(pads[:2]) < w and max(pads[2:]) < h:  # torch's reflect is the whole-sample mirror
        return F.pad(inner, pads, mode="reflect")
    rows = mirror_index(r0, r1, h, mosaic.device)  # pads wider than the image: fold again
    cols = mirror_index(c0, c1, w, mosaic.device)
    return mosaic.index_select(-2, rows).index_select(-1, cols)


def run_tiled(core: Core, mosaic: torch.Tensor, pattern: str, *, halo: int, tile: int | None,
              who: str) -> torch.Tensor:
    """Run ``core`` over ``mosaic`` tile by tile.

    Args:
        core: the method on one tile ``(B, 1, h, w)`` (h, w even; it starts on the CFA grid),
            returning ``[red, green, blue]``, each ``{phase: (B, 1, h/2, w/2)}`` for the four
            phases; trusted ``halo`` pixels from the tile edges.
        mosaic: ``(B, 1, H, W)`` float, H and W even.
        pattern: physical top-left 2x2 block, e.g. ``"RGGB"``.
        halo: even number of context pixels, at least the method's support radius.
        tile: side of the region one step reads, context included (``None``: one tile for the
            whole image). Its core, ``tile - 2 * halo`` rounded down to even, must be >= 2.
        who: the method's name, for error messages.
    Returns:
        ``(B, 3, H, W)``, same dtype and device as ``mosaic``; identical for every ``tile``.
    """
    pattern = check_mosaic(mosaic, pattern, who)
    if halo % 2:
        raise ValueError(f"{who}: halo must be even to keep the CFA parity, got {halo}")
    b, _, h, w = mosaic.shape
    step_h, step_w = tile_steps(tile, halo, (h, w), who)
    out = mosaic.new_empty(b, 3, h, w)
    k = halo // 2  # halo in phase-plane units
    for r0 in range(0, h, step_h):
        r1 = min(h, r0 + step_h)
        for c0 in range(0, w, step_w):
            c1 = min(w, c0 + step_w)
            channels = core(_read(mosaic, r0 - halo, r1 + halo, c0 - halo, c1 + halo), pattern)
            for c, planes in enumerate(channels):
                for (py, px), plane in planes.items():
                    out[:, c:c + 1, r0 + py:r1:2, c0 + px:c1:2] = \
                        plane[..., k:k + (r1 - r0) // 2, k:k + (c1 - c0) // 2]
    return out
