"""An independent bicubic reference (Keys' kernel, a = -0.5, as Pillow's BICUBIC) for alpha upscaling tests."""

from __future__ import annotations

import numpy as np


def _cubic(d: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (Pillow's BICUBIC uses a = -0.5); 0 from |d| = 2 on."""
    d = np.abs(d)
    near = (a + 2) * d**3 - (a + 3) * d**2 + 1
    far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return np.where(d < 1, near, np.where(d < 2, far, 0.0))


def _bicubic_matrix(n: int, scale: int) -> np.ndarray:
    """(n*scale, n) weights: output pixel centres mapped back, taps past the border dropped, rows renormalised."""
    centre = (np.arange(n * scale) + 0.5) / scale
    w = _cubic(np.arange(n)[None, :] + 0.5 - centre[:, None])
    return w / w.sum(axis=1, keepdims=True)


def bicubic_reference(alpha: np.ndarray, scale: int) -> np.ndarray:
    """(H, W) uint8/uint16 -> (H*scale, W*scale): rows then columns, float32 between the passes, clipped, rounded.

    Written from the kernel's definition, not with Pillow or the project's code.
    """
    h, w = alpha.shape
    rows = (alpha.astype(np.float64) @ _bicubic_matrix(w, scale).T).astype(np.float32)
    out = (_bicubic_matrix(h, scale) @ rows.astype(np.float64)).astype(np.float32)
    return np.rint(np.clip(out, 0, np.iinfo(alpha.dtype).max)).astype(alpha.dtype)
