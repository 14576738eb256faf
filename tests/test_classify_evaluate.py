"""`run-flow evaluate classify`: class maps against label rasters. Exact confusion matrices, accuracy and IoU on
hand-made rasters with known errors (patch and tile level, several read windows), a reference on a 2x coarser grid
resampled exactly, a reference that does not overlap is an error naming both files; end to end from the CLI on
generated scenes with a kNN head trained on them: the report shows the confusion-matrix picture, metrics.json and
the CSV tables hold the figures, a bad reference fails its scene only."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from imagingflows.pipelines.classify_evaluate import count_confusion, evaluate_scene, pooled, summarize
from imagingflows.tasks.ingest import InputError
from sample_data.scenes import make_scene

ROOT = Path(__file__).resolve().parents[1]
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16, 3 bands
CLASSES = {"0": "water", "1": "forest", "2": "urban", "3": "snow"}
ORIGIN = Affine(10, 0, 500_000, 0, -10, 4_600_000)


def _write(path: Path, values: np.ndarray, transform=ORIGIN, crs="EPSG:32633") -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=255) as ds:
        ds.write(values[None])
    return path


def test_patch_level_confusion_accuracy_and_iou_are_exact(tmp_path):
    ref = np.zeros((40, 48), np.uint8)
    ref[:, 24:] = 1
    ref[30:] = 2
    ref[30:32, :4] = 5  # an id the run does not know: its own row, named class_5
    pred = np.where(ref == 5, 2, ref).astype(np.uint8)
    ref[0] = 255  # no label: 48 pixels predicted but left out
    pred[4:12, 4:12] = 1  # 64 water pixels called forest
    pred[36:, 40:] = 255  # 32 urban pixels without prediction
    refp, predp = _write(tmp_path / "ref.tif", ref), _write(tmp_path / "s_classes.tif", pred)
    m = evaluate_scene(str(predp), str(refp), {"level": "patch", "tile": 16, "classes": CLASSES})
    assert m["class_ids"] == [0, 1, 2, 3, 5] and m["class_names"] == ["water", "forest", "urban", "snow", "class_5"]
    assert m["confusion"] == [[632, 64, 0, 0, 0], [0, 696, 0, 0, 0], [0, 0, 440, 0, 0], [0] * 5, [0, 0, 8, 0, 0]]
    assert (m["scored"], m["excluded_prediction_nodata"], m["excluded_reference_nodata"]) == (1840, 32, 48)
    assert m["accuracy"] == pytest.approx(1768 / 1840, abs=1e-5)
    iou = {"water": 632 / 696, "forest": 696 / 760, "urban": 440 / 448, "class_5": 0.0}  # snow: absent, not averaged
    got = {k[4:]: v for k, v in m.items() if k.startswith("iou_")}
    assert got == pytest.approx(iou, abs=1e-5)
    assert m["miou"] == pytest.approx(np.mean(list(iou.values())), abs=1e-5)
    assert m["precision"] == pytest.approx({"water": 1.0, "forest": 696 / 760, "urban": 440 / 448}, abs=1e-5)
    assert m["recall"]["water"] == pytest.approx(632 / 696, abs=1e-5) and m["recall"]["class_5"] == 0.0
    # read in 16-pixel windows (edge windows partial): the same counts
    small, counts = count_confusion(predp, refp, "patch", 16, block=16)
    assert np.array_equal(small[np.ix_(m["class_ids"], m["class_ids"])], m["confusion"]) and counts["scored"] == 1840


def test_tile_level_compares_majority_labels_per_tile(tmp_path):
    cells = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 255]], np.uint8)  # 3 x 3 tiles of 16 px, the last row 8 px tall
    pred = np.repeat(np.repeat(cells, 16, 0), 16, 1)[:40]
    ref = pred.copy()
    ref[:16, :16][:6] = 1  # tile (0, 0): 96 px of forest, water still the majority
    ref[:16, 16:32] = 1  # tile (0, 1): forest, predicted water
    ref[16:32, 16:32] = 255  # tile (1, 1): no label
    ref[16:26, :16] = 1  # tile (1, 0): 160 px forest, 96 water, but the forest part is mostly unpredicted:
    pred[16:22, :16] = 255  # over its predicted pixels water wins (64 forest, 96 water)
    refp, predp = _write(tmp_path / "ref.tif", ref), _write(tmp_path / "s_classes.tif", pred)
    cfg = {"level": "tile", "tile": 16, "classes": CLASSES}
    m = evaluate_scene(str(predp), str(refp), cfg)
    assert m["unit"] == "tiles" and m["class_ids"] == [0, 1, 2, 3]
    assert m["confusion"] == [[2, 0, 0, 0], [1, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    assert (m["scored"], m["excluded_prediction_nodata"], m["excluded_reference_nodata"]) == (7, 1, 1)
    assert m["accuracy"] == pytest.approx(6 / 7, abs=1e-5) and m["iou_water"] == pytest.approx(2 / 3, abs=1e-5)
    small, _ = count_confusion(predp, refp, "tile", 16, block=16)  # one tile per window
    assert np.array_equal(small[:4, :4], m["confusion"])


def test_a_reference_on_a_2x_coarser_grid_is_resampled_nearest(tmp_path):
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 3, size=(20, 24)).astype(np.uint8)
    coarse[:3, :5] = 255
    pred = np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    pred[pred == 255] = 1  # predicted where the reference has no label
    predp = _write(tmp_path / "s_classes.tif", pred)
    refp = _write(tmp_path / "ref.tif", coarse, transform=ORIGIN @ Affine.scale(2))
    m = evaluate_scene(str(predp), str(refp), {"level": "patch", "tile": 16, "classes": CLASSES})
    labelled = int((coarse != 255).sum()) * 4
    assert m["accuracy"] == 1.0 and m["scored"] == labelled and m["excluded_reference_nodata"] == 4 * 15
    assert np.diag(m["confusion"]).tolist()[:3] == [int((coarse == c).sum()) * 4 for c in range(3)]


def test_a_reference_that_does_not_overlap_names_both_files(tmp_path):
    predp = _write(tmp_path / "s_classes.tif", np.zeros((32, 32), np.uint8))
    far = _write(tmp_path / "far.tif", np.zeros((32, 32), np.uint8), transform=ORIGIN @ Affine.translation(1e5, 0))
    with pytest.raises(InputError, match=r"far\.tif: the label raster does not overlap .*s_classes\.tif"):
        evaluate_scene(str(predp), str(far), {"level": "patch", "tile": 16, "classes": CLASSES})


def test_overall_sums_the_scenes_and_draws_the_matrix(tmp_path):
    a = {"class_ids": [0, 1], "confusion": [[5, 1], [0, 4]], "scored": 10, "level": "patch"}
    b = {"class_ids": [0, 1, 2], "confusion": [[3, 0, 0], [2, 2, 0], [0, 0, 0]], "scored": 7, "level": "patch"}
    # class 2: in b's matrix but never seen, and not one of the run's classes: left out
    assert pooled({"a": a, "b": b}, {"0": "x", "1": "y"})["confusion"] == [[8, 1], [2, 6]]
    for m in (a, b):  # what evaluate_scene adds
        m.update(precision={}, recall={}, class_names=["x", "y", "class_2"][:len(m["class_ids"])])
    run = summarize({"a": a, "b": b}, tmp_path, {"classes": {"0": "x", "1": "y"}})
    assert run["metrics"]["accuracy"] == pytest.approx(14 / 17, abs=1e-5) and run["figures"] == ["confusion_matrix.png"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.reader((tmp_path / "confusion_matrix.csv").open()))
    assert rows[0] == ["reference \\ predicted", "x", "y"] and rows[2] == ["y", "2", "6"]


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two generated scenes, their class rasters as references, and a kNN patch head trained on them."""
    from imagingflows.pipelines.classify_patch_train import train

    root = tmp_path_factory.mktemp("ceval")
    data, scenes, refs = root / "data", root / "scenes", root / "refs"
    for d in (scenes, refs):
        d.mkdir()
    for name, seed in (("north", 1), ("south", 2)):
        s = make_scene(data / f"{name}.tif", height=128, width=192, bands=3, classes=3, cell=40, seed=seed, block=64)
        shutil.copy(s["path"], scenes / f"{name}.tif")
        shutil.copy(s["classes_path"], refs / f"{name}_classes.tif")
    summary = train(data, root / "head", {"encoder": str(ENCODER), "num_heads": 4, "tile": 64, "device": "cpu",
                                          "precision": "fp32", "level": "patch", "head": "knn", "val_fraction": 0.25,
                                          "seed": 0, "batch_size": 64})
    return {"root": root, "scenes": scenes, "refs": refs, "head": summary["result"]["best_checkpoint"]}


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from imagingflows.flows.cli import build_app

    return CliRunner().invoke(build_app(), ["evaluate", "classify", *args])


