"""Menon, Andriani & Calvagno (2007) DDFAPD Bayer demosaicking with its refining step, batched torch.

Paper: D. Menon, S. Andriani, G. Calvagno, "Demosaicing with directional filtering and a
posteriori decision", IEEE Trans. Image Processing 16(1):132-141, 2007,
doi:10.1109/TIP.2006.884928. Steps (the paper's sections II-IV):

1. Green is interpolated along rows and along columns with the filter
   ``[-1/4, 1/2, 1/2, 1/2, -1/4]`` (``G_H``, ``G_V``).
2. Decision: the colour differences ``C = R - G`` (or ``B - G``) of each direction give the
   gradients ``D_H = |C_H(i, j) - C_H(i, j + 2)|`` (``D_V`` likewise); ``d_H``/``d_V`` sum them
   over a 5x5 neighbourhood with weights ``[[1,0,1],[0,1,0],[3,0,3],[0,1,0],[1,0,1]]``
   (transposed for ``d_V``); the horizontal estimate wins where ``d_V >= d_H`` (``M = 1``).
3. Red/blue at green sites: ``G + mean(R) - mean(G)`` over the two neighbours that hold R (B);
   at blue (red) sites along the direction chosen in 2.
4. Refining: the colour differences R - G and B - G are smoothed by a 3-tap mean along the
   chosen direction to re-estimate green at R/B sites, then R/B at green sites, then R at B
   and B at R sites from R - B.

Formula source: colour-demosaicing 0.2.7, ``colour_demosaicing/bayer/demosaicing/menon2007.py``
(BSD-3-Clause), followed operation by operation, summation order included (scipy's symmetric
1-D correlation ``x * w0 + (x[-2] + x[+2]) * w2 + (x[-1] + x[+1]) * w1`` and its 2-D correlate,
which sums the flipped kernel's non-zero taps row by row), so float64 results agree to
rounding and the decision ``d_V >= d_H`` breaks ties the same way. It differs near the
borders only (we mirror with CFA parity kept; it mirrors the mosaic the same way but sums
``d_H``/``d_V`` with zeros beyond the image, ``mode="constant"``).

Shapes: ``(B, 1, H, W)`` float mosaic -> ``(B, 3, H, W)`` of the same dtype/device, not
clipped. H, W even. Support radius at most 9 (4 for the decision, 6 after step 3, 9 after
the refining step; tiles were already exact with halo 8 on the test image), halo 10.
Memory: a few dozen quarter-size phase planes per tile, so ``tile`` bounds it
(colour-demosaicing's refining step holds whole-image float64 planes: +3 GB on 21 MP).
"""

from __future__ import annotations

import torch

from imagingflows.models.demosaic_tiling import PhaseField, run_tiled, site_phases, split_phases

NAME = "menon"
HALO = 10
_K = [[0, 0, 1, 0, 1], [0, 0, 0, 1, 0], [0, 0, 3, 0, 3], [0, 0, 0, 1, 0], [0, 0, 1, 0, 1]]


def _correlate_order(kernel: list[list[float]]) -> list[tuple[int, int, float]]:
    """Taps ``(dy, dx, w)`` of scipy ``convolve(x, kernel)`` in the order scipy sums them."""
    c = len(kernel) // 2
    flipped = [row[::-1] for row in kernel[::-1]]
    return [(a - c, b - c, v) for a, row in enumerate(flipped) for b, v in enumerate(row) if v]


_D_H_TAPS = _correlate_order(_K)
_D_V_TAPS = _correlate_order([list(c) for c in zip(*_K)])
_THIRD = 1.0 / 3.0


