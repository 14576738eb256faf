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

from imagingflows.models.demosaic_tiling import kernel_taps, run_tiled, site_masks, taps

NAME = "malvar"
HALO = 2
_G_AT_RB = kernel_taps([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0],
                        [0, 0, -1, 0, 0]], scale=8)
_ROW_K = [[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]]
_C_AT_G_ROW = kernel_taps(_ROW_K, scale=8)  # the wanted colour is left and right
_C_AT_G_COL = kernel_taps([list(c) for c in zip(*_ROW_K)], scale=8)  # ... above and below
_C_AT_OPP = kernel_taps([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0],
                         [0, 0, -1.5, 0, 0]], scale=8)


def _core(x: torch.Tensor, pattern: str) -> torch.Tensor:
    m = site_masks(pattern, x.shape[-2], x.shape[-1], x.device)
    g = torch.where(m["G"], x, taps(x, _G_AT_RB))
    row, col, opp = taps(x, _C_AT_G_ROW), taps(x, _C_AT_G_COL), taps(x, _C_AT_OPP)
    g_r_row, g_b_row = m["G"] & m["Rr"], m["G"] & m["Br"]
    r = torch.where(m["R"], x, torch.where(g_r_row, row, torch.where(g_b_row, col, opp)))
    b = torch.where(m["B"], x, torch.where(g_b_row, row, torch.where(g_r_row, col, opp)))
    return torch.cat([r, g, b], dim=1)


def demosaic_malvar(mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024) -> torch.Tensor:
    """Malvar-He-Cutler demosaicking of ``(B, 1, H, W)`` ``mosaic`` with ``pattern`` -> ``(B, 3, H, W)``.

    ``tile``: side of the region processed per step (halo included); ``None``: whole image.
    """
    return run_tiled(_core, mosaic, pattern, halo=HALO, tile=tile, who=NAME)
