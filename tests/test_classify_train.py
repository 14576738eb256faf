"""`run-flow train classify` at tile level: chips cut from the real sample scenes, embedded once by the tiny
real Scale-MAE encoder; a linear probe (through fit.py) and a kNN bank both beat chance on held-out chips, the
checkpoint records what `classify` reads, reloads with the same scores, and a run folder refuses other settings.

Chips: class "landsat" = 64 x 64 chips of the Landsat 8 crop, bands B4, B3, B2 stacked (R, G, B) and stretched to
uint8 (per band, 2nd-98th percentile of the whole crop -> 0..255), so both classes are 3-band uint8 RGB on the same
0..255 scale (RGB.byte.tif is itself a stretched uint8 product); class "rgb" = fully valid 64 x 64 chips of
RGB.byte.tif (its nodata collar avoided). The two differ in content (a different place, sensor and stretch), not in
dtype or range.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from imagingflows.models import load, read_checkpoint
from imagingflows.pipelines.classify_train import ClassifyTrain, find_chips, train

ROOT = Path(__file__).resolve().parents[1]
RS = ROOT / "sample_data" / "remote_sensing"
RGB = RS / "RGB.byte.tif"
LANDSAT = RS / "landsat8_LC80200392015216LGN00"
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16, 3 bands
PER_CLASS = 16
BASE = {"encoder": str(ENCODER), "num_heads": 4, "tile": 64, "device": "cpu", "precision": "fp32",
        "val_fraction": 0.25, "seed": 0}
META_KEYS = {"level", "classes", "encoder", "bands", "tile", "res", "pool", "normalization", "held_out"}


def _write(path: Path, pixels: np.ndarray, transform, crs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=3, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(pixels)


def _landsat_chips(folder: Path) -> None:
    bands = []
    for b in ("B4", "B3", "B2"):
        with rasterio.open(LANDSAT / f"l8_{b}.tif") as src:
            crs, t = src.crs, src.transform
            bands.append(src.read(1, window=Window(0, 0, 256, 256)).astype(np.float64))
    stack = np.stack(bands)  # (3, 256, 256) uint16 DN
    lo, hi = np.percentile(stack, 2, axis=(1, 2)), np.percentile(stack, 98, axis=(1, 2))
    u8 = np.clip((stack - lo[:, None, None]) / (hi - lo)[:, None, None] * 255, 0, 255).round().astype(np.uint8)
    for i in range(PER_CLASS):
        r, c = 64 * (i // 4), 64 * (i % 4)
        _write(folder / f"l8_{r}_{c}.tif", u8[:, r:r + 64, c:c + 64], t @ t.translation(c, r), crs)


def _rgb_chips(folder: Path) -> None:
    with rasterio.open(RGB) as src:
        mask = src.dataset_mask()
        ok = [(r, c) for r in range(0, src.height - 64, 64) for c in range(0, src.width - 64, 64)
              if mask[r:r + 64, c:c + 64].all()]
        for r, c in ok[::3][:PER_CLASS]:
            w = Window(c, r, 64, 64)
            _write(folder / f"rgb_{r}_{c}.tif", src.read(window=w), src.window_transform(w), src.crs)


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chips")
    _landsat_chips(root / "landsat")
    _rgb_chips(root / "rgb")
    (root / "rgb" / "notes.txt").write_text("not a chip")
    return root


@pytest.fixture(scope="module")
def knn_run(chips, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("knn")
    return run, train(chips, run, {**BASE, "head": "knn", "k": 5})


def _encode_chip(path: Path, mean, std) -> torch.Tensor:
    """The class token of one chip read with rasterio and run through the encoder directly: ``(D,)``."""
    enc = load(ENCODER, num_heads=4)
    with rasterio.open(path) as src:
        x = (src.read().astype(np.float32) - np.asarray(mean, np.float32)[:, None, None]) / \
            np.asarray(std, np.float32)[:, None, None]
    with torch.no_grad():
        return enc.module.forward_features(torch.from_numpy(x)[None], torch.tensor([1.0]))[0, 0]


def test_chip_tree_gives_sorted_classes_and_skips_other_files(chips):
    classes, found = find_chips(chips)
    assert classes == {0: "landsat", 1: "rgb"}
    assert len(found) == 2 * PER_CLASS and {c.label for c in found} == {0, 1}
    assert all(c.path.suffix == ".tif" for c in found)
    assert not ClassifyTrain.unmarked_fields()


def test_knn_head_beats_chance_and_records_what_classify_reads(knn_run, chips):
    run, summary = knn_run
    assert summary["errors"] == [] and summary["result"]["best_accuracy"] >= 0.75, summary["result"]
    assert "best validation accuracy" in summary["headline"]
    ck = read_checkpoint(run / "best.pt")
    assert ck.arch == "knn_probe" and META_KEYS <= set(ck.meta)
    m = ck.meta
    assert m["level"] == "tile" and m["classes"] == {0: "landsat", 1: "rgb"}
    assert m["encoder"] == {"file": str(ENCODER.resolve()), "sha256": load(ENCODER, num_heads=4).weights_sha256}
    assert (m["tile"], m["res"], m["pool"], m["bands"]) == (64, 1.0, "cls", None)
    assert m["held_out"]["chips"] == len(summary["split"]["val"]) == 8
    # the recorded statistics are those of the training chips' pixels
    pix = np.concatenate([rasterio.open(chips / f"{i}.tif").read().reshape(3, -1) for i in summary["split"]["train"]],
                         axis=1).astype(np.float64)
    assert np.allclose(m["normalization"]["mean"], pix.mean(1), rtol=1e-5)
    assert np.allclose(m["normalization"]["std"], pix.std(1), rtol=1e-5)


def test_knn_checkpoint_reloads_and_reproduces_the_scores(knn_run, chips):
    run, summary = knn_run
    head = load(run / "best.pt")
    norm = head.meta["normalization"]
    assert head.spec.name == "knn_probe" and head.module.k == 5
    train_ids = summary["split"]["train"]
    # bank row = the encoder's class token of that training chip, computed here without the pipeline
    first = _encode_chip(chips / f"{train_ids[0]}.tif", norm["mean"], norm["std"])
    assert torch.allclose(head.module.bank[0], F.normalize(first, dim=0), atol=1e-5)
    val = torch.stack([_encode_chip(chips / f"{i}.tif", norm["mean"], norm["std"]) for i in summary["split"]["val"]])
    labels = torch.tensor([0 if i.startswith("landsat/") else 1 for i in summary["split"]["val"]])
    bank = torch.stack([_encode_chip(chips / f"{i}.tif", norm["mean"], norm["std"]) for i in train_ids])
    sims, idx = (F.normalize(val, dim=1) @ F.normalize(bank, dim=1).T).topk(5, dim=1)
    want = torch.zeros(len(val), 2).scatter_add_(1, head.module.bank_labels[idx].long(), (sims / 0.07).exp())
    with torch.no_grad():
        got = head.module(val)
    assert torch.allclose(got, want, rtol=1e-4)
    acc = float((got.argmax(1) == labels).float().mean())
    assert acc == pytest.approx(head.meta["held_out"]["accuracy"], abs=1e-4)


def test_linear_probe_trains_through_fit_and_beats_chance(chips, tmp_path):
    summary = train(chips, tmp_path, {**BASE, "head": "linear", "epochs": 3, "steps_per_epoch": 20,
                                      "batch_size": 16, "lr": 1e-2})
    assert summary["result"]["epochs_done"] == 3 and summary["result"]["best_accuracy"] >= 0.75, summary["history"]
    assert (tmp_path / "training_curve.png").is_file()
    ck = read_checkpoint(tmp_path / "best.pt")
    assert ck.arch == "linear_probe" and META_KEYS <= set(ck.meta)
    assert ck.config == {"dim": 64, "classes": 2}
    assert ck.meta["held_out"]["accuracy"] == pytest.approx(summary["result"]["best_accuracy"], abs=1e-4)
    # more epochs resume from last.pt; other settings are refused before any chip is read
    more = train(chips, tmp_path, {**BASE, "head": "linear", "epochs": 4, "steps_per_epoch": 20, "batch_size": 16,
                                   "lr": 1e-2})
    assert more["result"]["epochs_done"] == 4 and more["history"][:3] == summary["history"]
    with pytest.raises(ValueError, match="other settings: lr 0.01"):
        train(chips, tmp_path, {**BASE, "head": "linear", "epochs": 5, "steps_per_epoch": 20, "batch_size": 16,
                                "lr": 1e-3})


def test_a_knn_folder_refuses_other_settings(knn_run, chips):
    run, _ = knn_run
    with pytest.raises(ValueError, match="other settings: head 'knn'"):
        train(chips, run, {**BASE, "head": "linear"})
    with pytest.raises(ValueError, match="other settings: k 5"):
        train(chips, run, {**BASE, "head": "knn", "k": 3})


def test_trained_knn_head_classifies_a_scene_end_to_end(knn_run, tmp_path):
    from imagingflows.flows import run_pipeline

    run, _ = knn_run
    (tmp_path / "in").mkdir()
    shutil.copy(RGB, tmp_path / "in" / "rgb.tif")
    result = run_pipeline("classify", tmp_path / "in", tmp_path / "out", weights=run / "best.pt", num_heads=4,
                          device="cpu", precision="fp32")
    assert result["counts"]["done"] == 1, result["errors"]
    with rasterio.open(RGB) as src, rasterio.open(tmp_path / "out" / "rgb_classes.tif") as cm:
        assert cm.crs == src.crs and cm.transform == src.transform and cm.shape == src.shape
        labels, nodata = cm.read(1), src.dataset_mask() == 0
    assert cm.nodata == 255 and np.array_equal(labels == 255, nodata)
    inside = labels[~nodata]
    assert set(np.unique(inside)) <= {0, 1}
    assert (inside == 1).mean() > 0.5  # mostly the class its chips were cut from


def test_unusable_chips_are_errors_and_the_rest_trains(chips, tmp_path):
    data = tmp_path / "data"
    for name in ("landsat", "rgb"):
        (data / name).mkdir(parents=True)
        for p in sorted((chips / name).glob("*.tif"))[:4]:
            shutil.copy(p, data / name / p.name)
    with rasterio.open(data / "rgb" / "gray.tif", "w", driver="GTiff", height=64, width=64, count=1,
                       dtype="uint8") as dst:
        dst.write(np.full((1, 64, 64), 7, np.uint8))
    with rasterio.open(data / "landsat" / "empty.tif", "w", driver="GTiff", height=64, width=64, count=3,
                       dtype="uint8", nodata=0) as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8))
    summary = train(data, tmp_path / "run", {**BASE, "head": "knn", "k": 3})
    errors = dict(summary["errors"])
    assert set(errors) == {"rgb/gray", "landsat/empty"}
    assert "1 bands" in errors["rgb/gray"] and "no valid pixel" in errors["landsat/empty"]
    assert len(summary["split"]["train"]) + len(summary["split"]["val"]) == 8
    with pytest.raises(ValueError, match="need at least 2 class folders"):
        train(data / "rgb", tmp_path / "run2", {**BASE, "head": "knn"})


def test_patch_level_heads_label_every_valid_patch(chips, tmp_path):
    from imagingflows.flows import run_pipeline

    knn = train(chips, tmp_path / "knn", {**BASE, "head": "knn", "level": "patch", "k": 10})
    head = load(tmp_path / "knn" / "best.pt")
    n_train, n_val = len(knn["split"]["train"]), len(knn["split"]["val"])
    assert head.meta["level"] == "patch" and head.module.bank.shape == (n_train * 16, 64)  # 4 x 4 patches a chip
    assert head.meta["held_out"]["features"] == n_val * 16 and knn["result"]["best_accuracy"] > 0.6, knn["result"]
    small = train(chips, tmp_path / "small", {**BASE, "head": "knn", "level": "patch", "bank_size": 100})
    assert load(tmp_path / "small" / "best.pt").module.bank.shape == (100, 64)
    assert small["split"] == knn["split"]
    lin = train(chips, tmp_path / "lin", {**BASE, "head": "linear", "level": "patch", "epochs": 2,
                                          "steps_per_epoch": 20, "lr": 1e-2})
    assert lin["result"]["best_accuracy"] > 0.6, lin["history"]
    (tmp_path / "in").mkdir()
    shutil.copy(RGB, tmp_path / "in" / "rgb.tif")
    result = run_pipeline("classify", tmp_path / "in", tmp_path / "out", weights=tmp_path / "lin" / "best.pt",
                          num_heads=4, device="cpu", precision="fp32")
    assert result["counts"]["done"] == 1, result["errors"]
    with rasterio.open(RGB) as src, rasterio.open(tmp_path / "out" / "rgb_classes.tif") as cm:
        labels, nodata = cm.read(1), src.dataset_mask() == 0
    assert np.array_equal(labels == 255, nodata) and (labels[~nodata] == 1).mean() > 0.5
