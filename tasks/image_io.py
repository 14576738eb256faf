"""Read and write 2D images (PNG, JPEG, TIFF; 8 or 16 bit) for the restoration pipeline.

Reading (:func:`read_image`) gives an :class:`ImageData`:

* ``array``: ``(H, W, C)`` in the file's own sample type, uint8 or uint16. C is 1 (gray), 2 (gray + alpha),
  3 (RGB) or 4 (RGBA). **Alpha is kept** as the last channel, so writing the array back loses nothing;
  ``.color`` and ``.alpha`` (and :func:`split_alpha` / :func:`merge_alpha`) split it off for a model that
  takes colour only. Alpha is straight: premultiplied TIFF/Pillow alpha is converted on reading (a note says so).
* ``bit_depth`` 8 or 16, ``icc_profile`` (bytes or None), ``orientation_applied`` (the EXIF orientation
  that was applied to the pixels, 1 = none), and ``notes``: every conversion made, in words, for run.json.
* Orientation: the EXIF (or XMP, or TIFF tag 274) orientation is applied to the pixels with the
  semantics of Pillow's ``ImageOps.exif_transpose``, so ``array`` is upright. Outputs carry no orientation.
* Conversions (each one noted): palette -> RGB, or RGBA when the palette has transparency; CMYK -> RGB
  (Pillow's plain formula, no colour management; a CMYK ICC profile no longer applies and is dropped);
  1-bit -> 8-bit gray 0/255; 2/4-bit gray -> 8-bit; TIFF min-is-white -> inverted to min-is-black.
  A colour-key transparency (PNG tRNS on gray/RGB) is ignored, and noted; a JPEG named ``.png`` is read by
  its content, and noted. Animated PNG, multi-page and 3D TIFF are refused (one 2D image per file).
* Decoders: Pillow for PNG and JPEG, and ``.load()`` is always called so truncated files fail here
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone). Pillow keeps only the high byte of 16-bit colour
  PNGs, so those are decoded twice by Pillow's own PNG decoder, once unpacked as big-endian (high bytes)
  and once as little-endian (low bytes), and the two are joined: bit-exact, Adam7 and all filters included.
  TIFF goes through tifffile (16-bit RGB/RGBA included); files tifffile cannot decode without the optional
  ``imagecodecs`` package (LZW, JPEG, PackBits compression) or in other photometrics (palette, CMYK,
  YCbCr) fall back to Pillow when that loses no precision.

Every failure is an :class:`~imagingflows.tasks.ingest.InputError` that names the file and says what was
expected and what was found.

**White level** (the largest value the data can take): 16-bit files often hold fewer bits (10-, 12- or
14-bit camera or scanner data, max 1023 / 4095 / 16383). The file may say so: PNG ``sBIT`` (significant
bits per channel) or TIFF ``MaxSampleValue`` (281) / ``SMaxSampleValue`` (341). ``ImageData.level_hint``
holds what the file says; :func:`white_level` decides (a ``--white-level`` option wins over the file; a
hint the data exceed is ignored, e.g. sBIT data that were scaled up to 16 bit as the PNG spec intends).
Writing with ``like=`` puts the same sBIT / MaxSampleValue back when the output stays within it.

Writing (:func:`write_image`) picks the format from the suffix, keeps the bit depth and writes atomically
(temp file beside the output, then rename). 16-bit PNG is encoded here (Pillow cannot write 16-bit colour
PNG); TIFF is written by tifffile with Deflate compression; JPEG is 8-bit only (quality 95, 4:4:4).
The ICC profile goes into PNG (iCCP), TIFF (tag 34675) and JPEG (APP2).

**GeoTIFF** (a TIFF with GeoKeys, a model transform or tie points, a ``GDAL_NODATA`` tag, or a GDAL sidecar:
``.aux.xml`` / world file): the pixels are read as for any TIFF, and rasterio reads what GDAL knows of the file
into ``ImageData.geo`` (:class:`GeoInfo`: CRS, affine transform or ground control points, nodata, the metadata
that stays true of a restored image). ``write_image(..., geo=)`` writes the TIFF as usual to the temp file, then
sets that georeferencing with rasterio in update mode before the rename (pixels, ICC profile, alpha and
MaxSampleValue untouched); without ``geo`` nothing changes (plain TIFFs never go through GDAL). The nodata
helpers (:func:`nodata_sample`, :func:`nodata_mask`, :func:`fill_nodata`, :func:`upscale_mask`,
:func:`put_nodata`) follow GDAL's dataset-mask rule: a pixel is nodata when every band holds the nodata value.

Models see float32 ``(C, H, W)`` on [0, 1]: :func:`to_float` and :func:`from_float` (clip, scale, round
half to even, the way BasicSR's ``tensor2img`` rounds).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imagingflows.tasks.icc import srgb_profile  # noqa: F401  (moved to tasks/icc.py; importable here too)
from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.write import WriteError, atomic_path

FORMATS = ("PNG", "JPEG", "TIFF")
SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
EXPECTED = "a 2D PNG, JPEG or TIFF image, 8 or 16 bit, gray/RGB with optional alpha"
JPEG_QUALITY = 95

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# EXIF orientation -> what Pillow's ImageOps.exif_transpose does, on (H, W, C) arrays.
_ORIENT = {
    2: ("mirrored left-right", lambda a: a[:, ::-1]),
    3: ("rotated 180 degrees", lambda a: a[::-1, ::-1]),
    4: ("mirrored top-bottom", lambda a: a[::-1]),
    5: ("transposed", lambda a: a.transpose(1, 0, 2)),
    6: ("rotated 90 degrees clockwise", lambda a: np.rot90(a, -1)),
    7: ("transversed", lambda a: a[::-1, ::-1].transpose(1, 0, 2)),
    8: ("rotated 90 degrees counter-clockwise", lambda a: np.rot90(a, 1)),
}


@dataclass
class ImageData:
    """One decoded 2D image. ``array`` is ``(H, W, C)`` uint8/uint16, upright, alpha (if any) last."""

    array: np.ndarray
    bit_depth: int
    source: str
    format: str
    icc_profile: bytes | None = None
    orientation_applied: int = 1
    source_mode: str = ""
    notes: list[str] = field(default_factory=list)
    #: (largest value, why) the file declares for its colour samples (PNG sBIT, TIFF tags), or None
    level_hint: tuple[int, str] | None = None
    #: georeferencing and nodata of a GeoTIFF (:func:`read_geo`), None for any other file
    geo: GeoInfo | None = None

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def channels(self) -> int:
        return int(self.array.shape[2])

    @property
    def top(self) -> int:
        """The container's largest value: 255 or 65535."""
        return 255 if self.bit_depth == 8 else 65535

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def color(self) -> np.ndarray:
        """``(H, W, 1 or 3)``: the image without its alpha channel (a view)."""
        return split_alpha(self.array)[0]

    @property
    def alpha(self) -> np.ndarray | None:
        """``(H, W)`` alpha channel (a view) or None."""
        return split_alpha(self.array)[1]

    def info(self) -> dict:
        """JSON-friendly description (no pixels) for run.json; ``geo`` only for a GeoTIFF."""
        out = {
            "format": self.format,
            "source_mode": self.source_mode,
            "shape": [self.height, self.width, self.channels],
            "bit_depth": self.bit_depth,
            "alpha": self.has_alpha,
            "icc_profile": self.icc_profile is not None,
            "orientation_applied": self.orientation_applied,
            "level_hint": list(self.level_hint) if self.level_hint else None,
            "notes": list(self.notes),
        }
        if self.geo is not None:
            out["geo"] = self.geo.info()
        return out


