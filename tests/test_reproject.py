"""Reprojection only when asked (``--crs``): the scene read through a WarpedVRT onto a grid in the target CRS,
bilinear, window by window; the collar outside the footprint is nodata (for a file with a nodata value, an
internal mask or neither); embed and classify outputs are on the warped grid; the default run does not warp."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import shapes
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, reproject, transform_geom
from rasterio.warp import transform as warp_points
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import shape
from shapely.ops import unary_union
from typer.testing import CliRunner

from imagingflows.flows import run_pipeline
from imagingflows.flows.cli import app
from imagingflows.models import load
from imagingflows.models.checkpoints import save_checkpoint
from imagingflows.models.heads import LinearProbe
from imagingflows.tasks.geo_write import read_geoparquet_metadata
from imagingflows.tasks.raster_io import (
    RasterSource,
    TileWindow,
    open_raster,
    read_tile,
    tile_windows,
    valid_mask,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "sample_data" / "remote_sensing"
RGB = DATA / "RGB.byte.tif"  # EPSG:32618, nodata 0 collar around a rotated scene
L8 = DATA / "landsat8_LC80200392015216LGN00"  # EPSG:32616 band files, no nodata at all
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16, 3 bands
OPTS = {"weights": str(ENCODER), "num_heads": 4, "tile": 64, "device": "cpu", "precision": "fp32"}


@pytest.fixture
def scenes(tmp_path) -> Path:
    folder = tmp_path / "scenes"
    folder.mkdir()
    shutil.copy(RGB, folder / "rgb.tif")
    return folder


def _footprint(path: Path, dst_crs) -> object:
    """The source's valid pixels as one polygon, transformed to ``dst_crs`` (vertices at every pixel edge)."""
    with rasterio.open(path) as ds:
        mask = ds.dataset_mask()
        polys = [shape(g) for g, v in shapes(mask, mask=mask > 0, transform=ds.transform) if v > 0]
        return shape(transform_geom(ds.crs, dst_crs, unary_union(polys).__geo_interface__))


