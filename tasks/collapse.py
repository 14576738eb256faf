"""Is a restored image a collapse of its input (blank, flat, far darker), rather than a restoration?

Domain-free: compares two ``(H, W, C)`` integer arrays on the data's own white level, through block
means, so noise, blur and fine detail do not count; only the picture's layout and exposure do.
"""

from __future__ import annotations

import numpy as np

from imagingflows.tasks.ingest import InputError

#: a collapsed output: block std below this share of the input's, range below this share, mean below this share
COLLAPSE_STD, COLLAPSE_RANGE, COLLAPSE_MEAN = 0.1, 0.2, 0.3
COLLAPSE_BLOCK = 8  # input pixels per block side: block means average the noise away
COLLAPSE_MIN_SIDE = 16  # smaller images are not checked


def _gray(a: np.ndarray, level: int) -> np.ndarray:
    """``(H, W, C)`` uint -> ``(H, W)`` float64 on [0, 1] (divided by ``level``), mean over channels."""
    return a.astype(np.float64).mean(axis=2) / float(level)


def _block_means(x: np.ndarray, b: int) -> np.ndarray:
    h, w = x.shape[0] // b * b, x.shape[1] // b * b
    return x[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))


def noise_sigma(x: np.ndarray) -> float:
    """Gaussian noise level of a ``(H, W)`` image (Immerkaer 1996: mean |Laplacian difference|); 0 if tiny."""
    if min(x.shape) < 3:
        return 0.0
    k = (x[:-2, :-2] - 2 * x[:-2, 1:-1] + x[:-2, 2:] - 2 * x[1:-1, :-2] + 4 * x[1:-1, 1:-1] - 2 * x[1:-1, 2:]
         + x[2:, :-2] - 2 * x[2:, 1:-1] + x[2:, 2:])
    return float(np.sqrt(np.pi / 2) * np.abs(k).mean() / 6)


def collapse_reason(before: np.ndarray, after: np.ndarray, level: int, scale: int = 1) -> str | None:
    """Why ``after`` (``(H*scale, W*scale, C)``) is a collapsed restoration of ``before`` (``(H, W, C)``), or None.

    Compares ``COLLAPSE_BLOCK``-pixel block means (the output's blocks cover the same area), so noise,
    blur and detail do not count; only the picture's layout and exposure do (images with a side under
    ``COLLAPSE_MIN_SIDE`` pixels are not checked):

    * near-constant: the output's block std below ``COLLAPSE_STD`` of the input's, where the input has
      structure (block std above 3x what its own noise leaves in a block mean, and above 0.5/255);
    * range: the output's 1-99 percentile range of block means below ``COLLAPSE_RANGE`` of the input's
      (same condition);
    * mean: the output's mean below ``COLLAPSE_MEAN`` of the input's, where the input's mean is well above
      its noise (clipped noise lifts the mean of a dark noisy image, which a denoiser rightly removes).
    """
    if min(before.shape[:2]) < COLLAPSE_MIN_SIDE:
        return None  # too few pixels for the statistics to mean anything
    b = COLLAPSE_BLOCK if min(before.shape[:2]) >= 4 * COLLAPSE_BLOCK else 1
    x, y = _gray(before, level), _gray(after, level)
    bi, bo = _block_means(x, b), _block_means(y, b * scale)
    n = min(bi.shape[0], bo.shape[0]), min(bi.shape[1], bo.shape[1])
    bi, bo = bi[:n[0], :n[1]], bo[:n[0], :n[1]]
    sigma = noise_sigma(x)
    s_in, s_out = float(bi.std()), float(bo.std())
    if s_in > max(0.5 / 255, 3 * sigma / b):
        if s_out < COLLAPSE_STD * s_in:
            return f"near-constant output: block std {s_out * 255:.2f} vs {s_in * 255:.2f} in the input (0-255 scale)"
        r_in, r_out = (float(np.ptp(np.percentile(v, [1, 99]))) for v in (bi, bo))
        if r_out < COLLAPSE_RANGE * r_in:
            return f"range collapsed: {r_out * 255:.2f} vs {r_in * 255:.2f} in the input (1-99 percentile, 0-255 scale)"
    m_in, m_out = float(x.mean()), float(y.mean())
    if m_in > max(2 / 255, 2 * sigma) and m_out < COLLAPSE_MEAN * m_in:
        return f"mean collapsed: {m_out * 255:.2f} vs {m_in * 255:.2f} in the input (0-255 scale)"
    return None


def check_collapse(before: np.ndarray, after: np.ndarray, level: int, scale: int, source: str,
                   hint: str | None = None) -> None:
    """Raise :class:`InputError` naming ``source`` when the output collapsed (:func:`collapse_reason`);
    ``hint`` (e.g. that the data may use fewer bits) is added to the message."""
    reason = collapse_reason(before, after, level, scale)
    if reason:
        advice = hint or (f"white level {level}: pass --white-level if the data use fewer bits, or other --weights")
        raise InputError(f"{source}: the restored image collapsed ({reason}); nothing written. The model does "
                         f"not fit this image ({advice})")
