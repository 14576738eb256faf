"""The bundled demo denoiser (models/weights/nafnet_denoise.pt, see MODEL_CARD.md) is blind and keeps exposure.

On the five held-out sample images (none of them in its training set), in fp32:
- a clean image comes back at >= 38 dB PSNR against itself (the sigma-25 model erased texture: 32 dB);
- an under-exposed copy (colour mean 11 on the 0-255 scale) keeps its mean within 5% (was 11 -> 2.8);
- low noise (sigma 10) is removed: >= 5 dB gain on astronaut (the sigma-25 model: 3.6 dB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imagingflows.pipelines import restoration
from imagingflows.tasks.evaluate import restore_metrics
from imagingflows.tasks.image_io import read_image

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "restore"
HELD_OUT = ("astronaut.png", "camera.png", "chelsea.jpg", "coffee_rgba.png", "tiff/rocket_16bit.tif")


@pytest.fixture(scope="module")
def cfg() -> dict:
    return restoration.prepare({"task": "denoise", "device": "cpu", "precision": "fp32"})  # the demo file


def _colour(name: str) -> np.ndarray:
    return np.ascontiguousarray(read_image(SAMPLES / name).color)


@pytest.mark.parametrize("name", HELD_OUT)
def test_clean_image_passes_at_38_db(cfg, name):
    clean = _colour(name)
    out, _, _ = restoration.restore_array(clean, cfg)
    got = restore_metrics(out, clean, "denoise", 1)["psnr"]
    assert got >= 38.0, f"{name}: {got:.2f} dB"


@pytest.mark.parametrize("name", HELD_OUT)
def test_dark_image_keeps_its_mean_within_5_percent(cfg, name):
    from sample_data.restore import underexpose

    dark = np.ascontiguousarray(underexpose(_colour(name), 11.0))
    out, _, _ = restoration.restore_array(dark, cfg)
    ratio = float(out.mean()) / float(dark.mean())
    assert abs(ratio - 1) <= 0.05, f"{name}: mean {dark.mean():.2f} -> {out.mean():.2f}"


def test_low_noise_gains(cfg):
    from imagingflows.pipelines.restore_train import degrade
    from imagingflows.tasks.image_io import from_float, to_float

    clean = _colour("astronaut.png")
    x = torch.from_numpy(to_float(clean))[None]
    noisy = from_float(degrade(x, "denoise", sigma=10.0, scale=1, gen=torch.Generator().manual_seed(10))[0].numpy())
    out, _, _ = restoration.restore_array(np.ascontiguousarray(noisy), cfg)
    before = restore_metrics(noisy, clean, "denoise", 1)["psnr"]
    after = restore_metrics(out, clean, "denoise", 1)["psnr"]
    assert after - before >= 5.0, (before, after)  # the sigma-25 model gained 3.6 dB here
