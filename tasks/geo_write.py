"""Georeferenced writers: GeoParquet tables of tiles, Cloud-Optimized GeoTIFFs, class areas.

Every writer is atomic (temp file in the target's folder, then rename): a failure part way
leaves the previous file, or nothing, under the final name, and no ``.tmp-*`` file behind.

Choices, and why:

* Vectors in GeoParquet are a ``list<float32>`` column, not ``fixed_size_list``. Parquet has
  no fixed-size list type: both are stored as the same LIST, the fixed size being only a hint
  in the embedded Arrow schema, so nothing is gained on disk. ``list<float32>`` is what
  geopandas writes from a column of float32 arrays through its public API, and pandas and
  geopandas read it back as one float32 array per row (geopandas 1.2 cannot read back a
  pandas ``ArrowDtype(fixed_size_list)`` column: its pandas metadata does not parse). The
  width D is kept in the file metadata, and :func:`read_vectors` returns the (N, D) array
  as a view of pyarrow's values buffer (no copy when the column is one chunk).
* COGs are made with GDAL's COG driver (``rasterio.shutil.copy(driver="COG")``) from a tiled
  GTiff that already holds the overviews (``OVERVIEWS=FORCE_USE_EXISTING``), not with
  rio-cogeo's ``cog_translate``: the overview factors are then exactly the ones asked for
  (``cog_translate`` takes a count of levels of one decimation base), the conversion is one
  streamed ``CreateCopy`` (``cog_translate`` first copies the raster once more, into memory
  or a temp file), and both the buffered COG writer (rasterio #2386) and the COG driver's
  refusal of GTiff options (``TILED``, ``BLOCKXSIZE``) are avoided. rio-cogeo's
  ``cog_validate`` checks the result in the tests.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.write import TEMP_PREFIX, WriteError, _json_default, atomic_path

METADATA_KEY = b"PANDAS_ATTRS"  # key-value metadata key of a GeoParquet file's metadata (JSON)
_AREA_CHUNK_PIXELS = 1 << 22  # pixels per strip read by class_areas_km2 (4 Mi, ~4-32 MB)


# --------------------------------------------------------------------------- geometry helpers


def tile_polygon(bounds: Sequence[float]):
    """A shapely box from ``(left, bottom, right, top)`` (a rasterio ``BoundingBox`` works)."""
    import shapely

    left, bottom, right, top = (float(v) for v in bounds)
    return shapely.box(left, bottom, right, top)


def window_polygon(transform, window):
    """Footprint of a rasterio ``Window`` under ``transform``, in CRS units (rotation kept)."""
    from shapely.geometry import Polygon

    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    return Polygon([transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))])


# --------------------------------------------------------------------------- GeoParquet


def write_geoparquet(
    path: str | os.PathLike,
    rows: list[dict],
    geometries: list,
    crs: str | None,
    vectors: np.ndarray | None = None,
    vector_column: str = "embedding",
    metadata: dict | None = None,
) -> Path:
    """Write one GeoParquet row per entry of ``rows`` (their scalar fields become columns).

    ``geometries``: N shapely geometries in ``crs`` (``None``: the file has no CRS).
    ``vectors``: (N, D) float array, stored as ``list<float32>`` in ``vector_column``.
    ``metadata``: a JSON-serialisable dict, stored as JSON in the file's key-value metadata
    under ``PANDAS_ATTRS`` (the key pandas and geopandas >= 1.1 use for ``DataFrame.attrs``,
    so ``geopandas.read_parquet(path).attrs`` gives it back); with vectors it gains
    ``"vectors": {"column", "dim", "dtype"}``. See :func:`read_geoparquet_metadata`.
    """
    import geopandas as gpd

    n = len(rows)
    if len(geometries) != n:
        raise ValueError(f"{path}: {n} rows but {len(geometries)} geometries")
    vectors = _check_vectors(path, vectors, n, vector_column, rows)
    attrs = _file_metadata(path, metadata, vectors, vector_column)
    gdf = gpd.GeoDataFrame(_columns(path, rows), geometry=list(geometries), crs=crs)
    if vectors is not None:
        gdf[vector_column] = list(vectors)  # row views; pyarrow makes list<float32> of them
    gdf.attrs = attrs
    try:
        with atomic_path(path) as tmp:
            gdf.to_parquet(tmp, index=False, compression="zstd")
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise WriteError(f"{path}: could not write {n} rows as GeoParquet: {e}") from e
    return Path(path)


def _check_vectors(path, vectors, n: int, column: str, rows: list[dict]) -> np.ndarray | None:
    """(N, D) float32 view/copy of ``vectors``, or None."""
    if vectors is None:
        return None
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"{path}: vectors must be (N={n}, D), got {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise ValueError(f"{path}: vectors must be floating point, got {vectors.dtype}")
    if any(column in r for r in rows):
        raise ValueError(f"{path}: a row field is named {column!r}, like the vector column")
    return vectors.astype(np.float32, copy=False)


def _file_metadata(path, metadata: dict | None, vectors, column: str) -> dict:
    """``metadata`` made plain JSON (numpy scalars, Paths converted), plus the vector layout."""
    meta = dict(metadata or {})
    if vectors is not None:
        if "vectors" in meta:
            raise ValueError(f"{path}: metadata key 'vectors' is reserved for the vector layout")
        meta["vectors"] = {"column": column, "dim": int(vectors.shape[1]), "dtype": "float32"}
    try:
        return json.loads(json.dumps(meta, default=_json_default))
    except (TypeError, ValueError) as e:
        raise WriteError(f"{path}: metadata is not JSON serialisable: {e}") from e


def _columns(path, rows: list[dict]) -> dict[str, list]:
    """Column-wise dict of ``rows``; a field missing from a row is None (a null)."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    if "geometry" in names:
        raise ValueError(f"{path}: a row field is named 'geometry', like the geometry column")
    return {k: [r.get(k) for r in rows] for k in names}


