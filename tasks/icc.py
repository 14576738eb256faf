"""ICC profiles for written images, made in code (no profile file is read, no download).

:func:`srgb_profile`: LittleCMS's sRGB profile (through Pillow) with a fixed header date.
:func:`linear_srgb_profile`: an ICC v2.4 RGB display (``mntr``) matrix/TRC profile for *linear* sRGB:
the sRGB primaries as LittleCMS's built-in sRGB profile states them (D50-adapted colorants ``rXYZ``/
``gXYZ``/``bXYZ``, white point and ``chad`` taken from that profile's bytes, so the two agree exactly) and
gamma-1.0 tone curves (``curv`` with one entry, u8Fixed8 1.0). A viewer that honours it shows linear
16-bit data with the right brightness; converting it to sRGB gives the sRGB encoding. The header date
is fixed, so the bytes are the same on every run and machine (the profile ID is left zero, as v2 allows).
"""

from __future__ import annotations

import struct

DESCRIPTION = "imagingflows linear sRGB"
COPYRIGHT = "No copyright, use freely"
DATE = (2025, 1, 1, 0, 0, 0)  # fixed creation date: reproducible bytes
_COLORANT_TAGS = (b"wtpt", b"chad", b"rXYZ", b"gXYZ", b"bXYZ")


def _littlecms_srgb_tags() -> dict[bytes, bytes]:
    """The raw tag data of LittleCMS's sRGB profile (via Pillow) for :data:`_COLORANT_TAGS`."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    (count,) = struct.unpack(">I", icc[128:132])
    tags = {}
    for i in range(count):
        sig, offset, size = struct.unpack(">4sII", icc[132 + 12 * i: 144 + 12 * i])
        if sig in _COLORANT_TAGS:
            tags[sig] = icc[offset: offset + size]
    missing = [s.decode() for s in _COLORANT_TAGS if s not in tags]
    if missing:
        raise RuntimeError(f"LittleCMS's sRGB profile lacks the tags {missing}: cannot build the linear profile")
    return tags


def _text_description(text: str) -> bytes:
    """ICC v2 ``textDescriptionType``: ASCII with its NUL, no Unicode or ScriptCode text."""
    ascii_ = text.encode("ascii") + b"\0"
    return (b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67))


def _text(text: str) -> bytes:
    """ICC v2 ``textType``: ASCII with its NUL."""
    return b"text" + bytes(4) + text.encode("ascii") + b"\0"


def _gamma_curve(gamma: float) -> bytes:
    """``curveType`` with one entry: a pure power law, gamma in u8Fixed8."""
    return b"curv" + bytes(4) + struct.pack(">IH", 1, int(round(gamma * 256)))


def _profile(tags: list[tuple[bytes, bytes]]) -> bytes:
    """Header + tag table + tag data (each 4-byte aligned); tags with identical data share one copy."""
    n = len(tags)
    offset = 128 + 4 + 12 * n
    table, data, placed = [], b"", {}
    for sig, payload in tags:
        if payload not in placed:
            placed[payload] = offset + len(data)
            data += payload + bytes(-len(payload) % 4)
        table.append(struct.pack(">4sII", sig, placed[payload], len(payload)))
    body = struct.pack(">I", n) + b"".join(table) + data
    size = 128 + len(body)
    header = (struct.pack(">I", size) + bytes(4)            # size, preferred CMM: none
              + struct.pack(">I", 0x02400000)               # version 2.4
              + b"mntr" + b"RGB " + b"XYZ "                 # display class, RGB data, XYZ PCS
              + struct.pack(">6H", *DATE) + b"acsp"
              + bytes(4) + bytes(4) + bytes(4) + bytes(4)   # platform, flags, manufacturer, model
              + bytes(8) + struct.pack(">I", 0)             # attributes, rendering intent: perceptual
              + struct.pack(">3i", 0xF6D6, 0x10000, 0xD32D)  # PCS illuminant D50 (s15Fixed16)
              + bytes(4) + bytes(16) + bytes(28))           # creator, profile ID (v2: zero), reserved
    assert len(header) == 128
    return header + body


def srgb_profile() -> bytes:
    """An sRGB ICC profile made by LittleCMS through Pillow (no file is read).

    LittleCMS stamps the creation time into the header (bytes 24-35); a fixed date keeps outputs
    reproducible (the profile carries no MD5 profile ID that this would invalidate).
    """
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    if any(icc[84:100]):
        return bytes(icc)  # an ID over the header: leave it as made
    icc[24:36] = struct.pack(">6H", *DATE)
    return bytes(icc)


def linear_srgb_profile() -> bytes:
    """The linear-sRGB ICC profile (see the module docstring): about 500 bytes, identical on every call."""
    srgb = _littlecms_srgb_tags()
    curve = _gamma_curve(1.0)
    return _profile([
        (b"desc", _text_description(DESCRIPTION)),
        (b"cprt", _text(COPYRIGHT)),
        (b"wtpt", srgb[b"wtpt"]),
        (b"chad", srgb[b"chad"]),
        (b"rXYZ", srgb[b"rXYZ"]),
        (b"gXYZ", srgb[b"gXYZ"]),
        (b"bXYZ", srgb[b"bXYZ"]),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ])
