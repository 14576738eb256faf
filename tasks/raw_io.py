"""Camera RAW / DNG files through rawpy (LibRaw): the CFA mosaic and the facts needed to develop it.

:func:`read_raw` returns the visible sensor area as stored, the Bayer pattern derived from LibRaw's
``raw_pattern`` + ``color_desc`` (``models/cfa.py``; never guessed), the black level of each 2 x 2
site (``black_level_per_channel``), the white level (the per-channel camera white level when the file
states one, else ``white_level``), the camera's as-shot and daylight white balance, and LibRaw's
camera-to-sRGB matrix (linear, D65), and the file's default crop. :func:`normalise` maps the mosaic to
[0, 1] site by site; :func:`apply_crop` cuts an image made from the mosaic to that crop.
A Fujifilm X-Trans file gives its 6 x 6 cell instead of a Bayer name. Anything LibRaw cannot read, or a
file that is not a CFA file (Foveon, linear DNG) or whose CFA is neither (quad Bayer), is an
:class:`~imagingflows.tasks.ingest.InputError` naming the file.

Default crop, in ``raw_image_visible`` coordinates (LibRaw's ``sizes.top_margin``/``left_margin`` subtracted):
for a DNG, its DefaultCropOrigin/DefaultCropSize (from the ActiveArea corner, read with tifffile) when it
states both; otherwise LibRaw's ``sizes.crop_left_margin/crop_top_margin/crop_width/crop_height`` (its
``raw_inset_crops[0]``, the maker's crop; raw-image coordinates). The DNG tags are read directly because
LibRaw (0.22 in rawpy 0.28) moves an odd raw-image crop origin on by one pixel and shrinks the size by one
(it keeps the CFA phase; we crop after demosaicking, so the file's exact rectangle is kept). LibRaw reports
no crop (all 0) for a crop that is the whole image, one of the two DNG tags alone, or a crop past the raw
image. None here when the file states none or the whole visible area; a crop that leaves the visible area
(into a masked margin) is dropped with a note.

DNG files are also read with tifffile (tags of the CFA IFD) for what LibRaw hides or gets wrong: a
WhiteLevel of 0 (LibRaw then reports 65535); a CFARepeatPatternDim other than 2 x 2 or 6 x 6 (LibRaw folds
any cell of 16 sites into its 8 x 2 ``filters`` code, so a 4 x 4 quad-Bayer cell comes back as a wrong 2 x 2
pattern, and even a Bayer pattern written as a 4 x 4 cell is misread); and a per-site BlackLevel pattern
whose origin (the ActiveArea corner) is on an odd row or column: LibRaw starts the visible area on the next
even one and lays the pattern from there, while it lays the CFA from the corner, so its per-site black is
misplaced (the file's values are used, with a note).
A quad-Bayer file in another RAW format is not recognised (LibRaw gives no sign of it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from imagingflows.tasks.ingest import InputError

RAW_SUFFIXES = (".dng", ".nef", ".cr2", ".cr3", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw", ".nrw", ".raw")


class Crop(NamedTuple):
    """A rectangle of the visible sensor area, in pixels: rows ``top:top + height``, columns
    ``left:left + width``."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class RawData:
    """``mosaic`` (H, W) uint16 as stored; ``pattern``: a Bayer name (``RGGB``) or a 6 x 6 X-Trans cell
    (``GBGGRG/RGRBGB/...``); ``black`` (2, 2), or (6, 6) for X-Trans, per CFA site; ``white`` the level that maps to
    1.0; ``camera_wb`` / ``daylight_wb`` (R, G, B) gains normalised to G = 1 (None when the file has
    none); ``cam_to_srgb`` (3, 3) linear camera RGB -> linear sRGB; ``crop`` the file's default crop of
    ``mosaic`` (None when it states none, or the whole area); ``notes``: things noticed that do not stop
    development (for the item's warnings)."""

    mosaic: np.ndarray
    pattern: str
    black: np.ndarray
    white: float
    white_from: str
    camera_wb: tuple[float, float, float] | None
    daylight_wb: tuple[float, float, float] | None
    cam_to_srgb: np.ndarray
    crop: Crop | None = None
    notes: tuple[str, ...] = ()


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


def _dng_tags(path: Path) -> dict | None:
    """The tags of a DNG's CFA image (the largest IFD or SubIFD with Photometric CFA), read with tifffile;
    None for another format or when tifffile cannot read it (LibRaw then says what is wrong)."""
    if path.suffix.lower() != ".dng":
        return None
    import tifffile

    codes = {"cfa_dim": 33421, "cfa": 33422, "plane_colors": 50710, "black_dim": 50713, "black": 50714,
             "black_dh": 50715, "black_dv": 50716, "white": 50717, "crop_origin": 50719, "crop_size": 50720,
             "active_area": 50829}
    try:
        with tifffile.TiffFile(path) as tif:
            pages, best = list(tif.pages), None
            while pages:
                page = pages.pop()
                pages += list(getattr(page, "pages", None) or [])
                if page.photometric == 32803 and (best is None or page.shape[0] * page.shape[1] >
                                                  best.shape[0] * best.shape[1]):
                    best = page
            if best is None:
                return None
            return {name: _tag_value(best.tags.get(code)) for name, code in codes.items()}
    except Exception:  # noqa: BLE001 - any tifffile failure: LibRaw's own reading decides
        return None


