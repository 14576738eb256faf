"""`run-flow train classify --finetune`: the tiny real Scale-MAE encoder trained end to end with a linear head, at
tile level on chips (made as in test_classify_train.py) and at patch level on a generated scene with its class raster
(sample_data/scenes.py). The encoder's weights change; best.pt / last.pt record encoder_best.pt / encoder_last.pt and
their SHA-256, which `classify` finds beside the head and uses with no other flag; the held-out score is the one the
saved pair reproduces, on the same held-out split as the frozen probe; resume continues both; kNN + --finetune is one
usage line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from test_classify_train import BASE, _landsat_chips, _rgb_chips  # noqa: E402 - chips of the sample scenes

from imagingflows.models import load, read_checkpoint
from imagingflows.models.checkpoints import sha256_file
from imagingflows.pipelines import classify_train as tiles
from imagingflows.pipelines.classify_patch_train import (PatchTrain, iou_scores, patch_data, patch_tiles, predict,
                                                         strip_features, train)
from sample_data.scenes import make_scene

ENCODER = Path(BASE["encoder"])
TILE = {**BASE, "head": "linear", "finetune": True, "epochs": 3, "steps_per_epoch": 20, "batch_size": 16, "lr": 1e-2}
PATCH = {**BASE, "level": "patch", "head": "linear", "finetune": True, "epochs": 3, "steps_per_epoch": 10,
         "batch_size": 8, "lr": 1e-2}


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chips")
    _landsat_chips(root / "landsat")
    _rgb_chips(root / "rgb")
    return root


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ftpatch") / "data"
    return make_scene(folder / "scene.tif", height=256, width=384, bands=3, classes=3, cell=40, seed=1, block=64)


@pytest.fixture(scope="module")
def frozen(scene) -> dict:
    """The frozen probe's data at patch level (the original encoder's features of both strips) and its config."""
    data_dir = Path(scene["path"]).parent
    opts = PatchTrain.parse({**PATCH, "data": str(data_dir), "output": "unused"})
    enc = tiles._encoder(opts, torch.device("cpu"))
    cfg = tiles._resolve(opts, enc)
    return {"data_dir": data_dir, "enc": enc, "cfg": cfg, "data": patch_data(data_dir, enc, cfg, None, 0.25)}


@pytest.fixture(scope="module")
def tile_run(chips, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("ft_tile")
    return run, tiles.train(chips, run, TILE)


def _changed(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k].float(), b[k].float())]


def _check_pair(run: Path, head: str, encoder: str) -> dict:
    """``head`` records ``encoder`` beside it with its SHA-256; returns the head's meta."""
    meta = read_checkpoint(run / head).meta
    assert meta["encoder"] == {"file": str((run / encoder).resolve()), "sha256": sha256_file(run / encoder)}
    assert meta["finetune"]["from_encoder"] == {"file": str(ENCODER.resolve()), "sha256": sha256_file(ENCODER)}
    return meta


def test_knn_with_finetune_and_other_misuse_are_one_usage_line(chips, tmp_path):
    from typer.testing import CliRunner

    from imagingflows.flows.cli import build_app

    out = CliRunner().invoke(build_app(), ["train", "classify", "--data", str(chips), "-o", str(tmp_path / "run"),
                                           "--encoder", str(ENCODER), "--head", "knn", "--finetune"])
    assert out.exit_code == 2 and "--finetune trains the encoder with a linear head" in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1 and not (tmp_path / "run" / "last.pt").exists()
    for bad, said in (({"head": "knn"}, "a kNN head has no weights"), ({"precision": "bf16"}, "trains in fp32"),
                      ({"finetune": False, "encoder_lr": 1e-4}, "--encoder-lr applies to --finetune")):
        with pytest.raises(ValueError, match=said):
            train(chips, tmp_path / "x", {**TILE, "level": "tile", **bad})


def test_tile_level_finetune_changes_the_encoder_and_best_pt_records_it(tile_run, chips):
    run, summary = tile_run
    res = summary["result"]
    assert res["epochs_done"] == 3 and res["best_accuracy"] >= 0.75, summary["history"]
    assert res["encoder_checkpoint"] == str(run / "encoder_best.pt") and "fine-tuned encoder" in summary["headline"]
    assert all(h["encoder_lr"] == pytest.approx(h["lr"] / 10) for h in summary["history"])  # both on the cosine
    best, last = _check_pair(run, "best.pt", "encoder_best.pt"), _check_pair(run, "last.pt", "encoder_last.pt")
    assert best["held_out"]["accuracy"] == pytest.approx(res["best_accuracy"], abs=1e-4)
    assert last["train_state"]["settings"]["encoder_lr"] == pytest.approx(1e-3)  # the default: lr / 10
    # the encoder file: our format, trained away from the original, from the best epoch
    enc = read_checkpoint(run / "encoder_best.pt")
    assert enc.arch == "scale_mae" and enc.config["num_heads"] == 4 and enc.config["embed_dim"] == 64
    original = load(ENCODER, num_heads=4).module.state_dict()
    assert len(_changed(enc.state_dict, original)) > 10
    best_epoch = max(summary["history"], key=lambda h: h["val_accuracy"])["epoch"]  # the first of equals
    assert enc.meta["finetuned"]["epoch"] == best_epoch
    assert enc.meta["normalization"] == best["normalization"] and enc.meta["finetuned"]["level"] == "tile"
    # the saved pair reproduces the recorded held-out accuracy on the held-out chips
    pair = load(run / "encoder_best.pt")
    opts = tiles.ClassifyTrain.parse({**TILE, "data": str(chips), "output": str(run)})
    cfg = tiles._resolve(opts, pair)
    mean, std = (np.asarray(best["normalization"][k], np.float32) for k in ("mean", "std"))
    by_id = {c.id: c for c in tiles.find_chips(chips)[1]}
    xv, yv = tiles.embed_chips(pair, [by_id[i] for i in summary["split"]["val"]], mean, std, cfg)
    assert tiles.accuracy(load(run / "best.pt").module, xv, yv) == pytest.approx(res["best_accuracy"], abs=1e-4)


