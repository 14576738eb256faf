"""`run-flow demosaic` on mosaic files: every pattern through real PNG/TIFF files equals the method run
directly, the real 10-bit sensor mosaic keeps its samples where its CFA says, bad mosaics fail alone with
their reason, outputs are 16-bit RGB TIFF or 8-bit PNG with a preview."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import data

from imagingflows.flows import run_pipeline
from imagingflows.models.cfa import mosaic as make_mosaic
from imagingflows.models.demosaic_methods import get_method

ROOT = Path(__file__).resolve().parents[1]
HALIDE = ROOT / "sample_data" / "demosaic" / "halide_bayer_small.png"  # GRBG, black 25, white 1023


def _clean() -> np.ndarray:
    return data.astronaut()[100:228, 150:310].astype(np.float32) / 255.0  # (128, 160, 3)


def _mosaic_u16(rgb: np.ndarray, pattern: str) -> np.ndarray:
    m = make_mosaic(torch.from_numpy(rgb).permute(2, 0, 1)[None], pattern)[0, 0].numpy()
    return np.round(m * 65535).astype(np.uint16)


def _cpsnr(a: np.ndarray, b: np.ndarray, crop: int = 4) -> float:
    a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_each_pattern_through_files_equals_the_method(tmp_path, pattern):
    clean = _clean()
    raw = _mosaic_u16(clean, pattern)
    (tmp_path / "in").mkdir()
    Image.fromarray(raw).save(tmp_path / "in" / "png16.png")
    tifffile.imwrite(tmp_path / "in" / "tif16.tif", raw)
    out = tmp_path / "out"
    result = run_pipeline("demosaic", tmp_path / "in", out, pattern=pattern, method="malvar")
    assert result["counts"]["done"] == 2, result["errors"]
    expected = get_method("malvar")(torch.from_numpy(raw.astype(np.float32) / 65535)[None, None], pattern)
    expected = np.round(expected[0].clamp(0, 1).permute(1, 2, 0).numpy() * 65535).astype(np.uint16)
    for name in ("png16", "tif16"):
        got = tifffile.imread(out / f"{name}.tif")
        assert got.dtype == np.uint16 and got.shape == (128, 160, 3)
        assert np.array_equal(got, expected)
        assert (out / "previews" / f"{name}.png").is_file()
    assert _cpsnr(expected.astype(np.float64) / 65535, clean) > 30  # the right pattern demosaicks the image
    wrong = {"RGGB": "GRBG", "GRBG": "RGGB", "BGGR": "GBRG", "GBRG": "BGGR"}[pattern]
    shifted = get_method("malvar")(torch.from_numpy(raw.astype(np.float32) / 65535)[None, None], wrong)
    assert _cpsnr(shifted[0].clamp(0, 1).permute(1, 2, 0).numpy(), clean) < 25  # a wrong one does not


def test_the_real_sensor_mosaic_keeps_its_samples_where_its_cfa_says(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / HALIDE.name).write_bytes(HALIDE.read_bytes())
    result = run_pipeline("demosaic", tmp_path / "in", out, pattern="GRBG", black=25, white=1023,
                          method="bilinear", format="png")
    assert result["counts"]["done"] == 1, result["errors"]
    entry = json.loads((out / "run.json").read_text())["items"]["halide_bayer_small"]
    assert entry["summary"]["white"] == 1023 and entry["summary"]["clipped"] > 0  # values reach 1053
    raw = np.asarray(Image.open(HALIDE)).astype(np.float64)
    rgb = np.asarray(Image.open(out / "halide_bayer_small.png"))
    assert rgb.shape == (344, 256, 3) and rgb.dtype == np.uint8
    level = np.clip((raw - 25) / 998, 0, 1) * 255
    # GRBG: green at (0, 0) and (1, 1), red at (0, 1), blue at (1, 0); bilinear keeps each known sample
    for (r, c), channel in {(0, 0): 1, (1, 1): 1, (0, 1): 0, (1, 0): 2}.items():
        assert np.abs(rgb[r::2, c::2, channel] - level[r::2, c::2]).max() <= 0.5 + 1e-9


def test_bad_mosaics_fail_alone_with_their_reason(tmp_path):
    clean = _clean()
    raw = _mosaic_u16(clean, "RGGB")
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(raw).save(inp / "good.png")
    Image.fromarray((clean * 255).astype(np.uint8)).save(inp / "colour.png")
    Image.fromarray(raw[:, :159]).save(inp / "odd.png")
    (inp / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
    result = run_pipeline("demosaic", inp, tmp_path / "out", pattern="RGGB", method="bilinear")
    assert result["outcomes"] == {"good": "done", "colour": "failed", "odd": "failed", "broken": "failed"}
    errors = result["errors"]
    assert "colour.png: has 3 channels" in errors["colour"] and "not a single-channel CFA mosaic" in errors["colour"]
    assert "odd.png: odd width 159" in errors["odd"] and "--crop-odd" in errors["odd"]
    assert "broken.tif" in errors["broken"]
    assert not (tmp_path / "out" / "colour.tif").exists() and not (tmp_path / "out" / "odd.tif").exists()

    cropped = run_pipeline("demosaic", inp, tmp_path / "cropped", pattern="RGGB", method="bilinear", crop_odd=True)
    assert cropped["outcomes"]["odd"] == "done"
    assert tifffile.imread(tmp_path / "cropped" / "odd.tif").shape == (128, 158, 3)

    unstated = run_pipeline("demosaic", inp, tmp_path / "nopattern", method="bilinear")
    assert "--pattern" in unstated["errors"]["good"] and unstated["counts"]["done"] == 0


def test_levels_that_cannot_work_are_a_usage_error(tmp_path):
    from imagingflows.flows.run import UsageError

    (tmp_path / "in").mkdir()
    Image.fromarray(_mosaic_u16(_clean(), "RGGB")).save(tmp_path / "in" / "m.png")
    with pytest.raises(UsageError, match="--white .* must be above --black"):
        run_pipeline("demosaic", tmp_path / "in", tmp_path / "out", pattern="RGGB", black=100, white=50)


def test_demosaicnet_runs_from_the_installed_package_and_beats_malvar(tmp_path):
    pytest.importorskip("rawpy")  # the demosaic extra; demosaicnet's weights come with it
    from imagingflows.models.demosaicnet import DemosaicNetError, load_package_state_dict

    try:
        load_package_state_dict()
    except DemosaicNetError as e:
        pytest.skip(str(e))
    clean = _clean()
    raw = _mosaic_u16(clean, "GBRG")
    (tmp_path / "in").mkdir()
    Image.fromarray(raw).save(tmp_path / "in" / "m.png")
    result = run_pipeline("demosaic", tmp_path / "in", tmp_path / "out", pattern="GBRG", method="demosaicnet")
    assert result["counts"]["done"] == 1, result["errors"]
    got = tifffile.imread(tmp_path / "out" / "m.tif").astype(np.float64) / 65535
    malvar = get_method("malvar")(torch.from_numpy(raw.astype(np.float32) / 65535)[None, None], "GBRG")
    assert _cpsnr(got, clean) > _cpsnr(malvar[0].clamp(0, 1).permute(1, 2, 0).numpy(), clean) + 2