def _tag_value(tag):
    """A tifffile tag's value; RATIONAL / SRATIONAL (tifffile: flat numerator, denominator pairs) as floats."""
    if tag is None:
        return None
    value = tag.value
    if int(tag.dtype) in (5, 10):
        flat = _numbers(value)
        return tuple(n / d if d else 0.0 for n, d in zip(flat[::2], flat[1::2]))
    return value


def _numbers(value) -> list[float]:
    """A tag value (one number, a sequence or bytes) as a list of floats."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        return [float(v) for v in value]
    if not isinstance(value, (tuple, list, np.ndarray)):
        return [float(value)]
    return [float(v) for v in np.ravel(value)]


def _cfa_cell_problem(tags: dict) -> str | None:
    """Why a DNG's stated CFA cell cannot go through LibRaw's pattern (None for 2 x 2 and 6 x 6 cells)."""
    from imagingflows.models.cfa import PATTERNS

    dims = tuple(int(v) for v in _numbers(tags.get("cfa_dim")))
    if len(dims) != 2 or dims in ((2, 2), (6, 6)) or tags.get("cfa") is None:
        return None
    h, w = dims
    codes = [int(v) for v in _numbers(tags["cfa"])]
    plane = [int(v) for v in _numbers(tags.get("plane_colors"))] or [0, 1, 2]
    names = "RGBCMYW"
    letters = [names[plane[c]] if c < len(plane) and plane[c] < len(names) else "?" for c in codes]
    if len(letters) != h * w:
        return f"its CFAPattern has {len(letters)} entries for a {h} x {w} CFARepeatPatternDim"
    cell = np.array(letters).reshape(h, w)
    rows = "/".join("".join(r) for r in cell)
    if h % 4 == 0 and w % 4 == 0:
        blocks = cell[::2, ::2]
        if np.array_equal(cell, np.repeat(np.repeat(blocks, 2, 0), 2, 1)) and \
                np.array_equal(blocks, np.tile(blocks[:2, :2], (h // 4, w // 4))) and \
                "".join(blocks[:2, :2].ravel()) in PATTERNS:
            return (f"quad-Bayer CFA ({h} x {w} cell {rows} of 2 x 2 same-colour blocks): remosaic it to Bayer "
                    "first (LibRaw would read it as a wrong 2 x 2 pattern)")
    if h % 2 == 0 and w % 2 == 0 and np.array_equal(cell, np.tile(cell[:2, :2], (h // 2, w // 2))) and \
            "".join(cell[:2, :2].ravel()) in PATTERNS:
        return (f"its Bayer pattern {''.join(cell[:2, :2].ravel())} is stated as a {h} x {w} cell ({rows}), "
                "which LibRaw misreads (it keeps 16 sites as 8 rows x 2 columns): rewrite it with "
                "CFARepeatPatternDim 2 x 2")
    return f"a {h} x {w} CFA cell ({rows}) that is neither Bayer (2 x 2) nor X-Trans (6 x 6)"


def _dng_black(tags: dict, sizes, period: int) -> np.ndarray | None:
    """The ``(period, period)`` black levels of the visible area's top-left cell from the DNG's BlackLevel
    pattern, whose origin is the ActiveArea's top-left corner (DNG spec); None when the tags do not give a
    plain pattern (no per-row/column deltas) that tiles the cell."""
    if tags.get("black_dh") is not None or tags.get("black_dv") is not None:
        return None
    dims = [int(v) for v in _numbers(tags.get("black_dim"))] or [1, 1]
    values = _numbers(tags.get("black"))
    if len(dims) != 2 or period % dims[0] or period % dims[1] or len(values) != dims[0] * dims[1]:
        return None
    pattern = np.array(values, np.float64).reshape(dims)
    area = [int(v) for v in _numbers(tags.get("active_area"))] or [0, 0]
    rows = (np.arange(period) + sizes.top_margin - area[0]) % dims[0]
    cols = (np.arange(period) + sizes.left_margin - area[1]) % dims[1]
    return pattern[np.ix_(rows, cols)]


def _crop(sizes, shape: tuple[int, int], tags: dict | None) -> tuple[Crop | None, str | None]:
    """The default crop in ``raw_image_visible`` coordinates, or (None, why it was dropped): a DNG's own
    DefaultCropOrigin (x, y) / DefaultCropSize (width, height) from the ActiveArea corner when it has both
    (LibRaw moves an odd raw-image origin one pixel on and shrinks the size by one), else LibRaw's."""
    origin, size = _numbers((tags or {}).get("crop_origin")), _numbers((tags or {}).get("crop_size"))
    if len(origin) == 2 and len(size) == 2:
        area = [int(v) for v in _numbers(tags.get("active_area"))] or [0, 0]
        crop = Crop(area[0] + int(round(origin[1])) - sizes.top_margin,
                    area[1] + int(round(origin[0])) - sizes.left_margin, int(round(size[1])), int(round(size[0])))
    elif sizes.crop_width > 0 and sizes.crop_height > 0:
        crop = Crop(int(sizes.crop_top_margin) - sizes.top_margin, int(sizes.crop_left_margin) - sizes.left_margin,
                    int(sizes.crop_height), int(sizes.crop_width))
    else:
        return None, None
    h, w = shape
    if crop == (0, 0, h, w):
        return None, None
    if crop.top < 0 or crop.left < 0 or crop.height <= 0 or crop.width <= 0 or crop.top + crop.height > h \
            or crop.left + crop.width > w:
        return None, (f"the file's default crop ({crop.height} x {crop.width} at row {crop.top}, column "
                      f"{crop.left}) leaves the visible sensor area {h} x {w}: ignored")
    return crop, None


