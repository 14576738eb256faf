"""`run-flow train` and `run-flow export` driven from the command line (real Prefect, real torch, tiny settings).

- ``train restore`` (NAFNet denoise from scratch, 1 epoch of 2 steps of 2 crops of 32 px, 3 small PNGs):
  exit 0, best.pt / last.pt, run.json with the epochs, the split and the result, the one-line summary;
- ``export`` of that best.pt: exit 0, a smaller file without training state that ``load_model`` reads;
  a missing file or a file that is not a checkpoint: exit 2 with one line naming it;
- ``train segment`` (Swin UNETR feature size 12, 4 mm, one 64^3 crop, 1 step) on 2 generated cases.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imagingflows.flows.cli import app
from imagingflows.models import load_model, read_checkpoint


def _cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _smooth_image(seed: int, h: int = 48, w: int = 56) -> np.ndarray:
    """(h, w, 3) uint8: a few random gradients and discs, something a denoiser can learn on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([rng.random() * xx + rng.random() * yy for _ in range(3)], axis=-1)
    for _ in range(3):
        cy, cx, r = rng.random() * h, rng.random() * w, 4 + rng.random() * 10
        img[(np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r] = rng.random(3)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def restore_run(tmp_path_factory) -> tuple[Path, int, str]:
    clean = tmp_path_factory.mktemp("clean")
    for i in range(3):
        Image.fromarray(_smooth_image(i)).save(clean / f"img{i}.png")
    run = tmp_path_factory.mktemp("train") / "run"
    code, output = _cli("train", "restore", "--data", clean, "--output", run, "--task", "denoise", "--epochs", 1,
                        "--steps-per-epoch", 2, "--batch-size", 2, "--patch", 32, "--val-fraction", 0.34,
                        "--device", "cpu", "--seed", 1)
    return run, code, output


def test_train_restore_from_the_cli_writes_checkpoints_and_run_json(restore_run):
    run, code, output = restore_run
    assert code == 0, output
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file() and (run / "training_curve.png").is_file()
    assert re.search(r"train restore: 1 epochs?, best validation PSNR [\d.]+ dB", output), output
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["command"] == "train" and manifest["pipeline"] == "restore"
    assert manifest["config"]["epochs"] == 1 and manifest["config"]["steps_per_epoch"] == 2
    assert manifest["config"]["batch_size"] == 2 and manifest["config"]["patch"] == 32
    assert manifest["result"]["epochs_done"] == 1 and np.isfinite(manifest["result"]["best_psnr"])
    assert sorted(k for k in manifest["items"] if k.startswith("epoch")) == ["epoch 001"]
    assert manifest["items"]["epoch 001"]["status"] == "done"
    split = manifest["split"]
    assert sorted(split["train"] + split["val"]) == ["img0", "img1", "img2"] and len(split["val"]) == 1
    assert manifest["model"]["arch"] == "nafnet"
    last = read_checkpoint(run / "last.pt")
    assert last.meta["train_state"]["epoch"] == 1  # what a resume starts from


def test_export_from_the_cli_drops_training_state_and_loads(restore_run, tmp_path):
    run, code, output = restore_run
    assert code == 0, output
    small = tmp_path / "small.pt"
    code, output = _cli("export", "--weights", run / "best.pt", "-o", small)
    assert code == 0, output
    assert small.is_file() and small.stat().st_size < (run / "best.pt").stat().st_size
    assert f"wrote{small}" in "".join(output.split())  # the console may wrap a long path anywhere
    ck = read_checkpoint(small)
    assert "train_state" not in ck.meta and ck.meta["exported_from_sha256"] == read_checkpoint(run / "best.pt").sha256
    net = load_model(small)
    trained = load_model(run / "best.pt")
    assert type(net).__name__ == type(trained).__name__ and not net.training
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net(x), trained(x)
    assert a.shape == b.shape == x.shape
    assert torch.allclose(a, b, atol=2e-2)  # float16 weights: close to the float32 ones, not equal
    last_small = tmp_path / "from_last.pt"
    assert _cli("export", "--weights", run / "last.pt", "-o", last_small)[0] == 0
    assert last_small.stat().st_size < (run / "last.pt").stat().st_size / 2  # the optimizer state is gone


BAD_FILES = {
    "empty": b"",
    "png": (Path(__file__).resolve().parents[1] / "sample_data" / "restore" / "camera.png").read_bytes()[:4096],
    "text": b"this is not a torch file",  # read as pickle opcodes: 't' (TUPLE) with nothing marked
}


@pytest.mark.parametrize("make", [
    "missing", "empty", "png", "text",  # text: torch's unpickler raised IndexError, once a traceback
])
def test_export_of_a_bad_file_exits_2_with_one_line(tmp_path, make):
    src = tmp_path / "best.pt"
    if make != "missing":
        src.write_bytes(BAD_FILES[make])
    code, output = _cli("export", "--weights", src, "-o", tmp_path / "small.pt")
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert code == 2, output
    assert len(lines) == 1 and "best.pt" in lines[0] and "Traceback" not in output, output
    assert not (tmp_path / "small.pt").exists()


def test_train_segment_from_the_cli(make_cases):
    data = make_cases(2, seed=0)
    run = data.parent / "run"
    code, output = _cli("train", "segment", "--data", data, "--output", run, "--epochs", 1, "--steps-per-epoch", 1,
                        "--batch-size", 1, "--roi", 64, 64, 64, "--spacing", 4, 4, 4, "--feature-size", 12,
                        "--val-fraction", 0.34, "--seed", 3, "--device", "cpu")
    assert code == 0, output
    assert re.search(r"train segment: 1 epochs?, best validation Dice [\d.]+", output), output
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["result"]["epochs_done"] == 1 and list(manifest["items"]) == ["epoch 001"]
    assert manifest["config"]["roi"] == [64, 64, 64] and manifest["config"]["spacing"] == [4.0, 4.0, 4.0]
    split = manifest["split"]
    assert sorted(split["train"] + split["val"]) == ["case00", "case01"] and len(split["val"]) == 1
    lm_cfg = read_checkpoint(run / "best.pt").config
    assert lm_cfg["feature_size"] == 12
