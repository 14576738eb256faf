"""Write camera-like DNG files from clean images (tifffile), so tests read them back through rawpy.

``write_dng(path, srgb_linear, pattern)`` (a Bayer name, or an X-Trans cell as 6 rows ``GBGGRG/...``) simulates a sensor whose colour space is CIE XYZ (D65): the
linear sRGB image is converted to XYZ and exposed at ``EXPOSURE`` (so the white's Z = 1.089 is not
clipped), sampled on the Bayer ``pattern``, scaled to ``black .. white`` and stored as a 16-bit CFA DNG
(``tasks/dng_write.py``) with the tags LibRaw needs: CFARepeatPatternDim/CFAPattern,
BlackLevel/WhiteLevel, ColorMatrix1 (XYZ -> camera: identity) with CalibrationIlluminant1 D65,
AsShotNeutral (the XYZ of the D65 white: the raw response to white), UniqueCameraModel. Developing
it (black, white, white balance 1/neutral, LibRaw's camera -> sRGB matrix) gives ``EXPOSURE`` times the
image back, up to demosaicking error, LibRaw's matrix and 12-bit quantisation.

    python -m sample_data.dng --out dngs/    # the four patterns from a scikit-image photograph
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from imagingflows.tasks.dng_write import CFA_CODES, write_cfa_dng
from imagingflows.tasks.dng_write import cfa_cell as _cell
from imagingflows.tasks.dng_write import srational as _srational

SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
D65_XYZ = SRGB_TO_XYZ.sum(1)  # the XYZ of linear sRGB white (1, 1, 1): (0.9505, 1.0, 1.0888)
EXPOSURE = 0.9


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def sensor_mosaic(srgb_linear: np.ndarray, pattern: str, black: int, white: int) -> np.ndarray:
    """``(H, W, 3)`` linear sRGB in [0, 1] -> the ``(H, W)`` uint16 raw mosaic of the simulated sensor."""
    cam = EXPOSURE * np.einsum("ij,hwj->hwi", SRGB_TO_XYZ, srgb_linear)  # camera RGB = XYZ
    h, w, _ = cam.shape
    site = np.empty((h, w), np.int64)
    cell = _cell(pattern)
    n = len(cell)
    for y, row in enumerate(cell):
        for x, letter in enumerate(row):
            site[y::n, x::n] = CFA_CODES[letter]
    values = np.take_along_axis(cam, site[..., None], axis=2)[..., 0]
    return np.round(black + np.clip(values, 0, 1) * (white - black)).astype(np.uint16)


def write_dng(path: str | Path, srgb_linear: np.ndarray, pattern: str = "RGGB", *, black: int = 256,
              white: int = 4095, model: str = "imagingflows synthetic XYZ sensor") -> Path:
    """Write the DNG (see the module docstring); returns its path."""
    raw = sensor_mosaic(srgb_linear, pattern, black, white)
    return write_cfa_dng(path, raw, pattern, black=black, white=white, as_shot_neutral=D65_XYZ, model=model)


def clean_image() -> np.ndarray:
    """A linear sRGB test image (scikit-image's astronaut, 256 x 384 crop)."""
    from skimage import data

    return srgb_to_linear(data.astronaut()[80:336, 64:448] / 255.0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    image = clean_image()
    for pattern in ("RGGB", "BGGR", "GRBG", "GBRG"):
        print(write_dng(args.out / f"astronaut_{pattern.lower()}.dng", image, pattern))


if __name__ == "__main__":
    main()
