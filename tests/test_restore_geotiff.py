"""restore on GeoTIFFs: CRS, transform (scaled for SR), nodata and kept GDAL metadata survive; nodata stays nodata.

Real scenes (sample_data/remote_sensing): RGB.byte.tif (3-band uint8, EPSG:32618, nodata 0 collar, 32.5%) whole,
and crops of it and of shade.tif (1-band, EPSG:3857, nodata 255, and 0 wherever valid: flat data beside nodata,
so any bleed of the nodata value into the restored pixels shows) cut with rasterio into tmp_path, georeferencing
kept. Flow runs (Prefect) with the bundled demo weights: NAFNet denoise and deblur, HAT x2. Non-geo inputs:
the pipeline's pixels equal ``restore_array`` of the input and the writer's bytes equal those of the code before
GeoTIFF support (sha256 recorded from it on fixed arrays).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from PIL import Image
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from imagingflows.flows import restore
from imagingflows.pipelines import restoration
from imagingflows.tasks.image_io import (
    GEO_TAGS, fill_nodata, nodata_mask, put_nodata, read_image, upscale_mask, write_image,
)

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "remote_sensing"
RGB_BYTE = SAMPLES / "RGB.byte.tif"
SHADE = SAMPLES / "shade.tif"
L8_B2 = SAMPLES / "landsat8_LC80200392015216LGN00" / "l8_B2.tif"
OPTS = {"device": "cpu", "precision": "fp32"}
#: windows holding both data and nodata (about 40% nodata each)
RGB_WINDOW = Window(416, 32, 96, 64)  # col, row, width, height
SHADE_WINDOW = Window(320, 400, 96, 64)

#: sha256 of write_image's output for the arrays of _writer_cases, recorded with tasks/image_io.py at the
#: commit before GeoTIFF support (33286d3): plain TIFFs and PNGs must keep those bytes
WRITER_SHA256 = {
    "rgb8.tif": "041063135f9cfc2c3380396cabddaeef9635168a0231eecf8e2c559d9f5ac2cc",
    "rgba16.tif": "9e89882821784272da7eb352997a11f7e002aec3eec061f711e252f6a59d0300",
    "gray16_level.tif": "a0cdec04339626866bf13f8ffc19a3f338c0941eea0d7bbd1f73eaa956ff7a1d",
    "rgb8_icc.tif": "24aea35be47e7acbc41d1c93c480b9155d24517dfa94033a4b21d6bfbc6484b4",
    "rgb8.png": "46c405d1ca49aad01cd2a78d5f64a1f498fe533f461b58d67ad07d345d67a2f1",
    "rgb16.png": "8ba0e8da5ac512b1911119c72afd8dc1e517dafcff9d97b3bcd8a85aa25226b8",
}


def _crop(src: Path, dst: Path, window: Window) -> Path:
    """A window of ``src`` as its own GeoTIFF (CRS, window transform, nodata, band count/dtype kept)."""
    with rasterio.open(src) as ds:
        profile = {"driver": "GTiff", "width": window.width, "height": window.height, "count": ds.count,
                   "dtype": ds.dtypes[0], "crs": ds.crs, "transform": ds.window_transform(window),
                   "nodata": ds.nodata, "compress": "deflate"}
        data = ds.read(window=window)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def _items(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["items"]


def _assert_geo_kept(inp: Path, out: Path, scale: int) -> None:
    """CRS, nodata and bounds equal; transform = input's * scale(1/scale); mask = input's upscaled nearest;
    every nodata pixel exactly the nodata value in every band."""
    with rasterio.open(inp) as i, rasterio.open(out) as o:
        assert o.crs == i.crs and o.crs is not None
        assert o.transform == i.transform @ Affine.scale(1 / scale)
        assert o.bounds == pytest.approx(i.bounds, abs=1e-6)
        assert (o.height, o.width, o.count, o.dtypes) == (i.height * scale, i.width * scale, i.count, i.dtypes)
        assert o.nodata == i.nodata is not None
        assert o.tags()["AREA_OR_POINT"] == i.tags()["AREA_OR_POINT"]
        mask_in, mask_out = i.dataset_mask(), o.dataset_mask()
        pixels_in, pixels_out = i.read(), o.read()
    assert 0.05 < (mask_in == 0).mean() < 0.95  # the case holds both data and nodata
    np.testing.assert_array_equal(mask_out, upscale_mask(mask_in == 255, scale).astype(np.uint8) * 255)
    assert np.all(pixels_out[:, mask_out == 0] == o.nodata)
    if scale == 1 and pixels_in[:, mask_in == 255].std() > 0:  # the network ran on the valid pixels
        valid = mask_in == 255
        assert np.abs(pixels_out[:, valid].astype(int) - pixels_in[:, valid]).mean() > 0.2


def _assert_no_bleed(inp: Path, out: Path, task: str) -> None:
    """shade.tif's valid pixels are all 0: the output there must be what the model makes of an all-0 image,
    as if the 255 nodata beside them did not exist (unfilled, the 255s bleed in: up to 46 counts measured)."""
    with rasterio.open(inp) as i, rasterio.open(out) as o:
        pixels_in, pixels_out = i.read(1), o.read(1)
    valid = pixels_in != 255
    assert np.all(pixels_in[valid] == 0)
    cfg = restoration.prepare({"task": task, **OPTS})
    alone, _, _ = restoration.restore_array(np.zeros((*pixels_in.shape, 1), np.uint8), cfg, white_level=255)
    up = upscale_mask(valid, int(cfg["scale"]))
    np.testing.assert_array_equal(pixels_out[up], alone[..., 0][up])


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    """Denoise (demo NAFNet) over RGB.byte.tif whole, a shade.tif crop, a plain PNG and a non-geo TIFF."""
    root = tmp_path_factory.mktemp("geo_denoise")
    src = root / "in"
    src.mkdir()
    shutil.copy(RGB_BYTE, src / "RGB.byte.tif")
    _crop(SHADE, src / "shade_crop.tif", SHADE_WINDOW)
    yy, xx = np.mgrid[0:40, 0:48]
    noisy = (np.sin(xx / 5.0) + np.cos(yy / 7.0))[..., None] * 60 + 128
    noisy = np.clip(noisy + np.random.default_rng(0).normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(src / "plain.png")
    tifffile.imwrite(src / "plain.tif", noisy, photometric="rgb")
    out = root / "out"
    restore(src, out, task="denoise", **OPTS)
    return src, out


def test_denoise_keeps_crs_transform_and_nodata(denoise_run):
    src, out = denoise_run
    items = _items(out)
    for name in ("RGB.byte.tif", "shade_crop.tif"):
        assert items[name]["status"] == "done"
        _assert_geo_kept(src / name, out / name, 1)
    _assert_no_bleed(src / "shade_crop.tif", out / "shade_crop.tif", "denoise")
    entry = items["RGB.byte.tif"]
    assert entry["input"]["geo"]["crs"] == "EPSG:32618" and entry["input"]["geo"]["nodata"] == 0
    assert any(n.startswith("nodata 0: 184823 of 567938 pixels (32.5%)") for n in entry["notes"])
    assert items["shade_crop.tif"]["input"]["geo"]["crs"] == "EPSG:3857"
    with rasterio.open(out / "RGB.byte.tif") as o:
        assert o.colorinterp[:3] == (rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                                     rasterio.enums.ColorInterp.blue)
        assert not any(k.startswith("STATISTICS_") for k in o.tags(1))  # the input's stats no longer hold
    assert not list(out.rglob("*.aux.xml"))


def test_non_geo_outputs_unchanged(denoise_run):
    """Plain PNG/TIFF: pixels are restore_array's, bytes are the writer's for them, no GeoTIFF tag appears."""
    src, out = denoise_run
    cfg = restoration.prepare({"task": "denoise", **OPTS})
    for name in ("plain.png", "plain.tif"):
        img = read_image(src / name)
        assert img.geo is None and "geo" not in _items(out)[name]["input"]
        expected, _, _ = restoration.restore_array(img.color, cfg, white_level=255)
        got = out / name
        np.testing.assert_array_equal(read_image(got).array, expected)
        again = write_image(got.parent / f"again_{name}", expected, like=img)
        assert again.read_bytes() == got.read_bytes()
        again.unlink()
    with tifffile.TiffFile(out / "plain.tif") as tif:
        assert not set(tif.pages[0].tags.keys()) & set(GEO_TAGS)


def _writer_cases() -> dict:
    rng = np.random.default_rng(11)
    icc = bytes(16) + b"RGB XYZ " + bytes(104)  # a synthetic 128-byte ICC header (RGB): fixed bytes
    return {
        "rgb8.tif": (rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), {}),
        "rgba16.tif": (rng.integers(0, 65536, (17, 23, 4), dtype=np.uint16), {}),
        "gray16_level.tif": (rng.integers(0, 4096, (17, 23, 1), dtype=np.uint16), {"white_level": 4095}),
        "rgb8_icc.tif": (rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), {"icc_profile": icc}),
        "rgb8.png": (rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), {}),
        "rgb16.png": (rng.integers(0, 65536, (17, 23, 3), dtype=np.uint16), {}),
    }


def test_writer_bytes_as_before_geotiff_support(tmp_path):
    for name, (array, kwargs) in _writer_cases().items():
        data = write_image(tmp_path / name, array, **kwargs).read_bytes()
        assert hashlib.sha256(data).hexdigest() == WRITER_SHA256[name], name


@pytest.mark.parametrize("task, scale", [("sr", 2), ("deblur", 1)])
def test_sr_and_deblur_keep_georeferencing(tmp_path, task, scale):
    src = tmp_path / "in"
    _crop(RGB_BYTE, src / "rgb_crop.tif", RGB_WINDOW)
    _crop(SHADE, src / "shade_crop.tif", SHADE_WINDOW)
    out = tmp_path / "out"
    restore(src, out, task=task, **OPTS)
    items = _items(out)
    for name in ("rgb_crop.tif", "shade_crop.tif"):
        assert items[name]["status"] == "done", items[name]
        _assert_geo_kept(src / name, out / name, scale)
    _assert_no_bleed(src / "shade_crop.tif", out / "shade_crop.tif", task)
    if scale > 1:
        with rasterio.open(src / "rgb_crop.tif") as i, rasterio.open(out / "rgb_crop.tif") as o:
            assert o.res == (i.res[0] / 2, i.res[1] / 2)
            assert (o.transform.c, o.transform.f) == (i.transform.c, i.transform.f)
        assert any("pixel size / 2" in n for n in items["rgb_crop.tif"]["notes"])


def test_read_geo_of_the_sample_scenes(tmp_path):
    rgb = read_image(RGB_BYTE)
    with rasterio.open(RGB_BYTE) as ds:
        assert rgb.geo.transform == tuple(ds.transform)[:6] and CRS.from_wkt(rgb.geo.crs) == ds.crs
    assert (rgb.geo.crs_name, rgb.geo.nodata, dict(rgb.geo.tags)) == ("EPSG:32618", 0.0, {"AREA_OR_POINT": "Area"})
    assert rgb.geo.dropped == ("band statistics (stale after restoration)",)
    assert read_image(SHADE).geo.nodata == 255.0 and read_image(SHADE).geo.crs_name == "EPSG:3857"
    tifffile.imwrite(tmp_path / "plain.tif", rgb.array[:8, :8], photometric="rgb")
    Image.fromarray(rgb.array[:8, :8]).save(tmp_path / "plain.png")
    assert read_image(tmp_path / "plain.tif").geo is None and read_image(tmp_path / "plain.png").geo is None
    with pytest.raises(ValueError, match="only be written to a TIFF"):
        write_image(tmp_path / "x.png", rgb.array[:8, :8], geo=rgb.geo)


def test_pixel_is_point_and_scaled_transform_written(tmp_path):
    """Landsat B2 is PixelIsPoint: the tie point is written back as read, and x2 keeps the area corner."""
    img = read_image(L8_B2)
    assert dict(img.geo.tags)["AREA_OR_POINT"] == "Point"
    for s in (1, 2):
        p = write_image(tmp_path / f"b2_x{s}.tif", upscale_mask(np.ones(img.array.shape[:2], bool), s)[..., None]
                        * np.repeat(np.repeat(img.array, s, 0), s, 1), like=img, geo=img.geo.scaled(s))
        with rasterio.open(L8_B2) as i, rasterio.open(p) as o:
            assert o.transform == i.transform @ Affine.scale(1 / s) and o.crs == i.crs
            assert o.tags()["AREA_OR_POINT"] == "Point" and o.bounds == i.bounds
        if s == 1:
            with tifffile.TiffFile(L8_B2) as a, tifffile.TiffFile(p) as b:
                for code in (33550, 33922):
                    assert a.pages[0].tags[code].value == b.pages[0].tags[code].value
        np.testing.assert_array_equal(tifffile.imread(p)[::s, ::s], img.array[..., 0])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the GCP file before its GCPs
def test_gcps_scaled_for_sr(tmp_path):
    gcps = [GroundControlPoint(row=0, col=0, x=10.0, y=50.0, z=0.0),
            GroundControlPoint(row=0, col=20, x=12.0, y=50.0, z=0.0),
            GroundControlPoint(row=10, col=0, x=10.0, y=49.0, z=0.0)]
    src = tmp_path / "gcps.tif"
    with rasterio.open(src, "w", driver="GTiff", width=20, height=10, count=1, dtype="uint8", nodata=7) as ds:
        ds.write(np.arange(200, dtype=np.uint8).reshape(1, 10, 20))
        ds.gcps = (gcps, CRS.from_epsg(4326))
    img = read_image(src)
    assert len(img.geo.gcps) == 3 and img.geo.georeferenced
    p = write_image(tmp_path / "x2.tif", np.repeat(np.repeat(img.array, 2, 0), 2, 1), like=img, geo=img.geo.scaled(2))
    with rasterio.open(p) as o:
        points, crs = o.gcps
        assert crs == CRS.from_epsg(4326) and o.nodata == 7
        assert [(g.row, g.col, g.x, g.y) for g in points] == [(0, 0, 10, 50), (0, 40, 12, 50), (20, 0, 10, 49)]


def test_reoriented_geotiff_keeps_nodata_not_georeferencing(tmp_path):
    """A GeoTIFF whose Orientation tag (274) the reader applies: its transform no longer fits the pixels."""
    crop = _crop(RGB_BYTE, tmp_path / "crop.tif", RGB_WINDOW)
    with tifffile.TiffFile(crop) as tif:
        page = tif.pages[0]
        geo_tags = [(t.code, t.dtype, t.count, t.value, True) for t in page.tags.values() if t.code in GEO_TAGS
                    or t.code in (34736, 34737)]
        pixels = page.asarray()
    turned = tmp_path / "turned.tif"
    tifffile.imwrite(turned, pixels, photometric="rgb", extratags=geo_tags + [(274, "H", 1, 3, True)])
    img = read_image(turned)
    assert img.orientation_applied == 3 and not img.geo.georeferenced and img.geo.nodata == 0.0
    assert any(n.startswith("georeferencing not kept: orientation 3") for n in img.notes)


def test_nodata_helpers():
    a = np.zeros((4, 5, 3), np.uint8)
    a[1:3, 2:4] = [[[10, 20, 30]]]
    a[0, 0] = [0, 5, 0]  # one band at nodata: still valid (every band must be nodata)
    invalid = nodata_mask(a, 0)
    assert invalid.sum() == 4 * 5 - 4 - 1 and not invalid[0, 0]
    filled = fill_nodata(a, invalid)
    assert not nodata_mask(filled, 0).any() and np.array_equal(filled[~invalid], a[~invalid])
    assert tuple(filled[3, 4]) == (10, 20, 30) and tuple(filled[0, 1]) == (0, 5, 0)  # nearest valid pixel
    restored = filled.copy()
    restored[1, 2] = 0  # a valid pixel the model turned into nodata in every band
    out, moved = put_nodata(restored, invalid, 0)
    assert moved == 1 and tuple(out[1, 2]) == (1, 1, 1)
    np.testing.assert_array_equal(nodata_mask(out, 0), invalid)
    out255, moved255 = put_nodata(np.full((2, 2, 1), 255, np.uint8), np.array([[True, False], [False, False]]), 255)
    assert moved255 == 3 and out255[0, 0, 0] == 255 and out255[1, 1, 0] == 254
    np.testing.assert_array_equal(upscale_mask(np.eye(2, dtype=bool), 2), np.kron(np.eye(2), np.ones((2, 2))) > 0)
