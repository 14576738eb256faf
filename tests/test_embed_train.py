"""`run-flow train embed`: continued Scale-MAE pretraining on crops of the real sample scenes.

A tiny fresh encoder (width 32, depth 2 as the parity fixture, so the key names line up) trains a few dozen
steps on RGB.byte.tif: the held-out loss falls; encoder.pt loads with no extra option and `embed` runs on it
with the model's own normalisation; encoder_official.pth holds exactly the official encoder keys; mae.pt the
official decoder names; the run resumes and refuses other settings. Continuing from the official-layout tiny
file on the Landsat band folder (B4, B3, B2, each scene by its own statistics) changes its weights; so does
continuing from the run's own mae.pt, decoder included. No scenes, or a scene with the wrong band
count, is one error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from imagingflows.flows import run_pipeline
from imagingflows.models import load, read_checkpoint
from imagingflows.pipelines.embed_train import train

ROOT = Path(__file__).resolve().parents[1]
RS = ROOT / "sample_data" / "remote_sensing"
FIXTURE = ROOT / "tests" / "data" / "parity_scalemae"
TINY = dict(embed_dim=32, depth=2, num_heads=4, patch_size=16, tile=64, decoder_dim=32, decoder_depth=1,
            decoder_heads=4, batch_size=16, val_crops=16, lr=2e-3, device="cpu", threads=1, seed=0)


def _keys(role: tuple[str, ...]) -> set[str]:
    rows = [line.split("\t") for line in (FIXTURE / "keys.txt").read_text().splitlines() if not line.startswith("#")]
    return {r[0] for r in rows if r[3] in role}


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes") / "rgb"
    folder.mkdir()
    shutil.copy(RS / "RGB.byte.tif", folder / "rgb.tif")
    return folder


@pytest.fixture(scope="module")
def fresh(rgb, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, train(rgb, run, {**TINY, "epochs": 4, "steps_per_epoch": 10})


def test_fresh_encoder_learns_and_writes_the_three_files(fresh):
    run, summary = fresh
    history = summary["history"]
    assert len(history) == 4
    assert history[-1]["val_loss"] < 0.9 * summary["val_loss_initial"], (summary["val_loss_initial"], history)
    assert min(h["val_loss"] for h in history[1:]) < history[0]["val_loss"]
    assert summary["result"]["encoder"] == str(run / "encoder.pt")
    lm = load(run / "encoder.pt")  # no --arch, no --num-heads
    assert lm.spec.name == "scale_mae" and lm.config["num_heads"] == 4 and lm.config["img_size"] == 64
    norm = lm.meta["normalization"]
    assert len(norm["mean"]) == 3 and min(norm["std"]) > 0 and 20 < norm["mean"][0] < 200  # uint8 data units
    assert lm.meta["res_convention"]["base"] == 1.0 and lm.meta["training"]["steps"] == 40

    official = torch.load(run / "encoder_official.pth", weights_only=True)
    assert set(official) == {"model"}
    assert set(official["model"]) == _keys(("encoder", "encoder-unused"))  # the official names, this size
    for k, v in lm.module.state_dict().items():
        assert torch.equal(v, official["model"][k])
    again = load(run / "encoder_official.pth", arch="scale_mae", num_heads=4)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(again.module(x, 1.5), lm.module(x, 1.5))

    mae = torch.load(run / "mae.pt", weights_only=True)["model"]
    decoder = {k for k in mae if k not in official["model"]}
    official_decoder = {k for k in _keys(("ignored",)) if k.startswith(("mask_token", "decoder_embed", "decoder_blocks",
                                                                         "decoder_norm")) and k != "mask_token_decoder"}
    assert official_decoder <= decoder and decoder - official_decoder == {"decoder_pred.weight", "decoder_pred.bias"}


def test_embed_runs_on_the_trained_encoder(fresh, rgb, tmp_path):
    run, _ = fresh
    result = run_pipeline("embed", rgb, tmp_path / "out", weights=str(run / "encoder.pt"), device="cpu",
                          precision="fp32")
    assert result["counts"]["done"] == 1, result["errors"]
    import json

    entry = json.loads((tmp_path / "out" / "run.json").read_text())["items"]["rgb"]
    assert entry["inference"]["normalization"] == "model" and entry["summary"]["dim"] == 32


def test_resume_continues_and_other_settings_are_refused(fresh, rgb):
    run, summary = fresh
    more = train(rgb, run, {**TINY, "epochs": 5, "steps_per_epoch": 10})
    assert len(more["history"]) == 5 and more["history"][:4] == summary["history"]
    again = train(rgb, run.parent / "from_mae", {**TINY, "weights": str(run / "mae.pt"), "epochs": 1,
                                                 "steps_per_epoch": 2})  # encoder and decoder continue
    assert read_checkpoint(again["encoder"]).meta["training"]["start"]["decoder"] == "from the weights"
    with pytest.raises(ValueError, match="other settings"):
        train(rgb, run, {**TINY, "epochs": 6, "steps_per_epoch": 10, "mask_ratio": 0.5})


def test_continuing_from_the_official_tiny_file_changes_its_weights(tmp_path):
    landsat = tmp_path / "scenes" / "landsat"
    shutil.copytree(RS / "landsat8_LC80200392015216LGN00", landsat)
    opts = {**TINY, "embed_dim": 999, "depth": 9, "weights": str(FIXTURE / "scalemae-tiny.pth"), "num_heads": 4,
            "bands": "B4,B3,B2", "normalization": "scene", "epochs": 1, "steps_per_epoch": 5}
    summary = train(tmp_path / "scenes", tmp_path / "run", opts)
    start = read_checkpoint(FIXTURE / "scalemae-tiny.pth").state_dict
    lm = load(tmp_path / "run" / "encoder.pt")
    assert lm.config["embed_dim"] == 64 and lm.config["depth"] == 2  # the file's sizes, not the fresh-encoder ones
    assert lm.meta["training"]["start"]["decoder"] == "fresh"  # its decoder feeds bandpass heads we do not have
    assert lm.meta["normalization"] is None and lm.meta["normalization_per_scene"]["landsat"]["mean"][0] > 1000
    changed = [k for k, v in lm.module.state_dict().items() if not torch.equal(v, start[k])]
    assert "blocks.0.attn.qkv.weight" in changed and "pos_embed" not in changed  # the unused table stays
    assert summary["val_loss"] is not None


def test_no_scenes_or_wrong_band_count_is_one_error(tmp_path, rgb):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no scenes"):
        train(tmp_path / "empty", tmp_path / "r1", {**TINY, "bands": "1,2,3"})
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(RS / "RGB.byte.tif", mixed / "rgb.tif")
    shutil.copy(RS / "shade.tif", mixed / "shade.tif")
    with pytest.raises(ValueError, match=r"cannot take.*shade\.tif") as err:
        train(mixed, tmp_path / "r2", {**TINY, "bands": "1,2,3"})
    assert "\n" not in str(err.value)
