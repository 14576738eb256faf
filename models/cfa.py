"""Bayer CFA (colour filter array) patterns, in one place: names, masks, mosaicking, conversions.

Naming: a pattern is named by the **physical top-left 2x2 block**, read row by row:
``RGGB`` means pixel (0, 0) is red, (0, 1) and (1, 0) green, (1, 1) blue. Only the four Bayer
patterns exist here (``RGGB``, ``BGGR``, ``GRBG``, ``GBRG``); X-Trans (6x6), quad-Bayer (4x4),
RGBE/CMYG sensors and Foveon/linear files are refused with an error saying what they are (X-Trans
cells are handled by ``models/demosaicnet_xtrans.py``; :func:`cell_masks` serves both).

Conversions at library boundaries (checked in ``tests/test_demosaic_classical.py``):

=========  ============================  ===================  ==============================
physical   OpenCV ``COLOR_Bayer??2RGB``  kornia ``CFA.??``    rawpy ``raw_pattern`` (RGBG)
=========  ============================  ===================  ==============================
RGGB       ``BayerBG``                   ``CFA.BG``           ``[[0, 1], [3, 2]]``
BGGR       ``BayerRG``                   ``CFA.RG``           ``[[2, 3], [1, 0]]``
GRBG       ``BayerGB``                   ``CFA.GB``           ``[[1, 0], [2, 3]]``
GBRG       ``BayerGR``                   ``CFA.GR``           ``[[3, 2], [0, 1]]``
=========  ============================  ===================  ==============================

OpenCV (and kornia, which copies it) names the pattern by the two pixels at (1, 1) and (1, 2),
i.e. the physical name read backwards: physical RGGB is ``BayerBG``. rawpy's ``raw_pattern``
holds indices into ``color_desc`` (``b"RGBG"`` for 3-colour Bayer sensors); LibRaw numbers the
green that shares its row with blue as 3 (``identify()``: ``filters |= ((filters >> 2 &
0x22222222) | (filters << 2 & 0x88888888)) & filters << 1``). The research note's table has
``[[1, 2], [0, 3]]`` for GBRG (a research note's table), which contradicts that rule; reading a pattern does not care
(both greens map to ``G`` through ``color_desc``), only :func:`to_rawpy` does.

Tensor shapes: masks ``(3, H, W)``; RGB images ``(B, 3, H, W)``; mosaics ``(B, 1, H, W)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

PATTERNS: tuple[str, ...] = ("RGGB", "BGGR", "GRBG", "GBRG")
_CHANNEL = {"R": 0, "G": 1, "B": 2}


class CFAError(ValueError):
    """A CFA pattern, or a camera's CFA description, that is not one of the four Bayer patterns."""


def check_pattern(pattern: Any) -> str:
    """The pattern name in upper case; :class:`CFAError` for anything else.

    Catches OpenCV/kornia names (``BayerBG``, ``CFA.BG``, ``BG``), which are shifted by one
    pixel, and says which physical pattern they mean.
    """
    text = str(getattr(pattern, "name", pattern)).strip()
    upper = text.upper()
    if upper in PATTERNS:
        return upper
    short = _opencv_letters(text)
    if short in {"BG", "GB", "RG", "GR"}:
        raise CFAError(f"CFA pattern {text!r} looks like OpenCV/kornia naming (read from pixel (1, 1)); "
                       f"physical top-left naming is needed: OpenCV/kornia {short} is {from_opencv(short)}. "
                       f"Valid: {', '.join(PATTERNS)}")
    raise CFAError(f"unknown CFA pattern {text!r}: expected one of {', '.join(PATTERNS)} "
                   "(the physical top-left 2x2 block, row by row)")


def channel_index(pattern: str) -> list[list[int]]:
    """``[[c00, c01], [c10, c11]]``: the channel (0 R, 1 G, 2 B) of each top-left 2x2 position."""
    p = check_pattern(pattern)
    return [[_CHANNEL[p[0]], _CHANNEL[p[1]]], [_CHANNEL[p[2]], _CHANNEL[p[3]]]]


