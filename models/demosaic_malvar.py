"""Malvar-He-Cutler (2004) gradient-corrected linear Bayer demosaicking, batched torch.

Paper: H. S. Malvar, L.-W. He, R. Cutler, "High-quality linear interpolation for demosaicing
of Bayer-patterned color images", ICASSP 2004, vol. 3, pp. 485-488. Each missing value is a
bilinear estimate corrected by the Laplacian of the channel that is known at the pixel, as
one 5x5 linear filter per case (the paper's Fig. 2, gains alpha = 1/2, beta = 5/8, gamma = 3/4):

* G at R and B sites: ``[[0,0,-1,0,0],[0,0,2,0,0],[-1,2,4,2,-1],[0,0,2,0,0],[0,0,-1,0,0]] / 8``;
* R (B) at a green site whose row holds R (B): ``[[0,0,.5,0,0],[0,-1,0,-1,0],[-1,4,5,4,-1],
  [0,-1,0,-1,0],[0,0,.5,0,0]] / 8``; its transpose where the column holds R (B);
* R at B sites and B at R sites: ``[[0,0,-1.5,0,0],[0,2,0,2,0],[-1.5,0,6,0,-1.5],[0,2,0,2,0],
  [0,0,-1.5,0,0]] / 8``.

Formula source: colour-demosaicing 0.2.7, ``colour_demosaicing/bayer/demosaicing/malvar2004.py``
(BSD-3-Clause), which we match to float rounding away from the borders (2 px: it convolves
with scipy's half-sample ``reflect``, which breaks CFA parity). Borders here are mirrored with
CFA parity kept (:mod:`imagingflows.models.demosaic_tiling`); the kernels sum to 1, so a
constant image stays constant; the CFA sample of each pixel's own colour is kept.

Shapes: ``(B, 1, H, W)`` float mosaic -> ``(B, 3, H, W)`` of the same dtype/device, not
clipped. H, W even. Support radius 2, halo 2.
"""

from __future__ import annotations

import torch

from imagingflows.models.demosaic_tiling import run_tiled, site_phases, split_phases

NAME = "malvar"
HALO = 2


def _core(x: torch.Tensor, pattern: str) -> list[dict]:
    """The three 5x5 kernels (and the transpose), each evaluated only at the sites it serves,
    with equal weights grouped: ``(4 x + 2 n1 - n2) / 8`` etc."""
    s = site_phases(pattern)
    f = split_phases(x)
    R, B, Gr, Gb = s["R"], s["B"], s["Gr"], s["Gb"]

    def diag(ph):
        return (f.nb(ph, -1, -1) + f.nb(ph, -1, 1)) + (f.nb(ph, 1, -1) + f.nb(ph, 1, 1))

    def green_at(ph):  # G at R and B sites
        return ((f[ph] * 4 + (f.pair(ph, 1, "h") + f.pair(ph, 1, "v")) * 2)
                - (f.pair(ph, 2, "h") + f.pair(ph, 2, "v"))) * 0.125

    def opposite_at(ph):  # B at R sites, R at B sites
        return ((f[ph] * 6 + diag(ph) * 2) - (f.pair(ph, 2, "h") + f.pair(ph, 2, "v")) * 1.5) * 0.125

    def at_green(ph):  # (colour found left/right, colour found above/below) at a green site
        x5, d = f[ph] * 5, diag(ph)
        h1, h2, v1, v2 = f.pair(ph, 1, "h"), f.pair(ph, 2, "h"), f.pair(ph, 1, "v"), f.pair(ph, 2, "v")
        row = ((x5 + h1 * 4) - (h2 + d) + v2 * 0.5) * 0.125
        col = ((x5 + v1 * 4) - (v2 + d) + h2 * 0.5) * 0.125
        return row, col

    r_at_gr, b_at_gr = at_green(Gr)  # red row: red left/right, blue above/below
    b_at_gb, r_at_gb = at_green(Gb)
    red = {R: f[R], Gr: r_at_gr, Gb: r_at_gb, B: opposite_at(B)}
    green = {R: green_at(R), Gr: f[Gr], Gb: f[Gb], B: green_at(B)}
    blue = {B: f[B], Gr: b_at_gr, Gb: b_at_gb, R: opposite_at(R)}
    return [red, green, blue]


def demosaic_malvar(mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024) -> torch.Tensor:
    """Malvar-He-Cutler demosaicking of ``(B, 1, H, W)`` ``mosaic`` with ``pattern`` -> ``(B, 3, H, W)``.

    ``tile``: side of the region processed per step (halo included); ``None``: whole image.
    """
    return run_tiled(_core, mosaic, pattern, halo=HALO, tile=tile, who=NAME)
