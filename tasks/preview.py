"""Domain-free image previews: orthogonal overlay slices of a 3D volume, before/after strips.

numpy + Pillow only. Display convention for 3D volumes given in RAS voxel order
(axis 0 = left->right, 1 = posterior->anterior, 2 = inferior->superior):

- axial    (slice ``[:, :, z]``): columns follow axis 0 (patient left on the image left,
  right on the right, i.e. the neurological convention), rows follow axis 1 with
  anterior at the top;
- coronal  (slice ``[:, y, :]``): columns follow axis 0 as above, superior at the top;
- sagittal (slice ``[x, :, :]``): anterior on the image left (nose to the left, as most
  viewers show it), superior at the top.

In pixel terms, for a volume of shape ``(X, Y, Z)`` the voxel ``(x, y, z)`` appears at
``(row, col) = (Y-1-y, x)`` in the axial image, ``(Z-1-z, x)`` in the coronal one and
``(Z-1-z, Y-1-y)`` in the sagittal one (before any rescaling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .write import write_png

VIEWS = ("axial", "coronal", "sagittal")

# Used for label values that ``colors`` does not name.
_DEFAULT_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)

MIN_PREVIEW_PX = 256
MAX_PREVIEW_PX = 1024

LABEL_BAND_PX = 20  # height of the caption band above a before/after pair
_FONT_PX = 13
_TEXT_DARK, _TEXT_LIGHT = (20, 20, 20), (240, 240, 240)
_LEGEND_BG = (32, 32, 32)
_SWATCH_PX = 12


# ----------------------------------------------------------------------------- helpers


def _as_volume(image: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (image (X, Y, Z) float32, labels (X, Y, Z) int32), checking shapes.

    A 4D image is accepted when its channel axis is unambiguous from the labels' shape
    (``(C, X, Y, Z)`` or ``(X, Y, Z, C)``); its first channel is shown.
    """
    image = np.asarray(image)
    if labels is None:
        shape = image.shape if image.ndim == 3 else None
        if shape is None:
            raise ValueError(f"expected a 3D image (X, Y, Z), got shape {image.shape}")
        labels = np.zeros(shape, dtype=np.int32)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected 3D labels (X, Y, Z), got shape {labels.shape}")
    if image.ndim == 4:
        if image.shape[1:] == labels.shape:
            image = image[0]
        elif image.shape[:3] == labels.shape:
            image = image[..., 0]
    if image.ndim != 3:
        raise ValueError(f"expected a 3D image (X, Y, Z), got shape {image.shape}")
    if image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} and labels shape {labels.shape} differ")
    if labels.dtype.kind == "f":
        labels = np.rint(np.nan_to_num(labels))
    return image.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def window(image: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Map ``image`` to [0, 1] between the ``lower``/``upper`` percentiles of its nonzero finite voxels."""
    img = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    vals = img[img != 0]
    if vals.size == 0:
        return np.zeros(img.shape, dtype=np.float32)
    if vals.size > 2_000_000:  # percentiles of a subsample are plenty for a preview
        vals = vals[:: vals.size // 1_000_000]
    lo, hi = (float(v) for v in np.percentile(vals, [lower, upper]))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
        if not hi > lo:
            hi = lo + 1.0
            lo = min(lo, 0.0) if lo > 0 else lo - 1.0
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _default_center(labels: np.ndarray) -> tuple[int, int, int]:
    idx = np.nonzero(labels > 0)
    if idx[0].size == 0:
        return tuple(int(s // 2) for s in labels.shape)  # type: ignore[return-value]
    return tuple(int(round(float(i.mean()))) for i in idx)  # type: ignore[return-value]


def _clip_center(center, shape) -> tuple[int, int, int]:
    if len(center) != 3:
        raise ValueError(f"center must be 3 voxel indices (x, y, z), got {center!r}")
    return tuple(int(min(max(int(round(float(c))), 0), s - 1)) for c, s in zip(center, shape))  # type: ignore[return-value]


def _extract(vol: np.ndarray, view: str, c: tuple[int, int, int]) -> np.ndarray:
    """One display-oriented 2D slice (rows, cols) of ``vol`` through voxel ``c``."""
    x, y, z = c
    if view == "axial":
        return vol[:, :, z].T[::-1, :]
    if view == "coronal":
        return vol[:, y, :].T[::-1, :]
    if view == "sagittal":
        return vol[x, :, :].T[::-1, ::-1]
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")


def _pixel_spacing(view: str, spacing) -> tuple[float, float]:
    """(row spacing, column spacing) in mm of a displayed slice."""
    sx, sy, sz = (float(s) for s in spacing)
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[view]


def _color_table(labels: np.ndarray, colors: Mapping | None) -> dict[int, tuple[int, int, int]]:
    table: dict[int, tuple[int, int, int]] = {}
    given = {int(k): tuple(int(v) for v in rgb)[:3] for k, rgb in (colors or {}).items()}
    for i, lab in enumerate(int(v) for v in np.unique(labels) if v > 0):
        table[lab] = given.get(lab, _DEFAULT_PALETTE[i % len(_DEFAULT_PALETTE)])  # type: ignore[assignment]
    return table


def _outline(lab: np.ndarray) -> np.ndarray:
    """Pixels of a nonzero label that touch a different label (4-neighbourhood)."""
    edge = np.zeros(lab.shape, dtype=bool)
    diff_v = lab[1:, :] != lab[:-1, :]
    diff_h = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return edge & (lab > 0)


def _compose(grey: np.ndarray, lab: np.ndarray, table: dict[int, tuple[int, int, int]], alpha: float,
             outline: bool = True) -> np.ndarray:
    """Blend a [0, 1] grey slice with a label slice -> (H, W, 3) uint8."""
    rgb = np.repeat((np.clip(grey, 0, 1) * 255.0)[..., None], 3, axis=2).astype(np.float32)
    edge = _outline(lab) if outline else np.zeros(lab.shape, dtype=bool)
    for value, color in table.items():
        mask = lab == value
        if not mask.any():
            continue
        col = np.asarray(color, dtype=np.float32)
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * col
        rgb[mask & edge] = col
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _resize(arr: np.ndarray, size_wh: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    if (arr.shape[1], arr.shape[0]) == size_wh:
        return arr
    if nearest:
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.int32))
        return np.asarray(im.resize(size_wh, Image.Resampling.NEAREST), dtype=np.int32)
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    return np.asarray(im.resize(size_wh, Image.Resampling.BILINEAR), dtype=np.float32)


def preview_size(shape_rc: tuple[int, int], pixel_spacing_rc: tuple[float, float], *,
                 min_px: int = MIN_PREVIEW_PX, max_px: int = MAX_PREVIEW_PX) -> tuple[int, int]:
    """(width, height) of a preview whose pixel aspect follows the physical size of the slice.

    The finest axis keeps its native resolution, then the image is enlarged until its shorter
    side reaches ``min_px`` (never letting the longer side exceed ``max_px``) or shrunk until
    the longer side fits ``max_px``.
    """
    rows, cols = shape_rc
    sr, sc = (float(s) if s and np.isfinite(s) and s > 0 else 1.0 for s in pixel_spacing_rc)
    h_mm, w_mm = rows * sr, cols * sc
    px = min(sr, sc)
    w, h = w_mm / px, h_mm / px
    scale = 1.0
    if min(w, h) < min_px:
        scale = min_px / min(w, h)
    if max(w, h) * scale > max_px:
        scale = max_px / max(w, h)
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def _prepare(image, labels, colors, center):
    img, lab = _as_volume(image, labels)
    c = _default_center(lab) if center is None else _clip_center(center, lab.shape)
    return window(img), lab, _color_table(lab, colors), c


# ----------------------------------------------------------------------------- text


def _font():
    """Pillow's bundled default font (no files, no downloads): scalable Aileron where FreeType is
    built in, the fixed bitmap font otherwise."""
    from PIL import ImageFont, features

    if features.check("freetype2"):
        return ImageFont.load_default(size=_FONT_PX)
    return ImageFont.load_default()


def _text_width(draw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _draw_text_mid(draw, x: int, mid_y: int, text: str, fill, font) -> None:
    """Text starting at column ``x``, vertically centred on row ``mid_y`` (no ``anchor``: the
    bitmap fallback font does not take one)."""
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((x, mid_y - (top + bottom) // 2), text, fill=fill, font=font)


def _caption_band(widths: list[int], gap: int, texts: list[str], background: int) -> np.ndarray:
    """A (LABEL_BAND_PX, sum(widths) + gaps, 3) uint8 band with each text left-aligned over its column.

    Text wider than its column is clipped at the column's edge.
    """
    from PIL import Image, ImageDraw

    total = sum(widths) + gap * (len(widths) - 1)
    band = np.full((LABEL_BAND_PX, total, 3), background, dtype=np.uint8)
    ink = _TEXT_DARK if background > 127 else _TEXT_LIGHT
    font, x0 = _font(), 0
    for w, text in zip(widths, texts):
        cell = Image.fromarray(band[:, x0:x0 + w].copy())
        _draw_text_mid(ImageDraw.Draw(cell), 3, LABEL_BAND_PX // 2, str(text), ink, font)
        band[:, x0:x0 + w] = np.asarray(cell)
        x0 += w + gap
    return band


RGB = tuple[int, int, int]


def legend_entries(table: Mapping[int, RGB], names: Mapping | None = None) -> list[tuple[str, RGB]]:
    """``[("1 NCR", rgb), ...]`` for the label values of a colour table, in value order.

    ``names`` maps label values to names; a value it does not name is shown as the bare number.
    """
    named = {int(k): str(v) for k, v in (names or {}).items()}
    return [(f"{v} {named[v]}" if v in named else str(v), tuple(table[v])) for v in sorted(table)]


def _legend_band(width: int, entries: list[tuple[str, RGB]]) -> np.ndarray:
    """(H, width, 3) uint8: a colour swatch and its text per entry on a dark band, wrapping into rows."""
    from PIL import Image, ImageDraw

    font, pad, row_h = _font(), 6, LABEL_BAND_PX
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, row = [], pad, 0
    for text, rgb in entries:
        w = _SWATCH_PX + 4 + _text_width(probe, text, font)
        if x > pad and x + w > width - pad:
            x, row = pad, row + 1
        placed.append((x, row, text, rgb))
        x += w + 2 * pad
    im = Image.new("RGB", (width, (row + 1) * row_h + 4), _LEGEND_BG)
    draw = ImageDraw.Draw(im)
    for x, row, text, rgb in placed:
        mid = 2 + row * row_h + row_h // 2
        draw.rectangle([x, mid - _SWATCH_PX // 2, x + _SWATCH_PX - 1, mid + _SWATCH_PX // 2 - 1], fill=tuple(rgb))
        _draw_text_mid(draw, x + _SWATCH_PX + 4, mid, text, _TEXT_LIGHT, font)
    return np.asarray(im)


legend_band = _legend_band  # public: other previews (class maps) draw the same legend


# ----------------------------------------------------------------------------- public API


def overlay_slices(image: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[int, int, int]], *,
                   center: tuple[int, int, int] | None = None, alpha: float = 0.45) -> dict[str, np.ndarray]:
    """Three orthogonal overlay slices at native voxel resolution.

    image (X, Y, Z) float and labels (X, Y, Z) int, both in RAS voxel order. Returns
    ``{"axial", "coronal", "sagittal"}`` -> (H, W, 3) uint8, each a slice through ``center``
    (voxel indices; default: centre of mass of ``labels > 0``, or the volume centre when there
    are no labels), oriented as the module docstring states (anterior / superior up). The grey
    image is windowed to the 0.5-99.5 percentile of nonzero voxels; each label is blended with
    its colour from ``colors`` (a default palette for labels it does not name) at ``alpha``,
    with its outline drawn opaque on top. Pixels are voxels: see :func:`save_overlay_previews`
    for physically proportioned images.
    """
    grey, lab, table, c = _prepare(image, labels, colors, center)
    return {v: _compose(_extract(grey, v, c), _extract(lab, v, c), table, alpha) for v in VIEWS}


def save_overlay_previews(image: np.ndarray, labels: np.ndarray, out_dir: Path, stem: str,
                          colors: dict[int, tuple[int, int, int]] | None, *,
                          center: tuple[int, int, int] | None = None,
                          spacing: tuple[float, float, float] = (1, 1, 1),
                          alpha: float = 0.45, names: Mapping[int, str] | None = None,
                          legend: bool = True) -> list[Path]:
    """Write ``out_dir/preview_{axial,coronal,sagittal}.png`` atomically and return their paths.

    Each slice is resampled so that its pixel aspect follows the voxel ``spacing`` (mm along
    axes 0, 1, 2), so anisotropic voxels do not look squashed, and small slices are enlarged
    to about 256 px on their shorter side (grey bilinear, labels nearest, outlines drawn at the
    output resolution). ``stem`` (the item id) is not part of the file names, which the output
    tree fixes; it only labels errors.

    With ``legend`` (the default) and any label in the volume, a dark band below the slice names
    each label value of the volume next to a swatch of its colour (``"1 NCR"`` with
    ``names={1: "NCR"}``, the bare value ``"1"`` for values ``names`` does not name); the slice
    itself keeps the size :func:`preview_size` gives, in the top rows of the PNG.
    """
    out_dir = Path(out_dir)
    try:
        grey, lab, table, c = _prepare(image, labels, colors, center)
    except ValueError as e:
        raise ValueError(f"{stem}: cannot make previews: {e}") from e
    if len(tuple(spacing)) != 3:
        raise ValueError(f"{stem}: spacing must have 3 values (mm along x, y, z), got {spacing!r}")
    paths = []
    for view in VIEWS:
        g2, l2 = _extract(grey, view, c), _extract(lab, view, c)
        size = preview_size(g2.shape, _pixel_spacing(view, spacing))
        rgb = _compose(_resize(g2, size, nearest=False), _resize(l2, size, nearest=True), table, alpha)
        if legend and table:
            rgb = np.concatenate([rgb, _legend_band(rgb.shape[1], legend_entries(table, names))], axis=0)
        paths.append(write_png(out_dir / f"preview_{view}.png", rgb))
    return paths


def _to_rgb_u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"expected an image (H, W) or (H, W, 3), got shape {a.shape}")
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == bool:
        out = a.astype(np.uint8) * 255
    elif a.dtype.kind in "ui":
        top = 65535.0 if a.dtype.itemsize >= 2 and a.max(initial=0) > 255 else 255.0
        out = np.clip(np.rint(a.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)
    else:
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        out = np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


def before_after(before: np.ndarray, after: np.ndarray, *, gap: int = 4, background: int = 255,
                 labels: tuple[str, str] | None = ("input", "output")) -> np.ndarray:
    """``before`` and ``after`` side by side as one (B + H, W1 + gap + W2, 3) uint8 image.

    Inputs are (H, W) or (H, W, 3), floats in [0, 1] or uint8 (uint16 is scaled from 0-65535).
    Images of different heights are top-aligned on a ``background`` canvas (white by default),
    which also fills the ``gap``-pixel separator. ``labels`` (before, after) are written in a
    ``B = LABEL_BAND_PX`` band above each image (dark text on a light background, clipped to the
    image's width); ``labels=None`` gives the bare pair (``B = 0``).
    """
    a, b = _to_rgb_u8(before), _to_rgb_u8(after)
    h = max(a.shape[0], b.shape[0])
    out = np.full((h, a.shape[1] + gap + b.shape[1], 3), background, dtype=np.uint8)
    out[: a.shape[0], : a.shape[1]] = a
    out[: b.shape[0], a.shape[1] + gap:] = b
    if labels is None:
        return out
    if len(labels) != 2:
        raise ValueError(f"labels must be two strings (before, after), got {labels!r}")
    band = _caption_band([a.shape[1], b.shape[1]], gap, [str(t) for t in labels], background)
    return np.concatenate([band, out], axis=0)


def detail_box(image: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``size`` x ``size`` window of a 2D ``image`` with the most detail.

    Detail is the sum of absolute horizontal and vertical differences inside the window (an integral
    image, candidate windows on a grid of step ``size // 4``), so a preview crop shows texture and
    edges rather than flat sky. A window larger than the image is clipped to it (origin 0).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D image (H, W), got shape {img.shape}")
    h, w = img.shape
    sh, sw = min(size, h), min(size, w)
    if sh < 1 or sw < 1 or (sh == h and sw == w):
        return 0, 0
    energy = np.zeros((h, w))
    energy[:, 1:] += np.abs(np.diff(img, axis=1))
    energy[1:, :] += np.abs(np.diff(img, axis=0))
    s = np.zeros((h + 1, w + 1))
    s[1:, 1:] = energy.cumsum(0).cumsum(1)
    step = max(1, min(sh, sw) // 4)
    rows = sorted(set(range(0, h - sh + 1, step)) | {h - sh})
    cols = sorted(set(range(0, w - sw + 1, step)) | {w - sw})
    r, c = np.array(rows)[:, None], np.array(cols)[None, :]
    sums = s[r + sh, c + sw] - s[r, c + sw] - s[r + sh, c] + s[r, c]
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(rows[i]), int(cols[j])