def _block_reference(path: Path, src: RasterSource, window: TileWindow) -> tuple[np.ndarray, np.ndarray]:
    """``rasterio.warp.reproject`` (bilinear, alpha) of the area GDAL's WarpedVRT warps in one go, the VRT block
    holding ``window`` (GDAL approximates the transform to 1/8 pixel per warped region, so the region must be
    the same for values equal to float precision), cut to the window: ``(pixels (C, s, s), valid (s, s))``."""
    with rasterio.open(path) as f:
        dst_crs = CRS.from_wkt(src.crs)
        t, w, h = calculate_default_transform(f.crs, dst_crs, f.width, f.height, *f.bounds)
        assert (w, h) == (src.width, src.height) and np.allclose(tuple(t)[:6], src.transform)
        with WarpedVRT(f, crs=dst_crs, transform=t, width=w, height=h, add_alpha=True) as vrt:
            bh, bw = vrt.block_shapes[0]
        r0, c0 = window.row_off // bh * bh, window.col_off // bw * bw
        assert window.row_off + window.size <= r0 + bh and window.col_off + window.size <= c0 + bw
        out = np.zeros((f.count + 1, min(bh, h - r0), min(bw, w - c0)), f.dtypes[0])
        reproject(rasterio.band(f, list(range(1, f.count + 1))), out, dst_transform=t * Affine.translation(c0, r0),
                  dst_crs=dst_crs, resampling=Resampling.bilinear, dst_alpha=f.count + 1)
    cut = out[:, window.row_off - r0:window.row_off - r0 + window.size, window.col_off - c0:window.col_off - c0
              + window.size]
    return cut[:-1].astype(np.float32), cut[-1] > 0


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_embed_with_crs_runs_on_the_warped_grid(scenes, tmp_path, crs):
    out = tmp_path / "out"
    result = run_pipeline("embed", scenes, out, **OPTS, crs=crs)
    assert result["counts"]["done"] == 1, result["errors"]
    frame = gpd.read_parquet(out / "rgb.parquet")
    src = open_raster(scenes / "rgb.tif", crs=crs)
    assert frame.crs == CRS.from_user_input(crs) and src.warp is not None
    tiles = math.ceil(src.height / 64) * math.ceil(src.width / 64)
    entry = json.loads((out / "run.json").read_text())["items"]["rgb"]
    assert entry["summary"]["tiles"] == tiles and entry["summary"]["skipped_nodata"] > 0  # the collar stays nodata
    assert entry["summary"]["embedded"] == len(frame)

    t = src.affine  # tile polygons are the windows of the warped grid
    for _, row in frame.iterrows():
        (left, top), (right, bottom) = t @ (row["col"], row["row"]), t @ (row["col"] + 64, row["row"] + 64)
        assert np.allclose(row.geometry.bounds, (left, bottom, right, top), rtol=0, atol=1e-9 * abs(t.a) + 1e-12)
    footprint = _footprint(RGB, crs)  # every valid source pixel lies in an embedded tile (within a pixel)
    uncovered = footprint.difference(unary_union(frame.geometry.values).buffer(abs(t.a)))
    assert uncovered.area <= 1e-9 * footprint.area, uncovered.area

    # A tile's pixels are rasterio.warp.reproject's (bilinear) of the same region, and its embedding is the
    # encoder's on them.
    edge = frame[(frame["nodata_fraction"] > 0.2) & (frame["nodata_fraction"] < 0.8)].iloc[0]
    inner = frame[frame["nodata_fraction"] == 0].iloc[len(frame[frame["nodata_fraction"] == 0]) // 2]
    for row in (edge, inner):
        window = TileWindow(int(row["row"]), int(row["col"]), 64)
        pixels, valid = read_tile(src, window)
        expected, expected_valid = _block_reference(RGB, src, window)
        assert np.array_equal(valid, expected_valid) and np.array_equal(valid, valid_mask(src, window))
        assert np.abs(pixels[:, valid] - expected[:, valid]).max() <= 1e-6
        assert row["nodata_fraction"] == pytest.approx(1 - valid.mean(), abs=1e-6)
    meta = read_geoparquet_metadata(out / "rgb.parquet")
    assert meta["reprojected"]["to_crs"] == src.crs and meta["reprojected"]["resampling"] == "bilinear"
    assert CRS.from_wkt(meta["reprojected"]["from_crs"]) == CRS.from_epsg(32618)  # provenance of the warp
    mean, std = np.array(meta["normalization"]["mean"]), np.array(meta["normalization"]["std"])
    x = np.where(valid[None], (expected - mean[:, None, None]) / std[:, None, None], 0).astype(np.float32)
    with torch.inference_mode():
        want = load(ENCODER, num_heads=4).module.forward_features(torch.from_numpy(x)[None], torch.tensor([1.0]))
    assert np.abs(np.asarray(inner["embedding"]) - want[0, 0].numpy()).max() <= 1e-5


def test_the_default_run_does_not_warp_and_scenes_without_a_crs_fail_alone(scenes, tmp_path):
    src = open_raster(scenes / "rgb.tif")
    with rasterio.open(RGB) as f:
        assert src.warp is None and src.crs == f.crs.to_wkt() and src.transform == tuple(f.transform)[:6]
        assert (src.height, src.width, src.mask_kinds) == (f.height, f.width, ("nodata",) * 3)
        data = f.read(1)
    assert open_raster(scenes / "rgb.tif", crs="EPSG:32618") == src  # its own CRS: nothing to warp
    assert open_raster(scenes / "rgb.tif", crs="EPSG:32618", res=600.0).warp is not None  # a new pixel size
    with rasterio.open(scenes / "nocrs.tif", "w", driver="GTiff", width=80, height=70, count=3, dtype="uint8") as d:
        d.write(np.stack([data[:70, 300:380]] * 3))
    result = run_pipeline("embed", scenes, tmp_path / "out", **OPTS, crs="EPSG:3857")
    assert result["outcomes"]["rgb"] == "done"
    assert "nocrs.tif: no CRS" in result["errors"]["nocrs"] and "--crs" in result["errors"]["nocrs"]


def test_an_unknown_crs_is_a_one_line_usage_error(scenes, tmp_path):
    for args in (["--crs", "EPSG:99999"], ["--crs-res", "100"]):
        out = CliRunner().invoke(app, ["embed", "-i", str(scenes), "-o", str(tmp_path / "out"), *args])
        assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1, out.output
        assert "--crs" in out.output, out.output
    assert "--crs: not a CRS" in CliRunner().invoke(app, ["classify", "-i", str(scenes), "-o", str(tmp_path / "o"),
                                                          "--crs", "nonsense"]).output


def _write(path: Path, kind: str) -> Path:
    """A 1-band uint8 scene far from its UTM zone's central meridian (its EPSG:4326 grid is rotated, so it has a
    collar), 10..209 everywhere; its first 12 columns nodata by ``kind``: a nodata value 0, an internal mask, or
    none (every pixel valid)."""
    rng = np.random.default_rng(0)
    data = rng.integers(10, 210, (1, 90, 120), dtype=np.uint8)
    kw = {"nodata": 0} if kind == "nodata" else {}
    if kind == "nodata":
        data[:, :, :12] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            path, "w", driver="GTiff", width=120, height=90, count=1, dtype="uint8", crs="EPSG:32618",
            transform=from_origin(210000, 4500000, 30, 30), **kw) as d:
        d.write(data)
        if kind == "mask":
            m = np.full((90, 120), 255, np.uint8)
            m[:, :12] = 0
            d.write_mask(m)
    return path


