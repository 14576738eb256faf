"""Decode the Landsat 8 pre-collection quality band (BQA, uint16) into a class raster.

Bit layout of the pre-collection L8 OLI/TIRS BQA (USGS "Landsat 8 Quality Assessment Band",
pre-Collection; the same table is in GRASS ``i.landsat8.qc``)::

    bit 0      designated fill           bits 8-9    vegetation confidence (not populated)
    bit 1      dropped frame             bits 10-11  snow/ice confidence
    bit 2      terrain occlusion         bits 12-13  cirrus confidence
    bit 3      reserved                  bits 14-15  cloud confidence
    bits 4-5   water confidence
    bits 6-7   reserved (cloud shadow in later versions)

A 2-bit confidence is 00 not determined, 01 no (0-33 %), 10 maybe (34-66 %), 11 yes (67-100 %).
Collection 1 and 2 use other layouts (C1: cloud confidence in bits 5-6, cirrus in 11-12), so a
product whose MTL names a collection is refused (:func:`check_mtl`).

The rule, in order of precedence (the first that holds wins)::

    255 nodata    designated fill (bit 0) or dropped frame (bit 1)
    2   cloud     cloud confidence 11 (yes)
    3   cirrus    cirrus confidence 11 (yes)
    4   snow/ice  snow/ice confidence 11 (yes)
    1   water     water confidence 11 (yes)
    0   land      everything else ("clear land")

Only "yes" counts: "maybe" cloud, cirrus, snow or water pixels are land. Terrain occlusion
does not change the class (counted apart in :func:`write_qa_classes`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.write import atomic_path

LAND, WATER, CLOUD, CIRRUS, SNOW, NODATA = 0, 1, 2, 3, 4, 255
CLASS_NAMES = {LAND: "land", WATER: "water", CLOUD: "cloud", CIRRUS: "cirrus", SNOW: "snow_ice", NODATA: "nodata"}
FILL_BIT, DROPPED_FRAME_BIT, TERRAIN_BIT = 0, 1, 2
WATER_BITS, SNOW_BITS, CIRRUS_BITS, CLOUD_BITS = 4, 10, 12, 14  # lowest bit of each 2-bit confidence
YES = 0b11
ROWS = 256  # output tile size, and the rows read at a time
# lowest class precedence first: each later mask overwrites the earlier ones
PRECEDENCE = ((WATER, WATER_BITS), (SNOW, SNOW_BITS), (CIRRUS, CIRRUS_BITS), (CLOUD, CLOUD_BITS))


def bit(bqa: np.ndarray, n: int) -> np.ndarray:
    """Bool array of bit ``n`` (same shape as ``bqa``)."""
    return (bqa >> n) & 1 == 1


def confidence(bqa: np.ndarray, low_bit: int) -> np.ndarray:
    """uint8 array 0..3: the 2-bit confidence field starting at ``low_bit``."""
    return ((bqa >> low_bit) & 0b11).astype(np.uint8)


def qa_classes(bqa: np.ndarray) -> np.ndarray:
    """Class ids (see the module rule) of a BQA array: any shape of uint16 in, the same shape of uint8 out."""
    if bqa.dtype != np.uint16:
        raise TypeError(f"a Landsat 8 BQA is uint16, got {bqa.dtype}")
    out = np.full(bqa.shape, LAND, np.uint8)
    for cls, low_bit in PRECEDENCE:
        out[confidence(bqa, low_bit) == YES] = cls
    out[bit(bqa, FILL_BIT) | bit(bqa, DROPPED_FRAME_BIT)] = NODATA
    return out


def read_mtl(path: str | os.PathLike) -> dict[str, str]:
    """The ``KEY = value`` fields of a Landsat MTL text file (quotes stripped; groups flattened)."""
    fields = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = re.match(r"\s*([A-Z0-9_]+)\s*=\s*(.*?)\s*$", line)
        if m and m.group(1) not in ("GROUP", "END_GROUP"):
            fields[m.group(1)] = m.group(2).strip('"')
    return fields


def check_mtl(path: str | os.PathLike) -> dict[str, str]:
    """Refuse an MTL whose product is not pre-collection Landsat 8; return the facts that say it is.

    A pre-collection MTL has no COLLECTION_NUMBER (Collection 1/2 MTLs do) and names
    ``SPACECRAFT_ID = "LANDSAT_8"``. Returns the spacecraft, processing software and file date.
    """
    mtl = read_mtl(path)
    if mtl.get("SPACECRAFT_ID") != "LANDSAT_8":
        raise InputError(f"{path}: SPACECRAFT_ID is {mtl.get('SPACECRAFT_ID')!r}, not LANDSAT_8")
    if "COLLECTION_NUMBER" in mtl:
        raise InputError(f"{path}: a Collection {mtl['COLLECTION_NUMBER']} product; its BQA bit layout "
                         "differs from the pre-collection one this decoder reads")
    return {"spacecraft": mtl["SPACECRAFT_ID"], "software": mtl.get("PROCESSING_SOFTWARE_VERSION", ""),
            "file_date": mtl.get("FILE_DATE", ""), "scene_id": mtl.get("LANDSAT_SCENE_ID", "")}


def sibling_mtl(bqa_path: Path) -> Path | None:
    """The MTL beside a BQA file (``*MTL.txt`` in its folder), if there is exactly one."""
    found = sorted(bqa_path.parent.glob("*MTL.txt"))
    return found[0] if len(found) == 1 else None


def _open_bqa(bqa_path: Path):
    import rasterio

    try:
        src = rasterio.open(bqa_path)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"{bqa_path}: cannot be read as a raster: {e}") from e
    if src.count != 1 or src.dtypes[0] != "uint16":
        src.close()
        raise InputError(f"{bqa_path}: a BQA has 1 uint16 band, this has {src.count} band(s) of {src.dtypes[0]}")
    return src


def _row_bands(height: int, width: int, rows: int):
    """Full-width windows of ``rows`` rows: whole output tiles, bounded memory (rows x width)."""
    from rasterio.windows import Window

    for r in range(0, height, rows):
        yield Window(0, r, width, min(rows, height - r))


def write_qa_classes(bqa_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Decode ``bqa_path`` block by block into a uint8 class GeoTIFF (nodata 255, same CRS/transform).

    An MTL beside the BQA is checked first (:func:`check_mtl`). Returns ``counts`` ({class
    name: pixels}), ``shares`` (of the valid, non-nodata pixels), ``terrain_occluded`` (pixels),
    ``mtl`` (the facts of :func:`check_mtl`, or None) and ``path``.
    """
    import rasterio

    bqa_path, out_path = Path(bqa_path), Path(out_path)
    mtl = sibling_mtl(bqa_path)
    mtl_facts = check_mtl(mtl) if mtl else None
    counts = np.zeros(256, np.int64)
    occluded = 0
    with _open_bqa(bqa_path) as src:
        profile = {"driver": "GTiff", "height": src.height, "width": src.width, "count": 1, "dtype": "uint8",
                   "nodata": NODATA, "crs": src.crs, "transform": src.transform, "compress": "deflate",
                   "tiled": True, "blockxsize": ROWS, "blockysize": ROWS}
        with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.update_tags(CLASS_NAMES=json.dumps({str(c): n for c, n in CLASS_NAMES.items() if c != NODATA}))
            for window in _row_bands(src.height, src.width, ROWS):
                bqa = src.read(1, window=window)
                classes = qa_classes(bqa)
                dst.write(classes, 1, window=window)
                counts += np.bincount(classes.ravel(), minlength=256)
                occluded += int(bit(bqa, TERRAIN_BIT).sum())
    named = {name: int(counts[c]) for c, name in CLASS_NAMES.items()}
    valid = sum(n for name, n in named.items() if name != "nodata")
    shares = {name: (n / valid if valid else 0.0) for name, n in named.items() if name != "nodata"}
    return {"path": str(out_path), "counts": named, "shares": shares, "terrain_occluded": occluded, "mtl": mtl_facts}
