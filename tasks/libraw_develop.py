"""Demosaick a CFA mosaic with LibRaw (rawpy), in the mosaic's own scale and colour space.

:func:`libraw_demosaic` writes the mosaic as a 16-bit DNG (``tasks/dng_write.py``: black 0, white 65535,
identity colour matrix, neutral as-shot white) in a temporary folder and develops it with
``output_color=raw`` (no colour matrix), ``user_wb=[1, 1, 1, 1]`` (no white balance), ``no_auto_bright``,
``gamma=(1, 1)`` (linear), 16-bit output and ``user_flip=0``, so LibRaw's output is the mosaic's own values,
demosaicked: a mosaic value v in [0, 1] comes back as v (up to 16-bit quantisation).

Methods (``--methods`` names): ``rawpy-<algorithm>`` for LibRaw's AHD, DHT, VNG, AAHD, PPG, DCB and LINEAR,
where the installed LibRaw supports them (:func:`available`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

PREFIX = "rawpy-"
#: the LibRaw algorithms offered, in listing order (GPL packs such as AMaZE are not in rawpy's wheels)
ALGORITHMS = ("ahd", "dht", "vng", "aahd", "ppg", "dcb", "linear")
#: what ``--methods`` takes by default from LibRaw
DEFAULT = ("ahd", "dht", "vng", "aahd")


def _algorithm(name: str):
    import rawpy

    return getattr(rawpy.DemosaicAlgorithm, name.removeprefix(PREFIX).upper())


def available(names=ALGORITHMS) -> list[str]:
    """``rawpy-<name>`` for each of ``names`` the installed LibRaw supports ([] without rawpy)."""
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return []
    return [PREFIX + n for n in names if _algorithm(n).isSupported]


def is_libraw(name: str) -> bool:
    return str(name).startswith(PREFIX)


def libraw_demosaic(mosaic: np.ndarray, pattern: str, method: str) -> np.ndarray:
    """``mosaic`` (H, W) uint16 (full scale 65535) -> ``(H, W, 3)`` float32 in [0, 1] demosaicked by LibRaw's
    ``method`` (``rawpy-ahd``, ...); see the module docstring. ValueError for a method LibRaw lacks."""
    import rawpy

    from imagingflows.tasks.dng_write import write_cfa_dng

    if method not in available():
        raise ValueError(f"LibRaw here has no {method!r}: available {', '.join(available()) or 'none'}")
    with tempfile.TemporaryDirectory(prefix="libraw-") as tmp:
        path = write_cfa_dng(Path(tmp) / "mosaic.dng", mosaic, pattern)
        with rawpy.imread(str(path)) as raw:
            rgb = raw.postprocess(demosaic_algorithm=_algorithm(method), output_color=rawpy.ColorSpace.raw,
                                  use_camera_wb=False, use_auto_wb=False, user_wb=[1.0, 1.0, 1.0, 1.0],
                                  no_auto_bright=True, gamma=(1, 1), output_bps=16, user_flip=0,
                                  half_size=False, four_color_rgb=False, adjust_maximum_thr=0.0, user_sat=65535,
                                  user_black=0)
    if rgb.shape[:2] != mosaic.shape:
        raise ValueError(f"LibRaw {method} returned {rgb.shape[:2]} for a {mosaic.shape} mosaic")
    return rgb.astype(np.float32) / 65535.0