def read_geoparquet_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict written by :func:`write_geoparquet`, read with pyarrow alone."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_vectors(path: str | os.PathLike, column: str = "embedding") -> np.ndarray:
    """(N, D) float32 array of a vector column, read with pyarrow (no per-row objects).

    The values buffer is used as is (no copy) when the column is one chunk (one row group).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    if col.null_count:
        raise InputError(f"{path}: column {column!r} has {col.null_count} null vectors")
    if not len(col):
        dim = read_geoparquet_metadata(path).get("vectors", {}).get("dim", 0)
        return np.zeros((0, dim), np.float32)
    lengths = pc.list_value_length(col)
    dim = pc.min(lengths).as_py()
    if pc.max(lengths).as_py() != dim:
        raise InputError(f"{path}: column {column!r} holds vectors of different lengths")
    return col.flatten().to_numpy(zero_copy_only=True).reshape(len(col), dim)


def concat_geoparquet(path: str | os.PathLike, parts: Sequence[str | os.PathLike]) -> Path:
    """The GeoParquet files ``parts`` (same schema, as :func:`write_geoparquet` wrote them), rows in order,
    as one file at ``path``, streamed one part at a time (memory: one part). The first part's file
    metadata is kept, its ``geo`` bounding box widened to all parts'. Atomic."""
    import pyarrow.parquet as pq

    if not parts:
        raise ValueError(f"{path}: no parts to join")
    schema = pq.read_schema(parts[0])
    metadata = dict(schema.metadata or {})
    if b"geo" in metadata:
        geo = json.loads(metadata[b"geo"])
        for name, column in geo.get("columns", {}).items():
            boxes = [b for b in (_bbox(q, name) for q in parts) if b]
            if boxes:
                column["bbox"] = [min(b[0] for b in boxes), min(b[1] for b in boxes),
                                  max(b[2] for b in boxes), max(b[3] for b in boxes)]
        metadata[b"geo"] = json.dumps(geo).encode()
    schema = schema.with_metadata(metadata)
    try:
        with atomic_path(path) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as out:
                for part in parts:
                    table = pq.read_table(part)
                    if not table.schema.equals(schema, check_metadata=False):
                        raise ValueError(f"{part}: its columns differ from {parts[0]}'s")
                    out.write_table(table.replace_schema_metadata(metadata))
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise WriteError(f"{path}: could not join {len(parts)} GeoParquet parts: {e}") from e
    return Path(path)


