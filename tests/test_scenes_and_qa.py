"""The synthetic scene generator (sample_data/scenes.py) and the Landsat 8 BQA decoder (pipelines/landsat_qa.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from imagingflows.pipelines.landsat_qa import (CIRRUS, CLOUD, LAND, NODATA, SNOW, WATER, check_mtl, qa_classes,
                                               write_qa_classes)
from imagingflows.tasks.ingest import InputError
from sample_data.scenes import make_scene

ROOT = Path(__file__).resolve().parents[1]
L8 = ROOT / "sample_data" / "remote_sensing" / "landsat8_LC80200392015216LGN00"
H, W = 600, 500


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "scene.tif"
    return make_scene(out, height=H, width=W, seed=3)


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile


# ---------- sample_data/scenes.py ----------


def test_scene_grid_and_class_raster_are_aligned(scene):
    with rasterio.open(scene["path"]) as img, rasterio.open(scene["classes_path"]) as lab:
        assert img.crs.to_epsg() == 32633 and lab.crs == img.crs
        assert img.transform == Affine(10.0, 0.0, 399960.0, 0.0, -10.0, 5300040.0) == lab.transform
        assert (img.height, img.width, img.count, img.dtypes[0], img.nodata) == (H, W, 3, "uint8", 0)
        assert (lab.height, lab.width, lab.count, lab.dtypes[0], lab.nodata) == (H, W, 1, "uint8", 255)
        assert img.profile["tiled"] and img.block_shapes[0] == (512, 512) and img.compression.name == "deflate"
        pixels, classes = img.read(), lab.read(1)
    nodata = classes == 255
    assert np.array_equal(nodata, (pixels == 0).all(axis=0))  # the collar is the same in both
    assert not (pixels[:, ~nodata] == 0).any()  # no valid pixel carries the nodata value
    assert set(np.unique(classes[~nodata])) == {0, 1, 2, 3}


def test_scene_collar_is_a_turned_footprint_of_the_asked_area(scene):
    classes, _ = read(scene["classes_path"])
    valid = classes[0] != 255
    assert abs((1 - valid.mean()) - 0.3) < 0.01
    assert scene["valid_fraction"] == pytest.approx(valid.mean())
    assert not valid[[0, 0, -1, -1], [0, -1, 0, -1]].any() and valid[H // 2, W // 2]  # corners out, centre in
    top = np.flatnonzero(valid[0])
    assert top.size and top[0] > 0 and top[-1] < W // 2  # the top edge is touched by one corner, not along it
    for collar in (0.0, 0.6):
        facts = make_scene(Path(scene["path"]).with_name(f"c{collar}.tif"), height=120, width=200, collar=collar)
        assert abs((1 - facts["valid_fraction"]) - collar) < 0.02


def test_scene_facts_match_the_files(scene):
    pixels, _ = read(scene["path"])
    classes, _ = read(scene["classes_path"])
    counts = {k: int((classes[0] == k).sum()) for k in range(4)}
    assert scene["class_counts"] == counts
    means = np.array([pixels[:, classes[0] == k].mean(axis=1) for k in range(4)])
    assert np.allclose(scene["class_means"], means, atol=1e-2)


def test_scene_classes_differ_spectrally_but_not_trivially(scene):
    pixels, _ = read(scene["path"])
    classes, _ = read(scene["classes_path"])
    x = pixels.reshape(3, -1).T.astype(np.float64)
    y = classes.ravel()
    x, y = x[y != 255], y[y != 255]
    mean = np.array([x[y == k].mean(axis=0) for k in range(4)])
    std = np.array([x[y == k].std(axis=0) for k in range(4)])
    assert (std > 5).all()  # texture and noise, not flat regions
    for i in range(4):
        for j in range(i + 1, 4):
            assert (np.abs(mean[i] - mean[j]) > np.maximum(std[i], std[j])).any(), (i, j)
    nearest = np.argmin(((x[:, None, :] - mean[None]) ** 2).sum(axis=2), axis=1)
    assert 0.75 < (nearest == y).mean() < 0.99  # learnable per pixel, not perfectly


def test_scene_is_deterministic_and_independent_of_the_block_layout(tmp_path):
    kw = {"height": 200, "width": 170, "seed": 5}
    a = make_scene(tmp_path / "a.tif", **kw, block=64)
    b = make_scene(tmp_path / "b.tif", **kw, block=64)
    c = make_scene(tmp_path / "c.tif", **kw, tiled=False, compress=None)
    d = make_scene(tmp_path / "d.tif", **dict(kw, seed=6), block=64)
    pa, pb, pc, pd = (read(f["path"])[0] for f in (a, b, c, d))
    assert np.array_equal(pa, pb) and np.array_equal(pa, pc)
    assert np.array_equal(read(a["classes_path"])[0], read(c["classes_path"])[0])
    assert not read(c["path"])[1]["tiled"]
    assert (pa != pd).mean() > 0.5
    assert a["class_counts"] == c["class_counts"]


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_scene_other_dtypes_keep_nodata_apart(tmp_path, dtype):
    facts = make_scene(tmp_path / "s.tif", height=64, width=80, bands=4, classes=3, dtype=dtype, block=32)
    pixels, profile = read(facts["path"])
    classes, _ = read(facts["classes_path"])
    assert profile["dtype"] == dtype and profile["count"] == 4
    valid = classes[0] != 255
    assert (pixels[:, ~valid] == 0).all() and (pixels[:, valid] > 0).all()
    scale = {"uint16": 40.0, "float32": 1 / 255}[dtype]
    assert 50 < pixels[:, valid].mean() / scale < 210  # the uint8-unit spectra, scaled


def test_scene_memory_does_not_grow_with_the_scene(tmp_path):
    make_scene(tmp_path / "warm.tif", height=32, width=32, block=128)  # imports outside the measurement
    peaks = []
    for n in (256, 1024):
        tracemalloc.start()
        make_scene(tmp_path / f"m{n}.tif", height=n, width=n, block=128)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0] + 500_000
    assert peaks[1] < 1024 * 1024 * 3 * 4 / 4  # a quarter of the scene as float32


def test_scene_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="collar"):
        make_scene(tmp_path / "x.tif", height=32, width=32, collar=1.0)
    with pytest.raises(ValueError, match="dtype"):
        make_scene(tmp_path / "x.tif", height=32, width=32, dtype="int8")
    with pytest.raises(ValueError, match="multiple of 16"):
        make_scene(tmp_path / "x.tif", height=32, width=32, block=100)
    assert not list(tmp_path.iterdir())


def test_scene_cli(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sample_data.scenes", "--out", str(tmp_path), "--size", "96",
                           "--seed", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"valid_fraction"' in done.stdout
    with rasterio.open(tmp_path / "scene.tif") as src, rasterio.open(tmp_path / "scene_classes.tif") as lab:
        assert (src.height, src.width, src.count) == (96, 96, 3) and lab.transform == src.transform


# ---------- pipelines/landsat_qa.py ----------

# bits 15-14 cloud, 13-12 cirrus, 11-10 snow/ice, 5-4 water; 01 = no, 10 = maybe, 11 = yes
TABLE = [
    (0b0101_0000_0000_0000, LAND),    # 20480: cloud no, cirrus no (the scene's clear value)
    (0b0101_0000_0010_0000, LAND),    # 20512: water maybe
    (0b0101_0000_0011_0000, WATER),   # 20528: water yes
    (0b0101_1100_0000_0000, SNOW),    # 23552: snow/ice yes
    (0b0101_1100_0011_0000, SNOW),    # snow beats water
    (0b0111_0000_0000_0000, CIRRUS),  # 28672: cirrus yes
    (0b0111_1100_0000_0000, CIRRUS),  # 31744: cirrus beats snow
    (0b1001_0000_0000_0000, LAND),    # 36864: cloud maybe only
    (0b1011_0000_0000_0000, CIRRUS),  # 45056: cloud maybe, cirrus yes
    (0b1101_0000_0000_0000, CLOUD),   # 53248: cloud yes
    (0b1111_1100_0011_0000, CLOUD),   # cloud beats everything
    (0b0101_0000_0000_0100, LAND),    # terrain occlusion does not change the class
    (0, LAND),                        # nothing determined
    (0b0000_0000_0000_0001, NODATA),  # 1: designated fill
    (0b1111_0000_0000_0001, NODATA),  # fill beats cloud
    (0b0101_0000_0000_0010, NODATA),  # dropped frame
]


def test_qa_classes_table():
    values = np.array([v for v, _ in TABLE], np.uint16).reshape(4, 4)
    got = qa_classes(values)
    assert got.dtype == np.uint8 and got.shape == (4, 4)
    assert got.ravel().tolist() == [c for _, c in TABLE]
    with pytest.raises(TypeError, match="uint16"):
        qa_classes(values.astype(np.int32))


def test_qa_on_the_real_bqa(tmp_path):
    facts = write_qa_classes(L8 / "l8_BQA.tif", tmp_path / "qa.tif")
    with rasterio.open(L8 / "l8_BQA.tif") as src, rasterio.open(tmp_path / "qa.tif") as out:
        bqa = src.read(1)
        assert (out.crs, out.transform, out.shape, out.nodata, out.dtypes[0]) == \
               (src.crs, src.transform, src.shape, 255, "uint8")
        classes = out.read(1)
    assert np.array_equal(classes, qa_classes(bqa))
    from imagingflows.pipelines.classify_patch_train import class_names  # training names the classes by the tag

    assert class_names([tmp_path / "qa.tif"], 4) == {0: "land", 1: "water", 2: "cloud", 3: "cirrus"}
    counts, shares = facts["counts"], facts["shares"]
    assert sum(counts.values()) == 627 * 603 and counts["nodata"] == 0  # an interior crop: no fill
    assert 0.03 < shares["cloud"] < 0.20  # the MTL's scene-wide CLOUD_COVER is 11.08 %; this crop: 6.0 %
    assert shares["land"] > 0.5 and 0.1 < shares["cirrus"] < 0.4 and counts["snow_ice"] < 100
    assert counts["water"] == 0  # an inland crop: water confidence never reaches "yes"
    assert facts["mtl"]["software"] == "LPGS_2.5.1"
    with rasterio.open(L8 / "l8_B2.tif") as b2:  # the decoded cloud is bright in the blue band
        blue = b2.read(1)
    assert np.median(blue[classes == CLOUD]) > 1.2 * np.median(blue[classes == LAND])


def test_qa_fill_and_dropped_frame_become_nodata(tmp_path):
    with rasterio.open(L8 / "l8_BQA.tif") as src:
        bqa, profile = src.read(1), src.profile
    rows, cols = np.mgrid[: bqa.shape[0], : bqa.shape[1]]
    fill = rows + cols < 150  # a scene-edge corner
    bqa[fill] = 1
    bqa[300] |= 0b10  # one dropped-frame line
    with rasterio.open(tmp_path / "bqa.tif", "w", **profile) as dst:
        dst.write(bqa, 1)
    facts = write_qa_classes(tmp_path / "bqa.tif", tmp_path / "qa.tif")
    with rasterio.open(tmp_path / "qa.tif") as out:
        classes = out.read(1)
    nodata = fill.copy()
    nodata[300] = True
    assert np.array_equal(classes == NODATA, nodata)
    assert facts["counts"]["nodata"] == int(nodata.sum()) and facts["mtl"] is None
    assert sum(facts["shares"].values()) == pytest.approx(1.0)


def test_qa_refuses_collection_products_and_wrong_rasters(tmp_path):
    assert check_mtl(L8 / "l8_MTL.txt")["file_date"].startswith("2015-08-04")
    shutil.copy(L8 / "l8_BQA.tif", tmp_path / "l8_BQA.tif")
    text = (L8 / "l8_MTL.txt").read_text().replace("    DATA_TYPE", '    COLLECTION_NUMBER = 01\n    DATA_TYPE')
    (tmp_path / "l8_MTL.txt").write_text(text)
    with pytest.raises(InputError, match="l8_MTL.txt.*Collection 01"):
        write_qa_classes(tmp_path / "l8_BQA.tif", tmp_path / "qa.tif")
    with pytest.raises(InputError, match=r"RGB\.byte\.tif.*3 band"):
        write_qa_classes(ROOT / "sample_data" / "remote_sensing" / "RGB.byte.tif", tmp_path / "qa2.tif")
    assert not (tmp_path / "qa.tif").exists() and not (tmp_path / "qa2.tif").exists()
