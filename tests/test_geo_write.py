"""Georeferenced writers: GeoParquet tables, Cloud-Optimized GeoTIFFs, class areas (real files)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest
import rasterio
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from imagingflows.tasks.geo_write import (
    CogWriter,
    class_areas_km2,
    read_geoparquet_metadata,
    read_vectors,
    tile_polygon,
    window_polygon,
)
from imagingflows.tasks.geo_write import write_geoparquet
from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.write import TEMP_PREFIX, WriteError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "remote_sensing"
UTM = "EPSG:32616"


def _temps(folder: Path) -> list[Path]:
    return list(folder.glob(f"{TEMP_PREFIX}*"))


# --------------------------------------------------------------------------- GeoParquet


def _tiles(n: int):
    rows = [
        {"tile": i, "row_off": 256 * i, "score": 0.5 + i, "source": f"scene_{i}.tif", "ok": i % 2 == 0}
        for i in range(n)
    ]
    geoms = [tile_polygon((500_000 + 2560 * i, 3_990_000, 502_560 + 2560 * i, 3_992_560)) for i in range(n)]
    return rows, geoms


def test_geoparquet_round_trips_crs_columns_vectors_and_metadata(tmp_path):
    rows, geoms = _tiles(5)
    rows[3]["note"] = "cloudy"  # a field only one row has: null elsewhere
    vectors = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    meta = {"weights": "model.pt", "res": np.float32(1.0), "bands": [3, 2, 1]}
    out = write_geoparquet(tmp_path / "tiles.parquet", rows, geoms, UTM, vectors, metadata=meta)

    gdf = gpd.read_parquet(out)
    assert gdf.crs == pyproj.CRS(UTM)
    assert gdf["tile"].tolist() == list(range(5)) and gdf["source"].tolist()[4] == "scene_4.tif"
    assert gdf["score"].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5] and gdf["ok"].tolist() == [True, False] * 2 + [True]
    assert gdf["note"].isna().tolist() == [True, True, True, False, True]
    assert all(g.equals(h) for g, h in zip(gdf.geometry, geoms))
    cell = gdf["embedding"].iloc[2]
    assert isinstance(cell, np.ndarray) and cell.dtype == np.float32 and np.array_equal(cell, vectors[2])
    assert np.array_equal(np.stack(pd.read_parquet(out)["embedding"]), vectors)  # plain pandas too

    schema = pq.read_schema(out)
    assert schema.field("embedding").type == pa.list_(pa.float32())
    stored = json.loads(schema.metadata[b"PANDAS_ATTRS"])
    assert stored == {"weights": "model.pt", "res": 1.0, "bands": [3, 2, 1],
                      "vectors": {"column": "embedding", "dim": 16, "dtype": "float32"}}  # fmt: skip
    assert read_geoparquet_metadata(out) == stored == gdf.attrs
    vec = read_vectors(out)
    assert vec.shape == (5, 16) and vec.dtype == np.float32 and np.array_equal(vec, vectors)
    owner = vec
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, pa.Array)  # a view of the Arrow values buffer, not a copy
    assert not _temps(tmp_path)


def test_geoparquet_without_crs_has_none_not_the_crs84_default(tmp_path):
    rows, geoms = _tiles(2)
    out = write_geoparquet(tmp_path / "t.parquet", rows, geoms, None)
    assert gpd.read_parquet(out).crs is None
    assert "embedding" not in pq.read_schema(out).names


def test_failed_geoparquet_write_keeps_the_previous_file_or_leaves_nothing(tmp_path):
    rows, geoms = _tiles(3)
    path = tmp_path / "t.parquet"
    bad = [dict(r) for r in rows]
    bad[1]["source"] = object()  # pyarrow cannot convert it: fails inside the write
    with pytest.raises(WriteError, match="t.parquet"):
        write_geoparquet(path, bad, geoms, UTM)
    assert not path.exists() and not _temps(tmp_path)

    write_geoparquet(path, rows, geoms, UTM)
    before = path.read_bytes()
    with pytest.raises(WriteError, match="t.parquet"):
        write_geoparquet(path, bad, geoms, UTM)
    assert path.read_bytes() == before and not _temps(tmp_path)
    with pytest.raises(ValueError, match=r"vectors must be \(N=3, D\)"):
        write_geoparquet(path, rows, geoms, UTM, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="3 rows but 2 geometries"):
        write_geoparquet(path, rows, geoms[:2], UTM)
    assert path.read_bytes() == before


def test_window_polygon_follows_the_transform():
    from rasterio.windows import Window

    t = from_origin(500_000, 4_000_000, 10, 10)
    poly = window_polygon(t, Window(col_off=100, row_off=50, width=64, height=32))
    assert poly.bounds == (501_000, 3_999_180, 501_640, 3_999_500) and poly.area == 640 * 320


# --------------------------------------------------------------------------- COG


H, W = 1300, 1500
T = from_origin(500_000, 4_000_000, 10, 10)


def _class_map() -> np.ndarray:
    """(H, W) uint8: classes 0..6 in 2x2-aligned blocks, a nodata (255) corner."""
    r, c = np.mgrid[0:H, 0:W]
    a = (((r // 2) * 7 + (c // 2) * 3) // 11 % 7).astype(np.uint8)
    a[:100, :120] = 255
    return a


def _write_windows(path: Path, a: np.ndarray, step=(400, 700), **kw) -> None:
    with CogWriter(path, height=H, width=W, count=1, dtype="uint8", crs=UTM, transform=T, nodata=255, **kw) as w:
        for r in range(0, H, step[0]):
            for c in range(0, W, step[1]):
                w.write(a[None, r : r + step[0], c : c + step[1]].copy(), r, c)


def test_cog_writer_writes_a_valid_cog_window_by_window(tmp_path):
    a = _class_map()
    path = tmp_path / "classes.tif"
    tracemalloc.start()
    _write_windows(path, a, descriptions=["class"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < a.nbytes / 2, peak  # windows of 400 x 700: the raster is never built whole

    valid, errors, warns = cog_validate(str(path))
    assert valid and not errors and not warns, (errors, warns)
    with rasterio.open(path) as src:
        assert src.crs == rasterio.crs.CRS.from_string(UTM) and src.transform == T
        assert src.nodata == 255 and src.dtypes == ("uint8",) and src.shape == (H, W)
        assert src.overviews(1) == [2, 4, 8, 16] and src.block_shapes == [(512, 512)]
        assert src.compression.name == "deflate" and src.descriptions == ("class",)
        assert np.array_equal(src.read(1), a)
    with rasterio.open(path, overview_level=0) as ov:  # factor 2: nearest of 2x2 blocks is exact
        assert np.array_equal(ov.read(1), a[::2, ::2])
    with rasterio.open(path, overview_level=3) as ov:  # nearest invents no class
        assert ov.shape == (82, 94) and set(np.unique(ov.read(1))) <= set(np.unique(a))
    assert not _temps(tmp_path)


def test_cog_writer_exception_leaves_the_previous_file_or_nothing(tmp_path):
    path = tmp_path / "classes.tif"
    a = _class_map()

    def fail_midway():
        with CogWriter(path, height=H, width=W, count=1, dtype="uint8", crs=UTM, transform=T, nodata=255) as w:
            w.write(a[None, :400], 0, 0)
            assert _temps(tmp_path)  # the window went to a temp file beside the target
            raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        fail_midway()
    assert not path.exists() and not _temps(tmp_path)

    _write_windows(path, a, step=(H, W), overviews=(2,))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="model crashed"):
        fail_midway()
    assert path.read_bytes() == before and not _temps(tmp_path)
    with pytest.raises(WriteError, match="WEBP driver doesn't support 1 bands"):  # fails in the COG conversion
        _write_windows(path, a, step=(H, W), compress="webp")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["classes.tif"]
    with pytest.raises(ValueError, match="unknown compression 'no-such-codec'"):
        CogWriter(path, height=H, width=W, count=1, dtype="uint8", crs=UTM, transform=T, nodata=255,
                  compress="no-such-codec")  # fmt: skip


def test_cog_writer_rejects_bad_windows(tmp_path):
    with CogWriter(tmp_path / "x.tif", height=64, width=64, count=2, dtype="uint8", crs=UTM, transform=T,
                   nodata=0) as w:  # fmt: skip
        with pytest.raises(ValueError, match="outside the 64 x 64 raster"):
            w.write(np.ones((2, 32, 32), np.uint8), 40, 0)
        with pytest.raises(ValueError, match="int64 does not fit uint8"):
            w.write(np.ones((2, 32, 32), np.int64), 0, 0)
        with pytest.raises(ValueError, match=r"must be \(2, h, w\)"):
            w.write(np.ones((32, 32), np.uint8), 0, 0)
        w.write(np.ones((2, 64, 64), np.uint8), 0, 0)
    with rasterio.open(tmp_path / "x.tif") as src:
        assert src.count == 2 and src.read().sum() == 2 * 64 * 64


def test_average_overviews_of_probabilities_skip_nodata(tmp_path):
    p = np.random.default_rng(1).random((1, 64, 96)).astype(np.float32)
    p[0, 0, 0] = -1.0  # nodata: left out of its 2x2 mean
    path = tmp_path / "prob.tif"
    with CogWriter(path, height=64, width=96, count=1, dtype="float32", crs=UTM, transform=T, nodata=-1.0,
                   overviews=(2,), resampling="average", blocksize=32) as w:  # fmt: skip
        w.write(p[:, :, :50], 0, 0)
        w.write(p[:, :, 50:], 0, 50)
    assert cog_validate(str(path))[0]
    with rasterio.open(path, overview_level=0) as ov:
        got = ov.read(1)
    blocks = p[0].reshape(32, 2, 48, 2).transpose(0, 2, 1, 3).reshape(32, 48, 4).astype(np.float64)
    want = blocks.mean(-1)
    want[0, 0] = blocks[0, 0, 1:].mean()
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --------------------------------------------------------------------------- class areas


def _class_raster(path: Path, a: np.ndarray, crs, transform, nodata=255) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=a.shape[0], width=a.shape[1], count=1, dtype=a.dtype,
                       crs=crs, transform=transform, nodata=nodata, tiled=True) as dst:  # fmt: skip
        dst.write(a, 1)
    return path


def test_class_areas_on_a_projected_raster_are_pixel_count_times_pixel_area(tmp_path):
    a = np.random.default_rng(2).integers(0, 3, (300, 200)).astype(np.uint8)
    a[:20] = 255
    counts = {v: int((a == v).sum()) for v in (0, 1, 2)}
    path = _class_raster(tmp_path / "c.tif", a, UTM, T)
    got = class_areas_km2(path, {0: "water", 1: "forest", 7: "ice"})
    assert got == {"water": counts[0] * 100 / 1e6, "forest": counts[1] * 100 / 1e6, "ice": 0.0,
                   "2": counts[2] * 100 / 1e6}  # fmt: skip
    feet = _class_raster(tmp_path / "ft.tif", a, "EPSG:2229", from_origin(6_000_000, 2_000_000, 10, 10))
    m = 10 * 1200 / 3937  # 10 US survey feet in metres
    assert class_areas_km2(feet)["1"] == pytest.approx(counts[1] * m * m / 1e6, rel=1e-12)


def test_class_areas_on_a_geographic_raster_match_the_geodesic_extent(tmp_path):
    a = np.zeros((H, W), np.uint8)
    a[H // 2 :] = 1  # southern half: same pixel count, more area
    t = from_origin(10.0, 46.0, 0.001, 0.001)
    got = class_areas_km2(_class_raster(tmp_path / "g.tif", a, "EPSG:4326", t))
    lons, lats = [10.0, 11.5, 11.5, 10.0], [46.0, 46.0, 44.7, 44.7]
    extent = abs(pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0]) / 1e6
    assert got["0"] + got["1"] == pytest.approx(extent, rel=1e-3)
    assert got["1"] > got["0"] * 1.005  # cos(45.0)/cos(45.65): the lower latitudes' pixels are larger


def test_class_areas_need_a_crs_and_warn_on_web_mercator(tmp_path):
    a = np.ones((8, 8), np.uint8)
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        path = _class_raster(tmp_path / "nocrs.tif", a, None, rasterio.Affine.identity())
    with pytest.raises(ValueError, match="need a CRS"):
        class_areas_km2(path)
    with pytest.raises(InputError, match="integer"):
        class_areas_km2(_class_raster(tmp_path / "f.tif", a.astype(np.float32), UTM, T, nodata=None))

    shade = SAMPLES / "shade.tif"  # real SRTM hillshade, EPSG:3857, nodata 255 (88 %)
    with pytest.warns(UserWarning, match="map-plane areas"):
        got = class_areas_km2(shade)
    with rasterio.open(shade) as src:
        valid = int((src.read(1) != 255).sum())
        pixel = abs(src.transform.a * src.transform.e)
    assert "255" not in got and sum(got.values()) == pytest.approx(valid * pixel / 1e6, rel=1e-12)
