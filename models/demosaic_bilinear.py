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

from imagingflows.models.demosaic_tiling import run_tiled, site_phases, split_phases

NAME = "bilinear"
HALO = 2  # support radius 1, rounded up to even


def _core(x: torch.Tensor, pattern: str) -> list[dict]:
    """The kernels evaluated only where they have non-zero inputs: a missing colour is the mean
    of its 2 (same row or column) or 4 (diagonal, or the 4 green neighbours) nearest samples."""
    s = site_phases(pattern)
    f = split_phases(x)
    R, B, Gr, Gb = s["R"], s["B"], s["Gr"], s["Gb"]

    def diag(ph):
        return ((f.nb(ph, -1, -1) + f.nb(ph, -1, 1)) + (f.nb(ph, 1, -1) + f.nb(ph, 1, 1))) * 0.25

    def cross(ph):
        return (f.pair(ph, 1, "h") + f.pair(ph, 1, "v")) * 0.25

    red = {R: f[R], Gr: f.pair(Gr, 1, "h") * 0.5, Gb: f.pair(Gb, 1, "v") * 0.5, B: diag(B)}
    green = {R: cross(R), Gr: f[Gr], Gb: f[Gb], B: cross(B)}
    blue = {B: f[B], Gb: f.pair(Gb, 1, "h") * 0.5, Gr: f.pair(Gr, 1, "v") * 0.5, R: diag(R)}
    return [red, green, blue]


def demosaic_bilinear(mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024) -> torch.Tensor:
    """Bilinear demosaicking of ``(B, 1, H, W)`` ``mosaic`` with Bayer ``pattern`` -> ``(B, 3, H, W)``.

    ``tile``: side of the region processed per step (halo included); ``None``: whole image.
    """
    return run_tiled(_core, mosaic, pattern, halo=HALO, tile=tile, who=NAME)
