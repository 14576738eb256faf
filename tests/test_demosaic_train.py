"""`run-flow train demosaic`: our JDD network trains on clean images (mosaics and noise made on the fly),
is scored against Menon on held-out images every epoch, resumes, refuses a resume with other settings,
and the checkpoint it writes demosaicks files with `run-flow demosaic --method jdd`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from imagingflows.flows.cli import app
from imagingflows.models.cfa import mosaic as make_mosaic
from imagingflows.models.checkpoints import read_checkpoint
from imagingflows.models.demosaic_methods import get_method


def _cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("jdd")
    for folder, names in (("clean", ("astronaut", "coffee")), ("val", ("chelsea",))):
        (root / folder).mkdir()
        for name in names:
            Image.fromarray(getattr(data, name)()[40:136, 60:180]).save(root / folder / f"{name}.png")
    return root


def test_train_scores_against_menon_resumes_and_refuses_other_settings(folders, tmp_path):
    run = tmp_path / "run"
    args = ["train", "demosaic", "--data", folders / "clean", "--val-data", folders / "val", "--output", run,
            "--steps-per-epoch", 4, "--batch-size", 4, "--patch", 32, "--val-crop", 64, "--noise", "0..0.06",
            "--device", "cpu"]
    code, out = _cli(*args, "--epochs", 1)
    assert code == 0, out
    assert "best validation CPSNR" in out and "gain" in out
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["result"]["epochs_done"] == 1 and manifest["split"]["val"] == ["chelsea"]
    (epoch,) = [v for k, v in manifest["items"].items() if k.startswith("epoch")]
    m = epoch["metrics"]
    # the fresh network starts as bilinear: at noise 0 Menon wins, at 0.06 both are far below it
    assert m["val_menon_at_0"] > m["val_menon_at_0.06"] + 10 and "val_cpsnr_at_0.03922" in m
    ck = read_checkpoint(run / "best.pt")
    assert ck.arch == "jdd" and ck.meta["profile"]["noise"] == [0.0, 0.06]
    assert ck.meta["profile"]["patterns"] == ["RGGB", "BGGR", "GRBG", "GBRG"]
    code, out = _cli(*args, "--epochs", 2)  # resumes from last.pt
    assert code == 0, out
    assert [h["epoch"] for h in read_checkpoint(run / "last.pt").meta["history"]] == [1, 2]
    code, out = _cli(*[a if a != "0..0.06" else "0.02" for a in args], "--epochs", 3)
    assert code == 2 and "other settings" in out and "noise" in out


def test_bad_training_options_are_one_line(folders, tmp_path):
    base = ["train", "demosaic", "--data", folders / "clean", "--output", tmp_path / "r"]
    code, out = _cli(*base, "--noise", "0..x")
    assert code == 2 and "--noise" in out
    code, out = _cli(*base, "--patterns", "RGGB,XYZW")
    assert code == 2 and "XYZW" in out
    code, out = _cli(*base, "--patch", 30)
    assert code == 2 and "multiple of 4" in out


def test_a_trained_checkpoint_demosaicks_files(folders, tmp_path):
    from imagingflows.pipelines.demosaic_train import train

    run = tmp_path / "run"
    train(folders / "clean", run, {"val_data": str(folders / "val"), "epochs": 1, "steps_per_epoch": 2,
                                   "batch_size": 2, "patch": 32, "val_crop": 64, "noise_model": "poisson-gaussian",
                                   "arch_config": {"width": 8, "enc_blocks": 1, "mid_blocks": 1}})
    rgb = data.chelsea()[:64, :96].astype(np.float32) / 255
    m = make_mosaic(torch.from_numpy(rgb).permute(2, 0, 1)[None], "GBRG")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "m.tif", np.round(m[0, 0].numpy() * 65535).astype(np.uint16))
    code, out = _cli("demosaic", "--input", tmp_path / "in", "--output", tmp_path / "out", "--method", "jdd",
                     "--weights", run / "best.pt", "--pattern", "GBRG", "--noise", 0.01)
    assert code == 0, out
    got = tifffile.imread(tmp_path / "out" / "m.tif")
    mosaic = torch.from_numpy(np.round(m[0, 0].numpy() * 65535) / 65535).float()[None, None]
    want = get_method("jdd", weights=run / "best.pt")(mosaic, "GBRG", noise=0.01)[0].clamp(0, 1)
    assert np.array_equal(got, np.round(want.permute(1, 2, 0).numpy() * 65535).astype(np.uint16))
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["items"]["m"]["summary"]["method"] == "jdd"
