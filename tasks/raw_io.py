"""Camera RAW / DNG files through rawpy (LibRaw): the CFA mosaic and the facts needed to develop it.

:func:`read_raw` returns the visible sensor area as stored, the Bayer pattern derived from LibRaw's
``raw_pattern`` + ``color_desc`` (``models/cfa.py``; never guessed), the black level of each 2 x 2
site (``black_level_per_channel``), the white level (the per-channel camera white level when the file
states one, else ``white_level``), the camera's as-shot and daylight white balance, and LibRaw's
camera-to-sRGB matrix (linear, D65). :func:`normalise` maps the mosaic to [0, 1] site by site.
A Fujifilm X-Trans file gives its 6 x 6 cell instead of a Bayer name. Anything LibRaw cannot read, or a
file that is not a CFA file (Foveon, linear DNG) or whose CFA is neither (quad Bayer), is an :class:`~imagingflows.tasks.ingest.InputError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagingflows.tasks.ingest import InputError

RAW_SUFFIXES = (".dng", ".nef", ".cr2", ".cr3", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw", ".nrw", ".raw")


@dataclass(frozen=True)
class RawData:
    """``mosaic`` (H, W) uint16 as stored; ``pattern``: a Bayer name (``RGGB``) or a 6 x 6 X-Trans cell
    (``GBGGRG/RGRBGB/...``); ``black`` (2, 2), or (6, 6) for X-Trans, per CFA site; ``white`` the level that maps to
    1.0; ``camera_wb`` / ``daylight_wb`` (R, G, B) gains normalised to G = 1 (None when the file has
    none); ``cam_to_srgb`` (3, 3) linear camera RGB -> linear sRGB."""

    mosaic: np.ndarray
    pattern: str
    black: np.ndarray
    white: float
    white_from: str
    camera_wb: tuple[float, float, float] | None
    daylight_wb: tuple[float, float, float] | None
    cam_to_srgb: np.ndarray


def _gains(values) -> tuple[float, float, float] | None:
    """LibRaw's 4 multipliers (R, G, B, G2) -> (R, G, B) with G = 1; None when unset (all 0)."""
    v = [float(x) for x in (values or [])][:3]
    if len(v) < 3 or v[1] <= 0 or min(v) <= 0:
        return None
    return v[0] / v[1], 1.0, v[2] / v[1]


def _xtrans(raw_pattern, color_desc) -> str | None:
    """A 6 x 6 Fujifilm X-Trans CFA as 6 rows of letters joined by ``/`` (``GBGGRG/RGRBGB/...``), else None."""
    idx = np.asarray(raw_pattern)
    desc = color_desc.decode("ascii", "replace") if isinstance(color_desc, (bytes, bytearray)) else str(color_desc)
    if idx.shape != (6, 6) or idx.max() >= len(desc):
        return None
    letters = np.array(list(desc.upper()))[idx]
    if set(letters.ravel()) != {"R", "G", "B"}:
        return None
    return "/".join("".join(row) for row in letters)


def is_xtrans(pattern: str) -> bool:
    """True for :func:`read_raw`'s 6 x 6 X-Trans patterns (Bayer patterns are 4 letters)."""
    return len(pattern) > 4


def _facts(path: Path, raw) -> tuple:
    """What :func:`read_raw` needs from an open rawpy file (LibRaw unpacks lazily: any access may fail)."""
    import rawpy

    from imagingflows.models.cfa import CFAError, from_rawpy

    if raw.raw_type != rawpy.RawType.Flat or raw.num_colors != 3 or raw.raw_pattern is None:
        raise InputError(f"{path}: not a CFA file (LibRaw: {raw.raw_type.name}, {raw.num_colors} colours, "
                         f"pattern {raw.raw_pattern!r}): a Foveon or linear (already demosaicked) file has "
                         "nothing to demosaick")
    try:
        pattern = from_rawpy(raw.raw_pattern, raw.color_desc)
        period = 2
    except CFAError as e:
        pattern, period = _xtrans(raw.raw_pattern, raw.color_desc), 6
        if pattern is None:
            raise InputError(f"{path}: {e}") from e
    mosaic = raw.raw_image_visible.copy()
    colors = raw.raw_colors_visible[:period, :period].copy()
    per_channel = list(raw.black_level_per_channel)
    black = np.array([[per_channel[c] for c in row] for row in colors], np.float64)
    camera_white = raw.camera_white_level_per_channel
    if camera_white and min(camera_white) > 0:
        white, white_from = float(max(camera_white)), "camera white level per channel"
    else:
        white, white_from = float(raw.white_level), "white level"
    cam_to_srgb = np.asarray(raw.color_matrix, np.float64)[:3, :3]
    return (mosaic, pattern, black, white, white_from, cam_to_srgb, _gains(raw.camera_whitebalance),
            _gains(raw.daylight_whitebalance))


def read_raw(path: str | os.PathLike) -> RawData:
    """Decode ``path`` with rawpy; see the module docstring."""
    import rawpy

    path = Path(path)
    try:
        with rawpy.imread(str(path)) as raw:
            facts = _facts(path, raw)
    except InputError:
        raise
    except (rawpy.LibRawError, OSError, ValueError, MemoryError) as e:
        raise InputError(f"{path}: not a RAW file LibRaw can read (truncated or another format?): "
                         f"{type(e).__name__}: {e}") from e
    mosaic, pattern, black, white, white_from, cam_to_srgb, camera_wb, daylight_wb = facts
    if white <= black.max():
        raise InputError(f"{path}: white level {white:g} ({white_from}) is not above the black level "
                         f"{black.max():g}: the file's levels are broken")
    if not np.isfinite(cam_to_srgb).all() or not np.abs(cam_to_srgb).sum():
        cam_to_srgb = np.eye(3)
    return RawData(mosaic, pattern, black, white, white_from, camera_wb, daylight_wb, cam_to_srgb)


def normalise(data: RawData) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: each site's black subtracted, divided by ``white - black``."""
    h, w = data.mosaic.shape
    ph, pw = data.black.shape
    black = np.tile(data.black, (h // ph + 1, w // pw + 1))[:h, :w]
    return np.clip((data.mosaic.astype(np.float32) - black) / (data.white - black), 0.0, 1.0).astype(np.float32)