@pytest.mark.parametrize("kind", ["nodata", "mask", "none"])
def test_the_collar_and_the_files_nodata_stay_invalid(tmp_path, kind):
    path = _write(tmp_path / f"{kind}.tif", kind)
    src = open_raster(path, crs="EPSG:4326")
    assert RasterSource.from_dict(json.loads(json.dumps(src.to_dict()))) == src == pickle.loads(pickle.dumps(src))
    assert src.mask_kinds == ("mask",) and src.warp.src_nodata == ((0.0,) if kind == "nodata" else (None,))
    valid = np.zeros((src.height, src.width), bool)
    pixels = np.zeros((src.height, src.width), np.float32)
    for w in tile_windows(src.height, src.width, 64):  # edge tiles are padded by hand (no boundless VRT reads)
        p, v = read_tile(src, w)
        h, wd = min(64, src.height - w.row_off), min(64, src.width - w.col_off)
        assert not v[h:].any() and not v[:, wd:].any() and not p[:, h:].any()
        valid[w.row_off:w.row_off + h, w.col_off:w.col_off + wd] = v[:h, :wd]
        pixels[w.row_off:w.row_off + h, w.col_off:w.col_off + wd] = p[0, :h, :wd]
    assert (pixels[valid] >= 10).all()  # bilinear over valid source pixels only: no 0 blended in
    # Each warped pixel centre, in source pixel coordinates: valid only where it lies on valid source pixels.
    with rasterio.open(path) as f:
        rows, cols = np.mgrid[0:src.height, 0:src.width] + 0.5
        xs, ys = src.affine @ (cols.ravel(), rows.ravel())
        sx, sy = warp_points(CRS.from_wkt(src.crs), f.crs, xs, ys)
        sc, sr = ~f.transform @ (np.array(sx), np.array(sy))
    sc, sr = sc.reshape(valid.shape), sr.reshape(valid.shape)
    first = 0 if kind == "none" else 12
    inside = (sc >= first + 1) & (sc <= 119) & (sr >= 1) & (sr <= 89)  # a pixel or more from any invalid one
    outside = (sc < first - 1) | (sc > 121) | (sr < -1) | (sr > 91)
    assert valid[inside].all() and not valid[outside].any()
    assert outside.sum() > 0.02 * valid.size  # a real collar (the grid is rotated)


def test_a_band_folder_warps_every_file_onto_one_grid():
    folder = open_raster(L8, bands="B4,B3,B2", crs="EPSG:4326", res=0.0005)
    single = open_raster(L8 / "l8_B3.tif", crs="EPSG:4326", res=0.0005)
    assert folder.warp.transform == single.warp.transform and folder.pixel_size == (0.0005, 0.0005)
    assert folder.warp.src_nodata == (None, None, None)  # no nodata: the VRT's alpha masks the collar
    window = TileWindow(0, 0, folder.width)
    pixels, valid = read_tile(folder, window)
    one, one_valid = read_tile(single, window)
    assert np.array_equal(pixels[1], one[0]) and np.array_equal(valid, one_valid)
    assert 0.3 < valid.mean() < 1 and (pixels[:, valid] > 0).all()


def _head(path: Path) -> Path:
    torch.manual_seed(0)
    encoder = load(ENCODER, num_heads=4)
    meta = {"level": "patch", "classes": {0: "dark", 1: "bright"}, "bands": ["1", "2", "3"], "tile": 64,
            "encoder": {"file": ENCODER.name, "sha256": encoder.weights_sha256}, "res": 1.0, "pool": "cls",
            "normalization": {"mean": [60.0] * 3, "std": [40.0] * 3}}
    head = LinearProbe(64, 2).eval()
    with torch.no_grad():
        head.fc.weight.normal_()
    save_checkpoint(path, head, arch="linear_probe", config={"dim": 64, "classes": 2}, meta=meta)
    shutil.copy(ENCODER, path.parent / ENCODER.name)
    return path


def test_classify_with_crs_writes_the_class_map_in_the_target_crs(scenes, tmp_path):
    (tmp_path / "heads").mkdir()
    out = tmp_path / "out"
    result = run_pipeline("classify", scenes, out, weights=_head(tmp_path / "heads" / "patch.pt"), num_heads=4,
                          device="cpu", precision="fp32", crs="EPSG:3857", crs_res=400.0)
    assert result["counts"]["done"] == 1, result["errors"]
    src = open_raster(scenes / "rgb.tif", crs="EPSG:3857", res=400.0)
    with rasterio.open(out / "rgb_classes.tif") as cm:
        assert cm.crs == CRS.from_epsg(3857) and tuple(cm.transform)[:6] == src.transform
        assert cm.shape == (src.height, src.width) and cm.transform.a == 400.0
        labels = cm.read(1)
    assert cog_validate(str(out / "rgb_classes.tif"))[0]
    valid = np.zeros_like(labels, bool)
    for w in tile_windows(src.height, src.width, 64):
        v = valid_mask(src, w)
        valid[w.row_off:w.row_off + 64, w.col_off:w.col_off + 64] = v[:src.height - w.row_off, :src.width - w.col_off]
    assert np.array_equal(labels == 255, ~valid) and 0 < valid.mean() < 1  # nodata exactly on the collar
    assert json.loads((out / "rgb_areas.json").read_text())["areas_km2"]
