"""Windowed raster reading (tasks/raster_io.py) on the real sample scenes, and small bad files made with rasterio."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import bounds as rio_bounds

from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.raster_io import (
    RasterSource,
    TileWindow,
    is_empty,
    open_raster,
    read_tile,
    sample_band_stats,
    tile_windows,
    valid_fraction,
    valid_mask,
    window_bounds,
    window_transform,
)

DATA = Path(__file__).resolve().parents[1] / "sample_data" / "remote_sensing"
RGB = DATA / "RGB.byte.tif"
SHADE = DATA / "shade.tif"
L8 = DATA / "landsat8_LC80200392015216LGN00"
UTM18 = "EPSG:32618"


def _whole(src: RasterSource, tile: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The raster assembled from non-overlapping tiles: (pixels (C, H, W), valid (H, W))."""
    pixels = np.zeros((src.count, src.height, src.width), np.float32)
    valid = np.zeros((src.height, src.width), bool)
    for w in tile_windows(src.height, src.width, tile, 0):
        p, v = read_tile(src, w)
        h, wd = min(tile, src.height - w.row_off), min(tile, src.width - w.col_off)
        pixels[:, w.row_off:w.row_off + h, w.col_off:w.col_off + wd] = p[:, :h, :wd]
        valid[w.row_off:w.row_off + h, w.col_off:w.col_off + wd] = v[:h, :wd]
    return pixels, valid


def _write(path: Path, data: np.ndarray, transform=from_origin(500000, 4000000, 30, 30), crs=UTM18, **kw) -> Path:
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, **kw) as dst:
        dst.write(data)
    return path


# ----------------------------------------------------------------------------- bands


def test_band_order_by_index_digit_string_and_colour_name():
    window = TileWindow(300, 200, 64)
    with rasterio.open(RGB) as ds:
        expected = ds.read([3, 2, 1], window=window.to_rasterio()).astype(np.float32)
    for bands in ([3, 2, 1], ["3", "2", "1"], "3,2,1", ["blue", "GREEN", "Red"]):
        src = open_raster(RGB, bands=bands)
        assert src.band_names == ("blue", "green", "red") and src.selection == ((0, 3), (0, 2), (0, 1))
        pixels, valid = read_tile(src, window)
        assert pixels.dtype == np.float32 and pixels.shape == (3, 64, 64) and valid.shape == (64, 64)
        np.testing.assert_array_equal(pixels, expected)
    assert open_raster(RGB).band_names == ("red", "green", "blue")


def test_band_folder_by_name_equals_reading_the_files():
    src = open_raster(L8, bands=["B4", "b3", "B2"])
    assert src.band_names == ("B4", "B3", "B2") and src.count == 3 and src.dtype == "uint16"
    pixels, valid = _whole(src)
    for i, band in enumerate(("B4", "B3", "B2")):
        with rasterio.open(L8 / f"l8_{band}.tif") as ds:
            np.testing.assert_array_equal(pixels[i], ds.read(1).astype(np.float32))
    assert valid.all()  # an interior crop: no nodata
    default = open_raster(L8)
    assert default.band_names == ("B2", "B3", "B4", "B5", "B6", "B7")  # the quality band is left out
    assert open_raster(L8, bands=[3]).band_names == ("B4",)  # an index is a position in the stack
    assert open_raster(L8, bands=["BQA"]).paths == (str(L8 / "l8_BQA.tif"),)


def test_band_files_stack_in_natural_number_order(tmp_path):
    for i, name in enumerate(["s_B10", "s_B2", "s_B1", "s_QA_PIXEL", "s_B11"]):
        _write(tmp_path / f"{name}.TIF", np.full((4, 5), i, np.uint16))
    src = open_raster(tmp_path)
    assert src.band_names == ("B1", "B2", "B10", "B11")
    pixels, _ = read_tile(src, TileWindow(0, 0, 4))
    assert pixels[:, 0, 0].tolist() == [2, 1, 0, 4]
    assert open_raster(tmp_path, bands=["QA_PIXEL", "B10"]).band_names == ("s_QA_PIXEL", "B10")


