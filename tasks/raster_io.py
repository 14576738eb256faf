"""Windowed raster reading (rasterio/GDAL): band selection, nodata masks, square tiles, sampled band statistics.

A raster is never read whole. :func:`open_raster` reads only metadata (plus the last block of each file, to
catch truncation) and returns a :class:`RasterSource`: plain data (picklable, JSON via ``to_dict``) that can
travel in a Prefect task's parameters. Pixels come one square tile at a time from :func:`read_tile`.

Sources: one multi-band file, or a folder of single-band files named ``<stem>_B<n>.tif`` stacked by band
number (B2 < B10). Other files in the folder (``*_BQA.tif``, ``*_QA_PIXEL.tif``) are used only when named.

Validity rule (the one GDAL's dataset mask uses): each band says "nodata" for a pixel through its nodata value,
its internal mask or alpha band, or the ``nodata`` override; **a pixel is invalid when every selected band says
nodata** there, and tile padding outside the raster is always invalid. Pixel values are returned as stored
(nodata values included, as float32); only the padding is 0.

Reprojection happens only when asked (``open_raster(..., crs=...)``): each file is then read through a GDAL
``WarpedVRT`` onto one target grid (GDAL's default transform for the footprint, or a forced pixel size), bilinear,
window by window. The VRT has an alpha band, so a pixel is valid only where the warper had valid source pixels
(the file's nodata value or the override, its internal mask): the collar outside the source footprint is invalid,
never 0 taken as data. Every grid field of the :class:`RasterSource` is then the warped grid.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from imagingflows.tasks.ingest import InputError

RASTER_SUFFIXES = (".tif", ".tiff")
BAND_FILE = re.compile(r"^(?P<stem>.+)_(?P<name>B(?P<number>\d+))$", re.IGNORECASE)
# How a band says "nodata": no way (all valid), its nodata value, a file mask (internal mask, alpha band,
# NODATA_VALUES) read with read_masks, or a file mask combined with a nodata-value override.
MASK_KINDS = ("none", "nodata", "mask", "mask+nodata")
WGS84_A, WGS84_E2 = 6378137.0, 6.69437999014e-3
_CACHE_SIZE = 32
#: GDAL's block cache, MB, unless the user sets GDAL_CACHEMAX: its default (5% of RAM: 6 GB on a 128 GB
#: host) lets the reader's memory grow with the scene; tiles read row by row need about two rows of blocks.
GDAL_CACHE_MB = 256
os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))  # read by GDAL when its cache is first used
_DECODE_CHECK_PIXELS = 1 << 20


@dataclass(frozen=True)
class TileWindow:
    """A square tile: ``size`` x ``size`` pixels from (``row_off``, ``col_off``); may extend past the raster."""

    row_off: int
    col_off: int
    size: int

    def to_rasterio(self):
        from rasterio.windows import Window

        return Window(self.col_off, self.row_off, self.size, self.size)


@dataclass(frozen=True)
class Warp:
    """How the files are warped: a ``WarpedVRT`` per file onto the target grid ``crs`` (WKT), ``transform``,
    ``width`` x ``height``, with ``resampling`` (a rasterio ``Resampling`` name). ``src_nodata[k]`` is the value
    the warper treats as nodata in ``paths[k]`` (the override, else the file's; None: the file has no nodata
    value, and the warper uses its internal mask if it has one). ``source_*`` is the grid of the files
    themselves. Plain data, like :class:`RasterSource`."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    resampling: str
    src_nodata: tuple[float | None, ...]
    source_crs: str
    source_transform: tuple[float, float, float, float, float, float]
    source_width: int
    source_height: int

    def vrt_key(self, k: int) -> tuple:
        """What the WarpedVRT of file ``k`` depends on (hashable; the open-dataset cache key)."""
        return self.crs, self.transform, self.width, self.height, self.resampling, self.src_nodata[k]