def unpremultiply(array: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` with premultiplied colour and alpha last -> straight colour, same dtype.

    ``colour * max / alpha``, rounded and clipped; colour is 0 where alpha is 0 (nothing to recover).
    """
    top = float(np.iinfo(array.dtype).max)
    alpha = array[..., -1:].astype(np.float64)
    colour = np.where(alpha > 0, array[..., :-1] * top / np.maximum(alpha, 1), 0.0)
    out = array.copy()
    out[..., :-1] = np.rint(np.clip(colour, 0, top)).astype(array.dtype)
    return out


def split_alpha(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(H, W, C)`` -> (colour ``(H, W, 1 or 3)``, alpha ``(H, W)`` or None); C 2 and 4 carry alpha."""
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected (H, W, C) with C in 1..4, found shape {array.shape}")
    if array.shape[2] in (2, 4):
        return array[..., :-1], array[..., -1]
    return array, None


def merge_alpha(color: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Inverse of :func:`split_alpha`; ``alpha`` must have ``color``'s height, width and dtype."""
    if alpha is None:
        return color
    if alpha.shape != color.shape[:2] or alpha.dtype != color.dtype:
        raise ValueError(f"alpha {alpha.shape} {alpha.dtype} does not match colour {color.shape} {color.dtype}")
    return np.concatenate([color, alpha[..., None]], axis=2)


# ----------------------------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike, min_size: int | None = None) -> ImageData:
    """Decode one PNG/JPEG/TIFF into an :class:`ImageData`; raise :class:`InputError` for a bad file.

    ``min_size``: if given, both sides (after orientation) must be at least that many pixels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found; expected {EXPECTED}")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a file; expected {EXPECTED}")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes); expected {EXPECTED}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] in _TIFF_MAGIC:
        img = _read_tiff(path)
        img.geo = _tiff_geo(path, img)
    else:
        img = _read_pillow(path, head)
    h, w = img.array.shape[:2]
    if h == 0 or w == 0 or (min_size is not None and min(h, w) < min_size):
        raise InputError(
            f"{path}: image too small: {h}x{w} pixels (height x width); "
            f"expected at least {max(1, min_size or 1)} pixels on each side"
        )
    img.array = np.ascontiguousarray(img.array)
    return img


def _orient(array: np.ndarray, orientation, notes: list[str]) -> tuple[np.ndarray, int]:
    try:
        orientation = int(orientation or 1)
    except (TypeError, ValueError):
        orientation = 1
    if orientation == 1:
        return array, 1
    if orientation not in _ORIENT:
        notes.append(f"invalid EXIF orientation {orientation} ignored")
        return array, 1
    what, fn = _ORIENT[orientation]
    notes.append(f"EXIF orientation {orientation} applied: {what}")
    return fn(array), orientation


def _decode_error(path: Path, fmt: str, e: Exception) -> InputError:
    return InputError(
        f"{path}: could not decode the {fmt} data (truncated or corrupt file?): {type(e).__name__}: {e}; "
        f"expected {EXPECTED}"
    )


def _read_pillow(path: Path, head: bytes, fmt_hint: str | None = None, tiff_bits: int | None = None) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise InputError(
            f"{path}: not an image Pillow recognises; expected {EXPECTED}, found content starting with {head!r}"
        ) from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a broken header
        raise _decode_error(path, fmt_hint or "image", e) from None
    with im:
        fmt = im.format
        if fmt == "MPO":
            fmt = "JPEG"
        if fmt not in FORMATS:
            raise InputError(f"{path}: expected {EXPECTED}, found a {fmt} file")
        notes: list[str] = []
        named = SUFFIX_FORMAT.get(path.suffix.lower())
        if named is not None and named != fmt:
            notes.append(f"the content is {fmt} although the name ends in {path.suffix}")
        if im.format == "MPO":
            notes.append("multi-picture JPEG (MPO): the first (main) picture was read")
        elif getattr(im, "n_frames", 1) > 1:
            kind = "animated PNG" if fmt == "PNG" else f"multi-page {fmt}"
            raise InputError(f"{path}: {kind} with {im.n_frames} frames/pages; expected one 2D image")
        source_mode = im.mode
        rawmode = im.tile[0].args if im.tile and fmt == "PNG" else None
        try:
            if fmt == "PNG" and rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
                array = _png16_colour(path, rawmode)
                source_mode = {"RGB;16B": "RGB;16", "RGBA;16B": "RGBA;16", "LA;16B": "LA;16"}[rawmode]
            else:
                im.load()
                array = None
            orientation = im.getexif().get(0x0112, 1)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated/corrupt data: OSError, SyntaxError, zlib.error, ...
            raise _decode_error(path, fmt, e) from None
        icc = im.info.get("icc_profile") or None
        if array is None:
            array, icc = _pillow_to_array(path, im, icc, notes)
        if array.ndim == 2:
            array = array[..., None]
        if "transparency" in im.info and im.mode not in ("P", "PA") and array.shape[2] in (1, 3):
            notes.append("colour-key transparency (tRNS) ignored: no alpha channel made")
    if tiff_bits is not None and tiff_bits > 8 and array.dtype == np.uint8:
        raise InputError(f"{path}: {tiff_bits}-bit TIFF could only be decoded at 8 bit here; expected lossless 16 bit")
    array, orientation = _orient(array, orientation, notes)
    depth = 16 if array.dtype == np.uint16 else 8
    hint = _png_sbit_hint(path, array.shape[2]) if fmt == "PNG" and depth == 16 else None
    return ImageData(array, depth, str(path), fmt, icc, orientation, source_mode, notes, hint)


def _png16_colour(path: Path, rawmode: str) -> np.ndarray:
    """Decode a 16-bit colour PNG bit-exactly with Pillow's own PNG decoder (see the module docstring)."""
    from PIL import Image

    def decode(raw: str) -> np.ndarray:
        with Image.open(path) as im:
            im.tile = [im.tile[0]._replace(args=raw)]
            im.load()
            return np.asarray(im)

    if rawmode == "LA;16B":  # Pillow holds it as RGBA; unpacked as 8-bit RGBA the bytes are L_hi L_lo A_hi A_lo
        b = decode("RGBA").astype(np.uint16)
        return np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], axis=-1)
    hi = decode(rawmode)  # "RGB;16B" keeps the high byte of each big-endian sample
    lo = decode(rawmode[:-1] + "L")  # the same bytes read as little-endian keep the low byte
    return hi.astype(np.uint16) << 8 | lo


def _pillow_to_array(path: Path, im, icc: bytes | None, notes: list[str]) -> tuple[np.ndarray, bytes | None]:
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        if mode == "L" and im.format == "PNG" and (bits := _png_bit_depth(path)) in (2, 4):
            notes.append(f"{bits}-bit gray expanded to 8 bit")
        return np.asarray(im), icc
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16), icc
    if mode == "1":
        notes.append("1-bit image converted to 8-bit gray (0/255)")
        return np.asarray(im.convert("L")), icc
    if mode in ("P", "PA"):
        target = "RGBA" if (mode == "PA" or "transparency" in im.info or im.palette.mode == "RGBA") else "RGB"
        notes.append(f"palette image converted to {target}")
        return np.asarray(im.convert(target)), icc
    if mode == "CMYK":
        notes.append("CMYK converted to RGB (Pillow's plain formula, no colour management)")
        if icc is not None and icc[16:20] == b"CMYK":
            notes.append("the CMYK ICC profile was dropped: it does not describe the RGB result")
            icc = None
        return np.asarray(im.convert("RGB")), icc
    if mode == "RGBX":
        notes.append("RGBX padding byte dropped")
        return np.asarray(im.convert("RGB")), icc
    if mode in ("RGBa", "La"):
        notes.append(f"premultiplied alpha ({mode}) converted to straight alpha")
        return np.asarray(im.convert("RGBA" if mode == "RGBa" else "LA")), icc
    if mode == "YCbCr":
        notes.append("YCbCr converted to RGB")
        return np.asarray(im.convert("RGB")), icc
    raise InputError(
        f"{path}: unsupported pixel mode {mode!r} ({_MODE_WORDS.get(mode, 'not 8/16-bit gray or RGB')}); "
        f"expected {EXPECTED}"
    )


_MODE_WORDS = {"I": "32-bit integer", "F": "32-bit float", "LAB": "CIE L*a*b*", "HSV": "HSV"}


def png_chunks(path: Path, stop: bytes = b"IDAT") -> dict[bytes, bytes]:
    """``{chunk type: data}`` of the PNG chunks before the first ``stop`` chunk (first of each type)."""
    found: dict[bytes, bytes] = {}
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_MAGIC:
            return found
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return found
            length, kind = struct.unpack(">I4s", head)
            if kind == stop or length > 1 << 24:
                return found
            data = fh.read(length)
            fh.seek(4, os.SEEK_CUR)  # CRC
            found.setdefault(kind, data)


def _png_sbit_hint(path: Path, channels: int) -> tuple[int, str] | None:
    """White level from a 16-bit PNG's ``sBIT`` chunk: ``2**bits - 1`` for the colour channels.

    sBIT holds one byte per channel (gray, gray+alpha, RGB, RGBA); the colour channels' largest
    value counts. None without a valid chunk or when it says 16 bits.
    """
    data = png_chunks(path).get(b"sBIT")
    n_colour = 1 if channels in (1, 2) else 3
    if not data or len(data) < n_colour:
        return None
    bits = max(data[:n_colour])
    if not 1 <= bits < 16:
        return None
    return 2 ** bits - 1, f"PNG sBIT: {bits} significant bits"


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as fh:
        head = fh.read(33)
    if head[:8] == _PNG_MAGIC and head[12:16] == b"IHDR":
        return head[24]
    return None


def _read_tiff(path: Path) -> ImageData:
    import tifffile

    notes: list[str] = []
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 - broken header
        raise _decode_error(path, "TIFF", e) from None
    with tif:
        try:
            pages = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
        except Exception as e:  # noqa: BLE001
            raise _decode_error(path, "TIFF", e) from None
        if not pages:
            raise InputError(f"{path}: TIFF without any image; expected {EXPECTED}")
        if len(pages) > 1:
            raise InputError(
                f"{path}: multi-page TIFF with {len(pages)} pages (a 3D stack, a time series or several images); "
                "expected one 2D image: save each image (or slice) as its own file"
            )
        page = pages[0]
        if getattr(page, "imagedepth", 1) > 1 or "Z" in page.axes:
            raise InputError(f"{path}: 3D TIFF volume of shape {page.shape} ({page.axes}); expected one 2D image")
        photometric = int(page.photometric)
        bits = int(page.bitspersample)
        icc = _tiff_tag(page, 34675)
        icc = bytes(icc) if icc else None
        hint = _tiff_level_hint(page) if bits == 16 else None
        orientation = _tiff_tag(page, 274) or 1
        P = tifffile.PHOTOMETRIC
        simple = photometric in (P.MINISBLACK, P.MINISWHITE, P.RGB) and page.dtype in (np.uint8, np.uint16, np.bool_)
        array = None
        if simple and bits not in (1, 8, 16):
            raise InputError(f"{path}: {bits}-bit TIFF samples; expected 8 or 16 bit (or 1-bit black and white)")
        if simple:
            try:
                array = page.asarray()
            except Exception as e:  # noqa: BLE001
                if "imagecodecs" not in str(e):  # truncated or corrupt data
                    raise _decode_error(path, "TIFF", e) from None
                if bits > 8 and int(page.samplesperpixel) > 1:
                    raise InputError(
                        f"{path}: {bits}-bit {page.samplesperpixel}-channel TIFF with {page.compression.name} "
                        "compression: tifffile decodes that only with the optional imagecodecs package, and Pillow "
                        "reads 16-bit colour at 8 bit only; expected a losslessly readable 16-bit TIFF "
                        "(re-save it uncompressed or with Deflate/ZIP compression)"
                    ) from None
                notes.append(f"read with Pillow: tifffile cannot decode {page.compression.name} without imagecodecs")
        elif page.dtype not in (np.uint8, np.uint16, np.bool_) and photometric in (P.MINISBLACK, P.RGB):
            raise InputError(
                f"{path}: unsupported TIFF sample type {page.dtype} ({bits} bit); expected uint8 or uint16 samples"
            )
        extrasamples = tuple(int(e) for e in page.extrasamples)
        axes = page.axes
        shape = page.shape
    if array is None:  # Pillow: palette, CMYK, YCbCr, LZW/JPEG/PackBits without imagecodecs
        try:
            img = _read_pillow(path, b"", fmt_hint="TIFF", tiff_bits=bits)
        except InputError as e:
            if notes:
                raise InputError(f"{e} [{'; '.join(notes)}]") from None
            raise
        img.notes[:0] = notes
        return img
    if axes.startswith("S") and array.ndim == 3:  # planar configuration: (S, Y, X)
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InputError(f"{path}: TIFF image of shape {shape} ({axes}); expected one 2D image")
    if array.dtype == np.bool_:
        notes.append("1-bit image converted to 8-bit gray (0/255)")
        array = array.astype(np.uint8) * 255
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        notes.append("min-is-white TIFF inverted to min-is-black")
        array = array.copy()
        array[..., 0] = np.iinfo(array.dtype).max - array[..., 0]  # the gray sample; alpha stays
    colour = 3 if photometric == tifffile.PHOTOMETRIC.RGB else 1
    c = array.shape[2]
    if c == colour + 1 and extrasamples and extrasamples[0] in (1, 2):
        if extrasamples[0] == 1:  # restoring premultiplied colour would darken edges; files we write say straight
            notes.append("associated (premultiplied) alpha converted to straight alpha")
            array = unpremultiply(array)
    elif c > colour:
        if c - colour == len(extrasamples) and all(e == 0 for e in extrasamples) and colour == 3:
            notes.append(f"{c - colour} extra sample(s) of unspecified meaning dropped")
            array = array[..., :colour]
        else:
            raise InputError(
                f"{path}: TIFF with {c} samples per pixel ({'RGB' if colour == 3 else 'gray'} + extra "
                f"{extrasamples}); expected gray, gray+alpha, RGB or RGBA"
            )
    elif c != colour:
        raise InputError(f"{path}: TIFF with {c} samples per pixel for photometric {photometric}; expected {colour}")
    source_mode = f"TIFF {'RGB' if colour == 3 else 'gray'}{'+alpha' if array.shape[2] in (2, 4) else ''} {bits}-bit"
    array, orientation = _orient(array, orientation, notes)
    depth = 16 if array.dtype == np.uint16 else 8
    return ImageData(array, depth, str(path), "TIFF", icc, orientation, source_mode, notes,
                     hint if depth == 16 else None)


def _tiff_level_hint(page) -> tuple[int, str] | None:
    """White level from TIFF ``SMaxSampleValue`` (341) or ``MaxSampleValue`` (281), below 65535."""
    for code, name in ((341, "SMaxSampleValue"), (281, "MaxSampleValue")):
        value = _tiff_tag(page, code)
        if value is None:
            continue
        values = [int(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
        level = max(values) if values else 0
        if 0 < level < 65535:
            return level, f"TIFF {name} {level}"
    return None


def _tiff_tag(page, code: int):
    tag = page.tags.get(code)
    return None if tag is None else tag.value


# ----------------------------------------------------------------------------------- GeoTIFF

#: TIFF tags that make a file a GeoTIFF or carry GDAL's nodata: ModelPixelScale, ModelTiepoint,
#: ModelTransformation, GeoKeyDirectory, GDAL_NODATA
GEO_TAGS = (33550, 33922, 34264, 34735, 42113)
#: sidecars GDAL reads georeferencing or nodata from (PAM .aux.xml, world files)
_GEO_SIDECARS = (".aux.xml", ".tfw", ".tifw", ".tiffw", ".wld")
#: metadata that no longer holds for restored pixels: band statistics (GDAL recomputes them) and baseline
#: TIFF tags GDAL shows as metadata (our writer writes its own)
_STALE_PREFIXES = ("STATISTICS_", "TIFFTAG_")
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class GeoInfo:
    """What GDAL knows of a GeoTIFF that still holds after restoration (no pixels).

    ``transform``: affine ``(a, b, c, d, e, f)`` of the pixel grid (GDAL's corner convention: x = a*col + b*row + c);
    ``crs`` WKT or None; ``gcps``: ground control points ``(row, col, x, y, z)`` with their ``gcp_crs`` (a file
    georeferenced by tie points instead of a transform); ``nodata``: GDAL's nodata value (one for all bands) or None.
    ``tags``: the dataset metadata (default domain) kept, e.g. ``AREA_OR_POINT``; ``bands``: per band
    ``(description, tags, scale, offset, unit)``, applied only when the output has as many bands.
    ``dropped``: what the file had that is not written back, in words.
    """

    crs: str | None = None
    transform: tuple[float, ...] = _IDENTITY
    nodata: float | None = None
    gcps: tuple[tuple[float, float, float, float, float], ...] = ()
    gcp_crs: str | None = None
    crs_name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    bands: tuple[tuple, ...] = ()
    dropped: tuple[str, ...] = ()

    @property
    def georeferenced(self) -> bool:
        """A CRS, a non-identity transform or ground control points."""
        return self.crs is not None or tuple(self.transform) != _IDENTITY or bool(self.gcps)

    def scaled(self, scale: int) -> GeoInfo:
        """The same georeferencing for the grid upscaled ``scale`` times: pixel size / scale, same origin
        (``transform * Affine.scale(1 / scale)``); GCP rows and columns times ``scale``."""
        if scale == 1:
            return self
        a, b, c, d, e, f = self.transform
        s = float(scale)
        gcps = tuple((r * s, col * s, x, y, z) for r, col, x, y, z in self.gcps)
        return replace(self, transform=(a / s, b / s, c, d / s, e / s, f), gcps=gcps)

    def without_georeferencing(self) -> GeoInfo:
        """Only the nodata (and band metadata): for pixels no longer on the file's grid."""
        return replace(self, crs=None, transform=_IDENTITY, gcps=(), gcp_crs=None, crs_name=None,
                       tags=tuple((k, v) for k, v in self.tags if k != "AREA_OR_POINT"))

    def info(self) -> dict:
        """JSON-ready summary for run.json (the CRS by its name, e.g. ``EPSG:32618``)."""
        return {"crs": self.crs_name, "transform": list(self.transform), "nodata": _json_nodata(self.nodata),
                "gcps": len(self.gcps), "dropped": list(self.dropped)}


def _json_nodata(v: float | None):
    if v is None:
        return None
    if v != v:  # NaN
        return "nan"
    return int(v) if float(v).is_integer() else float(v)


def has_geo_metadata(path: str | os.PathLike) -> bool:
    """True when the TIFF's first page has a GeoTIFF / GDAL_NODATA tag or GDAL would read a sidecar for it."""
    import tifffile

    path = Path(path)
    if any(Path(str(path) + s).is_file() or path.with_suffix(s).is_file() for s in _GEO_SIDECARS):
        return True
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            return any(code in tags for code in GEO_TAGS)
    except Exception:  # noqa: BLE001 - the pixel reader reports broken files
        return False


def read_geo(path: str | os.PathLike) -> GeoInfo | None:
    """Georeferencing, nodata and kept metadata of a raster, read with rasterio; None when GDAL sees none
    of them (no CRS, identity transform, no GCPs, no nodata) or cannot open the file. Reads no pixels."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path)
        except RasterioIOError:
            return None
        with ds:
            gcps, gcp_crs = ds.gcps
            geo = GeoInfo(
                crs=ds.crs.to_wkt() if ds.crs else None, transform=tuple(float(v) for v in tuple(ds.transform)[:6]),
                nodata=None if ds.nodata is None else float(ds.nodata),
                gcps=tuple((g.row, g.col, g.x, g.y, g.z or 0.0) for g in gcps),
                gcp_crs=gcp_crs.to_wkt() if gcp_crs else None,
                crs_name=(ds.crs or gcp_crs).to_string() if (ds.crs or gcp_crs) else None,
                tags=tuple((k, v) for k, v in sorted(ds.tags().items()) if not k.startswith(_STALE_PREFIXES)),
                bands=tuple(_band_meta(ds, i) for i in ds.indexes),
                dropped=_dropped(ds),
            )
    if not geo.georeferenced and geo.nodata is None:
        return None
    return geo


def _band_meta(ds, i: int) -> tuple:
    """``(description, tags, scale, offset, unit)`` of band ``i``; statistics left out (stale after restoring)."""
    tags = tuple((k, v) for k, v in sorted(ds.tags(i).items()) if not k.startswith(_STALE_PREFIXES))
    return ds.descriptions[i - 1], tags, ds.scales[i - 1], ds.offsets[i - 1], ds.units[i - 1]


def _dropped(ds) -> tuple[str, ...]:
    out = []
    if ds.rpcs is not None:
        out.append("RPC camera model (its line/sample terms do not describe the output grid)")
    if any(k.startswith("STATISTICS_") for i in ds.indexes for k in ds.tags(i)):
        out.append("band statistics (stale after restoration)")
    return tuple(out)


def write_geo(path: str | os.PathLike, geo: GeoInfo) -> None:
    """Set ``geo``'s CRS, transform (or GCPs), nodata and metadata on an existing TIFF, in rasterio's update
    mode: GDAL rewrites the tag directory only, so the pixels and the other tags stay as written.
    Band metadata is set only when the file has as many bands as ``geo`` describes. No ``.aux.xml`` is made."""
    import rasterio
    from affine import Affine
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "r+") as ds:
            if geo.gcps:
                points = [GroundControlPoint(row=r, col=c, x=x, y=y, z=z) for r, c, x, y, z in geo.gcps]
                ds.gcps = (points, CRS.from_wkt(geo.gcp_crs) if geo.gcp_crs else None)
            else:
                if geo.crs:
                    ds.crs = CRS.from_wkt(geo.crs)
                if tuple(geo.transform) != _IDENTITY:
                    ds.transform = Affine(*geo.transform)
            if geo.nodata is not None:
                ds.nodata = geo.nodata
            if geo.tags:
                ds.update_tags(**dict(geo.tags))
            if len(geo.bands) == ds.count:
                _write_band_meta(ds, geo.bands)


def _write_band_meta(ds, bands: tuple[tuple, ...]) -> None:
    for i, (description, tags, _, _, unit) in enumerate(bands, start=1):
        if description:
            ds.set_band_description(i, description)
        if tags:
            ds.update_tags(i, **dict(tags))
        if unit:
            ds.set_band_unit(i, unit)
    scales, offsets = tuple(b[2] for b in bands), tuple(b[3] for b in bands)
    if any(s != 1.0 for s in scales) or any(o != 0.0 for o in offsets):
        ds.scales, ds.offsets = scales, offsets


def _tiff_geo(path: Path, img: ImageData) -> GeoInfo | None:
    """:func:`read_geo` for a TIFF that has geo tags or sidecars; georeferencing dropped (noted) when the
    pixels were reoriented off the file's grid."""
    if not has_geo_metadata(path):
        return None
    geo = read_geo(path)
    if geo is not None and geo.georeferenced and img.orientation_applied != 1:
        img.notes.append(f"georeferencing not kept: orientation {img.orientation_applied} moved the pixels off "
                         "the file's grid (nodata kept)")
        geo = geo.without_georeferencing()
    return geo


# ----------------------------------------------------------------------------------- nodata


def nodata_sample(nodata: float | None, dtype) -> int | None:
    """``nodata`` as a sample value of the integer ``dtype``, or None when no sample can equal it
    (None, NaN, fractional, out of range)."""
    if nodata is None or nodata != nodata or not float(nodata).is_integer():
        return None
    info = np.iinfo(dtype)
    v = int(nodata)
    return v if info.min <= v <= info.max else None


def nodata_mask(array: np.ndarray, value: int) -> np.ndarray:
    """``(H, W, C)`` -> ``(H, W)`` bool, True where every band holds ``value`` (GDAL's dataset-mask rule)."""
    return np.all(array == value, axis=2)


def fill_nodata(array: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` with each ``invalid`` ``(H, W)`` pixel replaced by its nearest valid pixel (Euclidean).

    For a model that sees the whole image: the nodata value next to the data would be taken as an edge.
    Returns ``array`` itself when nothing, or everything, is invalid.
    """
    from scipy import ndimage

    if not invalid.any() or invalid.all():
        return array
    h, w = invalid.shape
    nearest = np.empty((2, h, w), np.int32)  # int32 indices: 8 bytes per pixel
    ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True, indices=nearest)
    return array[nearest[0], nearest[1]]


def upscale_mask(mask: np.ndarray, scale: int) -> np.ndarray:
    """``(H, W)`` bool -> ``(H*scale, W*scale)``, nearest neighbour (each pixel becomes a scale x scale block)."""
    if scale == 1:
        return mask
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def put_nodata(array: np.ndarray, invalid: np.ndarray, value: int) -> tuple[np.ndarray, int]:
    """``(H, W, C)`` with ``invalid`` ``(H, W)`` pixels set to ``value`` in every band; returns it and how many
    valid pixels came out as nodata and were moved one count off ``value`` (towards the middle of the range),
    so that the output's nodata mask is exactly ``invalid``."""
    out = array.copy()
    out[invalid] = value
    clash = ~invalid & nodata_mask(out, value)
    n = int(clash.sum())
    if n:
        step = 1 if value < np.iinfo(out.dtype).max else -1
        out[clash] = (out[clash].astype(np.int64) + step).astype(out.dtype)
    return out, n


# ----------------------------------------------------------------------------------- white level


def white_level(img: ImageData, option: int | None = None) -> tuple[int, str]:
    """The largest value ``img``'s colour data can take, and why (for the item's notes).

    ``option`` (``--white-level``) wins over the file for 16-bit images and must not be below the
    data (InputError); 8-bit images always use 255. A file hint (:attr:`ImageData.level_hint`) is used
    when the data stay within it, else ignored (the data were scaled to the full range). Without
    either: the container's maximum.
    """
    top = img.top
    cmax = int(img.color.max()) if img.color.size else 0
    if option is not None:
        option = int(option)
        if img.bit_depth == 8:
            return top, f"8-bit image: white level 255 (--white-level {option} applies to 16-bit images)"
        if not 1 <= option <= top:
            raise InputError(f"{img.source}: --white-level {option} is outside 1..{top} for a 16-bit image")
        if cmax > option:
            raise InputError(f"{img.source}: values reach {cmax}, above --white-level {option}; expected data "
                             f"within 0..{option} (give the white level of these data, or leave it out)")
        return option, f"--white-level {option}"
    if img.level_hint is not None:
        level, why = img.level_hint
        if cmax <= level:
            return level, why
        return top, (f"{why} ignored: values reach {cmax} (the data fill the 16-bit range); "
                     f"white level {top}")
    return top, f"{img.bit_depth}-bit container maximum"


def fewer_bits_hint(img: ImageData, level: int) -> str | None:
    """A note when 16-bit data at the full white level use 12 bits or fewer (maybe 10/12-bit data)."""
    if img.bit_depth != 16 or level != img.top:
        return None
    cmax = int(img.color.max()) if img.color.size else 0
    bits = max(1, cmax.bit_length())
    if 0 < cmax and bits <= 12:
        return (f"values reach only {cmax} of 65535 ({bits} bits) and the file declares no bit depth: "
                f"if these are {bits}-bit data, pass --white-level {2 ** bits - 1}")
    return None


# ----------------------------------------------------------------------------------- float conversion


def to_float(array: np.ndarray) -> np.ndarray:
    """uint8/uint16 ``(H, W)`` or ``(H, W, C)`` -> float32 ``(C, H, W)`` on [0, 1] (divided by 255 or 65535)."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        top = np.float32(255.0)
    elif array.dtype == np.uint16:
        top = np.float32(65535.0)
    else:
        raise ValueError(f"to_float: expected uint8 or uint16, found {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"to_float: expected (H, W) or (H, W, C), found shape {array.shape}")
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / top


def quantize(x, bit_depth: int = 8) -> np.ndarray:
    """Float on [0, 1] -> uint8/uint16, layout kept: clip, ``* (2**bits - 1)`` in float32, round half to even.

    The float32 arithmetic is that of BasicSR's ``tensor2img``, so 8-bit results match it exactly.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, found {bit_depth}")
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("quantize: the image contains NaN or inf")
    top = np.float32(255.0 if bit_depth == 8 else 65535.0)
    return (np.clip(x, 0, 1) * top).round().astype(np.uint8 if bit_depth == 8 else np.uint16)


def from_float(x, bit_depth: int = 8) -> np.ndarray:
    """Float ``(C, H, W)`` (or ``(1, C, H, W)``, or ``(H, W)``) on [0, 1], numpy or torch -> ``(H, W, C)`` uint.

    Values are clipped to [0, 1], scaled to 255 or 65535 and rounded (:func:`quantize`).
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3:
        x = x.transpose(1, 2, 0)
    elif x.ndim != 2:
        raise ValueError(f"from_float: expected (C, H, W), (1, C, H, W) or (H, W), found shape {x.shape}")
    return np.ascontiguousarray(quantize(x, bit_depth))


# ----------------------------------------------------------------------------------------------- writing


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    icc_profile: bytes | None = None,
    like: ImageData | None = None,
    white_level: int | None = None,
    geo: GeoInfo | None = None,
) -> Path:
    """Write ``(H, W[, C])`` uint8/uint16 ``array`` as PNG, TIFF or JPEG (by suffix), atomically.

    ``like``: the :class:`ImageData` this output was made from; its ICC profile is used when
    ``icc_profile`` is None, and its bit depth must match ``array``'s (restoration keeps bit depth).
    ``white_level`` (16-bit, below 65535; default: ``like``'s declared level): recorded in the file
    (PNG sBIT when it is ``2**n - 1``, TIFF MaxSampleValue) when the colour data stay within it.
    ``geo`` (TIFF only): georeferencing, nodata and metadata written with :func:`write_geo` into the temp
    file before the rename (scale it first for a resized output: :meth:`GeoInfo.scaled`); never taken
    from ``like``.
    Bad arguments raise ValueError; a failed write raises :class:`~imagingflows.tasks.write.WriteError`
    and leaves neither a temp file nor a partial output behind.
    """
    path = Path(path)
    fmt = SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r}; expected one of {sorted(SUFFIX_FORMAT)}")
    array = np.asarray(array)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2 and not array.dtype.isnative:
        array = array.astype(np.uint16)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected a uint8 or uint16 array, found {array.dtype} (use from_float first)")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape:
        raise ValueError(f"{path}: expected (H, W) or (H, W, C) with C in 1..4, found shape {array.shape}")
    depth = 8 if array.dtype == np.uint8 else 16
    level = None  # the input's declared white level, written back when the output stays within it
    if like is not None:
        if like.bit_depth != depth:
            raise ValueError(f"{path}: the input was {like.bit_depth}-bit but this array is {depth}-bit")
        if icc_profile is None:
            icc_profile = like.icc_profile
        if white_level is None and like.level_hint:
            white_level = like.level_hint[0]
    if white_level is not None and depth == 16 and 0 < white_level < 65535:
        c = 1 if array.shape[2] in (1, 2) else 3
        level = int(white_level) if int(array[..., :c].max()) <= white_level else None
    if icc_profile:
        space = bytes(icc_profile[16:20])
        want = (b"GRAY",) if array.shape[2] in (1, 2) else (b"RGB ",)
        if space not in want:
            raise ValueError(
                f"{path}: the ICC profile describes {space.decode('latin-1').strip() or '?'} colour but the image has "
                f"{array.shape[2]} channels; expected a {want[0].decode().strip()} profile"
            )
    if geo is not None and fmt != "TIFF":
        raise ValueError(f"{path}: georeferencing (geo=) can only be written to a TIFF, not {fmt}")
    if fmt == "JPEG" and (depth != 8 or array.shape[2] not in (1, 3)):
        raise ValueError(f"{path}: JPEG holds 8-bit gray or RGB only, found {depth}-bit with {array.shape[2]} channels")
    array = np.ascontiguousarray(array)
    try:
        with atomic_path(path) as tmp:
            if fmt == "TIFF":
                _write_tiff(tmp, array, icc_profile, level)
                if geo is not None:
                    write_geo(tmp, geo)
            elif fmt == "PNG" and depth == 16:
                tmp.write_bytes(encode_png16(array, icc_profile, sbit=_sbit_of(level, array.shape[2])))
            else:
                _write_pillow(tmp, array, fmt, icc_profile)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise WriteError(f"{path}: could not write {array.shape} {array.dtype} as {fmt}: {e}") from e
    return path


def _write_pillow(tmp: Path, array: np.ndarray, fmt: str, icc: bytes | None) -> None:
    from PIL import Image

    im = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    kwargs: dict = {"icc_profile": icc} if icc else {}
    if fmt == "JPEG":
        kwargs.update(quality=JPEG_QUALITY, subsampling=0)
    im.save(tmp, format=fmt, **kwargs)


def _sbit_of(level: int | None, channels: int) -> bytes | None:
    """sBIT bytes for a white level ``2**n - 1`` (colour channels n bits, alpha 16); None otherwise."""
    if level is None or (level + 1) & level:
        return None
    bits = level.bit_length()
    colour = 1 if channels in (1, 2) else 3
    return bytes([bits] * colour + [16] * (channels - colour))


def _write_tiff(tmp: Path, array: np.ndarray, icc: bytes | None, level: int | None = None) -> None:
    import tifffile

    c = array.shape[2]
    extratags = [(281, "H", c, (level,) * c, True)] if level else None
    tifffile.imwrite(
        tmp,
        array[..., 0] if c == 1 else array,
        photometric="rgb" if c in (3, 4) else "minisblack",
        extrasamples=["unassalpha"] if c in (2, 4) else None,
        compression="zlib",
        predictor=True,
        iccprofile=icc,
        metadata=None,
        extratags=extratags,
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(array: np.ndarray, icc_profile: bytes | None = None, level: int = 6,
                 sbit: bytes | None = None) -> bytes:
    """Encode ``(H, W, C)`` uint16 (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) as a 16-bit PNG.

    Each row gets the PNG filter (None, Sub, Up, Average, Paeth) with the smallest sum of absolute
    filtered bytes (libpng's heuristic); no interlace; the ICC profile, if any, goes into an iCCP chunk;
    ``sbit`` (one byte per channel), if given, into an sBIT chunk.
    """
    h, w, c = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = np.ascontiguousarray(array.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    bpp = 2 * c
    comp = zlib.compressobj(level)
    parts = []
    block = max(1, (1 << 21) // max(1, raw.shape[1]))  # ~2 MB of bytes per block keeps memory flat
    prior = np.zeros(raw.shape[1], np.int16)
    for r0 in range(0, h, block):
        x = raw[r0 : r0 + block].astype(np.int16)
        up = np.vstack([prior[None], x[:-1]])  # b: byte above
        left = np.zeros_like(x)  # a: byte bpp to the left
        left[:, bpp:] = x[:, :-bpp]
        upleft = np.zeros_like(x)  # c
        upleft[:, bpp:] = up[:, :-bpp]
        p = left + up - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        cands = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]) & 0xFF  # (5, rows, bytes)
        cost = np.where(cands < 128, cands, 256 - cands).sum(axis=2)  # |filtered byte| as signed
        choice = cost.argmin(axis=0)
        rows = np.take_along_axis(cands, choice[None, :, None], axis=0)[0].astype(np.uint8)
        parts.append(comp.compress(np.hstack([choice.astype(np.uint8)[:, None], rows]).tobytes()))
        prior = x[-1]
    parts.append(comp.flush())
    out = [_PNG_MAGIC, _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
    if sbit:
        out.append(_png_chunk(b"sBIT", bytes(sbit)))
    if icc_profile:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    out += [_png_chunk(b"IDAT", b"".join(parts)), _png_chunk(b"IEND", b"")]
    return b"".join(out)