def cell_masks(rows: Sequence[str], height: int, width: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """``(3, height, width)`` 0/1 masks of the red, green and blue sites of a CFA cell given as its rows of
    letters (``("RG", "GB")`` for RGGB, six rows of six for X-Trans), repeated over the image."""
    out = torch.zeros(3, height, width, dtype=dtype, device=device)
    n, m = len(rows), len(rows[0])
    for y, row in enumerate(rows):
        for x, letter in enumerate(row):
            out[_CHANNEL[letter], y::n, x::m] = 1
    return out


def masks(pattern: str, height: int, width: int, *, dtype: torch.dtype = torch.float32,
          device: torch.device | str | None = None) -> torch.Tensor:
    """``(3, height, width)`` 0/1 masks of the red, green and blue sites of ``pattern``."""
    p = check_pattern(pattern)
    return cell_masks((p[:2], p[2:]), height, width, dtype=dtype, device=device)


def mosaic(rgb: torch.Tensor, pattern: str) -> torch.Tensor:
    """Sample an RGB image through the CFA: ``(B, 3, H, W)`` -> ``(B, 1, H, W)`` (values copied exactly)."""
    if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"mosaic: expected an RGB tensor (B, 3, H, W), got {tuple(getattr(rgb, 'shape', ()))}")
    index = channel_index(pattern)
    out = rgb.new_empty(rgb.shape[0], 1, rgb.shape[2], rgb.shape[3])
    for y in range(2):
        for x in range(2):
            out[:, 0, y::2, x::2] = rgb[:, index[y][x], y::2, x::2]
    return out


# ---- OpenCV / kornia -------------------------------------------------------------------------------

def _opencv_letters(text: str) -> str:
    """``"COLOR_BayerBG2RGB"``, ``"BayerBG"``, ``"CFA.BG"``, ``"BG"`` -> ``"BG"``."""
    rest = text.upper().removeprefix("COLOR_").removeprefix("CFA.").removeprefix("BAYER")
    return rest.split("2")[0]


def to_opencv(pattern: str) -> str:
    """OpenCV's name, ``"BayerBG"`` for physical RGGB (use as ``cv2.COLOR_BayerBG2RGB``)."""
    return "Bayer" + check_pattern(pattern)[::-1][:2]


def from_opencv(name: str) -> str:
    """The physical pattern of an OpenCV/kornia name (``"BayerBG"``, ``"BG"``, ``"CFA.BG"``, a ``CFA``)."""
    text = str(getattr(name, "name", name)).strip()
    short = _opencv_letters(text)
    for p in PATTERNS:
        if p[::-1][:2] == short:
            return p
    raise CFAError(f"unknown OpenCV/kornia Bayer name {text!r}: expected BayerBG, BayerGB, BayerRG or BayerGR")


def to_kornia(pattern: str):
    """kornia's ``kornia.color.CFA`` member (``CFA.BG`` for physical RGGB)."""
    from kornia.color import CFA

    return CFA[to_opencv(pattern)[5:]]


def from_kornia(cfa: Any) -> str:
    """The physical pattern of a ``kornia.color.CFA`` member."""
    return from_opencv(cfa.name)


# ---- rawpy / LibRaw --------------------------------------------------------------------------------

def _describe(letters: np.ndarray) -> str:
    return " / ".join("".join(row) for row in letters.tolist())