@dataclass(frozen=True)
class RasterSource:
    """What :func:`open_raster` found: the files, the selected bands and the grid. Plain data only.

    ``selection[i] = (k, b)``: output band ``i`` is band ``b`` (1-based) of ``paths[k]``. ``transform`` is the
    affine ``(a, b, c, d, e, f)``; ``crs`` is WKT or None. ``nodata[i]`` is the value in force for output band
    ``i`` (the override when given), ``mask_kinds[i]`` how its validity is read (see ``MASK_KINDS``).
    ``pixel_size`` is ``(x, y)`` in CRS units. ``pixel_size_m`` is the mean of the x and y pixel sizes in
    metres: CRS units times the unit's metre factor for a projected CRS (so EPSG:3857 gives its nominal
    Mercator metres, larger than on the ground away from the equator), the local size on the WGS84 ellipsoid at
    the scene centre for a geographic CRS, None without a CRS or with unknown units. ``ground_pixel_size_m``
    is always the local ground size at the scene centre (None without a CRS).

    ``warp`` (a :class:`Warp`) is set when the files are read reprojected: the grid fields above (``height``,
    ``width``, ``crs``, ``transform``, pixel sizes) then describe the warped grid, every band's ``mask_kinds`` is
    ``"mask"`` (the VRT's alpha band) and ``nodata`` keeps the value the warper used.
    """

    paths: tuple[str, ...]
    selection: tuple[tuple[int, int], ...]
    band_names: tuple[str, ...]
    height: int
    width: int
    dtype: str
    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    nodata: tuple[float | None, ...]
    mask_kinds: tuple[str, ...]
    pixel_size: tuple[float, float]
    pixel_size_m: float | None
    ground_pixel_size_m: float | None
    warp: Warp | None = None

    @property
    def count(self) -> int:
        return len(self.selection)

    @property
    def has_crs(self) -> bool:
        return self.crs is not None

    @property
    def affine(self):
        from affine import Affine

        return Affine(*self.transform)

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, NaN nodata becomes the string ``"nan"``."""
        d = {k: _jsonable(v) for k, v in asdict(self).items()}
        d["nodata"] = _nan_out(self.nodata)
        if self.warp is not None:
            d["warp"] = {k: _jsonable(v) for k, v in d["warp"].items()} | {"src_nodata": _nan_out(self.warp.src_nodata)}
        return d

    @staticmethod
    def from_dict(d: dict) -> "RasterSource":
        d = dict(d)
        d["nodata"] = _nan_in(d["nodata"])
        d["selection"] = [tuple(s) for s in d["selection"]]
        warp = d.get("warp")
        if warp is not None:
            warp = Warp(**{f.name: _tuples(warp[f.name]) for f in fields(Warp) if f.name != "src_nodata"},
                        src_nodata=_nan_in(warp["src_nodata"]))
        values = {f.name: _tuples(d[f.name]) for f in fields(RasterSource) if f.name != "warp"}
        return RasterSource(**values, warp=warp)


def _nan_out(values) -> list:
    return [("nan" if v is not None and math.isnan(v) else v) for v in values]


def _nan_in(values) -> tuple:
    return tuple(None if v is None else float(v) for v in values)


def _jsonable(v):
    return [_jsonable(x) for x in v] if isinstance(v, (tuple, list)) else v


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


# ----------------------------------------------------------------------------- opening


def open_raster(path: str | os.PathLike, bands: Sequence[int | str] | str | None = None,
                nodata: float | Sequence[float] | None = None, crs: str | None = None,
                res: float | None = None) -> RasterSource:
    """Describe a raster file or a folder of ``*_B<n>.tif`` band files; read no pixels beyond one block per file.

    ``bands``: 1-based indexes (ints or digit strings; positions in the stack for a folder) or names (band
    descriptions, colour interpretations such as ``"red"``, case-insensitive; a folder's suffixes such as
    ``"B4"``), in output order; a comma-separated string works too. Default: every band except alpha bands
    (file) or every ``B<n>`` file (folder). ``nodata`` overrides the files' nodata value: one number for all
    bands or one per output band. ``crs`` (any CRS string rasterio accepts: ``EPSG:4326``, WKT, PROJ): read the
    files warped onto a grid in that CRS (:func:`warp_grid`; ``res`` forces its pixel size, in that CRS's units),
    bilinear (not when ``crs`` is the files' own and ``res`` is not given); default: no reprojection, the files'
    own grid. Raises :class:`InputError` naming the file for anything unusable (a file without a CRS under
    ``crs`` included), ValueError for a ``crs`` that is not one.
    """
    if res is not None and crs is None:
        raise ValueError("res (the warped pixel size) needs crs")
    try:
        target = parse_crs(crs) if crs is not None else None
    except ValueError as e:
        raise ValueError(f"crs {crs!r}: {e}") from None
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    candidates = _folder_bands(p) if p.is_dir() else _file_bands(p)
    chosen = _select(p, candidates, _parse_bands(p, bands))
    if not chosen:
        others = ", ".join(Path(c["path"]).name for c in candidates)
        raise InputError(f"{p}: no bands to read" + (f" (no *_B<n> band files; found {others}: name one in bands "
                                                     "to use it)" if p.is_dir() else " (only alpha bands)"))
    paths = tuple(dict.fromkeys(c["path"] for c in chosen))
    infos = {q: _grid(q) for q in paths}
    _check_same_grid(infos)
    grid = infos[paths[0]]
    nd = _nodata_override(p, chosen, nodata)
    kinds = tuple(_with_override(c["kind"], nd is not None) for c in chosen)
    values = tuple(nd[i] if nd is not None else c["nodata"] for i, c in enumerate(chosen))
    selection = tuple((paths.index(c["path"]), c["index"]) for c in chosen)
    warp = None
    if target is not None and not (res is None and grid["crs"] is not None and target == _crs_of(grid)):
        warp = _warp(p, grid, target, res, _src_nodata(paths, selection, values))
        grid = _grid_info(str(p), warp.crs, warp.transform, warp.height, warp.width)
        kinds = ("mask",) * len(chosen)  # the VRT's alpha band
    a, _, _, _, e, _ = grid["transform"]
    return RasterSource(
        paths=paths, selection=selection,
        band_names=tuple(c["name"] for c in chosen),
        height=grid["height"], width=grid["width"],
        dtype=str(np.result_type(*[np.dtype(c["dtype"]) for c in chosen])),
        crs=grid["crs"], transform=grid["transform"], nodata=values, mask_kinds=kinds,
        pixel_size=(abs(a), abs(e)),
        pixel_size_m=_pixel_size_m(grid), ground_pixel_size_m=_ground_pixel_size_m(grid), warp=warp,
    )


def _crs_of(grid: dict):
    from rasterio.crs import CRS

    return CRS.from_wkt(grid["crs"])


def parse_crs(text: str):
    """A CRS string (``EPSG:32618``, WKT, PROJ, ``OGC:CRS84``) -> rasterio ``CRS``; ValueError saying why if not."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if not isinstance(text, str) or not text.strip():
        raise ValueError("not a CRS (give e.g. EPSG:4326, a WKT or a PROJ string)")
    try:
        with rasterio.Env():  # GDAL's errors go to rasterio's logger, not to stderr
            return CRS.from_user_input(text.strip())
    except CRSError as e:
        reason = str(e).splitlines()[0] if str(e) else "unknown"
        raise ValueError(f"not a CRS rasterio knows (e.g. EPSG:4326, a WKT or a PROJ string): {reason}") from None


def warp_grid(src_crs: str, transform: tuple, height: int, width: int, target, res: float | None = None):
    """GDAL's default target grid for a north-up source grid: ``(transform, width, height)`` covering the
    footprint in ``target`` (a rasterio CRS), square pixels of about the source's pixel count, or of ``res``
    target-CRS units (metres, or degrees for a geographic CRS) when given."""
    from rasterio.crs import CRS
    from rasterio.warp import calculate_default_transform

    a, _, c, _, e, f = transform
    left, right = sorted((c, c + a * width))
    bottom, top = sorted((f, f + e * height))
    t, w, h = calculate_default_transform(CRS.from_wkt(src_crs), target, width, height, left, bottom, right, top,
                                          resolution=res)
    return tuple(float(v) for v in tuple(t)[:6]), int(w), int(h)


def _warp(p: Path, grid: dict, target, res: float | None, src_nodata: tuple) -> Warp:
    from rasterio.errors import RasterioError

    if grid["crs"] is None:
        raise InputError(f"{p}: no CRS, so it cannot be reprojected to {target.to_string()[:60]} (--crs needs a "
                         "georeferenced scene)")
    try:
        t, w, h = warp_grid(grid["crs"], grid["transform"], grid["height"], grid["width"], target, res)
    except (RasterioError, ValueError) as e:
        raise InputError(f"{p}: cannot be reprojected to {target.to_string()[:60]}: {e}") from e
    if w <= 0 or h <= 0:
        raise InputError(f"{p}: reprojected to {target.to_string()[:60]} it has no pixels ({h} x {w})")
    return Warp(crs=target.to_wkt(), transform=t, width=w, height=h, resampling="bilinear", src_nodata=src_nodata,
                source_crs=grid["crs"], source_transform=grid["transform"], source_width=grid["width"],
                source_height=grid["height"])


def _src_nodata(paths: tuple, selection: tuple, values: tuple) -> tuple:
    """Per file, the one nodata value in force for its selected bands (the warper takes one per file)."""
    out = []
    for k, path in enumerate(paths):
        mine = {("nan" if v is not None and math.isnan(v) else v) for (f, _), v in zip(selection, values) if f == k}
        if len(mine) > 1:
            raise InputError(f"{path}: its bands have different nodata values ({sorted(map(str, mine))}); "
                             "reprojecting needs one per file: give --nodata")
        (v,) = mine
        out.append(float("nan") if v == "nan" else v)
    return tuple(out)


def _open_file(path: Path):
    """Open with rasterio; any failure (not a raster, corrupt, truncated header) is an InputError."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except (RasterioError, OSError) as e:
        raise InputError(f"{path}: not a readable raster (corrupt or truncated?): {e}") from e


def _file_bands(path: Path, only_band: int | None = None) -> list[dict]:
    """One dict per band of a file: path, index, dtype, nodata, kind, names (lower-case aliases), name."""
    from rasterio.enums import ColorInterp

    with _open_file(path) as ds:
        if ds.count == 0:
            subs = ds.subdatasets
            raise InputError(f"{path}: zero bands" + (f" (it holds {len(subs)} subdatasets, such as {subs[0]})"
                                                      if subs else ""))
        _check_complete(ds, path)
        out = []
        for i in range(1, ds.count + 1):
            ci = ds.colorinterp[i - 1]
            desc = ds.descriptions[i - 1]
            aliases = [a.lower() for a in (desc, ci.name) if a and a not in ("undefined",)]
            out.append({"path": str(path), "index": i, "dtype": ds.dtypes[i - 1], "nodata": ds.nodatavals[i - 1],
                        "kind": _mask_kind(ds.mask_flag_enums[i - 1]), "aliases": aliases,
                        "alpha": ci == ColorInterp.alpha, "name": desc or _colour_name(ds, i)})
    return out


def _colour_name(ds, i: int) -> str:
    """The colour interpretation when it names this band alone (``red``), else ``band_<i>``."""
    names = [c.name for c in ds.colorinterp]
    name = names[i - 1]
    return name if name not in ("undefined", "gray") and names.count(name) == 1 else f"band_{i}"


def _mask_kind(flags) -> str:
    from rasterio.enums import MaskFlags

    if MaskFlags.all_valid in flags:
        return "none"
    if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
        return "mask"
    return "nodata" if MaskFlags.nodata in flags else "mask"


def _with_override(kind: str, override: bool) -> str:
    if not override:
        return kind
    return "mask+nodata" if kind == "mask" else "nodata"


def _check_complete(ds, path: Path) -> None:
    """Catch a truncated TIFF whose header survived, at open rather than mid-run: every band's last block must
    lie inside the file (TIFF block offsets, no decoding), and a last block of modest size must decode."""
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    bh, bw = ds.block_shapes[0]
    nrow, ncol = (ds.height - 1) // bh, (ds.width - 1) // bw
    if ds.driver == "GTiff":
        size = os.path.getsize(path)
        for b in range(1, ds.count + 1):
            offset = ds.get_tag_item(f"BLOCK_OFFSET_{ncol}_{nrow}", "TIFF", bidx=b)
            if offset and int(offset) + ds.block_size(b, nrow, ncol) > size:
                raise InputError(f"{path}: truncated TIFF (band {b}'s last block ends at byte "
                                 f"{int(offset) + ds.block_size(b, nrow, ncol)}, the file has {size})")
    if bh * bw > _DECODE_CHECK_PIXELS:
        return  # one huge strip: decoding it would read the whole raster
    try:
        ds.read(window=Window(ncol * bw, nrow * bh, ds.width - ncol * bw, ds.height - nrow * bh))
    except RasterioError as e:
        raise InputError(f"{path}: unreadable pixels (truncated or corrupt TIFF): {e}") from e


def _folder_bands(folder: Path) -> list[dict]:
    """Every raster file of a folder, band files (``*_B<n>``) first in band-number order, then the others."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no .tif files in the folder")
    numbered, others = [], []
    for f in files:
        m = BAND_FILE.match(f.stem)
        (numbered if m else others).append((int(m["number"]) if m else 0, f.stem, f))
    numbered.sort(key=lambda t: (t[0], t[1]))
    out = []
    for number, stem, f in numbered + others:
        info = _single_band(f)
        m = BAND_FILE.match(stem)
        info.update(name=m["name"].upper() if m else stem, numbered=bool(m), stem=stem.lower())
        out.append(info)
    _check_unique_band_numbers(folder, [c for c in out if c["numbered"]])
    return out


def _single_band(f: Path) -> dict:
    bands = _file_bands(f)
    if len(bands) != 1:
        raise InputError(f"{f}: a band folder needs single-band files; this one has {len(bands)} bands")
    return bands[0]


def _check_unique_band_numbers(folder: Path, numbered: list[dict]) -> None:
    seen: dict[str, str] = {}
    for c in numbered:
        if c["name"] in seen:
            raise InputError(f"{folder}: band {c['name']} twice ({Path(seen[c['name']]).name}, "
                             f"{Path(c['path']).name}); one scene per folder")
        seen[c["name"]] = c["path"]


def _parse_bands(p: Path, bands) -> list[int | str] | None:
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",") if b.strip()]
    out: list[int | str] = []
    for b in bands:
        if isinstance(b, (bool, float)) or not isinstance(b, (int, np.integer, str)):
            raise InputError(f"{p}: band {b!r} is neither a 1-based index nor a name")
        out.append(int(b) if isinstance(b, (int, np.integer)) or b.strip().isdigit() else b.strip())
    if not out:
        raise InputError(f"{p}: no bands to read (empty band selection)")
    return out


