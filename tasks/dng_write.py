"""Write a given 16-bit CFA mosaic as a DNG file (tifffile) that LibRaw reads back.

:func:`write_cfa_dng` stores ``mosaic`` (H, W) uint16 as it is, with the tags LibRaw needs:
NewSubFileType, Make/Model, CFARepeatPatternDim/CFAPattern (a Bayer name such as ``RGGB``, named by the
top-left 2 x 2 block, or an X-Trans cell as 6 rows ``GBGGRG/...``), DNGVersion, UniqueCameraModel,
BlackLevel/WhiteLevel, ColorMatrix1 (XYZ -> camera, 3 x 3) with CalibrationIlluminant1 D65, and
AsShotNeutral (the camera's response to white). Defaults: identity matrix and neutral (1, 1, 1), i.e. a
"camera" whose raw space is taken as is, which is what a demosaicking benchmark wants from LibRaw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CFA_CODES = {"R": 0, "G": 1, "B": 2}  # TIFF/EP CFAPattern colour codes


def srational(values, den: int = 1_000_000) -> list[int]:
    """Floats -> TIFF (S)RATIONAL pairs ``[num, den, num, den, ...]``."""
    out: list[int] = []
    for v in values:
        out += [int(round(v * den)), den]
    return out


def cfa_cell(pattern: str) -> list[str]:
    """A Bayer name (``RGGB``) or X-Trans rows (``GBGGRG/RGRBGB/...``) -> the CFA cell's rows."""
    rows = pattern.upper().split("/")
    if len(rows) == 1 and len(rows[0]) == 4 and sorted(rows[0]) == sorted("RGGB"):
        return [rows[0][:2], rows[0][2:]]
    if len(rows) == 6 and all(len(r) == 6 and set(r) <= set("RGB") for r in rows):
        return rows
    raise ValueError(f"pattern must be RGGB, BGGR, GRBG, GBRG or 6 rows of an X-Trans cell, got {pattern!r}")


def write_cfa_dng(path: str | Path, mosaic: np.ndarray, pattern: str, *, black: int = 0, white: int = 65535,
                  color_matrix: np.ndarray | None = None, as_shot_neutral=(1.0, 1.0, 1.0),
                  model: str = "imagingflows synthetic sensor") -> Path:
    """Write ``mosaic`` (H, W) uint16 (values as stored: ``black .. white``) as a CFA DNG; returns its path.

    ``color_matrix``: ColorMatrix1 (3, 3) XYZ -> camera (default identity); ``as_shot_neutral``: the raw
    response to white (R, G, B). The levels are written as given (a broken file, black above white, can be
    written on purpose for tests). Raises ValueError on a mosaic that is not 2D uint16.
    """
    import tifffile

    mosaic = np.asarray(mosaic)
    cell = cfa_cell(pattern)
    n = len(cell)
    if mosaic.ndim != 2 or mosaic.dtype != np.uint16:
        raise ValueError(f"write_cfa_dng: expected a (H, W) uint16 mosaic, got {mosaic.dtype} {mosaic.shape}")
    if not (0 <= black <= 65535 and 0 < white <= 65535):
        raise ValueError(f"write_cfa_dng: levels must lie in 0 .. 65535, got black {black}, white {white}")
    matrix = np.eye(3) if color_matrix is None else np.asarray(color_matrix, np.float64).reshape(3, 3)
    tags = [
        (254, "I", 1, 0, True),                                              # NewSubFileType: main image
        (271, "s", 0, "imagingflows", True), (272, "s", 0, model, True),    # Make, Model
        (33421, "H", 2, (n, n), True),                                       # CFARepeatPatternDim
        (33422, "B", n * n, bytes(CFA_CODES[c] for c in "".join(cell)), True),  # CFAPattern
        (50706, "B", 4, bytes([1, 4, 0, 0]), True),                          # DNGVersion
        (50707, "B", 4, bytes([1, 1, 0, 0]), True),                          # DNGBackwardVersion
        (50708, "s", 0, model, True),                                        # UniqueCameraModel
        (50713, "H", 2, (1, 1), True),                                       # BlackLevelRepeatDim
        (50714, "H", 1, int(black), True),                                   # BlackLevel
        (50717, "H", 1, int(white), True),                                   # WhiteLevel
        (50721, "2i", 9, srational(matrix.ravel()), True),                   # ColorMatrix1: XYZ -> camera
        (50778, "H", 1, 21, True),                                           # CalibrationIlluminant1: D65
        (50728, "2I", 3, srational(as_shot_neutral), True),                  # AsShotNeutral
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, mosaic, photometric=32803, planarconfig=1, extratags=tags)
    return path
