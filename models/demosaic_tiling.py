"""Shared machinery of the classical demosaickers: input checks, CFA-parity padding, tiles, taps.

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
Equivalent statement in CFA periods: the padded 2x2 blocks are the image's blocks mirrored
about the border block's first row/column, colour by colour.

**Tiles.** The image is cut into cores of ``tile - 2 * halo`` pixels per axis (rounded down to
an even number, so every tile starts on the CFA grid and keeps the same pattern name); each
tile reads its core plus ``halo`` pixels of context (real pixels inside the image, mirrored
ones outside), runs the method, and keeps the core. The methods compute every pixel with the
same elementwise operations (:func:`taps` is a shift-and-add, not a convolution routine whose
summation order could depend on the tensor size), so tiled and untiled results are
bit-identical. Memory is bounded by ``(tile)^2`` times the method's working tensors, not by
the image.

Tensor shapes: mosaics ``(B, 1, H, W)`` float (any floating dtype, any device); results
``(B, 3, H, W)`` of the same dtype and device. H and W must be even.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from imagingflows.models.cfa import channel_index, check_pattern

Core = Callable[[torch.Tensor, str], torch.Tensor]


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


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., i, j] = x[..., i + dy, j + dx]``, zero outside ``x``; same shape as ``x``."""
    return F.pad(x, (-dx, dx, -dy, dy))


def taps(x: torch.Tensor, weights: Sequence[tuple[int, int, float]]) -> torch.Tensor:
    """``out[..., i, j] = sum(w * x[..., i + dy, j + dx])`` over ``(dy, dx, w)``, zero outside ``x``.

    Cross-correlation (no kernel flip): a scipy ``convolve`` kernel ``k`` of centre ``c`` has
    taps ``(c - a, c - b, k[a, b])``. Same shape as ``x``; the zeros beyond ``x`` only reach the
    halo that :func:`run_tiled` crops.
    """
    r = max(max(abs(dy), abs(dx)) for dy, dx, _ in weights)
    h, w = x.shape[-2:]
    xp = F.pad(x, (r, r, r, r)) if r else x
    out = None
    for dy, dx, wt in weights:
        term = xp[..., r + dy:r + dy + h, r + dx:r + dx + w] * wt
        out = term if out is None else out + term
    return out


def kernel_taps(kernel: Sequence[Sequence[float]], scale: float = 1.0, flip: bool = True) -> list[tuple[int, int, float]]:
    """Taps of a 2-D kernel (odd size) given as a scipy ``convolve`` kernel (``flip=True``) or as a
    cross-correlation (``flip=False``), each weight divided by ``scale``; zero weights dropped."""
    cy, cx = len(kernel) // 2, len(kernel[0]) // 2
    out = []
    for a, row in enumerate(kernel):
        for b, v in enumerate(row):
            if v:
                out.append(((cy - a, cx - b) if flip else (a - cy, b - cx)) + (v / scale,))
    return out


def site_masks(pattern: str, h: int, w: int, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Boolean ``(h, w)`` masks of a tile starting on the CFA grid.

    Keys: ``R``, ``G``, ``B`` (the sites), ``Rr``/``Br`` (rows holding red/blue sites),
    ``Rc``/``Bc`` (columns holding red/blue sites).
    """
    index = channel_index(pattern)
    ry, rx = next((y, x) for y in range(2) for x in range(2) if index[y][x] == 0)
    rows = torch.arange(h, device=device)[:, None] % 2
    cols = torch.arange(w, device=device)[None, :] % 2
    rr, rc = (rows == ry).expand(h, w), (cols == rx).expand(h, w)
    br, bc = ~rr, ~rc
    return {"R": rr & rc, "B": br & bc, "G": rr ^ rc, "Rr": rr, "Rc": rc, "Br": br, "Bc": bc}


def run_tiled(core: Core, mosaic: torch.Tensor, pattern: str, *, halo: int, tile: int | None,
              who: str) -> torch.Tensor:
    """Run ``core`` (``(B, 1, h, w)``, pattern -> ``(B, 3, h, w)``) over ``mosaic`` tile by tile.

    Args:
        core: the method on one padded tile; its result is trusted ``halo`` pixels from the tile edges.
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
    if tile is None:
        step_h, step_w = h, w
    else:
        if isinstance(tile, bool) or not isinstance(tile, int):
            raise TypeError(f"{who}: tile must be an int or None, got {tile!r}")
        step = (tile - 2 * halo) // 2 * 2
        if step < 2:
            raise ValueError(f"{who}: tile={tile} is too small: it must exceed twice the halo "
                             f"({2 * halo}) by at least 2 pixels")
        step_h, step_w = step, step
    out = mosaic.new_empty(b, 3, h, w)
    dev = mosaic.device
    for r0 in range(0, h, step_h):
        r1 = min(h, r0 + step_h)
        rows = mirror_index(r0 - halo, r1 + halo, h, dev)
        band = mosaic.index_select(2, rows)
        for c0 in range(0, w, step_w):
            c1 = min(w, c0 + step_w)
            cols = mirror_index(c0 - halo, c1 + halo, w, dev)
            y = core(band.index_select(3, cols), pattern)
            out[:, :, r0:r1, c0:c1] = y[:, :, halo:halo + r1 - r0, halo:halo + c1 - c0]
    return out