def _bbox(path, column: str) -> list[float] | None:
    """A part's ``geo`` bounding box of ``column`` (None for a part without rows)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    if not meta.num_rows:
        return None
    geo = json.loads((meta.metadata or {}).get(b"geo", b"{}"))
    return geo.get("columns", {}).get(column, {}).get("bbox")


# --------------------------------------------------------------------------- COG writer


class CogWriter:
    """Write a raster window by window, then publish it as a Cloud-Optimized GeoTIFF.

    ``with CogWriter(path, height=, width=, count=, dtype=, crs=, transform=, nodata=) as w:
    w.write(array, row_off, col_off)``. Windows go into a tiled, uncompressed temp GTiff
    beside ``path`` (sparse: areas never written read as ``nodata``); on a clean exit
    overviews are built there with ``resampling`` (``nearest`` for class maps, ``average``
    for probabilities), the COG is written to a second temp file and renamed onto ``path``.
    On an exception both temps are deleted and ``path`` is left as it was (old file or none).
    Memory: one window plus GDAL's block cache; the whole raster is never in memory.
    The temp GTiff needs the raster's uncompressed size (+1/3 for overviews) on disk.
    ``nbits=16`` with float32 stores IEEE half floats (GDAL's NBITS; readers get float32 back).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        height: int,
        width: int,
        count: int,
        dtype,
        crs,
        transform,
        nodata,
        overviews: Iterable[int] = (2, 4, 8, 16),
        resampling: str = "nearest",
        compress: str = "deflate",
        blocksize: int = 512,
        descriptions: Sequence[str | None] | None = None,
        nbits: int | None = None,
    ):
        from rasterio.enums import Compression, Resampling

        self.path = Path(path)
        self.height, self.width, self.count = int(height), int(width), int(count)
        self.dtype = np.dtype(dtype)
        self.crs, self.transform, self.nodata = crs, transform, nodata
        self.overviews = sorted({int(f) for f in overviews})
        if any(f < 2 for f in self.overviews):
            raise ValueError(f"{path}: overview factors must be >= 2, got {self.overviews}")
        try:
            self.resampling = Resampling[resampling]
        except KeyError:
            raise ValueError(f"{path}: unknown resampling {resampling!r}") from None
        if compress.upper() not in {c.value for c in Compression}:
            raise ValueError(f"{path}: unknown compression {compress!r}")
        if blocksize % 16:
            raise ValueError(f"{path}: blocksize must be a multiple of 16, got {blocksize}")
        if descriptions is not None and len(descriptions) != self.count:
            raise ValueError(f"{path}: {len(descriptions)} descriptions for {self.count} bands")
        self.compress, self.blocksize, self.descriptions = compress, int(blocksize), descriptions
        if nbits is not None and not (nbits == 16 and self.dtype == np.float32):
            raise ValueError(f"{path}: nbits is offered for half-precision floats only (16 with float32)")
        self.nbits = {"NBITS": 16} if nbits else {}  # GDAL stores float32 as IEEE half floats
        self._tmp: Path | None = None
        self._ds = None

    def __enter__(self) -> "CogWriter":
        import rasterio

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tif", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._ds = rasterio.open(self._tmp, "w", **self._temp_profile())
            for i, d in enumerate(self.descriptions or (), start=1):
                if d:
                    self._ds.set_band_description(i, d)
        except BaseException:
            self._cleanup()
            raise
        return self

    def _temp_profile(self) -> dict[str, Any]:
        # uncompressed: a window that straddles tiles rewrites them in place instead of
        # appending re-compressed copies; SPARSE_OK: unwritten tiles cost no disk
        return dict(
            driver="GTiff", height=self.height, width=self.width, count=self.count,
            dtype=self.dtype.name, crs=self.crs, transform=self.transform, nodata=self.nodata,
            tiled=True, blockxsize=self.blocksize, blockysize=self.blocksize, sparse_ok=True,
            bigtiff="IF_SAFER", **self.nbits,
        )  # fmt: skip

    def write(self, array: np.ndarray, row_off: int, col_off: int) -> None:
        """Write ``array`` (count, h, w), or (h, w) when count is 1, at (row_off, col_off)."""
        from rasterio.windows import Window

        if self._ds is None:
            raise RuntimeError(f"{self.path}: CogWriter.write outside its with-block")
        array = np.asarray(array)
        if array.ndim == 2 and self.count == 1:
            array = array[None]
        if array.ndim != 3 or array.shape[0] != self.count:
            raise ValueError(f"{self.path}: window must be ({self.count}, h, w), got {array.shape}")
        if not np.can_cast(array.dtype, self.dtype, casting="safe"):
            raise ValueError(f"{self.path}: window dtype {array.dtype} does not fit {self.dtype}")
        _, h, w = array.shape
        if row_off < 0 or col_off < 0 or row_off + h > self.height or col_off + w > self.width:
            raise ValueError(
                f"{self.path}: window rows {row_off}:{row_off + h}, cols {col_off}:{col_off + w} "
                f"outside the {self.height} x {self.width} raster"
            )
        self._ds.write(array.astype(self.dtype, copy=False), window=Window(col_off, row_off, w, h))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._publish()
        finally:
            self._cleanup()

    def _publish(self) -> None:
        import rasterio.shutil

        factors = [f for f in self.overviews if min(self.height, self.width) >= f]
        if factors:
            self._ds.build_overviews(factors, self.resampling)
        self._ds.close()
        self._ds = None
        try:
            with atomic_path(self.path) as out:
                rasterio.shutil.copy(
                    self._tmp, out, driver="COG", BLOCKSIZE=self.blocksize,
                    COMPRESS=self.compress.upper(), OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE",
                    BIGTIFF="IF_SAFER", **self.nbits,
                )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise WriteError(f"{self.path}: could not write the COG: {e}") from e

    def _cleanup(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            Path(f"{self._tmp}.aux.xml").unlink(missing_ok=True)  # PAM side file, if GDAL made one
            self._tmp = None


# --------------------------------------------------------------------------- class areas


def class_areas_km2(
    path: str | os.PathLike, classes: dict[int, str] | None = None, *, band: int = 1
) -> dict[str, float]:
    """Area in km² of each class value of an integer class raster, nodata/masked excluded.

    Projected CRS: pixel area = |det(transform)| in CRS units², converted to m² (map-plane
    area; a warning is issued where the projection's areal scale at the raster's centre is
    off by more than 1 %, e.g. Web Mercator). Geographic CRS: the area of one cell of each
    pixel row on the CRS's ellipsoid (pyproj.Geod), so latitude is accounted for.
    Keys: ``classes[value]`` (every named class, 0.0 when absent) or ``str(value)`` for
    values not named. Read in full-width strips of about 4 Mi pixels.
    """
    import rasterio

    path = Path(path)
    with rasterio.open(path) as src:
        _check_class_raster(path, src, band)
        row_areas = _row_areas_m2(path, src)  # (H,) m² of one pixel in each row
        uniform = bool(np.all(row_areas == row_areas[0])) if len(row_areas) else True
        sums: dict[int, float] = {}
        for r0, values, rows in _valid_strips(src, band):
            # one pixel area (projected): integer counts, exactly count x area at the end
            _accumulate(sums, values, None if uniform else row_areas[r0 + rows])
    scale = float(row_areas[0]) if uniform and len(row_areas) else 1.0
    names = dict(classes or {})
    out = {name: 0.0 for name in names.values()}
    for value in sorted(sums):
        key = names.get(value, str(value))
        out[key] = out.get(key, 0.0) + sums[value] * scale / 1e6
    return out


def _check_class_raster(path: Path, src, band: int) -> None:
    if src.crs is None:
        raise InputError(f"{path}: has no CRS; class areas need a CRS to size the pixels")
    if not 1 <= band <= src.count:
        raise InputError(f"{path}: has {src.count} band(s), no band {band}")
    if not np.issubdtype(np.dtype(src.dtypes[band - 1]), np.integer):
        raise InputError(f"{path}: band {band} is {src.dtypes[band - 1]}, a class raster is integer")


def _row_areas_m2(path: Path, src) -> np.ndarray:
    """(H,) float64: area in m² of one pixel of each row."""
    t = src.transform
    if src.crs.is_geographic:
        if t.b or t.d:
            raise InputError(f"{path}: a rotated geographic grid is not supported for areas")
        return _geographic_row_areas(src.crs, t, src.height)
    _warn_if_not_equal_area(path, src)
    unit_m = src.crs.linear_units_factor[1]
    return np.full(src.height, abs(t.a * t.e - t.b * t.d) * unit_m**2)


def _geographic_row_areas(crs, t, height: int) -> np.ndarray:
    """Geodesic area of the cell [x0, x0+dx] x [y_r, y_r+dy] of each row r (degrees)."""
    import pyproj

    geod = pyproj.CRS.from_wkt(crs.to_wkt()).get_geod()
    x0, x1 = t.c, t.c + t.a
    areas = np.empty(height)
    for r in range(height):
        y0, y1 = t.f + r * t.e, t.f + (r + 1) * t.e
        area, _ = geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
        areas[r] = abs(area)
    return areas


def _warn_if_not_equal_area(path: Path, src) -> None:
    import pyproj

    try:
        cx, cy = src.xy(src.height // 2, src.width // 2)
        lon, lat = pyproj.Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(cx, cy)
        scale = pyproj.Proj(src.crs.to_wkt()).get_factors(lon, lat).areal_scale
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot evaluate: no warning, planar areas
        return
    if math.isfinite(scale) and abs(scale - 1) > 0.01:
        warnings.warn(
            f"{path}: the CRS scales areas by {scale:.3f} at the raster's centre; "
            "class areas are map-plane areas, not ground areas",
            stacklevel=3,
        )


def _valid_strips(src, band: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, valid values (n,), their row index within the strip (n,)) per strip."""
    from rasterio.enums import MaskFlags
    from rasterio.windows import Window

    block_h = src.block_shapes[band - 1][0]
    rows_per = max(block_h, (_AREA_CHUNK_PIXELS // max(src.width, 1)) // block_h * block_h)
    nodata = src.nodatavals[band - 1]
    has_mask = MaskFlags.all_valid not in src.mask_flag_enums[band - 1]
    for r0 in range(0, src.height, rows_per):
        win = Window(0, r0, src.width, min(rows_per, src.height - r0))
        values = src.read(band, window=win)  # (h, W)
        if nodata is not None:
            valid = values != nodata
        elif has_mask:
            valid = src.read_masks(band, window=win) > 0
        else:
            valid = np.ones(values.shape, bool)
        rows = np.nonzero(valid)[0]
        yield r0, values[valid], rows


def _accumulate(sums: dict[int, float], values: np.ndarray, weights: np.ndarray | None) -> None:
    """Add ``weights`` (n,), or 1 per pixel when None, per distinct value of ``values`` (n,)."""
    if not values.size:
        return
    uniq, inverse = np.unique(values, return_inverse=True)
    per_value = np.bincount(inverse.ravel(), weights=weights)
    for v, a in zip(uniq.tolist(), per_value.tolist()):
        sums[v] = sums.get(v, 0) + a