def _select(p: Path, candidates: list[dict], wanted: list[int | str] | None) -> list[dict]:
    """The candidates in output order: the default set, or the requested indexes/names."""
    stackable = [c for c in candidates if c.get("numbered", not c["alpha"])]
    if wanted is None:
        return stackable
    indexed = stackable if p.is_dir() else candidates
    return [_pick(p, indexed, candidates, w) for w in wanted]


def _pick(p: Path, indexed: list[dict], candidates: list[dict], want: int | str) -> dict:
    if isinstance(want, int):
        if 1 <= want <= len(indexed):
            return indexed[want - 1]
        raise InputError(f"{p}: band index {want} does not exist; available: {_available(indexed, candidates)}")
    key = want.lower()
    hits = [c for c in candidates if key == c["name"].lower() or key in c["aliases"]
            or ("stem" in c and c["stem"].endswith("_" + key))]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise InputError(f"{p}: no band named {want!r}; available: {_available(indexed, candidates)}")
    raise InputError(f"{p}: band name {want!r} matches {len(hits)} bands "
                     f"({', '.join(_label(c) for c in hits)}); choose by index")


def _label(c: dict) -> str:
    return f"{Path(c['path']).name} band {c['index']} {c['name']!r}"


def _available(indexed: list[dict], candidates: list[dict]) -> str:
    listed = [f"{i} {c['name']!r}" for i, c in enumerate(indexed, 1)]
    listed += [repr(c["name"]) + " (by name)" for c in candidates if c not in indexed]
    return ", ".join(listed)


