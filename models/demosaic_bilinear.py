"""Bilinear Bayer demosaicking, batched torch.

Method: each channel's known samples are interpolated by the 3x3 kernels
``H_G = [[0, 1, 0], [1, 4, 1], [0, 1, 0]] / 4`` (green) and
``H_RB = [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 4`` (red, blue) applied to the channel's masked
mosaic (Losson, Macaire & Yang 2010, "Comparison of color demosaicing methods", Advances in
Imaging and Electron Physics 162, 173-265, doi:10.1016/S1076-5670(10)62005-8). Formula source:
colour-demosaicing 0.2.7, ``colour_demosaicing/bayer/demosaicing/bilinear.py`` (BSD-3-Clause);
we match it to float rounding away from the borders (1 px; it pads with scipy's half-sample
``reflect``, which breaks CFA parity there: a constant image gets 0.75 / 2.25 at the edges).
Here the borders are mirrored with CFA parity kept (:mod:`imagingflows.models.demosaic_tiling`),
so a constant image stays constant and each pixel's own CFA sample is returned unchanged.

Shapes: ``(B, 1, H, W)`` float mosaic -> ``(B, 3, H, W)`` RGB of the same dtype/device, not
clipped. H, W even. Support radius 1, halo 2.
"""

from __future__ import annotations

import torch

from imagingflows.models.demosaic_tiling import kernel_taps, run_tiled, site_masks, taps

NAME = "bilinear"
HALO = 2  # support radius 1, rounded up to even
_H_G = kernel_taps([[0, 1, 0], [1, 4, 1], [0, 1, 0]], scale=4)
_H_RB = kernel_taps([[1, 2, 1], [2, 4, 2], [1, 2, 1]], scale=4)


def _core(x: torch.Tensor, pattern: str) -> torch.Tensor:
    m = site_masks(pattern, x.shape[-2], x.shape[-1], x.device)
    zero = x.new_zeros(())
    r = taps(torch.where(m["R"], x, zero), _H_RB)
    g = taps(torch.where(m["G"], x, zero), _H_G)
    b = taps(torch.where(m["B"], x, zero), _H_RB)
    return torch.cat([r, g, b], dim=1)


def demosaic_bilinear(mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024) -> torch.Tensor:
    """Bilinear demosaicking of ``(B, 1, H, W)`` ``mosaic`` with Bayer ``pattern`` -> ``(B, 3, H, W)``.

    ``tile``: side of the region processed per step (halo included); ``None``: whole image.
    """
    return run_tiled(_core, mosaic, pattern, halo=HALO, tile=tile, who=NAME)
