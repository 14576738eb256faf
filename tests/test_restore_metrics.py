"""Restoration PSNR/SSIM against golden values made by BasicSR 1.4.2 itself (tests/data/parity_metrics/)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from imagingflows.tasks.evaluate import psnr, restore_metrics, rgb_to_y, ssim, to_uint8

FIXTURE = Path(__file__).parent / "data" / "parity_metrics"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
TRAPS = GOLDEN["trap_demos_not_golden"]


@pytest.fixture(scope="module")
def cases():
    with np.load(FIXTURE / "cases.npz") as npz:
        return {k: npz[k] for k in npz.files}


METRICS = [(case, m) for case, info in GOLDEN["cases"].items() for m in info["metrics"]]


def _pair(cases, case):
    info = GOLDEN["cases"][case]
    return cases[info["test_key"]], cases[info["reference_key"]]


def test_fixture_arrays_are_the_ones_basicsr_scored(cases):
    for case, info in GOLDEN["cases"].items():
        test, ref = _pair(cases, case)
        assert hashlib.sha256(ref.tobytes()).hexdigest() == info["sha256_reference"]
        assert hashlib.sha256(test.tobytes()).hexdigest() == info["sha256_test"]


@pytest.mark.parametrize("case,m", METRICS, ids=[f"{c}-{m['metric']}" for c, m in METRICS])
def test_matches_basicsr_golden(cases, case, m):
    test, ref = _pair(cases, case)
    fn = psnr if m["metric"].startswith("psnr") else ssim
    ours = fn(test, ref, crop_border=m["crop_border"], y_channel=m["test_y_channel"])
    assert ours == pytest.approx(m["value"], abs=m["suggested_abs_tol"], rel=0)
    # BasicSR's own float32 Y round trip reproduces it to the last bits
    exact = fn(test, ref, crop_border=m["crop_border"], y_channel=m["test_y_channel"], y_float32=True)
    assert exact == pytest.approx(m["value"], abs=1e-10, rel=0)


@pytest.mark.parametrize("case", ["denoise_astronaut", "srx2_chelsea", "srx4_coffee"])
def test_common_mistakes_give_other_numbers(cases, case):
    """The traps of the fixture README, rebuilt here: each misses the golden value by far more than the tolerance."""
    test, ref = _pair(cases, case)
    by_name = {m["metric"]: m for m in GOLDEN["cases"][case]["metrics"]}
    b = by_name["psnr_y"]["crop_border"]
    crop = (lambda x: x[b:-b, b:-b]) if b else (lambda x: x)
    t, r = crop(test), crop(ref)
    golden_psnr, tol_psnr = by_name["psnr_y"]["value"], by_name["psnr_y"]["suggested_abs_tol"]
    golden_ssim, tol_ssim = by_name["ssim_y"]["value"], by_name["ssim_y"]["suggested_abs_tol"]
    traps = TRAPS[case]

    # 1. BGR weights on RGB data (= BasicSR fed RGB arrays)
    yt, yr = rgb_to_y(t[..., ::-1]), rgb_to_y(r[..., ::-1])
    wrong = peak_signal_noise_ratio(yr, yt, data_range=255)
    assert wrong == pytest.approx(traps["psnr_y_if_RGB_fed_instead_of_BGR (WRONG)"], abs=1e-6)
    assert abs(wrong - golden_psnr) > 1000 * tol_psnr
    wrong = structural_similarity(yr, yt, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert wrong == pytest.approx(traps["ssim_y_if_RGB_fed_instead_of_BGR (WRONG)"], abs=1e-8)
    assert abs(wrong - golden_ssim) > 1000 * tol_ssim

    # 2. Y rounded to integers (MATLAB style)
    yt, yr = rgb_to_y(t), rgb_to_y(r)
    wrong = peak_signal_noise_ratio(np.round(yr), np.round(yt), data_range=255)
    assert wrong == pytest.approx(traps["psnr_y_if_Y_rounded_to_uint8 (MATLAB-style, NOT BasicSR)"], abs=1e-6)
    assert abs(wrong - golden_psnr) > 1000 * tol_psnr

    # 3. scikit-image's SSIM defaults: 7x7 uniform window, sample covariance
    wrong = structural_similarity(yr, yt, data_range=255)
    demo = traps["ssim_skimage_DEFAULTS_on_y (win7 uniform, sample cov) (NOT BasicSR)"]
    assert wrong == pytest.approx(demo, abs=1e-8)
    assert abs(wrong - golden_ssim) > 1000 * tol_ssim

    # 4. data_range 219 for Y
    wrong = peak_signal_noise_ratio(yr, yt, data_range=219)
    assert abs(wrong - golden_psnr) > 1000 * tol_psnr

    # and ours is the right one among them
    assert psnr(test, ref, b, True) == pytest.approx(golden_psnr, abs=tol_psnr)


def test_rgb_psnr_is_one_mse_over_channels_not_a_mean_of_channel_psnrs(cases):
    test, ref = _pair(cases, "srx4_coffee")
    golden = next(m for m in GOLDEN["cases"]["srx4_coffee"]["metrics"] if m["metric"] == "psnr_rgb")
    b = golden["crop_border"]
    per_channel = np.mean([psnr(test[..., c], ref[..., c], b) for c in range(3)])
    assert abs(per_channel - golden["value"]) > 0.05
    assert psnr(test, ref, b) == pytest.approx(golden["value"], abs=1e-10)


def test_restore_metrics_picks_the_recipe_per_task(cases):
    test, ref = _pair(cases, "srx2_chelsea")
    golden = {m["metric"]: m for m in GOLDEN["cases"]["srx2_chelsea"]["metrics"]}
    sr = restore_metrics(test, ref, "sr", scale=2)
    assert sr["recipe"] == "BasicSR: Y (BT.601, 16-235), crop 2"
    assert sr["psnr"] == pytest.approx(golden["psnr_y"]["value"], abs=1e-6)
    assert sr["ssim"] == pytest.approx(golden["ssim_y"]["value"], abs=1e-8)

    test, ref = _pair(cases, "denoise_astronaut")
    golden = {m["metric"]: m for m in GOLDEN["cases"]["denoise_astronaut"]["metrics"]}
    for task in ("denoise", "deblur"):
        out = restore_metrics(test, ref, task, scale=1)
        assert out["recipe"] == "BasicSR: RGB, crop 0"
        assert out["psnr"] == pytest.approx(golden["psnr_rgb"]["value"], abs=1e-10)
        assert out["ssim"] == pytest.approx(golden["ssim_rgb"]["value"], abs=1e-10)

    test, ref = _pair(cases, "gray_camera")
    out = restore_metrics(test, ref, "denoise")
    assert out["recipe"] == "BasicSR: gray, crop 0"
    assert out["psnr"] == pytest.approx(GOLDEN["cases"]["gray_camera"]["metrics"][0]["value"], abs=1e-10)
    # (H, W, 1) is the same gray image
    assert restore_metrics(test[..., None], ref[..., None], "denoise")["psnr"] == out["psnr"]

    with pytest.raises(ValueError, match="unknown restoration task"):
        restore_metrics(test, ref, "inpaint")


def test_float_outputs_are_rounded_to_8_bit_the_basicsr_way(cases):
    test, ref = _pair(cases, "srx2_chelsea")
    rng = np.random.default_rng(0)
    # a model output that rounds back to `test`: off by < half a level, plus over/undershoot that clipping removes
    out = (test.astype(np.float32) + rng.uniform(-0.49, 0.49, test.shape).astype(np.float32)) / 255
    out[test == 255] += 0.3
    out[test == 0] -= 0.3
    assert np.array_equal(to_uint8(out), test)
    assert psnr(out, ref, 2, True) == psnr(test, ref, 2, True)
    assert ssim(out, ref, 2, True) == ssim(test, ref, 2, True)
    # round half to even on exact halves, as numpy/torch round
    assert to_uint8(np.array([0.5, 1.5, 2.5]) / 255).tolist() == [0, 2, 2]
    with pytest.raises(ValueError, match=r"\[0, 1\] scale"):
        psnr(test.astype(np.float64), ref)  # 0-255 floats are refused, not clipped to white
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.full(ref.shape, np.nan), ref)


def test_16_bit_metrics_keep_16_bit_precision(cases):
    test8, ref8 = _pair(cases, "srx4_coffee")
    # exact 8-bit values scaled to 16 bit give the 8-bit numbers
    test16, ref16 = test8.astype(np.uint16) * 257, ref8.astype(np.uint16) * 257
    for y, b in ((False, 0), (True, 4)):
        assert psnr(test16, ref16, b, y) == pytest.approx(psnr(test8, ref8, b, y), abs=1e-9)
        assert ssim(test16, ref16, b, y) == pytest.approx(ssim(test8, ref8, b, y), abs=1e-10)
    # 16-bit detail below one 8-bit step counts: it is not rounded away
    rng = np.random.default_rng(1)
    fine = np.clip(ref16.astype(np.int32) + rng.integers(-100, 101, ref16.shape), 0, 65535).astype(np.uint16)
    p = psnr(fine, ref16)
    assert p == pytest.approx(peak_signal_noise_ratio(ref16, fine, data_range=65535), abs=1e-9)
    assert 60 < p < 62  # noise of std ~58 levels out of 65535
    assert math.isinf(psnr(to_uint8(fine / 65535), ref8))  # rounded to 8 bit, all of it would vanish
    s = ssim(fine, ref16)
    native = structural_similarity(ref16.astype(np.float64), fine.astype(np.float64), data_range=65535,
                                   gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)
    assert s == pytest.approx(native, abs=1e-10)
    # a float output against a 16-bit reference is rounded to 16 bit
    assert psnr(fine.astype(np.float64) / 65535, ref16) == p
    out = restore_metrics(fine, ref16, "sr", scale=4)
    assert out["recipe"].startswith("BasicSR: Y (BT.601, 16-235), crop 4, 16-bit")
    with pytest.raises(ValueError, match="8-bit but ref is 16-bit"):
        psnr(test8, ref16)


def test_edge_cases(cases):
    test, ref = _pair(cases, "gray_camera")
    assert math.isinf(psnr(ref, ref)) and ssim(ref, ref) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(test[:-1], ref)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(test, ref, crop_border=256)
    with pytest.raises(ValueError, match="11x11"):
        ssim(test[:20, :20], ref[:20, :20], crop_border=5)
    with pytest.raises(ValueError, match="RGB"):
        psnr(np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8))


# ----------------------------------------------------------------------------- evaluate: the input's baseline

def _cli(*args):
    from typer.testing import CliRunner

    from imagingflows.flows.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "restore"


@pytest.mark.parametrize("task", ["denoise", "sr"])
def test_evaluate_with_input_scores_the_degraded_input_beside_the_model(task, tmp_path):
    """``evaluate restore --input``: psnr_input / ssim_input (the noisy input, or its bicubic upscaling
    for SR) against the reference, per image and in the mean, and gain_db = psnr - psnr_input."""
    import torch
    import torch.nn.functional as F

    from imagingflows.tasks.image_io import read_image, write_image

    rng = np.random.default_rng(0)
    inputs = {}
    for name in ("astronaut.png", "camera.png"):
        clean = np.ascontiguousarray(read_image(SAMPLES / name).array[:96, :96])
        write_image(tmp_path / "gt" / name, clean)
        if task == "denoise":
            low = np.clip(np.rint(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
        else:
            from PIL import Image

            im = Image.fromarray(clean[..., 0] if clean.shape[2] == 1 else clean)
            low = np.asarray(im.resize((48, 48), Image.Resampling.BICUBIC)).reshape(48, 48, -1)
        inputs[name] = (low, clean)
        write_image(tmp_path / "in" / name, low)
    args = ["--task", task] + (["--scale", "2"] if task == "sr" else [])
    code, output = _cli("evaluate", "restore", *args, "--input", tmp_path / "in", "--reference", tmp_path / "gt",
                        "--output", tmp_path / "ev", "--precision", "fp32", "--device", "cpu", "--quiet")
    assert code == 0, output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for name, (low, clean) in inputs.items():
        row = metrics["per_item"][name]
        if task == "sr":
            t = torch.from_numpy(low.astype(np.float32).transpose(2, 0, 1) / 255)[None]
            base = F.interpolate(t, scale_factor=2, mode="bicubic", align_corners=False)[0].clamp(0, 1)
            base = base.numpy().transpose(1, 2, 0)
        else:
            base = low
        want = restore_metrics(base, clean, task, 2 if task == "sr" else 1)
        assert row["psnr_input"] == round(want["psnr"], 4) and row["ssim_input"] == round(want["ssim"], 5), row
        assert row["gain_db"] == pytest.approx(row["psnr"] - row["psnr_input"], abs=1e-3)
        if task == "denoise":
            assert row["gain_db"] > 0, row  # the bundled demo denoiser beats its noisy input
    mean = metrics["mean"]
    for key in ("psnr_input", "ssim_input", "gain_db"):
        assert mean[key] == pytest.approx(np.mean([r[key] for r in metrics["per_item"].values()]), abs=1e-4)
    assert "psnr_input" in metrics["conventions"]