def _grid(path: str) -> dict:
    """Height, width, CRS (WKT), transform of one file; rejects rotated or flipped transforms."""
    with _open_file(Path(path)) as ds:
        t = tuple(float(v) for v in tuple(ds.transform)[:6])
        grid = _grid_info(path, ds.crs.to_wkt() if ds.crs else None, t, ds.height, ds.width)
    _check_north_up(path, t)
    return grid


def _grid_info(path: str, wkt: str | None, t: tuple, height: int, width: int) -> dict:
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt) if wkt else None
    return {"path": path, "height": height, "width": width, "transform": t, "crs": wkt,
            "units": _linear_factor(crs) if crs and crs.is_projected else None,
            "geographic": bool(crs and crs.is_geographic),
            "angular": _angular_factor(crs) if crs and crs.is_geographic else None}


def _linear_factor(crs) -> float | None:
    try:
        return float(crs.linear_units_factor[1]) or None  # metres per unit
    except Exception:  # noqa: BLE001 - unknown units: no metre size
        return None


def _angular_factor(crs) -> float | None:
    try:
        return float(crs.units_factor[1])  # radians per unit
    except Exception:  # noqa: BLE001 - unknown units: no metre size
        return None


def _check_north_up(path: str, t: tuple) -> None:
    a, b, _, d, e, _ = t
    if t == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
        return  # no georeferencing at all: pixel coordinates
    if abs(b) > 1e-9 * abs(a) or abs(d) > 1e-9 * abs(e) or a <= 0 or e >= 0:
        raise InputError(f"{path}: the transform is not north-up (a={a}, b={b}, d={d}, e={e}; "
                         "needs b = d = 0, a > 0, e < 0); warp it first (gdalwarp)")