def _decision_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for the decision ``d_V >= d_H`` (except on MPS, which has none).

    The two sums are often equal or within float32 rounding of each other (flat or symmetric
    regions); computed in float32 the tie breaks differently from colour-demosaicing's float64
    in about 4 % of the pixels (measured on a 256 x 256 crop of scikit-image's astronaut:
    up to 0.07 per pixel). In float64 the decision is the reference's (float32 output within
    2e-7 of it), and the rest of the method runs in the input dtype.
    """
    return x.dtype if x.device.type == "mps" else torch.float64


def _mean2(f: PhaseField, ph, axis: str) -> torch.Tensor:
    """scipy ``convolve1d(q, [0.5, 0, 0.5])`` at ``ph``: ``0 * q + (q[-1] + q[+1]) * 0.5``."""
    return f.pair(ph, 1, axis) * 0.5


def _directional(f: PhaseField, ph, horizontal: torch.Tensor) -> torch.Tensor:
    """scipy ``convolve1d(q, ones(3) / 3)`` along the chosen direction at ``ph``."""
    q = f[ph] * _THIRD
    return torch.where(horizontal, q + f.pair(ph, 1, "h") * _THIRD, q + f.pair(ph, 1, "v") * _THIRD)


def _decide(x: PhaseField, s: dict, dtype: torch.dtype):
    """Steps 1-2 at the R and B sites: the chosen green and the mask ``d_V >= d_H``."""
    xd = PhaseField({ph: p.to(dtype) for ph, p in x.planes.items()})
    green, c = {}, {}
    for axis in ("h", "v"):
        g = {ph: xd.pair(ph, 1, axis) * 0.5 + (xd[ph] * 0.5 + xd.pair(ph, 2, axis) * -0.25)
             for ph in (s["R"], s["B"])}  # scipy: convolve1d(x, h_0) + convolve1d(x, h_1)
        green[axis] = g
        c[axis] = {ph: xd[ph] - g[ph] for ph in g}
    d = {}
    for axis, step, taps in (("h", (0, 2), _D_H_TAPS), ("v", (2, 0), _D_V_TAPS)):
        cf = PhaseField(c[axis])
        grad = PhaseField({ph: (cf[ph] - cf.nb(ph, *step)).abs() for ph in c[axis]})  # |C - C[+2]|
        d[axis] = {}
        for ph in c[axis]:
            out = None
            for dy, dx, w in taps:  # scipy's order; the taps landing on green sites add exact zeros
                q = ((ph[0] + dy) % 2, (ph[1] + dx) % 2)
                if q in grad.planes:
                    term = grad.nb(ph, dy, dx) * w
                    out = term if out is None else out + term
            d[axis][ph] = out
    horizontal = {ph: d["v"][ph] >= d["h"][ph] for ph in d["h"]}
    g = {ph: torch.where(horizontal[ph], green["h"][ph], green["v"][ph]) for ph in horizontal}
    return g, horizontal


def _core(x: torch.Tensor, pattern: str, refine: bool = True) -> list[dict]:
    s = site_phases(pattern)
    R, B, Gr, Gb = s["R"], s["B"], s["Gr"], s["Gb"]
    f = split_phases(x)
    g_rb, hz = _decide(f, s, _decision_dtype(x))
    g = PhaseField({R: g_rb[R].to(x.dtype), B: g_rb[B].to(x.dtype), Gr: f[Gr], Gb: f[Gb]})
    zero = torch.zeros_like(f[R])

    # 3: red and blue at green sites (from the two neighbours holding them), then R at B, B at R
    r = PhaseField({R: f[R], B: zero, Gr: g[Gr] + _mean2(f, Gr, "h") - _mean2(g, Gr, "h"),
                    Gb: g[Gb] + _mean2(f, Gb, "v") - _mean2(g, Gb, "v")})
    b = PhaseField({B: f[B], R: zero, Gb: g[Gb] + _mean2(f, Gb, "h") - _mean2(g, Gb, "h"),
                    Gr: g[Gr] + _mean2(f, Gr, "v") - _mean2(g, Gr, "v")})
    r_at_b = torch.where(hz[B], f[B] + _mean2(r, B, "h") - _mean2(b, B, "h"),
                         f[B] + _mean2(r, B, "v") - _mean2(b, B, "v"))
    r = PhaseField({**r.planes, B: r_at_b})
    b_at_r = torch.where(hz[R], f[R] + _mean2(b, R, "h") - _mean2(r, R, "h"),
                         f[R] + _mean2(b, R, "v") - _mean2(r, R, "v"))
    b = PhaseField({**b.planes, R: b_at_r})
    if refine:
        r, g, b = _refine(r, g, b, s, hz)
    return [r.planes, g.planes, b.planes]


def _refine(r: PhaseField, g: PhaseField, b: PhaseField, s: dict, hz: dict):
    """The refining step (colour-demosaicing's ``refining_step_Menon2007``), site by site."""
    R, B, Gr, Gb = s["R"], s["B"], s["Gr"], s["Gb"]
    # green at red and blue sites from the smoothed colour differences
    b_g = PhaseField({ph: b[ph] - g[ph] for ph in (B, Gr, Gb)})
    r_g = PhaseField({ph: r[ph] - g[ph] for ph in (R, Gr, Gb)})
    g = PhaseField({**g.planes, R: r[R] - _directional(r_g, R, hz[R]), B: b[B] - _directional(b_g, B, hz[B])})
    # red and blue at green sites
    r_g = PhaseField({R: r[R] - g[R]})
    b_g = PhaseField({B: b[B] - g[B]})
    r = PhaseField({**r.planes, Gb: g[Gb] + _mean2(r_g, Gb, "v"), Gr: g[Gr] + _mean2(r_g, Gr, "h")})
    b = PhaseField({**b.planes, Gr: g[Gr] + _mean2(b_g, Gr, "v"), Gb: g[Gb] + _mean2(b_g, Gb, "h")})
    # red at blue sites and blue at red sites from R - B
    r_b = PhaseField({ph: r[ph] - b[ph] for ph in (R, B, Gr, Gb)})
    r = PhaseField({**r.planes, B: b[B] + _directional(r_b, B, hz[B])})
    b = PhaseField({**b.planes, R: r[R] - _directional(r_b, R, hz[R])})
    return r, g, b


def demosaic_menon(mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024,
                   refining_step: bool = True) -> torch.Tensor:
    """DDFAPD demosaicking of ``(B, 1, H, W)`` ``mosaic`` with ``pattern`` -> ``(B, 3, H, W)``.

    ``tile``: side of the region processed per step (halo included); ``None``: whole image.
    ``refining_step``: run the paper's refining step (default, as colour-demosaicing).
    """
    def core(x: torch.Tensor, p: str) -> list[dict]:
        return _core(x, p, refine=refining_step)

    return run_tiled(core, mosaic, pattern, halo=HALO, tile=tile, who=NAME)