def test_evaluate_classify_from_the_cli(trained):
    ev = trained["root"] / "ev"
    out = _cli(["--input", str(trained["scenes"]), "--reference", str(trained["refs"]), "-o", str(ev), "--weights",
                str(trained["head"]), "--num-heads", "4", "--device", "cpu", "--precision", "fp32", "-q"])
    assert out.exit_code == 0, out.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert sorted(metrics["per_item"]) == ["north", "south"] and not metrics["failed"]
    overall, north = metrics["overall"], metrics["per_item"]["north"]
    assert overall["level"] == "patch" and overall["class_names"] == ["0", "1", "2"]
    assert np.array_equal(np.add(north["confusion"], metrics["per_item"]["south"]["confusion"]), overall["confusion"])
    assert overall["accuracy"] > 0.5 and 0 < overall["miou"] <= 1 and north["excluded_prediction_nodata"] > 0
    left_out = north["excluded_prediction_nodata"] + north["excluded_reference_nodata"]
    with rasterio.open(ev / "north_classes.tif") as cm:  # every pixel of the map is scored or counted as left out
        assert north["scored"] + left_out == cm.width * cm.height
    report = (ev / "report.html").read_text()
    assert 'src="confusion_matrix.png"' in report and "miou" in report and (ev / "confusion_matrix.png").is_file()
    rows = list(csv.DictReader((ev / "class_metrics.csv").open()))
    assert {r["scene"] for r in rows} == {"north", "south", "(all)"} and all(r["iou"] for r in rows)
    run = json.loads((ev / "run.json").read_text())
    assert "confusion" not in run["items"]["north"]["metrics"] and run["metrics"]["overall"]["miou"] == overall["miou"]