def test_classify_finds_the_finetuned_encoder_beside_the_head(tile_run, tmp_path):
    from imagingflows.pipelines.classify import prepare

    run, _ = tile_run
    moved = tmp_path / "moved"  # the head and its encoder copied elsewhere: found by name beside the head
    moved.mkdir()
    for name in ("best.pt", "encoder_best.pt"):
        shutil.copy(run / name, moved / name)
    cfg = prepare({"weights": str(moved / "best.pt"), "device": "cpu", "precision": "fp32"})
    assert cfg["encoder"] == str(moved / "encoder_best.pt")
    assert cfg["encoder_sha256"] == sha256_file(run / "encoder_best.pt") and cfg["level"] == "tile"
    shutil.copy(ENCODER, moved / "encoder_best.pt")  # another encoder under that name is refused
    with pytest.raises(ValueError, match="is not the encoder"):
        prepare({"weights": str(moved / "best.pt"), "device": "cpu", "precision": "fp32", "num_heads": 4})


def test_tile_level_finetune_resumes_and_refuses_other_settings(tile_run, chips):
    run, summary = tile_run
    before = read_checkpoint(run / "encoder_last.pt").state_dict
    more = tiles.train(chips, run, {**TILE, "epochs": 4})
    assert more["result"]["epochs_done"] == 4 and more["history"][:3] == summary["history"]
    assert _changed(read_checkpoint(run / "encoder_last.pt").state_dict, before)
    state = read_checkpoint(run / "last.pt").meta["train_state"]
    assert len(state["optimizer"]["param_groups"]) == 2 and state["epoch"] == 4
    _check_pair(run, "last.pt", "encoder_last.pt")
    with pytest.raises(ValueError, match="other settings: encoder_lr 0.001"):
        tiles.train(chips, run, {**TILE, "epochs": 5, "encoder_lr": 1e-4})
    with pytest.raises(ValueError, match="other settings: finetune True"):  # the frozen probe in a fine-tune folder
        tiles.train(chips, run, {**TILE, "epochs": 5, "finetune": False})


def test_patch_level_finetune_holds_out_the_same_strip_as_the_frozen_probe(frozen):
    cfg, data = frozen["cfg"], frozen["data"]
    indexed = patch_tiles(frozen["data_dir"], cfg, None, 0.25)
    assert indexed["split"] == data["split"] and indexed["classes"] == data["classes"]
    assert [s.tolist() for s in indexed["stats"][:2]] == [s.tolist() for s in data["stats"][:2]]
    x_val, y_val = strip_features(frozen["enc"], indexed, cfg)  # the untouched encoder: the frozen probe's features
    assert np.array_equal(y_val, data["y_val"]) and np.allclose(x_val, data["x_val"], atol=1e-5)


def test_patch_level_finetune_trains_resumes_and_classifies_with_its_encoder(scene, frozen, tmp_path):
    from imagingflows.flows import run_pipeline

    data_dir, data = frozen["data_dir"], frozen["data"]
    summary = train(data_dir, tmp_path / "run", PATCH)
    run, res = tmp_path / "run", summary["result"]
    assert summary["errors"] == [] and res["epochs_done"] == 3 and "east" in summary["split"]["rule"]
    majority = iou_scores(np.full_like(data["y_val"], np.bincount(data["y"]).argmax()), data["y_val"], 3)[0]
    assert res["best_miou"] > majority + 0.3, summary["history"]
    best = _check_pair(run, "best.pt", "encoder_best.pt")
    assert best["level"] == "patch" and best["held_out"]["miou"] == pytest.approx(res["best_miou"])
    assert best["held_out"]["patches"] == summary["split"]["patches"]["val"] == len(data["y_val"])
    assert _changed(read_checkpoint(run / "encoder_best.pt").state_dict, frozen["enc"].module.state_dict())
    # the saved pair gives the recorded mIoU on the held-out strip
    pair = load(run / "encoder_best.pt")
    x_val, y_val = strip_features(pair, patch_tiles(data_dir, frozen["cfg"], None, 0.25), frozen["cfg"])
    again = iou_scores(predict(load(run / "best.pt").module, x_val, pair.device), y_val, 3)[0]
    assert round(again, 4) == pytest.approx(res["best_miou"])
    # resume: one more epoch from last.pt and encoder_last.pt
    more = train(data_dir, run, {**PATCH, "epochs": 4})
    assert more["result"]["epochs_done"] == 4 and more["history"][:3] == summary["history"]
    # classify with the head alone: its fine-tuned encoder comes along (no --encoder, no --num-heads)
    (tmp_path / "in").mkdir()
    shutil.copy(scene["path"], tmp_path / "in" / "scene.tif")
    result = run_pipeline("classify", tmp_path / "in", tmp_path / "out", weights=run / "best.pt", device="cpu",
                          precision="fp32")
    assert result["counts"]["done"] == 1, result
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert sha256_file(run / "encoder_best.pt") in json.dumps(manifest)
    with rasterio.open(tmp_path / "out" / "scene_classes.tif") as cm, rasterio.open(scene["classes_path"]) as ref:
        got, truth = cm.read(1), ref.read(1)
    both = (got != 255) & (truth != 255)
    assert both.mean() > 0.3 and (got[both] == truth[both]).mean() > 0.6
