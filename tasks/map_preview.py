"""A class map over an RGB rendering of its scene, with a legend: the report's picture of a map.

Both are read decimated (``out_shape``), so the preview of a 20000 x 20000 scene costs a few MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

RGB = tuple[int, int, int]

#: distinct colours for class values 0..n (tab10-like); value 255 is nodata and stays transparent
PALETTE: tuple[RGB, ...] = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def stretch(bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``bands (C, H, W)`` any dtype, ``valid (H, W)`` -> uint8 ``(H, W, 3)``: a 2-98 % stretch per band
    over valid pixels (one band is shown grey; more than three: the first three)."""
    b = bands[:3].astype(np.float32)
    if b.shape[0] < 3:
        b = np.repeat(b[:1], 3, axis=0)
    out = np.zeros(b.shape, np.float32)
    for i in range(3):
        vals = b[i][valid]
        lo, hi = (np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0))
        out[i] = np.clip((b[i] - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = (out.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    rgb[~valid] = 255  # nodata shown white
    return rgb


def overlay(rgb: np.ndarray, labels: np.ndarray, colors: Mapping[int, RGB], alpha: float = 0.45) -> np.ndarray:
    """``rgb (H, W, 3)`` uint8, ``labels (H, W)`` uint8 (255: nodata, left as is) -> blended ``(H, W, 3)``."""
    out = rgb.astype(np.float32)
    for value, color in colors.items():
        hit = labels == value
        out[hit] = (1 - alpha) * out[hit] + alpha * np.asarray(color, np.float32)
    return out.round().astype(np.uint8)


def save_map_preview(path: Path, rgb: np.ndarray, labels: np.ndarray, names: Mapping[int, str],
                     colors: Mapping[int, RGB] | None = None) -> Path:
    """Write ``path`` (PNG, atomically): the class map over the scene, a legend band below naming each
    class present (``0 land``). Returns the path."""
    from PIL import Image

    from imagingflows.tasks.preview import legend_band
    from imagingflows.tasks.write import atomic_path

    colors = dict(colors or {v: PALETTE[v % len(PALETTE)] for v in names})
    picture = overlay(rgb, labels, colors)
    present = [int(v) for v in np.unique(labels) if int(v) in colors]
    entries = [(f"{v} {names.get(v, '')}".strip(), colors[v]) for v in present]
    if entries:
        picture = np.concatenate([picture, legend_band(picture.shape[1], entries)], axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)