def _facts(path: Path, raw, tags: dict | None) -> tuple:
    """What :func:`read_raw` needs from an open rawpy file (LibRaw unpacks lazily: any access may fail)."""
    import rawpy

    from imagingflows.models.cfa import CFAError, from_rawpy

    problem = _cfa_cell_problem(tags) if tags else None
    if problem:
        raise InputError(f"{path}: {problem}")
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
    if tags and 0.0 in _numbers(tags.get("white")):
        raise InputError(f"{path}: its WhiteLevel tag is 0, so the file states no usable white level (LibRaw "
                         f"would substitute {raw.white_level}): the file's levels are broken")
    mosaic = raw.raw_image_visible.copy()
    colors = raw.raw_colors_visible[:period, :period].copy()
    per_channel = list(raw.black_level_per_channel)
    black = np.array([[per_channel[c] for c in row] for row in colors], np.float64)
    notes = []
    stated = _dng_black(tags, raw.sizes, period) if tags else None
    if stated is not None and np.abs(stated - black).max() >= 1:  # LibRaw rounds fractional levels
        notes.append(f"LibRaw's per-site black {black.tolist()} differs from the file's BlackLevel pattern "
                     f"(origin: the ActiveArea corner) {stated.tolist()}: the file's values are used")
        black = stated
    camera_white = raw.camera_white_level_per_channel
    if camera_white and min(camera_white) > 0:
        white, white_from = float(max(camera_white)), "camera white level per channel"
    else:
        white, white_from = float(raw.white_level), "white level"
    cam_to_srgb = np.asarray(raw.color_matrix, np.float64)[:3, :3]
    crop, dropped = _crop(raw.sizes, mosaic.shape, tags)
    if dropped:
        notes.append(dropped)
    return (mosaic, pattern, black, white, white_from, cam_to_srgb, _gains(raw.camera_whitebalance),
            _gains(raw.daylight_whitebalance), crop, tuple(notes))


def read_raw(path: str | os.PathLike) -> RawData:
    """Decode ``path`` with rawpy; see the module docstring."""
    import rawpy

    path = Path(path)
    tags = _dng_tags(path)
    try:
        with rawpy.imread(str(path)) as raw:
            facts = _facts(path, raw, tags)
    except InputError:
        raise
    except (rawpy.LibRawError, OSError, ValueError, MemoryError) as e:
        raise InputError(f"{path}: not a RAW file LibRaw can read (truncated or another format?): "
                         f"{type(e).__name__}: {e}") from e
    mosaic, pattern, black, white, white_from, cam_to_srgb, camera_wb, daylight_wb, crop, notes = facts
    if white <= black.max():
        raise InputError(f"{path}: white level {white:g} ({white_from}) is not above the black level "
                         f"{black.max():g}: the file's levels are broken")
    if not np.isfinite(cam_to_srgb).all() or not np.abs(cam_to_srgb).sum():
        cam_to_srgb = np.eye(3)
    return RawData(mosaic, pattern, black, white, white_from, camera_wb, daylight_wb, cam_to_srgb, crop, notes)


def apply_crop(image: np.ndarray, crop: Crop | None) -> np.ndarray:
    """``(H, W[, C])`` -> rows ``top:top + height``, columns ``left:left + width`` of ``crop`` (a view; the image
    itself when ``crop`` is None). Made for images demosaicked from the whole visible area (the margin gives
    the demosaicker context). A crop that runs past the image by the odd row/column the pipeline drops is cut
    there; one that starts outside it is a ValueError."""
    if crop is None:
        return image
    h, w = image.shape[:2]
    if not (0 <= crop.top < h and 0 <= crop.left < w) or crop.height <= 0 or crop.width <= 0:
        raise ValueError(f"crop {tuple(crop)} (top, left, height, width) is outside the {h} x {w} image")
    return image[crop.top: min(crop.top + crop.height, h), crop.left: min(crop.left + crop.width, w)]


def normalise(data: RawData) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: each site's black subtracted, divided by ``white - black``."""
    h, w = data.mosaic.shape
    ph, pw = data.black.shape
    black = np.tile(data.black, (h // ph + 1, w // pw + 1))[:h, :w]
    return np.clip((data.mosaic.astype(np.float32) - black) / (data.white - black), 0.0, 1.0).astype(np.float32)