# ----------------------------------------------------------------------------- tiles


@pytest.mark.parametrize("h,w,tile,overlap", [(718, 791, 224, 32), (603, 627, 256, 0), (100, 60, 224, 16),
                                              (224, 224, 224, 32), (225, 1, 16, 15)])
def test_tiles_cover_every_pixel_row_major_at_the_stride(h, w, tile, overlap):
    windows = tile_windows(h, w, tile, overlap)
    hits = np.zeros((h, w), int)
    for win in windows:
        assert win.size == tile and win.row_off < h and win.col_off < w
        hits[win.row_off:win.row_off + tile, win.col_off:win.col_off + tile] += 1
    assert hits.min() >= 1
    assert windows == sorted(windows, key=lambda t: (t.row_off, t.col_off))
    rows = sorted({t.row_off for t in windows})
    assert all(b - a == tile - overlap for a, b in zip(rows, rows[1:]))
    if h <= tile and w <= tile:
        assert windows == [TileWindow(0, 0, tile)]
    with pytest.raises(ValueError):
        tile_windows(h, w, tile, tile)


def test_edge_tile_is_padded_with_zeros_and_masked():
    src = open_raster(RGB)
    window = tile_windows(src.height, src.width, 224, 0)[-1]  # bottom-right, mostly outside
    pixels, valid = read_tile(src, window)
    h, w = src.height - window.row_off, src.width - window.col_off
    assert 0 < h < 224 and 0 < w < 224
    with rasterio.open(RGB) as ds:
        inside = ds.read(window=Window(window.col_off, window.row_off, w, h))
        mask = ds.dataset_mask(window=Window(window.col_off, window.row_off, w, h)) > 0
    np.testing.assert_array_equal(pixels[:, :h, :w], inside)
    np.testing.assert_array_equal(valid[:h, :w], mask)
    assert not valid[h:].any() and not valid[:, w:].any()
    assert not pixels[:, h:].any() and not pixels[:, :, w:].any()


def test_window_bounds_and_transform_match_rasterio():
    src = open_raster(RGB)
    window = TileWindow(100, 700, 224)  # runs past the right edge
    with rasterio.open(RGB) as ds:
        assert window_transform(src, window) == ds.window_transform(window.to_rasterio())
        np.testing.assert_allclose(window_bounds(src, window), rio_bounds(window.to_rasterio(), ds.transform))
    left, bottom, right, top = window_bounds(src, window)
    assert right - left == pytest.approx(224 * src.pixel_size[0]) and top > bottom


# ----------------------------------------------------------------------------- nodata


@pytest.mark.parametrize("path,invalid", [(RGB, 0.3254), (SHADE, 0.8814)])
def test_nodata_collar_is_gdal_dataset_mask(path, invalid):
    src = open_raster(path)
    _, valid = _whole(src)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(valid, ds.dataset_mask() > 0)
    assert 1 - valid.mean() == pytest.approx(invalid, abs=1e-4)


def test_pixel_is_invalid_only_when_every_band_is_nodata(tmp_path):
    """RGB.byte.tif has 710 pixels inside the scene where one band is 0: they stay valid, as in GDAL's mask."""
    data = np.full((2, 3, 4), 9, np.uint8)
    data[0, 0, 0] = 0  # band 1 only
    data[:, 1, 1] = 0  # every band
    src = open_raster(_write(tmp_path / "two.tif", data, nodata=0))
    valid = read_tile(src, TileWindow(0, 0, 4))[1]
    assert valid[0, 0] and not valid[1, 1] and valid[:3].sum() == 11 and not valid[3].any()
    rgb = open_raster(RGB)
    pixels, valid = _whole(rgb)
    assert ((pixels == 0).any(axis=0) & valid).sum() == 710