def test_a_bad_reference_fails_its_scene_only_and_another_grid_is_resampled(trained):
    ev = trained["root"] / "ev"
    if not (ev / "run.json").is_file():
        pytest.skip("needs the CLI test's predictions")
    refs = trained["root"] / "refs_mixed"
    refs.mkdir()
    with rasterio.open(trained["refs"] / "north_classes.tif") as ds:
        labels, t, crs = ds.read(1), ds.transform, ds.crs
    _write(refs / "north.tif", labels, transform=t @ Affine.translation(1e5, 0), crs=crs)  # 1000 km east
    _write(refs / "south_labels.tif", labels[::2, ::2], transform=t @ Affine.scale(2), crs=crs)  # 2x coarser
    out = _cli(["--predictions", str(ev), "--reference", str(refs), "-o", str(trained["root"] / "ev2"), "-q"])
    assert out.exit_code == 1, out.output
    metrics = json.loads((trained["root"] / "ev2" / "metrics.json").read_text())
    assert list(metrics["per_item"]) == ["south"] and metrics["per_item"]["south"]["scored"] > 1000
    assert "north.tif: the label raster does not overlap" in metrics["failed"]["north"]
    assert "north_classes.tif" in metrics["failed"]["north"]  # the class map it was placed on


def _tile_head(path: Path) -> Path:
    """An untrained tile-level kNN head (random bank) for make_scene's 3 classes: its labels are arbitrary,
    the counting is what is tested."""
    import torch

    from imagingflows.models import load
    from imagingflows.models.checkpoints import save_checkpoint
    from imagingflows.models.heads import KnnProbe, knn_config

    torch.manual_seed(0)
    encoder = load(ENCODER, num_heads=4)
    meta = {"level": "tile", "classes": {0: "a", 1: "b", 2: "c"}, "tile": 64, "res": 1.0, "pool": "cls",
            "encoder": {"file": str(ENCODER), "sha256": encoder.weights_sha256}}
    head = KnnProbe(torch.randn(30, 64), torch.arange(30) % 3, 3, k=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, head, arch="knn_probe", config=knn_config(head), meta=meta)
    return path


def test_tile_level_run_is_scored_per_tile(trained):
    from imagingflows.flows import run_pipeline
    from imagingflows.flows.evaluate import evaluate_pipeline

    out = trained["root"] / "tiles"
    head = _tile_head(trained["root"] / "tile_head" / "best.pt")
    done = run_pipeline("classify", trained["scenes"], out, weights=head, num_heads=4, device="cpu", precision="fp32")
    assert done["counts"]["done"] == 2, done["errors"]
    metrics = evaluate_pipeline("classify", out, trained["refs"], out)["metrics"]
    for m in metrics["per_item"].values():  # 128 x 192 px in 64 px tiles: 2 x 3 cells, each scored or left out
        left_out = m["excluded_prediction_nodata"] + m["excluded_reference_nodata"]
        assert m["unit"] == "tiles" and m["scored"] + left_out == 6
        assert np.sum(m["confusion"]) == m["scored"] and m["class_names"] == ["a", "b", "c"]
    assert metrics["overall"]["scored"] == sum(m["scored"] for m in metrics["per_item"].values())
    assert "counted in tiles (64 px cells" in metrics["conventions"]
