"""2D tiled inference for image restoration, with memory bounded by the tile, not the image.

The 2D counterpart of :mod:`imagingflows.models.sliding_window`, without blending: each
tile is run with ``overlap`` pixels of context on every side, the context is cropped away
again, and only the tile's kept centre is written (times ``scale``) into the preallocated
output. Every output pixel comes from exactly one tile, so there are no float accumulators
and no float copy of the whole image, input or output.

Tile grid along an axis of ``n`` pixels: ``step`` is ``tile - 2 * overlap`` rounded down to a
multiple of ``align``; tile ``i`` reads the input ``[i * step, i * step + tile)`` clipped to
the image and keeps ``[i * step + overlap, (i + 1) * step + overlap)``, widened to the image
border at the first and last tile. Nothing is padded beyond the image: the networks pad
themselves to their size multiple.

Why ``align``: NAFNet and HAT are translation-equivariant only for shifts that are multiples
of their grid (NAFNet's stride-2 downsamplings, ``2 ** levels``; HAT's attention windows,
``window_size``). A tile whose origin is off that grid sees the image cut into different
windows and its centre differs from the whole-image result (measured: 0.19 for a tiny
random-weight HAT, against 4e-7 on the grid). The caller passes the grid (``grid``: the model's
``ModelSpec.tile_grid``, e.g. ``spec.grid_of(config)``); nothing here inspects the network.

Networks that pool over the whole image (NAFNet's channel attention, through
:class:`~imagingflows.models.global_pool.GlobalAvgPool2d`) run ``1 + pool_passes`` times per
tile when tiled (twice by default): a first pass only measures each pool's whole-image mean
(summed over tile cores that partition the image), the last pass uses those means in every
tile and writes the output. With ``pool_passes=0`` a tile's attention sees only the tile.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from imagingflows.models.global_pool import global_pools, tiled_pooling
from imagingflows.models.progress import report as report_progress
from imagingflows.models.sliding_window import _AUTOCAST, resolve_precision


@dataclass
class TileRun:
    """What one :func:`predict_tiles` call did (small and JSON-friendly, for run.json)."""

    tiles: int = 0
    tile: int = 0
    overlap: int = 0
    whole: bool = False  # True when one forward covered the whole image
    precision: str = "fp32"
    passes: int = 1  # forward passes over all tiles: 1 + pool_passes when whole-image pool means were measured
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def tile_spans(n: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``n`` pixels: ``(read_lo, read_hi, keep_lo, keep_hi)`` each.

    The kept ranges partition ``[0, n)``; each kept pixel has at least ``overlap`` pixels of
    read context on both sides, or the image border; every ``read_lo`` is a multiple of
    ``align``. One tile when ``n <= tile``.
    """
    step = (tile - 2 * overlap) // align * align
    count = 1 + max(0, -(-(n - tile) // step))
    spans = []
    for i in range(count):
        lo = i * step
        keep_lo = 0 if i == 0 else lo + overlap
        keep_hi = n if i == count - 1 else lo + step + overlap
        spans.append((lo, min(n, lo + tile), keep_lo, keep_hi))
    return spans


def _input_scale(dtype: np.dtype) -> float:
    """Divisor that maps ``dtype`` values to [0, 1]: the integer maximum, or 1 for floats."""
    if np.issubdtype(dtype, np.unsignedinteger):
        return float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise ValueError(f"image dtype must be an unsigned integer (uint8, uint16) or a float, got {dtype}")


def _check_args(image: np.ndarray, scale: int, tile: int, overlap: int, align: int, out_dtype: np.dtype | None,
                whole_max_pixels: int | None) -> np.dtype:
    """Raise ValueError on a bad argument; return the output dtype."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or 0 in image.shape:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image must be a non-empty (H, W, C) numpy array, got shape {shape}")
    _input_scale(image.dtype)
    out_dtype = np.dtype(image.dtype if out_dtype is None else out_dtype)
    if not np.issubdtype(out_dtype, np.unsignedinteger) and not np.issubdtype(out_dtype, np.floating):
        raise ValueError(f"out_dtype must be an unsigned integer or a float type, got {out_dtype}")
    for name, value, least in (("scale", scale, 1), ("tile", tile, 1), ("overlap", overlap, 0), ("align", align, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than 2 * overlap ({2 * overlap}): "
                         "nothing of a tile would be kept")
    if tile - 2 * overlap < align:
        raise ValueError(f"tile - 2 * overlap ({tile - 2 * overlap}) must be at least the network's grid "
                         f"align={align}: use a larger tile or a smaller overlap")
    if whole_max_pixels is not None and (isinstance(whole_max_pixels, bool) or whole_max_pixels < 0):
        raise ValueError(f"whole_max_pixels must be None or an integer >= 0, got {whole_max_pixels!r}")
    return out_dtype


def predict_tiles(
    net: torch.nn.Module,
    image: np.ndarray,
    *,
    scale: int = 1,
    tile: int = 512,
    overlap: int = 32,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
    out_dtype: np.dtype | None = None,
    whole_max_pixels: int | None = None,
    grid: int,
    align: int | None = None,
    pool_passes: int = 1,
) -> tuple[np.ndarray, TileRun]:
    """Run a 2D image-to-image ``net`` over ``image`` tile by tile.

    Args:
        net: ``(1, C, h, w)`` float32 in [0, 1] -> ``(1, C_out, h * scale, w * scale)``, any h, w
            (in eval mode; the module is not changed: the pools' tiled state lives in a context
            variable of this call, so threads may share ``net``).
        image: ``(H, W, C)`` uint8 / uint16 (divided by 255 / 65535) or float in [0, 1].
        scale: output size / input size (HAT's ``upscale``; 1 for NAFNet).
        tile: side of the input region one forward reads, context included.
        overlap: input pixels of context on each side of a tile's kept centre
            (``tile - 2 * overlap`` pixels are kept per tile and axis).
        device: where ``net`` lives; each tile is moved there and its result back.
        precision: ``fp32``, ``bf16`` or ``fp16`` (``torch.autocast``); ``auto`` is resolved
            with :func:`~imagingflows.models.sliding_window.resolve_precision`.
        out_dtype: dtype of the result, default ``image.dtype``. Unsigned integers get
            ``rint(clip(y, 0, 1) * max)``; floats are written unrounded and unclipped.
        whole_max_pixels: if ``H * W <= whole_max_pixels``, one forward of the whole image
            instead of tiles (for networks that pool over the whole image, e.g. NAFNet).
        grid: the network's own grid (``ModelSpec.tile_grid``): it is equivariant to shifts by
            multiples of it and pads its input to multiples of it (1: neither). Required: a
            forgotten grid would silently misplace the tiles of NAFNet or HAT.
        align: tile origins are multiples of this many input pixels (the kept step is
            ``tile - 2 * overlap`` rounded down to it); None: ``grid``.
        pool_passes: for a network with :class:`~imagingflows.models.global_pool.GlobalAvgPool2d`
            layers (NAFNet) that runs in more than one tile: passes over the tiles that only
            measure whole-image channel means before the pass that uses them (1: each tile
            runs twice; 0: every tile pools over itself alone, as a plain tiled forward).
            Needs ``align`` on the network's ``grid`` (ValueError otherwise).
    Returns:
        ``(H * scale, W * scale, C_out)`` array of ``out_dtype``, and what ran.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    align = grid if align is None else align
    out_dtype = _check_args(image, scale, tile, overlap, align, out_dtype, whole_max_pixels)
    if isinstance(pool_passes, bool) or not isinstance(pool_passes, (int, np.integer)) or pool_passes < 0:
        raise ValueError(f"pool_passes must be an integer >= 0, got {pool_passes!r}")
    precision = resolve_precision(precision, device)
    h, w = image.shape[:2]
    if whole_max_pixels is not None and h * w <= whole_max_pixels:
        rows, cols = [(0, h, 0, h)], [(0, w, 0, w)]
    else:
        rows, cols = tile_spans(h, tile, overlap, align), tile_spans(w, tile, overlap, align)
    tiles = [(r, c) for r in rows for c in cols]
    pools = global_pools(net)
    measure = pool_passes if pools and len(tiles) > 1 else 0
    pad = _pool_grid(grid, align) if measure else 1
    info = TileRun(tiles=len(tiles), tile=tile, overlap=overlap, whole=len(tiles) == 1, precision=precision,
                   passes=1 + measure)

    in_max = _input_scale(image.dtype)
    out_max = float(np.iinfo(out_dtype).max) if np.issubdtype(out_dtype, np.integer) else None
    autocast = _AUTOCAST.get(precision)

    def forward(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        x = image[r0:r1, c0:c1].astype(np.float32)  # (h, w, C), a tile-sized copy
        if in_max != 1.0:
            x /= in_max
        x = torch.from_numpy(x).permute(2, 0, 1)[None].to(device).contiguous()  # (1, C, h, w)
        with torch.autocast(device_type=device.type, dtype=autocast, enabled=autocast is not None):
            y = net(x)
        size = ((r1 - r0) * scale, (c1 - c0) * scale)
        if y.ndim != 4 or y.shape[0] != 1 or tuple(y.shape[2:]) != size:
            raise ValueError(f"net returned shape {tuple(y.shape)} for an input of {tuple(x.shape)}; "
                             f"expected (1, C_out, {size[0]}, {size[1]}) (is scale={scale} right?)")
        return y

    out = None
    total, done = len(tiles) * (1 + measure), 0
    with torch.inference_mode(), tiled_pooling(pools if measure else []) as pooling:
        for p in range(measure + 1):
            pooling.measure, pooling.fixed = p < measure, p > 0
            for (r0, r1, kr0, kr1), (c0, c1, kc0, kc1) in tiles:
                if measure:
                    pooling.set_tile((-(-(r1 - r0) // pad) * pad, -(-(c1 - c0) // pad) * pad),
                                     _core(r0, kr0, kr1, h, pad) + _core(c0, kc0, kc1, w, pad))
                y = forward(r0, r1, c0, c1)
                done += 1
                report_progress("tile", done, total)  # the measuring pass counts: it takes as long
                if p < measure:
                    continue
                y = y[0, :, (kr0 - r0) * scale:(kr1 - r0) * scale, (kc0 - c0) * scale:(kc1 - c0) * scale]
                y = y.permute(1, 2, 0).float().cpu().numpy()  # (kept h * scale, kept w * scale, C_out)
                if out is None:
                    out = np.empty((h * scale, w * scale, y.shape[2]), dtype=out_dtype)
                if out_max is not None:
                    y = np.rint(np.clip(y, 0.0, 1.0) * out_max)
                out[kr0 * scale:kr1 * scale, kc0 * scale:kc1 * scale] = y
            if p < measure:
                pooling.settle()
    info.seconds = round(time.perf_counter() - t0, 3)
    return out, info


def _pool_grid(grid: int, align: int) -> int:
    """The network's padding multiple ``grid``, checked against the tile grid ``align``.

    Measuring whole-image means needs tile cores on the network's stride grid and the padded
    size of each tile, so tile origins must lie on that grid.
    """
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be an integer >= 1, got {grid!r}")
    if align % grid:
        raise ValueError(f"pool_passes > 0 needs tile origins on the network's grid: align={align} is not a "
                         f"multiple of its grid {grid}; pass align=None or pool_passes=0")
    return int(grid)


def _core(lo: int, keep_lo: int, keep_hi: int, n: int, pad: int) -> tuple[int, int]:
    """The part of a tile (read from ``lo``) whose pooled statistics it contributes, in tile pixels.

    The kept range rounded down to multiples of ``pad`` (so that every feature stride divides it);
    the last tile owns the network's zero padding up to ``n`` rounded up to ``pad``, as the
    whole-image forward pools over it too. Over the tiles of an axis these partition ``[0, ceil_pad(n))``.
    """
    hi = -(-n // pad) * pad if keep_hi == n else keep_hi // pad * pad
    return keep_lo // pad * pad - lo, hi - lo