def from_rawpy(raw_pattern: Any, color_desc: bytes | str) -> str:
    """The physical pattern of a rawpy file from its ``raw_pattern`` and ``color_desc``.

    Args:
        raw_pattern: rawpy's ``raw.raw_pattern``: a 2-D integer array of indices into
            ``color_desc`` (2x2 for Bayer; a 2-periodic 4x4 or larger is reduced), or None.
        color_desc: rawpy's ``raw.color_desc``, e.g. ``b"RGBG"``.
    Raises:
        CFAError: no CFA (Foveon, linear DNG), X-Trans, quad-Bayer, a non-RGB sensor, or any
            other layout that is not one of the four Bayer patterns; the message says which.
    """
    desc = color_desc.decode("ascii", "replace") if isinstance(color_desc, (bytes, bytearray)) else str(color_desc)
    if raw_pattern is None:
        raise CFAError("not a CFA (colour filter array) image: raw_pattern is None "
                       "(a Foveon sensor or a linear, already demosaicked DNG)")
    idx = np.asarray(raw_pattern)
    if idx.ndim != 2 or 0 in idx.shape or not np.issubdtype(idx.dtype, np.integer):
        raise CFAError(f"raw_pattern must be a 2-D integer array, got shape {idx.shape} dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= len(desc):
        raise CFAError(f"raw_pattern indices {sorted(set(idx.ravel().tolist()))} do not fit "
                       f"color_desc {desc!r} ({len(desc)} colours)")
    letters = np.array(list(desc.upper()))[idx]
    h, w = idx.shape
    if h % 2 or w % 2:
        raise CFAError(f"{h}x{w} CFA {_describe(letters)} is not a Bayer pattern (needs a 2x2 period)")
    periodic = (np.array_equal(letters, np.tile(letters[:2, :2], (h // 2, w // 2))))
    if not periodic:
        if (h, w) == (6, 6) and set(letters.ravel()) == {"R", "G", "B"}:
            raise CFAError(f"6x6 X-Trans CFA ({_describe(letters)}) is not a Bayer pattern: "
                           "bilinear/Malvar/Menon need a 2x2 Bayer mosaic")
        if (h % 4 == 0 and w % 4 == 0 and np.array_equal(letters, np.repeat(np.repeat(
                letters[::2, ::2], 2, axis=0), 2, axis=1)) and _is_bayer(letters[::2, ::2][:2, :2])):
            raise CFAError(f"{h}x{w} quad-Bayer CFA ({_describe(letters)}: 2x2 blocks of one colour) "
                           "is not a Bayer pattern; remosaic it first")
        raise CFAError(f"{h}x{w} CFA {_describe(letters)} is not a Bayer pattern (no 2x2 period)")
    block = letters[:2, :2]
    if not set(block.ravel()) <= {"R", "G", "B"}:
        raise CFAError(f"CFA colours {_describe(block)} (color_desc {desc!r}) are not an RGB Bayer sensor")
    if not _is_bayer(block):
        raise CFAError(f"2x2 CFA {_describe(block)} is not a Bayer pattern "
                       "(needs two greens on a diagonal, one red, one blue)")
    return "".join(block.ravel())


def _is_bayer(block: np.ndarray) -> bool:
    return "".join(block.ravel()) in PATTERNS


def to_rawpy(pattern: str) -> tuple[np.ndarray, bytes]:
    """``(raw_pattern, color_desc)`` as LibRaw reports them for ``pattern``: ``((2, 2) uint8, b"RGBG")``.

    The green in the red row is 1, the green in the blue row 3 (LibRaw's ``identify()``).
    """
    p = check_pattern(pattern)
    out = np.zeros((2, 2), dtype=np.uint8)
    for y in range(2):
        for x in range(2):
            c = p[2 * y + x]
            neighbour = p[2 * y + (1 - x)]
            out[y, x] = {"R": 0, "B": 2}.get(c, 3 if neighbour == "B" else 1)
    return out, b"RGBG"


def pattern_of_crop(pattern: str, top: int, left: int) -> str:
    """The pattern of a mosaic cropped at ``(top, left)`` (an odd offset changes the name)."""
    p = check_pattern(pattern)
    block: Sequence[str] = [p[2 * ((top + y) % 2) + (left + x) % 2] for y in range(2) for x in range(2)]
    return "".join(block)
