"""DemosaicNet for Fujifilm-style X-Trans (6x6) mosaics, with the ``demosaicnet`` package's
``xtrans.pth`` (Gharbi, Chaurasia, Paris & Durand 2016, "Deep Joint Demosaicking and Denoising").

The network (``demosaicnet`` 0.0.14, MIT, ``demosaicnet/modules.py`` ``XTransDemosaick(depth=11,
width=64)``): no packing (the 6x6 period has no useful stride), 11 *unpadded* 3x3 convolutions
on the masked 3-channel mosaic, the mosaic concatenated (skip connection), an unpadded 3x3 and
a 1x1 convolution. State-dict keys are those of ``xtrans.pth`` (strict load). Being
convolutional without a stride, the network reads the CFA phase from which input channel is
non-zero, so any cyclic shift of the X-Trans cell works without moving the image.

**The CFA** (kept here, not in :mod:`imagingflows.models.cfa`, whose functions are Bayer-only):
:data:`XTRANS_CELL` is the package's ``demosaicnet/mosaic.py`` ``xtrans_cell`` (the physical
top-left 6x6 block, row by row)::

    G B G G R G
    R G R B G B
    G B G G R G
    G R G G B G
    B G B R G R
    G R G G B G

A mosaic's pattern is named by its own top-left 6x6 block; it must be a cyclic shift of this
cell (other 6x6 layouts are refused by name).

**Padding (CFA colours kept, :func:`xtrans_mirror_index`).** The unpadded network removes 12
pixels per side (11 + 1 convolutions), so each region is read with 12 pixels of context. Beyond
the image the context is mirrored about the row (column) nearest the border about which the
cell is mirror-symmetric (rows/columns 1 and 4 of the cell above, i.e. every third line), so
every padded pixel copies a pixel of the same colour; the whole-sample mirror about the border
line itself (Bayer's rule) would not: X-Trans row 5 is not row 1. Lines between the border and
the axis are real pixels, kept.

**Weights**: ``demosaicnet/data/xtrans.pth`` of the installed package, found without importing it
(:func:`imagingflows.models.demosaicnet.package_weights`); nothing is downloaded.

Shapes: mosaic ``(B, 1, H, W)`` float, H and W >= 6 (any size: the package's own ``xtrans()``
needs multiples of 6, we do not); output ``(B, 3, H, W)`` of its dtype and device, not clipped.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from imagingflows.models.cfa import CFAError, cell_masks
from imagingflows.models.demosaic_tiling import mirror_index, tile_steps
from imagingflows.models.demosaicnet import load_package_state_dict

NAME = "demosaicnet-xtrans"
CROP = 12  # pixels per side the unpadded released network removes (depth + 1)
XTRANS_CELL: tuple[str, ...] = ("GBGGRG", "RGRBGB", "GBGGRG", "GRGGBG", "BGBRGR", "GRGGBG")
_CHANNEL = {"R": 0, "G": 1, "B": 2}


def check_xtrans_pattern(pattern: Any = None) -> tuple[str, ...]:
    """The 6x6 pattern as 6 strings of 6 letters; :class:`CFAError` unless a shift of the cell.

    Args:
        pattern: None (the package's cell), 36 letters with optional ``/``, spaces or newlines
            between rows (``"GBGGRG/RGRBGB/..."``), 6 strings of 6 letters, or a 6x6 array of letters or of channel
            indices (0 R, 1 G, 2 B).
    """
    if pattern is None:
        return XTRANS_CELL
    if isinstance(pattern, (list, tuple)) and all(isinstance(r, str) for r in pattern):
        pattern = "/".join(pattern)
    if isinstance(pattern, str):
        letters = "".join(ch for ch in pattern.upper() if ch.isalpha())
    else:
        arr = np.asarray(pattern)
        if arr.shape != (6, 6):
            raise CFAError(f"X-Trans pattern must be 6x6, got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer):
            if arr.min() < 0 or arr.max() > 2:
                raise CFAError("X-Trans pattern indices must be 0 (R), 1 (G) or 2 (B)")
            arr = np.array(list("RGB"))[arr]
        letters = "".join(str(c).upper() for c in arr.ravel())
    if len(letters) != 36 or set(letters) - set("RGB"):
        raise CFAError(f"X-Trans pattern {pattern!r}: expected 36 letters R/G/B (6 rows of 6), got {letters!r}")
    rows = tuple(letters[6 * i:6 * i + 6] for i in range(6))
    if xtrans_shift(rows) is None:
        raise CFAError(f"6x6 CFA {'/'.join(rows)} is not an X-Trans layout (not a cyclic shift of "
                       f"{'/'.join(XTRANS_CELL)}, the layout DemosaicNet's X-Trans model was trained on)")
    return rows


def xtrans_shift(rows: tuple[str, ...]) -> tuple[int, int] | None:
    """``(oy, ox)`` with ``rows[y][x] == XTRANS_CELL[(y + oy) % 6][(x + ox) % 6]``, or None."""
    for oy in range(6):
        for ox in range(6):
            if all(rows[y][x] == XTRANS_CELL[(y + oy) % 6][(x + ox) % 6] for y in range(6) for x in range(6)):
                return oy, ox
    return None


def _axes(lines: list[str]) -> list[int]:
    """Positions ``a`` in 0..5 about which the 6-periodic sequence of rows (or columns) is
    mirror-symmetric: ``lines[(2 a - i) % 6] == lines[i % 6]`` for every i."""
    return [a for a in range(6) if all(lines[(2 * a - i) % 6] == lines[i] for i in range(6))]


def xtrans_mirror_index(lo: int, hi: int, n: int, lines: list[str], device: torch.device | None = None) -> torch.Tensor:
    """Indices of positions ``lo .. hi - 1`` of an axis of ``n`` pixels whose CFA lines (row or
    column strings, period 6) are ``lines``, mirrored about the symmetry axis nearest each end.

    ``a``: the first axis >= 0, ``b``: the last <= n - 1; outside ``[a, b]`` positions fold
    back into it (period ``2 (b - a)``), inside the image they are kept. Colours are kept
    because ``lines`` is symmetric about both axes.
    """
    axes = _axes(lines)
    if not axes:
        raise CFAError("X-Trans pattern has no mirror-symmetric row/column; cannot pad it colour-safely")
    a = min(x for x in axes)  # axes repeat every 3 (or 6) lines, the first is in 0..5
    b = max(x + 6 * k for x in axes for k in range(n // 6 + 1) if x + 6 * k <= n - 1)
    if b <= a:
        raise CFAError(f"X-Trans mosaic side {n} is too small to pad (needs >= 6 pixels)")
    i = torch.arange(lo, hi, device=device)
    folded = mirror_index(lo - a, hi - a, b - a + 1, device) + a
    return torch.where((i >= 0) & (i < n), i, folded)


class DemosaicNetXTrans(nn.Module):
    """The released X-Trans DemosaicNet; keys and shapes of ``demosaicnet/data/xtrans.pth``.

    Args:
        depth: 3x3 convolutions before the skip connection (11 released).
        width: their channels (64 released).
        pretrained: load the package's ``xtrans.pth`` (strict).
    """

    def __init__(self, depth: int = 11, width: int = 64, *, pretrained: bool = False) -> None:
        super().__init__()
        self.depth, self.width = depth, width
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(depth):
            layers[f"conv{i + 1}"] = nn.Conv2d(3 if i == 0 else width, width, 3)
            layers[f"relu{i + 1}"] = nn.ReLU(inplace=True)
        self.main_processor = nn.Sequential(layers)
        self.fullres_processor = nn.Sequential(OrderedDict(
            post_conv=nn.Conv2d(3 + width, width, 3), post_relu=nn.ReLU(inplace=True),
            output=nn.Conv2d(width, 3, 1)))
        if pretrained:
            if (depth, width) != (11, 64):
                raise ValueError(f"DemosaicNet X-Trans: the released xtrans.pth has depth=11, width=64, "
                                 f"not {depth}, {width}")
            self.load_state_dict(load_package_state_dict("xtrans.pth"), strict=True)

    @property
    def crop(self) -> int:
        """Pixels per side the unpadded network removes: ``depth + 1`` (12 released)."""
        return self.depth + 1

    def forward_valid(self, x: torch.Tensor) -> torch.Tensor:
        """The package's ``forward``: masked ``(B, 3, H, W)`` -> ``(B, 3, H - 2 c, W - 2 c)``, ``c = depth + 1``."""
        features = self.main_processor(x)
        d = self.depth
        return self.fullres_processor(torch.cat([x[..., d:x.shape[-2] - d, d:x.shape[-1] - d], features], 1))

    def forward(self, mosaic: torch.Tensor, pattern: Any = None, *, tile: int | None = 1024) -> torch.Tensor:
        """Demosaick an X-Trans ``(B, 1, H, W)`` mosaic whose top-left 6x6 block is ``pattern``
        (None: :data:`XTRANS_CELL`) -> ``(B, 3, H, W)``.

        ``tile``: side of the region one step reads, context included (core ``tile - 2 crop``
        >= 1); None: the whole image at once. Tiles agree with one pass to float rounding.
        """
        rows = check_xtrans_pattern(pattern)
        if not isinstance(mosaic, torch.Tensor) or mosaic.ndim != 4 or mosaic.shape[1] != 1:
            raise ValueError(f"{NAME}: mosaic must have shape (B, 1, H, W), got {tuple(getattr(mosaic, 'shape', ()))}"
                             + (" (a 3-channel image is not a mosaic)" if getattr(mosaic, "ndim", 0) == 4
                                and mosaic.shape[1] == 3 else ""))
        if not mosaic.is_floating_point():
            raise TypeError(f"{NAME}: mosaic must be a floating-point tensor, got {mosaic.dtype}")
        b, _, h, w = mosaic.shape
        if h < 6 or w < 6:
            raise ValueError(f"{NAME}: X-Trans mosaic {h}x{w} is smaller than one 6x6 CFA period")
        c = self.crop
        step_h, step_w = tile_steps(tile, c, (h, w), NAME, grid=1)
        cols_lines = ["".join(r[x] for r in rows) for x in range(6)]
        onehot = torch.zeros(6, 6, 3, dtype=mosaic.dtype, device=mosaic.device)
        for y in range(6):
            for x in range(6):
                onehot[y, x, _CHANNEL[rows[y][x]]] = 1
        param = next(self.parameters())
        out = mosaic.new_empty(b, 3, h, w)
        for r0 in range(0, h, step_h):
            r1 = min(h, r0 + step_h)
            ri = xtrans_mirror_index(r0 - c, r1 + c, h, list(rows), mosaic.device)
            for c0 in range(0, w, step_w):
                c1 = min(w, c0 + step_w)
                ci = xtrans_mirror_index(c0 - c, c1 + c, w, cols_lines, mosaic.device)
                x = mosaic.index_select(-2, ri).index_select(-1, ci)
                m = onehot[(ri % 6)[:, None], (ci % 6)[None, :]].permute(2, 0, 1)  # (3, h', w')
                y = self.forward_valid((x * m).to(param.dtype))
                out[:, :, r0:r1, c0:c1] = y.to(mosaic.dtype)
        return out


def xtrans_masks(pattern: Any, height: int, width: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``(3, height, width)`` 0/1 masks of the red, green and blue sites of an X-Trans ``pattern``."""
    return cell_masks(check_xtrans_pattern(pattern), height, width, dtype=dtype, device=device)


def xtrans_mosaic(rgb: torch.Tensor, pattern: Any = None) -> torch.Tensor:
    """Sample ``(B, 3, H, W)`` through an X-Trans CFA -> ``(B, 1, H, W)`` (values copied exactly)."""
    if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"xtrans_mosaic: expected an RGB tensor (B, 3, H, W), got {tuple(getattr(rgb, 'shape', ()))}")
    m = xtrans_masks(pattern, rgb.shape[-2], rgb.shape[-1], dtype=rgb.dtype, device=rgb.device)
    return (rgb * m).sum(1, keepdim=True)


def shifted_pattern(pattern: Any, top: int, left: int) -> tuple[str, ...]:
    """The X-Trans pattern of a mosaic cropped at ``(top, left)``."""
    rows = check_xtrans_pattern(pattern)
    return tuple("".join(rows[(top + y) % 6][(left + x) % 6] for x in range(6)) for y in range(6))


_CACHE: dict[tuple[str, torch.dtype], DemosaicNetXTrans] = {}


def load_demosaicnet_xtrans(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> DemosaicNetXTrans:
    """The released X-Trans model in eval mode on ``device`` (cached per device and dtype)."""
    key = (str(torch.device(device)), dtype)
    if key not in _CACHE:
        _CACHE[key] = DemosaicNetXTrans(pretrained=True).to(device=device, dtype=dtype).eval()
    return _CACHE[key]


def demosaic_demosaicnet_xtrans(mosaic: torch.Tensor, pattern: Any = None, *, tile: int | None = 1024) -> torch.Tensor:
    """``(B, 1, H, W)`` X-Trans mosaic -> ``(B, 3, H, W)`` with the released weights (float32, no grad)."""
    model = load_demosaicnet_xtrans(mosaic.device)
    with torch.no_grad():
        return model(mosaic, pattern, tile=tile)
