"""Restore training: on-the-fly degradations, paired folders, resume, validation gain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagingflows.models.checkpoints import read_checkpoint
from imagingflows.pipelines.restore_train import degrade, train

TINY_NAFNET = {"width": 8, "enc_blk_nums": [1], "dec_blk_nums": [1], "middle_blk_num": 1}
TINY_HAT = {"embed_dim": 24, "depths": [1], "num_heads": [2], "window_size": 4, "squeeze_factor": 8}


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    import skimage.data as data

    d = tmp_path_factory.mktemp("clean")
    for name in ("astronaut", "chelsea", "coffee", "camera"):
        a = getattr(data, name)()
        Image.fromarray(a[:96, :128]).save(d / f"{name}.png")
    return d


def test_gaussian_noise_has_the_asked_sigma_and_is_8_bit():
    clean = torch.full((1, 3, 128, 128), 0.5)
    noisy = degrade(clean, "denoise", sigma=25, scale=1, gen=torch.Generator().manual_seed(0))
    assert abs(float((noisy - clean).std()) * 255 - 25) < 0.5
    assert torch.equal(noisy, torch.round(noisy * 255) / 255)


def test_sr_and_deblur_degradations():
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand((2, 3, 64, 48), generator=gen)
    low = degrade(clean, "sr", sigma=0, scale=2, gen=gen)
    assert low.shape == (2, 3, 32, 24)
    blurred = degrade(clean, "deblur", sigma=0, scale=1, gen=gen)
    assert blurred.shape == clean.shape
    # blur removes high frequencies: neighbour differences shrink
    assert float((blurred[..., 1:] - blurred[..., :-1]).abs().mean()) < 0.5 * float(
        (clean[..., 1:] - clean[..., :-1]).abs().mean())


def test_denoise_training_improves_and_resumes(clean_dir, tmp_path):
    run = tmp_path / "run"
    cfg = {"task": "denoise", "epochs": 1, "steps_per_epoch": 30, "batch_size": 4, "patch": 32,
           "val_fraction": 0.25, "lr": 2e-3, "arch_config": TINY_NAFNET}
    first = train(clean_dir, run, cfg)
    assert first["epochs_done"] == 1 and (run / "best.pt").is_file() and (run / "training_curve.png").is_file()
    h = first["history"][-1]
    assert 19.0 < h["val_input_psnr"] < 22.0  # sigma 25 on the 0-255 scale
    assert h["val_gain_db"] > 0, h  # even 30 steps of a tiny NAFNet beat the noisy input
    ck = read_checkpoint(run / "best.pt")
    assert ck.meta["profile"] == {"task": "denoise", "scale": 1, "sigma": 25.0}
    second = train(clean_dir, run, {**cfg, "epochs": 2})
    assert [e["epoch"] for e in second["history"]] == [1, 2]
    assert second["split"] == first["split"]


def test_sr_training_from_paired_folders(clean_dir, tmp_path):
    lowres = tmp_path / "low"
    lowres.mkdir()
    for p in clean_dir.glob("*.png"):
        im = Image.open(p)
        im.resize((im.width // 2, im.height // 2), Image.BICUBIC).save(lowres / p.name)
    cfg = {"task": "sr", "scale": 2, "epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "patch": 32,
           "val_fraction": 0.25, "input": str(lowres), "reference": str(clean_dir), "loss": "charbonnier",
           "arch_config": TINY_HAT}
    out = train(None, tmp_path / "run", cfg)
    assert out["model"]["arch"] == "hat" and out["model"]["config"]["upscale"] == 2
    assert np.isfinite(out["history"][-1]["val_psnr"])
    with pytest.raises(ValueError, match="upscales x2"):
        train(None, tmp_path / "run", {**cfg, "scale": 3})


@pytest.mark.parametrize("task, least_gain_db", [("denoise", 4.0), ("deblur", 0.5), ("sr", 0.2)])
def test_bundled_demo_weights_improve_a_held_out_crop(task, least_gain_db):
    """The shipped demo weights (models/weights/, see MODEL_CARD.md) restore a held-out sample crop
    degraded as in training: PSNR gain over the degraded input (SR: over bicubic upscaling)."""
    from pathlib import Path

    import torch.nn.functional as F

    from imagingflows.pipelines import restoration
    from imagingflows.tasks.evaluate import psnr
    from imagingflows.tasks.image_io import read_image

    clean = read_image(Path(__file__).resolve().parents[1] / "sample_data" / "restore" / "astronaut.png").array
    clean = np.ascontiguousarray(clean[64:192, 96:224, :3])  # (128, 128, 3) uint8, held out from training
    cfg = restoration.prepare({"task": task, "device": "cpu", "precision": "fp32"})  # no --weights: the demo file
    x = torch.from_numpy(clean).permute(2, 0, 1)[None].float() / 255
    low = degrade(x, task, sigma=25.0, scale=2, gen=torch.Generator().manual_seed(3))
    low_u8 = np.ascontiguousarray((low[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    out, _, _ = restoration.restore_array(low_u8, cfg)
    if task == "sr":
        base = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
        base_u8 = (base[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        before = psnr(base_u8, clean, crop_border=2, y_channel=True)
        after = psnr(out, clean, crop_border=2, y_channel=True)
    else:
        before, after = psnr(low_u8, clean), psnr(out, clean)
    print(f"{task}: {before:.2f} dB -> {after:.2f} dB")
    assert out.shape == clean.shape and after - before >= least_gain_db


def test_sigma_takes_a_level_or_a_range():
    from imagingflows.pipelines.restore_train import parse_sigma

    assert parse_sigma("25") == 25.0 and parse_sigma(25) == 25.0 and parse_sigma("7.5") == 7.5
    assert parse_sigma("0-50") == (0.0, 50.0) and parse_sigma("10-10") == 10.0
    for bad in ("50-0", "abc", "-5", "0-300"):
        with pytest.raises(ValueError, match="--sigma"):
            parse_sigma(bad)
    # the string "25" draws exactly the noise the number 25.0 drew
    clean = torch.full((2, 3, 32, 32), 0.4)
    a = degrade(clean, "denoise", sigma=parse_sigma("25"), scale=1, gen=torch.Generator().manual_seed(1))
    b = degrade(clean, "denoise", sigma=25.0, scale=1, gen=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_a_sigma_range_draws_a_level_per_crop_clean_ones_included():
    clean = torch.full((64, 3, 48, 48), 0.5)
    noisy = degrade(clean, "denoise", sigma=(0.0, 50.0), scale=1, gen=torch.Generator().manual_seed(0))
    levels = ((noisy - clean).flatten(1).std(dim=1) * 255).numpy()
    assert levels.max() > 40 and (levels < 0.5).sum() >= 3  # strong noise, and some crops left clean
    assert np.all(levels < 52)
    assert torch.equal(noisy, torch.round(noisy * 255) / 255)


def test_photometric_darkens_and_flattens_some_crops_on_the_8_bit_grid():
    from imagingflows.pipelines.restore_train import photometric

    gen = torch.Generator().manual_seed(0)
    clean = torch.rand((64, 3, 32, 32), generator=gen) * 0.6 + 0.2
    out = photometric(clean, gen)
    means = out.mean(dim=(1, 2, 3))
    changed = (out != clean).flatten(1).any(dim=1)
    assert 0.3 < float(changed.float().mean()) < 0.9  # some crops, not all
    assert float(means.min()) < 0.1  # dark crops (mean under 25/255) are made
    assert torch.equal(out[changed], torch.round(out[changed] * 255) / 255)
    assert torch.equal(out[~changed], clean[~changed])


def test_blind_photometric_training_records_what_it_used(clean_dir, tmp_path):
    cfg = {"task": "denoise", "epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "patch": 32, "val_fraction": 0.25,
           "sigma": "0-50", "photometric": True, "arch_config": TINY_NAFNET}
    out = train(clean_dir, tmp_path / "run", cfg)
    profile = read_checkpoint(tmp_path / "run" / "best.pt").meta["profile"]
    assert profile["sigma"] == [0.0, 50.0] and profile["blind"] is True and profile["val_sigmas"] == [5.0, 25.0, 50.0]
    assert profile["photometric"]["gain"] == [0.05, 1.2]
    # validation: each held-out image at sigma 5, 25 and 50: the mean input PSNR lies between them
    assert 18.0 < out["history"][-1]["val_input_psnr"] < 30.0
    with pytest.raises(ValueError, match="--photometric"):
        train(None, tmp_path / "run2", {**cfg, "input": str(clean_dir), "reference": str(clean_dir)})