def _check_same_grid(infos: dict[str, dict]) -> None:
    first, *rest = infos.values()
    for g in rest:
        for key in ("height", "width", "crs"):
            if g[key] != first[key]:
                what = {"height": "shape", "width": "shape", "crs": "CRS"}[key]
                raise InputError(f"{g['path']}: {what} differs from {first['path']} "
                                 f"({_show(g, key)} vs {_show(first, key)}); band files must share one grid")
        tol = 1e-6 * max(abs(first["transform"][0]), abs(first["transform"][4]))
        if not np.allclose(g["transform"], first["transform"], rtol=0, atol=tol):
            raise InputError(f"{g['path']}: transform differs from {first['path']} "
                             f"({g['transform']} vs {first['transform']}); band files must share one grid")


def _show(g: dict, key: str) -> str:
    if key in ("height", "width"):
        return f"{g['height']}x{g['width']}"
    return (g["crs"] or "no CRS")[:60]


def _nodata_override(p: Path, chosen: list[dict], nodata) -> list[float] | None:
    """The override per output band, each checked to be representable in its band's dtype."""
    if nodata is None:
        return None
    values = [float(v) for v in (nodata if isinstance(nodata, (list, tuple, np.ndarray)) else [nodata] * len(chosen))]
    if len(values) != len(chosen):
        raise InputError(f"{p}: {len(values)} nodata values for {len(chosen)} bands")
    for v, c in zip(values, chosen):
        dt = np.dtype(c["dtype"])
        if dt.kind in "iu" and not (v.is_integer() and np.iinfo(dt).min <= v <= np.iinfo(dt).max):
            raise InputError(f"{c['path']}: nodata {v} cannot occur in a {dt} band")
    return values


def _pixel_size_m(grid: dict) -> float | None:
    a, e = abs(grid["transform"][0]), abs(grid["transform"][4])
    if grid["units"] is not None:
        return (a + e) / 2 * grid["units"]
    if grid["geographic"] and grid["angular"]:
        lat = math.radians(_centre_lonlat(grid)[1])
        n, m = _radii(lat)
        return (a * grid["angular"] * n * math.cos(lat) + e * grid["angular"] * m) / 2
    return None


def _ground_pixel_size_m(grid: dict) -> float | None:
    """Mean of the x and y pixel sizes on the WGS84 ellipsoid, one pixel step at the scene centre."""
    if grid["crs"] is None:
        return None
    (lon0, lon1, lon2), (lat0, lat1, lat2) = _to_lonlat(grid, [(0.5, 0.5), (1.5, 0.5), (0.5, 1.5)])
    lat = math.radians(lat0)
    n, m = _radii(lat)

    def dist(lon, la) -> float:
        return math.hypot(math.radians(lon - lon0) * n * math.cos(lat), math.radians(la - lat0) * m)

    return (dist(lon1, lat1) + dist(lon2, lat2)) / 2


def _radii(lat: float) -> tuple[float, float]:
    """WGS84 prime-vertical and meridional radii of curvature (metres) at latitude ``lat`` (radians)."""
    s = 1 - WGS84_E2 * math.sin(lat) ** 2
    return WGS84_A / math.sqrt(s), WGS84_A * (1 - WGS84_E2) / s ** 1.5


