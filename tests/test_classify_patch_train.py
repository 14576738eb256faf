"""`train classify --level patch`: a generated scene with its class raster (sample_data/scenes.py), the tiny real
Scale-MAE encoder; linear and kNN heads report mIoU on the east strip held out, beat the majority-class baseline,
reload strictly with the same scores; patch labels by majority; label rasters on another grid are resampled (nearest)
exactly; a label raster that does not overlap the scene, or has no CRS, is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from imagingflows.models import load
from imagingflows.pipelines import classify_train as tiles
from imagingflows.pipelines.classify_patch_train import (NO_LABEL, PatchTrain, held_out, iou_scores, patch_data,
                                                         patch_labels, place_labels, predict, read_labels, train)
from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.raster_io import TileWindow, open_raster, tile_windows
from sample_data.scenes import make_scene

ROOT = Path(__file__).resolve().parents[1]
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16, 3 bands
BASE = {"encoder": str(ENCODER), "num_heads": 4, "tile": 64, "device": "cpu", "precision": "fp32", "level": "patch",
        "val_fraction": 0.25, "seed": 0, "lr": 1e-2, "batch_size": 64}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("patch") / "data"
    return make_scene(folder / "scene.tif", height=256, width=384, bands=3, classes=3, cell=40, seed=1, block=64)


def _majority_miou(y_train: np.ndarray, y_val: np.ndarray, classes: int) -> float:
    return iou_scores(np.full_like(y_val, np.bincount(y_train).argmax()), y_val, classes)[0]


@pytest.mark.parametrize("head", ["knn", "linear"])
def test_patch_heads_report_miou_on_the_held_out_strip_and_reload_with_the_same_scores(scene, tmp_path, head):
    data_dir = Path(scene["path"]).parent  # scene.tif and scene_classes.tif (found beside it)
    summary = train(data_dir, tmp_path / "run", {**BASE, "head": head, "epochs": 3, "steps_per_epoch": 20})
    assert summary["errors"] == []
    miou = summary["result"]["best_miou"]
    assert summary["split"]["patches"]["val"] > 50 and "east" in summary["split"]["rule"]
    lm = load(summary["result"]["best_checkpoint"])
    assert lm.spec.name == f"{head}_probe" and lm.meta["level"] == "patch" and lm.meta["pool"] is None
    assert lm.meta["classes"] == {0: "0", 1: "1", 2: "2"} and lm.meta["held_out"]["miou"] == pytest.approx(miou)
    # the same features again (the recorded normalisation and split), through the reloaded head
    opts = PatchTrain.parse({**BASE, "head": head, "data": str(data_dir), "output": str(tmp_path / "x")})
    enc = tiles._encoder(opts, lm.device)
    data = patch_data(data_dir, enc, tiles._resolve(opts, enc), None, 0.25)
    assert data["stats"][0].tolist() == lm.meta["normalization"]["mean"]
    again, _ = iou_scores(predict(lm.module, data["x_val"], lm.device), data["y_val"], 3)
    assert round(again, 4) == pytest.approx(miou)
    # per-class IoU for every class in the held-out labels (and any the head predicted there)
    assert {str(c) for c in np.unique(data["y_val"])} <= set(lm.meta["held_out"]["per_class_iou"]) <= {"0", "1", "2"}
    assert miou > _majority_miou(data["y"], data["y_val"], 3) + 0.3


def test_the_held_out_strip_is_east_whole_tiles_and_never_trained_on():
    windows = tile_windows(192, 256, 64)
    strip = held_out(windows, 192, 256, 0.25)
    assert {w.col_off for w in strip} == {192} and len(strip) == 3  # the last of 4 columns, every row
    train_px = {(r, c) for w in windows if w not in strip for r in range(w.row_off, w.row_off + 64, 16)
                for c in range(w.col_off, w.col_off + 64, 16)}
    val_px = {(r, c) for w in strip for r in range(w.row_off, w.row_off + 64, 16) for c in range(w.col_off, w.col_off + 64, 16)}
    assert not train_px & val_px
    tall = held_out(tile_windows(256, 128, 64), 256, 128, 0.25)
    assert {w.row_off for w in tall} == {192}  # a tall scene holds out its south rows
    assert held_out(tile_windows(64, 64, 64), 64, 64, 0.25) == set()


def test_patch_label_is_the_majority_of_labelled_pixels():
    labels = np.full((1, 32, 32), NO_LABEL, np.uint8)
    labels[0, :16, :16] = 2
    labels[0, :4, :16] = 1  # patch 0: 2 wins 192 to 64
    labels[0, :16, 16:24] = 3
    labels[0, :16, 24:] = 1  # patch 1: a tie 128 / 128 -> the lower id
    labels[0, 16:, :16] = NO_LABEL  # patch 2: nothing labelled
    labels[0, 16:, 16:] = NO_LABEL
    labels[0, 31, 31] = 0  # patch 3: one labelled pixel decides
    assert patch_labels(labels, 16).tolist() == [[2, 1, NO_LABEL, 0]]


def _write_labels(path: Path, values: np.ndarray, transform, crs) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=NO_LABEL) as ds:
        ds.write(values[None])
    return path


def test_labels_on_a_coarser_grid_are_resampled_nearest_onto_the_scene_grid(scene, tmp_path):
    src = open_raster(scene["path"])
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 4, size=(src.height // 2, src.width // 2)).astype(np.uint8)
    coarse[:10, :10] = NO_LABEL
    a = src.affine  # 20 m pixels from the scene's origin: each covers 2 x 2 scene pixels exactly
    path = _write_labels(tmp_path / "coarse.tif", coarse, Affine(a.a * 2, 0, a.c, 0, a.e * 2, a.f), src.crs)
    grid = place_labels(path, src)
    assert not grid.aligned
    with rasterio.open(path) as ds:
        got = read_labels(ds, grid, src, TileWindow(0, 0, 64))
        edge = read_labels(ds, grid, src, TileWindow(192, 320, 128))  # past the scene's corner: no label
    assert np.array_equal(got, np.repeat(np.repeat(coarse[:32, :32], 2, 0), 2, 1))
    assert np.array_equal(edge[:64, :64], np.repeat(np.repeat(coarse[96:, 160:], 2, 0), 2, 1))
    assert (edge[64:] == NO_LABEL).all() and (edge[:, 64:] == NO_LABEL).all()


def test_labels_in_another_crs_are_warped_back_onto_the_scene(scene, tmp_path):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    src = open_raster(scene["path"])
    with rasterio.open(scene["classes_path"]) as ds:
        t, w, h = calculate_default_transform(ds.crs, "EPSG:4326", ds.width, ds.height, *ds.bounds)
        out = np.full((h, w), NO_LABEL, np.uint8)
        reproject(ds.read(1), out, src_transform=ds.transform, src_crs=ds.crs, dst_transform=t, dst_crs="EPSG:4326",
                  src_nodata=NO_LABEL, dst_nodata=NO_LABEL, resampling=Resampling.nearest)
        truth = ds.read(1)
    path = _write_labels(tmp_path / "lonlat.tif", out, t, "EPSG:4326")
    grid = place_labels(path, src)
    with rasterio.open(path) as ds:
        back = read_labels(ds, grid, src, TileWindow(0, 0, 384))[:256, :384]
    both = (back != NO_LABEL) & (truth != NO_LABEL)
    assert both.mean() > 0.6 and (back[both] == truth[both]).mean() > 0.95  # two nearest resamplings


def test_label_rasters_that_cannot_be_placed_are_clear_errors(scene, tmp_path):
    src = open_raster(scene["path"])
    a = src.affine
    far = _write_labels(tmp_path / "far.tif", np.zeros((16, 16), np.uint8),
                        Affine(a.a, 0, a.c + 1e6, 0, a.e, a.f), src.crs)  # 1000 km east
    with pytest.raises(InputError, match="far.tif: the label raster does not overlap the scene"):
        place_labels(far, src)
    no_crs = _write_labels(tmp_path / "nocrs.tif", np.zeros((16, 16), np.uint8), Affine(1, 0, 5, 0, 1, 0), None)
    with pytest.raises(InputError, match="nocrs.tif: no CRS"):
        place_labels(no_crs, src)
    data = tmp_path / "data"
    data.mkdir()
    (data / "scene.tif").write_bytes(Path(scene["path"]).read_bytes())
    with pytest.raises(InputError, match="does not overlap"):  # through train, with --labels naming the file
        train(data, tmp_path / "run", {**BASE, "head": "knn", "labels": str(far)})