def test_internal_mask_and_alpha_band(tmp_path):
    t = from_origin(500000, 4000000, 30, 30)
    with rasterio.open(tmp_path / "mask.tif", "w", driver="GTiff", width=6, height=5, count=2, dtype="uint8",
                       crs=UTM18, transform=t) as dst:
        data = np.full((2, 5, 6), 7, np.uint8)
        data[:, 4, :] = 3
        dst.write(data)
        mask = np.full((5, 6), 255, np.uint8)
        mask[:2] = 0
        dst.write_mask(mask)
    src = open_raster(tmp_path / "mask.tif")
    assert src.mask_kinds == ("mask", "mask")
    assert read_tile(src, TileWindow(0, 0, 6))[1][:5].tolist() == (mask > 0).tolist()
    assert valid_fraction(src, TileWindow(0, 0, 6)) == pytest.approx(18 / 36)
    both = open_raster(tmp_path / "mask.tif", nodata=3)  # an override adds to the file's mask
    assert both.mask_kinds == ("mask+nodata",) * 2
    assert read_tile(both, TileWindow(0, 0, 6))[1][:5].tolist() == ((mask > 0) & (data[0] != 3)).tolist()
    rgba = np.full((4, 5, 6), 50, np.uint8)
    rgba[3, :, :3] = 0
    rgba[3, :, 3:] = 255
    src = open_raster(_write(tmp_path / "rgba.tif", rgba, photometric="RGB", alpha="YES"))
    assert src.band_names == ("red", "green", "blue")  # alpha is a mask, not a band, unless asked for
    assert read_tile(src, TileWindow(0, 0, 6))[1][:5].tolist() == [[False] * 3 + [True] * 3] * 5
    assert open_raster(tmp_path / "rgba.tif", bands=["alpha"]).selection == ((0, 4),)


def test_nodata_override_wins(tmp_path):
    shade = open_raster(SHADE, nodata=0)  # its valid pixels are all 0, its nodata 255
    assert shade.nodata == (0.0,)
    assert 1 - _whole(shade)[1].mean() == pytest.approx(1 - 0.8814, abs=1e-4)
    l8 = open_raster(L8, bands=["B4"])
    window = TileWindow(0, 0, 64)
    value = float(read_tile(l8, window)[0][0, 10, 10])
    valid = read_tile(open_raster(L8, bands=["B4"], nodata=value), window)[1]
    with rasterio.open(L8 / "l8_B4.tif") as ds:
        np.testing.assert_array_equal(valid, ds.read(1, window=window.to_rasterio()) != value)
    assert not valid[10, 10] and valid.mean() > 0.95
    with pytest.raises(InputError, match="nodata -1.0 cannot occur in a uint8 band"):
        open_raster(RGB, nodata=-1)


def test_emptiness_from_the_mask_before_the_pixels():
    shade = open_raster(SHADE)
    windows = tile_windows(shade.height, shade.width, 128, 0)
    empties = [w for w in windows if is_empty(shade, w)]
    assert 0 < len(empties) < len(windows)
    for w in windows:
        np.testing.assert_array_equal(valid_mask(shade, w), read_tile(shade, w)[1])
    assert not any(read_tile(shade, w)[1].any() for w in empties)
    rgb = open_raster(RGB)
    corner = TileWindow(0, 0, 32)  # in the collar
    assert is_empty(rgb, corner) and valid_fraction(rgb, corner) == 0.0
    assert is_empty(rgb, TileWindow(300, 300, 64), min_valid_fraction=1.0)
    assert not is_empty(open_raster(L8), TileWindow(600, 600, 64))  # no nodata: any raster pixel is valid


# ----------------------------------------------------------------------------- statistics