def _centre_lonlat(grid: dict) -> tuple[float, float]:
    (lon,), (lat,) = _to_lonlat(grid, [(0.0, 0.0)])
    return lon, lat


def _to_lonlat(grid: dict, offsets: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Pixel positions (col, row) relative to the scene centre -> lon/lat lists (EPSG:4326)."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform

    t = Affine(*grid["transform"])
    pts = [t @ (grid["width"] / 2 + dc, grid["height"] / 2 + dr) for dc, dr in offsets]
    return transform(CRS.from_wkt(grid["crs"]), CRS.from_epsg(4326), [x for x, _ in pts], [y for _, y in pts])


# ----------------------------------------------------------------------------- tiles


def tile_windows(height: int, width: int, tile: int, overlap: int = 0) -> list[TileWindow]:
    """Square tiles at stride ``tile - overlap``, row-major, covering every pixel; edge tiles extend past the
    raster (the reader pads them) and a raster smaller than one tile gives one tile."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if height <= 0 or width <= 0:
        raise ValueError(f"need a non-empty raster, got {height}x{width}")
    rows, cols = _offsets(height, tile, overlap), _offsets(width, tile, overlap)
    return [TileWindow(r, c, tile) for r in rows for c in cols]


def _offsets(n: int, tile: int, overlap: int) -> list[int]:
    stride = tile - overlap
    return [i * stride for i in range(1 + max(0, math.ceil((n - tile) / stride)))]


def window_transform(src: RasterSource, window: TileWindow):
    """The tile's affine transform (its pixel (0, 0) is the window's upper-left pixel)."""
    from affine import Affine

    return src.affine @ Affine.translation(window.col_off, window.row_off)


def window_bounds(src: RasterSource, window: TileWindow) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of the whole tile (padding included) in the source CRS."""
    t = window_transform(src, window)
    xs, ys = zip(t @ (0, 0), t @ (window.size, window.size))
    return min(xs), min(ys), max(xs), max(ys)


def read_tile(src: RasterSource, window: TileWindow) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels float32 (C, size, size), valid bool (size, size))``: one pixel read per file (plus one
    ``read_masks`` for a file with a mask or alpha band); padding is 0 and invalid."""
    pixels, band_valid = _read_block(src, window.row_off, window.col_off, window.size, window.size)
    return pixels, band_valid.any(axis=0)


def valid_mask(src: RasterSource, window: TileWindow) -> np.ndarray:
    """``valid bool (size, size)`` from the masks alone where the files have them (``read_masks``); nodata-value
    bands need their pixels (GDAL keeps those blocks cached for the following :func:`read_tile`)."""
    valid = np.zeros((window.size, window.size), bool)
    inner = _inner(src, window.row_off, window.col_off, window.size, window.size)
    if inner is None:
        return valid
    (r0, r1, c0, c1), rw = inner
    if "none" in src.mask_kinds:
        valid[r0:r1, c0:c1] = True  # a band without any nodata makes every raster pixel valid
        return valid
    for k, members in _by_file(src).items():
        inside = _file_valid(src, k, members, rw, pixels=None)
        valid[r0:r1, c0:c1] |= inside.any(axis=0)
        if valid[r0:r1, c0:c1].all():
            break
    return valid


def valid_fraction(src: RasterSource, window: TileWindow) -> float:
    """Share of the tile's ``size * size`` pixels that are valid (padding counts as invalid)."""
    return float(valid_mask(src, window).mean())


def is_empty(src: RasterSource, window: TileWindow, min_valid_fraction: float = 0.0) -> bool:
    """True when the tile has no valid pixel (or no more than ``min_valid_fraction`` of them)."""
    valid = valid_mask(src, window)
    return not valid.any() or float(valid.mean()) <= min_valid_fraction


def read_valid_tile(src: RasterSource, window: TileWindow,
                    min_valid_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`read_tile`'s ``(pixels, valid)``, or None for a tile with no valid pixel (or no more than
    ``min_valid_fraction``). Decided from the masks alone where the files have them (mask band, alpha);
    where a nodata value is the mask, from the one pixel read the tile needs anyway."""
    if all(kind == "nodata" for kind in src.mask_kinds):
        pixels, valid = read_tile(src, window)
        return (pixels, valid) if valid.any() and float(valid.mean()) > min_valid_fraction else None
    if is_empty(src, window, min_valid_fraction):
        return None
    return read_tile(src, window)


def _inner(src: RasterSource, row: int, col: int, h: int, w: int):
    """The part of a (row, col, h, w) rectangle inside the raster: ``((r0, r1, c0, c1) in the output, Window)``."""
    from rasterio.windows import Window

    top, left = max(row, 0), max(col, 0)
    bottom, right = min(row + h, src.height), min(col + w, src.width)
    if bottom <= top or right <= left:
        return None
    return (top - row, bottom - row, left - col, right - col), Window(left, top, right - left, bottom - top)


def _by_file(src: RasterSource) -> dict[int, list[int]]:
    """File number -> output band positions read from it, in output order."""
    groups: dict[int, list[int]] = {}
    for i, (k, _) in enumerate(src.selection):
        groups.setdefault(k, []).append(i)
    return groups


def _read_block(src: RasterSource, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Any rectangle, boundless: ``(pixels float32 (C, h, w), per-band valid bool (C, h, w))``."""
    pixels = np.zeros((src.count, h, w), np.float32)
    valid = np.zeros((src.count, h, w), bool)
    inner = _inner(src, row, col, h, w)
    if inner is None:
        return pixels, valid
    (r0, r1, c0, c1), rw = inner
    for k, members in _by_file(src).items():
        indexes = [src.selection[i][1] for i in members]
        raw = _dataset(src, k).read(indexes, window=rw)  # one read per file
        pixels[members, r0:r1, c0:c1] = raw
        valid[members, r0:r1, c0:c1] = _file_valid(src, k, members, rw, pixels=raw)
    return pixels, valid


def _file_valid(src: RasterSource, k: int, members: list[int], rw, pixels: np.ndarray | None) -> np.ndarray:
    """Per-band validity (len(members), h, w) inside the raster for the bands of file ``k``; ``pixels`` are
    those bands' values when already read (else the nodata-value bands are read here, in one call)."""
    ds = _dataset(src, k)
    valid = np.ones((len(members), int(rw.height), int(rw.width)), bool)
    masks = _file_masks(ds, src, members, rw)
    by_value = [j for j, i in enumerate(members)
                if src.mask_kinds[i] in ("nodata", "mask+nodata") and src.nodata[i] is not None]
    if pixels is None and by_value:
        read = ds.read([src.selection[members[j]][1] for j in by_value], window=rw)
        pixels = dict(zip(by_value, read))
    for j, i in enumerate(members):
        if i in masks:
            valid[j] = masks[i]
        if j in by_value:
            valid[j] &= ~_is_value(pixels[j], src.nodata[i])
    return valid


def _file_masks(ds, src: RasterSource, members: list[int], rw) -> dict[int, np.ndarray]:
    """``read_masks`` for the mask-kind bands: once per file when the mask is per-dataset."""
    from rasterio.enums import MaskFlags

    want = [i for i in members if src.mask_kinds[i] in ("mask", "mask+nodata")]
    out: dict[int, np.ndarray] = {}
    shared = None
    for i in want:
        b = src.selection[i][1]
        per_dataset = MaskFlags.per_dataset in ds.mask_flag_enums[b - 1]
        if per_dataset and shared is not None:
            out[i] = shared
            continue
        out[i] = ds.read_masks(b, window=rw) > 0
        if per_dataset:
            shared = out[i]
    return out


def _is_value(band: np.ndarray, value: float) -> np.ndarray:
    """``band == value`` in the band's own dtype (NaN matches NaN)."""
    if math.isnan(value):
        return np.isnan(band) if band.dtype.kind == "f" else np.zeros(band.shape, bool)
    return band == np.asarray(value).astype(band.dtype)