def test_sampled_stats_match_numpy_over_valid_pixels():
    src = open_raster(RGB)
    with rasterio.open(RGB) as ds:
        x = ds.read()[:, ds.dataset_mask() > 0].astype(np.float64)
    mean, std, n = sample_band_stats(src, max_pixels=100_000, seed=0)
    assert mean.shape == std.shape == (3,) and 0 < n < x.shape[1]
    np.testing.assert_allclose(mean, x.mean(axis=1), rtol=0.03)
    np.testing.assert_allclose(std, x.std(axis=1), rtol=0.03)
    again = sample_band_stats(src, max_pixels=100_000, seed=0)
    assert again[2] == n and np.array_equal(again[0], mean)
    assert sample_band_stats(src, max_pixels=100_000, seed=1)[2] != n
    mean, std, n = sample_band_stats(src, max_pixels=10**7)  # budget above the raster: every pixel
    assert n == x.shape[1]
    np.testing.assert_allclose(mean, x.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(std, x.std(axis=1), rtol=1e-9)


def test_sampled_stats_read_a_bounded_spread_sample():
    src = open_raster(L8, bands=["B5"])
    mean, std, n = sample_band_stats(src, max_pixels=20_000)
    assert 15_000 <= n <= 25_000 < src.height * src.width
    with rasterio.open(L8 / "l8_B5.tif") as ds:
        x = ds.read(1).astype(np.float64)
    np.testing.assert_allclose(mean, [x.mean()], rtol=0.03)
    np.testing.assert_allclose(std, [x.std()], rtol=0.05)


# ----------------------------------------------------------------------------- grid and metres


def test_pixel_size_in_metres():
    assert open_raster(RGB).pixel_size_m == pytest.approx(300.04, abs=0.01)
    l8 = open_raster(L8)
    assert l8.pixel_size_m == 30.0 and l8.pixel_size == (30.0, 30.0) and l8.has_crs
    shade = open_raster(SHADE)
    # EPSG:3857: pixel_size_m is the nominal Mercator metre size; the ground size shrinks by cos(latitude)
    assert shade.pixel_size_m == pytest.approx(9.5546, abs=1e-4)
    with rasterio.open(SHADE) as ds:
        lat = rasterio.warp.transform(ds.crs, "EPSG:4326", [ds.xy(512, 512)[0]], [ds.xy(512, 512)[1]])[1][0]
    assert shade.ground_pixel_size_m == pytest.approx(9.5546 * math.cos(math.radians(lat)), rel=5e-3)


def test_pixel_size_in_metres_for_geographic_and_missing_crs(tmp_path):
    geo = open_raster(_write(tmp_path / "geo.tif", np.ones((10, 10), np.uint8),
                             transform=from_origin(10.0, 45.005, 0.001, 0.001), crs="EPSG:4326"))
    # 0.001 deg at 45 N on WGS84: 78.85 m of longitude, 111.13 m of latitude
    assert geo.pixel_size_m == pytest.approx((78.85 + 111.13) / 2, rel=2e-3)
    assert geo.ground_pixel_size_m == pytest.approx(geo.pixel_size_m, rel=1e-3)
    with rasterio.open(tmp_path / "plain.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as d:
        d.write(np.ones((1, 8, 8), np.uint8))
    plain = open_raster(tmp_path / "plain.tif")
    assert not plain.has_crs and plain.crs is None and plain.pixel_size_m is None
    assert plain.ground_pixel_size_m is None and read_tile(plain, TileWindow(0, 0, 8))[1].all()


def test_source_travels_as_json_and_pickle(tmp_path):
    for src in (open_raster(L8, bands=["B4", "B3", "B2"], nodata=0), open_raster(RGB)):
        assert RasterSource.from_dict(json.loads(json.dumps(src.to_dict()))) == src
        assert pickle.loads(pickle.dumps(src)) == src
    f = _write(tmp_path / "f.tif", np.ones((4, 4), np.float32), nodata=float("nan"))
    src = open_raster(f)
    back = RasterSource.from_dict(json.loads(json.dumps(src.to_dict(), allow_nan=False)))
    assert math.isnan(back.nodata[0]) and back.transform == src.transform


# ----------------------------------------------------------------------------- errors


def test_truncated_copies_are_input_errors(tmp_path):
    for original in (RGB, L8 / "l8_B2.tif"):  # directory at the end / at the start of the file
        cut = tmp_path / original.name
        cut.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
        with pytest.raises(InputError, match=rf"{cut.name}.*(truncated|corrupt)"):
            open_raster(cut)
    junk = tmp_path / "junk.tif"
    junk.write_text("not a tiff")
    with pytest.raises(InputError, match="junk.tif: not a readable raster"):
        open_raster(junk)
    with pytest.raises(InputError, match="no such file"):
        open_raster(tmp_path / "missing.tif")


def test_missing_band_lists_the_available_ones():
    with pytest.raises(InputError, match=r"RGB.byte.tif: band index 4 does not exist; available: 1 'red', "
                                         r"2 'green', 3 'blue'"):
        open_raster(RGB, bands=[1, 4])
    with pytest.raises(InputError, match=r"no band named 'nir'.*'blue'"):
        open_raster(RGB, bands=["nir"])
    with pytest.raises(InputError, match=r"no band named 'B8'.*6 'B7', 'l8_BQA' \(by name\)"):
        open_raster(L8, bands=["B4", "B8"])


def test_rotated_transform_is_an_input_error(tmp_path):
    rotated = from_origin(500000, 4000000, 30, 30) @ rasterio.Affine.rotation(10)
    path = _write(tmp_path / "rot.tif", np.ones((4, 4), np.uint8), transform=rotated)
    with pytest.raises(InputError, match="rot.tif: the transform is not north-up"):
        open_raster(path)


@pytest.mark.parametrize("change,what", [({"shape": (5, 4)}, "shape"), ({"crs": "EPSG:32617"}, "CRS"),
                                         ({"transform": from_origin(500030, 4000000, 30, 30)}, "transform")])
def test_band_files_on_different_grids_are_input_errors(tmp_path, change, what):
    _write(tmp_path / "s_B2.tif", np.ones((4, 4), np.uint16))
    kw = {k: v for k, v in change.items() if k != "shape"}
    _write(tmp_path / "s_B3.tif", np.ones(change.get("shape", (4, 4)), np.uint16), **kw)
    with pytest.raises(InputError, match=rf"s_B3.tif: {what} differs from .*s_B2.tif"):
        open_raster(tmp_path)


def test_zero_bands_are_input_errors(tmp_path):
    gpkg = tmp_path / "two_tables.gpkg"  # a container: two raster tables, no bands of its own
    for table in ("a", "b"):
        with rasterio.open(gpkg, "w", driver="GPKG", width=4, height=4, count=1, dtype="uint8", crs=UTM18,
                           transform=from_origin(0, 40, 10, 10), RASTER_TABLE=table, APPEND_SUBDATASET="YES") as d:
            d.write(np.ones((1, 4, 4), np.uint8))
    with rasterio.open(gpkg) as ds:
        assert ds.count == 0
    with pytest.raises(InputError, match="two_tables.gpkg: zero bands .it holds 2 subdatasets"):
        open_raster(gpkg)
    with pytest.raises(InputError, match="no bands to read"):
        open_raster(RGB, bands=[])
    folder = tmp_path / "qa_only"
    folder.mkdir()
    shutil.copy(L8 / "l8_BQA.tif", folder)
    with pytest.raises(InputError, match="qa_only: no bands"):
        open_raster(folder)
    multi = tmp_path / "multi"
    multi.mkdir()
    shutil.copy(RGB, multi / "x_B1.tif")
    with pytest.raises(InputError, match="x_B1.tif: a band folder needs single-band files"):
        open_raster(multi)