def read_overview(src: RasterSource, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole raster decimated (nearest) so its longer side is at most ``max_side``:
    ``(pixels float32 (C, h, w), valid bool (h, w))``; GDAL reads overviews where the file has them."""
    from rasterio.enums import Resampling

    scale = max(src.height, src.width) / max_side
    h, w = (src.height, src.width) if scale <= 1 else (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
    pixels = np.zeros((src.count, h, w), np.float32)
    valid = np.zeros((src.count, h, w), bool)
    for k, members in _by_file(src).items():
        ds = _dataset(src, k)
        for i in members:
            b = src.selection[i][1]
            band = ds.read(b, out_shape=(h, w), resampling=Resampling.nearest)
            pixels[i] = band
            ok = np.ones((h, w), bool)
            if src.mask_kinds[i] in ("mask", "mask+nodata"):
                ok &= ds.read_masks(b, out_shape=(h, w), resampling=Resampling.nearest) > 0
            if src.mask_kinds[i] in ("nodata", "mask+nodata") and src.nodata[i] is not None:
                ok &= ~_is_value(band, src.nodata[i])
            valid[i] = ok
    return pixels, valid.any(axis=0)


# ----------------------------------------------------------------------------- statistics


def sample_band_stats(src: RasterSource, max_pixels: int = 200_000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-band ``(mean (C,), std (C,), n)`` over the valid pixels of a deterministic sample of windows.

    The windows follow the first file's block layout (one stored block each, so a read costs no more than it
    must; large blocks are cut down), one chosen at random (``seed``) in each of equal strata of the row-major
    block order, together about ``max_pixels`` pixels; every block when the raster is smaller. A pixel counts
    when it is valid by the rule of :func:`read_tile`. Population std. With no valid pixel: NaNs and ``n = 0``.
    """
    wh, ww = _sample_shape(src, max_pixels)
    nr, nc = math.ceil(src.height / wh), math.ceil(src.width / ww)
    picks = _stratified(nr * nc, math.ceil(max_pixels / (wh * ww)), seed)
    n, mean, m2 = 0, np.zeros(src.count), np.zeros(src.count)
    for idx in picks:
        r, c = divmod(int(idx), nc)
        pixels, band_valid = _read_block(src, r * wh, c * ww, wh, ww)
        x = pixels[:, band_valid.any(axis=0)].astype(np.float64)  # (C, n_valid)
        if x.shape[1]:
            n, mean, m2 = _merge(n, mean, m2, x)
    if n == 0:
        return np.full(src.count, np.nan), np.full(src.count, np.nan), 0
    return mean, np.sqrt(m2 / n), n


def _sample_shape(src: RasterSource, max_pixels: int) -> tuple[int, int]:
    """Window shape: the first file's block shape, cut to at most an eighth of the budget."""
    k, b = src.selection[0]
    bh, bw = _dataset(src, k).block_shapes[b - 1]
    cap = max(1, max_pixels // 8)
    if bh * bw <= cap:
        return bh, bw
    side = max(1, int(math.sqrt(cap)))
    if bw <= side:  # narrow blocks: keep the width, fewer rows
        return max(1, min(bh, cap // bw)), bw
    return _aligned(bh, side), _aligned(bw, side)


def _aligned(block: int, side: int) -> int:
    """The largest ``block // k`` not above ``side`` (windows then never straddle a block edge)."""
    return max(1, block // math.ceil(block / side))


def _stratified(total: int, want: int, seed: int) -> np.ndarray:
    """``want`` indexes in [0, total): one random pick per equal stratum (all of them when want >= total)."""
    if want >= total:
        return np.arange(total)
    edges = np.linspace(0, total, want + 1).astype(int)
    rng = np.random.default_rng(seed)
    return np.array([rng.integers(lo, max(hi, lo + 1)) for lo, hi in zip(edges[:-1], edges[1:])])


def _merge(n: int, mean: np.ndarray, m2: np.ndarray, x: np.ndarray):
    """Chan et al. parallel update of count, mean, sum of squared deviations with a (C, k) batch."""
    k = x.shape[1]
    bmean = x.mean(axis=1)
    bm2 = ((x - bmean[:, None]) ** 2).sum(axis=1)
    delta = bmean - mean
    total = n + k
    return total, mean + delta * k / total, m2 + bm2 + delta ** 2 * n * k / total


# ----------------------------------------------------------------------------- open-dataset cache


_local = threading.local()


def _dataset(src: RasterSource, k: int):
    """The open dataset for file ``k`` of ``src``: the file, or its WarpedVRT when ``src.warp`` is set (a
    VRT warps lazily, block by block, only the windows that are read)."""
    path = src.paths[k]
    return _cached(path, None if src.warp is None else src.warp.vrt_key(k))


def _cached(path: str, vrt_key: tuple | None):
    """An open rasterio dataset (or a WarpedVRT on it) for ``path``, kept per thread and process (opening costs
    ~1 ms per tile otherwise); reopened when the file changes on disk."""
    cache: OrderedDict = getattr(_local, "cache", None)
    if cache is None or getattr(_local, "pid", None) != os.getpid():
        cache = _local.cache = OrderedDict()
        _local.pid = os.getpid()
    st = os.stat(path)
    key = (st.st_mtime_ns, st.st_size)
    name = (path, vrt_key)
    hit = cache.get(name)
    if hit is not None and hit[0] == key and not hit[1][-1].closed:
        cache.move_to_end(name)
        return hit[1][-1]
    if hit is not None:
        _close(hit[1])
    ds = _open_file(Path(path))
    opened = (ds,) if vrt_key is None else (ds, _warped(ds, vrt_key))
    cache[name] = (key, opened)
    while len(cache) > _CACHE_SIZE:
        _close(cache.popitem(last=False)[1][1])
    return opened[-1]


def _warped(ds, vrt_key: tuple):
    """A WarpedVRT of ``ds`` onto the grid of ``vrt_key`` (see :meth:`Warp.vrt_key`), with an alpha band:
    outside the source footprint and wherever the warper had no valid source pixel it is 0 (invalid). Reads
    are never boundless (a WarpedVRT refuses them): the callers clip windows to the grid and pad by hand.

    GDAL warps the VRT block by block (512 x 128 pixels), the transform approximated to 1/8 pixel per block
    (its default, as gdalwarp): a pixel's value is that of ``rasterio.warp.reproject`` of its block, and may
    differ from a reprojection of another region around it by that approximation (a few data values at sharp
    edges)."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    crs, transform, width, height, resampling, src_nodata = vrt_key
    extra = {} if src_nodata is None else {"src_nodata": src_nodata}
    return WarpedVRT(ds, crs=CRS.from_wkt(crs), transform=Affine(*transform), width=width, height=height,
                     resampling=Resampling[resampling], add_alpha=True, **extra)


def _close(opened: tuple) -> None:
    for ds in reversed(opened):  # the VRT before the file it reads
        ds.close()


def close_datasets() -> None:
    """Close the datasets this thread keeps open."""
    cache = getattr(_local, "cache", None) or {}
    for _, opened in cache.values():
        _close(opened)
    cache.clear()
