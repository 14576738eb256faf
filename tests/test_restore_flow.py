"""The restore pipeline end to end: real image files, real Prefect, tiny random-weight NAFNet and HAT.

- ``run-flow restore --task sr`` (HAT x2) and ``--task denoise`` (NAFNet, NAFNetLocal, tiled and whole)
  over ``sample_data/restore``: sizes (x scale), bit depth, gray/RGB/RGBA, ICC, JPEG -> PNG, subfolders;
- run.json (task, weights hash, variant, tiles, notes) and report.html (previews);
- bad inputs fail one by one with the file named (exit 1, nothing partial written, inputs untouched);
- checkpoints that do not fit the task or scale exit 2 with one message; ``--resume`` skips done images;
- ``run-flow evaluate restore`` (run then score, and ``--predictions``): PSNR/SSIM per image in the
  BasicSR recipe of the task, labelled, and the mean.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from imagingflows.flows.cli import app
from imagingflows.flows import restore
from imagingflows.pipelines import restoration
from imagingflows.tasks.evaluate import restore_metrics
from imagingflows.tasks.image_io import read_image, write_image
from imagingflows.tasks.preview import LABEL_BAND_PX

from bicubic import _cubic, bicubic_reference

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data" / "restore"
SAMPLE_FILES = ("astronaut.png", "camera.png", "chelsea.jpg", "coffee_rgba.png", "tiff/rocket_16bit.tif")

NAFNET_CFG = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1],
              "local_train_size": None}
HAT_CFG = {"in_chans": 3, "embed_dim": 24, "depths": [2], "num_heads": [2], "window_size": 8, "upscale": 2,
           "compress_ratio": 3, "squeeze_factor": 8, "mlp_ratio": 2.0}


def _cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save(path: Path, build, arch: str, cfg: dict, out_gain: float = 1.0) -> Path:
    from imagingflows.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    net = build(**cfg)
    if out_gain != 1.0:  # a random HAT's output is near-constant, which the collapse check rejects
        with torch.no_grad():
            net.conv_last.weight.mul_(out_gain)
            net.conv_last.bias.mul_(out_gain)
    return save_checkpoint(path, net, arch=arch, config=cfg)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    from imagingflows.models import hat, nafnet

    d = tmp_path_factory.mktemp("restore_weights")
    return {
        "nafnet": _save(d / "nafnet_w8.pt", nafnet.build, "nafnet", NAFNET_CFG),
        "nafnet_gray": _save(d / "nafnet_gray.pt", nafnet.build, "nafnet", {**NAFNET_CFG, "img_channel": 1}),
        "hat_x2": _save(d / "hat_x2.pt", hat.build, "hat", HAT_CFG, out_gain=30.0),
    }


@pytest.fixture(scope="module")
def sr_run(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sr") / "out"
    code, output = _cli("restore", "--task", "sr", "--scale", "2", "--input", SAMPLES, "--output", out,
                        "--weights", weights["hat_x2"], "--device", "cpu", "--quiet")
    assert code == 0, output
    return out


@pytest.fixture(scope="module")
def denoise_run(weights, tmp_path_factory) -> tuple[Path, dict]:
    """Python API; tiles of 96 px with 16 px context; images up to 50 000 pixels run whole."""
    out = tmp_path_factory.mktemp("denoise") / "out"
    result = restore(SAMPLES, out, task="denoise", weights=str(weights["nafnet"]), tile=96, overlap=16,
                     whole_max_pixels=50_000, nafnet_local=(64, 64), device="cpu")
    return out, result


def _out_rel(name: str) -> str:
    return name[:-4] + ".png" if name.endswith(".jpg") else name


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_sr_output_is_twice_the_size_same_depth_mode_and_icc(sr_run, name):
    src = read_image(SAMPLES / name)
    out = read_image(sr_run / _out_rel(name))
    assert out.array.shape == (2 * src.height, 2 * src.width, src.channels)
    assert out.bit_depth == src.bit_depth and out.array.dtype == src.array.dtype
    assert out.icc_profile == src.icc_profile
    assert out.format == ("PNG" if name.endswith(".jpg") else src.format)


def test_sr_jpeg_written_as_png_and_nothing_else(sr_run):
    assert (sr_run / "chelsea.png").is_file() and not (sr_run / "chelsea.jpg").exists()
    files = sorted(p.relative_to(sr_run).as_posix() for p in sr_run.rglob("*") if p.is_file())
    assert files == sorted(
        [_out_rel(n) for n in SAMPLE_FILES] + [f"previews/{n}.png" for n in SAMPLE_FILES]
        + ["report.html", "report.md", "run.json", "run.log"]
    )


def test_alpha_upscale_x2_gives_the_values_worked_out_by_hand():
    """x2 puts output centres a quarter and three quarters between input pixels: taps at 0.25, 0.75, 1.25, 1.75."""
    w = _cubic(np.array([0.25, 0.75, 1.25, 1.75]))
    np.testing.assert_array_equal(w, [0.8671875, 0.2265625, -0.0703125, -0.0234375])  # exact in binary
    # a hard edge 0 | 255: the two pixels beside it get 255 * (0.2265625 - 0.0234375) = 51.80 and
    # 255 * (0.8671875 - 0.0703125) = 203.20; the overshoots (-17.9, 272.9) are clipped
    edge = np.repeat(np.array([[0] * 4 + [255] * 4], np.uint8), 3, axis=0)
    want = np.repeat(np.array([[0] * 7 + [52, 203] + [255] * 7], np.uint8), 6, axis=0)
    np.testing.assert_array_equal(restoration.upscale_alpha(edge, 2), want)
    np.testing.assert_array_equal(restoration.upscale_alpha(np.ascontiguousarray(edge.T), 2), want.T)  # axes kept
    want16 = np.repeat(np.array([[0] * 7 + [13312, 52223] + [65535] * 7], np.uint16), 6, axis=0)  # 65535 * the same
    np.testing.assert_array_equal(restoration.upscale_alpha(edge.astype(np.uint16) * 257, 2), want16)
    # constant alpha stays constant: the border taps are dropped and the rest renormalised
    for const, dtype in ((200, np.uint8), (40000, np.uint16)):
        up = restoration.upscale_alpha(np.full((5, 7), const, dtype), 2)
        assert up.shape == (10, 14) and up.dtype == dtype and np.all(up == const)
    # a 2x2 checker: at the border only 2 taps remain, renormalised weights on the far pixel are
    # -0.0703125 / 0.796875 = -0.0882 (outer) and 0.2265625 / 1.09375 = 0.2071 (inner); e.g. the
    # value next to the corner is 255 * (1.0882 * 0.2071 - 0.0882 * 0.7929) = 39.6
    checker = restoration.upscale_alpha(np.array([[0, 255], [255, 0]], np.uint8), 2)
    np.testing.assert_array_equal(checker, [[0, 40, 215, 255], [40, 84, 171, 215], [215, 171, 84, 40],
                                            [255, 215, 40, 0]])


def test_sr_alpha_upscaled_separately_with_bicubic(sr_run):
    src = read_image(SAMPLES / "coffee_rgba.png")
    out = read_image(sr_run / "coffee_rgba.png")
    assert len(np.unique(src.alpha)) > 100  # a soft alpha: rounding and clipping are exercised
    np.testing.assert_array_equal(out.alpha, bicubic_reference(src.alpha, 2))
    np.testing.assert_array_equal(bicubic_reference(np.array([[0, 255], [255, 0]], np.uint8), 2)[0], [0, 40, 215, 255])


def test_sr_icc_profile_carried(sr_run):
    assert read_image(SAMPLES / "astronaut.png").icc_profile  # the sample has one
    assert read_image(sr_run / "astronaut.png").icc_profile == read_image(SAMPLES / "astronaut.png").icc_profile


def test_sr_run_json_records_task_weights_variant_tiles(sr_run, weights):
    run = json.loads((sr_run / "run.json").read_text())
    cfg = run["config"]
    assert (cfg["task"], cfg["scale"], cfg["tile"], cfg["overlap"]) == ("sr", 2, 512, 32)
    assert cfg["whole_max_pixels"] is None  # HAT always runs in tiles
    assert cfg["weights_sha256"] == _sha256(weights["hat_x2"]) == run["model"]["weights_sha256"]
    assert run["model"]["arch"] == "hat" and run["model"]["config"]["upscale"] == 2
    assert run["summary"]["done"] == len(SAMPLE_FILES)
    for name in SAMPLE_FILES:
        entry = run["items"][name]
        assert entry["status"] == "done" and entry["weights_sha256"] == cfg["weights_sha256"]
        assert entry["outputs"] == {"image": _out_rel(name), "previews": [f"previews/{name}.png"]}
        src = read_image(SAMPLES / name)
        # auto runs 16-bit images in fp32 whatever it resolved to (bf16 on a native-bf16 host)
        auto16 = src.bit_depth == 16 and cfg.get("precision_requested") == "auto"
        assert entry["inference"]["tiles"] == 1
        assert entry["inference"]["precision"] == ("fp32" if auto16 else cfg["precision"])
        assert entry["summary"]["size_out"] == f"{2 * src.width}x{2 * src.height}"
        assert entry["summary"]["bit_depth"] == src.bit_depth
    assert any("lossless PNG" in n for n in run["items"]["chelsea.jpg"]["notes"])
    assert any("R = G = B" in n for n in run["items"]["camera.png"]["notes"])
    assert any("upscaled x2" in n for n in run["items"]["coffee_rgba.png"]["notes"])


def test_sr_report_lists_previews(sr_run):
    html = (sr_run / "report.html").read_text()
    for name in SAMPLE_FILES:
        assert f'src="previews/{name}.png"' in html
        prev = read_image(sr_run / "previews" / f"{name}.png")
        side = min(256, 2 * read_image(SAMPLES / name).height)
        assert prev.array.shape == (side + LABEL_BAND_PX, 2 * side + 4, 3)  # captions; before | 4 px gap | after


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_denoise_keeps_size_depth_mode_and_alpha(denoise_run, name):
    out_dir, result = denoise_run
    assert result["counts"] == {"done": len(SAMPLE_FILES), "failed": 0, "skipped": 0}
    src = read_image(SAMPLES / name)
    out = read_image(out_dir / _out_rel(name))
    assert out.array.shape == src.array.shape and out.array.dtype == src.array.dtype
    assert out.icc_profile == src.icc_profile
    if src.has_alpha:
        np.testing.assert_array_equal(out.alpha, src.alpha)  # passed through untouched
    if src.bit_depth == 16:
        assert np.any(out.array % 257 != 0)  # real 16-bit values, not 8-bit ones scaled up


def test_denoise_tiles_or_whole_and_variant_recorded(denoise_run):
    out_dir, _ = denoise_run
    run = json.loads((out_dir / "run.json").read_text())
    assert run["model"]["variant"] == {"local_train_size": [64, 64]}
    assert run["config"]["model_overrides"] == {"local_train_size": [64, 64]}
    assert run["config"]["task"] == "denoise" and run["config"]["scale"] == 1
    infer = {k: v["inference"] for k, v in run["items"].items()}
    assert infer["coffee_rgba.png"]["whole"] and infer["coffee_rgba.png"]["tiles"] == 1  # 49 152 px
    assert not infer["astronaut.png"]["whole"] and infer["astronaut.png"]["tiles"] == 16  # 256 px, step 64: 4 x 4 tiles
    assert infer["astronaut.png"]["tile"] == 96 and infer["astronaut.png"]["overlap"] == 16
    # NAFNetLocal pools locally: no whole-image means to measure, one pass however pool_passes is set
    assert run["config"]["pool_passes"] == 1 and infer["astronaut.png"]["passes"] == 1
    assert any("passed through" in n for n in run["items"]["coffee_rgba.png"]["notes"])


# ----------------------------------------------------------------------------- channels

def _prepared(weights_path: Path, task: str = "denoise", **extra) -> dict:
    return restoration.prepare({"task": task, "weights": str(weights_path), "device": "cpu", "precision": "fp32",
                            **extra})


def test_gray_image_through_colour_model_is_the_mean_of_rgb(weights):
    from imagingflows.models.tiling import predict_tiles
    from imagingflows.tasks.image_io import quantize

    cfg = _prepared(weights["nafnet"])
    gray = read_image(SAMPLES / "camera.png").array[:64, :80]
    out, _, notes = restoration.restore_array(gray, cfg)
    assert out.shape == gray.shape and out.dtype == np.uint8 and notes
    lm = restoration.model_of(cfg)
    rgb, _ = predict_tiles(lm.module, np.repeat(gray, 3, axis=2), grid=lm.spec.grid_of(lm.config),
                           out_dtype=np.float32, whole_max_pixels=cfg["whole_max_pixels"])
    np.testing.assert_array_equal(out, quantize(rgb.mean(axis=2, keepdims=True), 8))


def test_rgb_image_through_gray_model_plane_by_plane(weights):
    cfg = _prepared(weights["nafnet_gray"])
    rgb = read_image(SAMPLES / "astronaut.png").array[:48, :64]
    out, _, notes = restoration.restore_array(rgb, cfg)
    assert out.shape == rgb.shape and "plane" in notes[0]
    for c in range(3):
        plane, _, _ = restoration.restore_array(np.ascontiguousarray(rgb[..., c:c + 1]), cfg)
        np.testing.assert_array_equal(out[..., c:c + 1], plane)


def test_nafnet_local_variant_is_an_explicit_option(weights):
    assert _prepared(weights["nafnet"], nafnet_local=(64, 48))["model"]["variant"] == {"local_train_size": [64, 48]}
    off = _prepared(weights["nafnet"], task="deblur", nafnet_local=(0, 0))  # 0 0: plain NAFNet, global pooling
    assert off["model"]["variant"] == {"local_train_size": None}
    assert off["model_overrides"] == {"local_train_size": None}


def test_auto_precision_runs_16_bit_images_in_fp32(weights):
    cfg = {**_prepared(weights["nafnet"]), "precision": "bf16", "precision_requested": "auto"}  # as on a bf16 CPU
    rgb16 = read_image(SAMPLES / "tiff" / "rocket_16bit.tif").array[:32, :32]
    _, run16, notes16 = restoration.restore_array(rgb16, cfg)
    _, run8, notes8 = restoration.restore_array((rgb16 >> 8).astype(np.uint8), cfg)
    assert run16["precision"] == "fp32" and "16-bit image run in fp32" in notes16[0]
    assert run8["precision"] == "bf16" and not notes8
    _, run_forced, _ = restoration.restore_array(rgb16, {**cfg, "precision_requested": "bf16"})
    assert run_forced["precision"] == "bf16"  # asked for explicitly: honoured


def test_tiny_images_are_padded_by_the_models(weights, tmp_path):
    src = tmp_path / "in"
    write_image(src / "one_pixel.png", np.full((1, 1, 3), 200, np.uint8))
    write_image(src / "gray16.tif", np.arange(15, dtype=np.uint16).reshape(3, 5, 1) * 4000)
    write_image(src / "rgba.png", np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8))
    result = restore(src, tmp_path / "out", task="sr", weights=str(weights["hat_x2"]), device="cpu")
    assert result["counts"]["done"] == 3, json.loads((tmp_path / "out" / "run.json").read_text())
    for name, shape in (("one_pixel.png", (2, 2, 3)), ("gray16.tif", (6, 10, 1)), ("rgba.png", (10, 14, 4))):
        assert read_image(tmp_path / "out" / name).array.shape == shape
        assert (tmp_path / "out" / "previews" / f"{name}.png").is_file()


# ----------------------------------------------------------------------------- bad inputs

@pytest.fixture(scope="module")
def bad_batch(weights, tmp_path_factory):
    src = tmp_path_factory.mktemp("bad") / "in"
    rgb = read_image(SAMPLES / "astronaut.png").array
    write_image(src / "good.png", rgb[:40, :48])
    (src / "sub").mkdir()
    from PIL import Image

    Image.fromarray(rgb[40:80, :56]).save(src / "sub" / "good2.jpg", quality=90)
    full = (src / "good.png").read_bytes()
    (src / "truncated.png").write_bytes(full[: len(full) // 2])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.png").write_text("this is not an image\n")
    (src / "photo.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    (src / "README.txt").write_text("ignored\n")
    before = {p.name: _sha256(p) for p in src.rglob("*") if p.is_file()}
    out = src.parent / "out"
    code, output = _cli("restore", "--task", "denoise", "--input", src, "--output", out,
                        "--weights", weights["nafnet"], "--device", "cpu", "--quiet",
                        "--whole-max-pixels", "0", "--tile", "32", "--overlap", "8")  # tiled, 2 passes
    return src, out, code, output, before


def test_bad_inputs_exit_1_and_good_ones_done(bad_batch):
    _, out, code, output, _ = bad_batch
    assert code == 1, output
    run = json.loads((out / "run.json").read_text())
    status = {k: v["status"] for k, v in run["items"].items()}
    assert status == {"good.png": "done", "sub/good2.jpg": "done", "truncated.png": "failed",
                      "empty.png": "failed", "notes.png": "failed", "photo.webp": "failed"}
    assert (out / "good.png").is_file() and (out / "sub" / "good2.png").is_file()
    for name in ("truncated.png", "empty.png", "notes.png", "photo.webp"):
        assert name in output  # the terminal names each failed file
    assert run["config"]["whole_max_pixels"] == 0 and run["config"]["pool_passes"] == 1
    good = run["items"]["good.png"]["inference"]  # 40 x 48: 2 x 2 tiles of 32, whole-image means measured first
    assert (good["whole"], good["tiles"], good["passes"]) == (False, 4, 2)


@pytest.mark.parametrize("name, words", [
    ("truncated.png", "truncated or corrupt"),
    ("empty.png", "empty file (0 bytes)"),
    ("notes.png", "not an image"),
    ("photo.webp", "not supported"),
])
def test_bad_input_error_names_the_file(bad_batch, name, words):
    _, out, _, _, _ = bad_batch
    error = json.loads((out / "run.json").read_text())["items"][name]["error"]
    assert name in error and words in error


def test_bad_inputs_leave_no_partial_output_and_inputs_untouched(bad_batch):
    src, out, _, _, before = bad_batch
    for name in ("truncated.png", "empty.png", "notes.png", "photo.webp"):
        assert not (out / name).exists() and not (out / "previews" / f"{name}.png").exists()
    assert not [p for p in out.rglob(".tmp-*")]
    assert {p.name: _sha256(p) for p in src.rglob("*") if p.is_file()} == before
    html = (out / "report.html").read_text()
    assert "truncated.png" in html and "Failed items" in html


# ----------------------------------------------------------------------------- exit 2

def _one_small_image(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    write_image(src / "a.png", read_image(SAMPLES / "astronaut.png").array[:32, :32])
    return src


@pytest.mark.parametrize("args, words", [
    (["--task", "denoise", "--weights", "hat_x2"], "HAT super-resolution x2"),
    (["--task", "sr", "--weights", "nafnet"], "needs a HAT checkpoint"),
    (["--task", "sr", "--scale", "4", "--weights", "hat_x2"], "HAT x2 model but --scale 4"),
    (["--task", "sr", "--weights", "hat_x2", "--nafnet-local", "64", "64"], "applies to NAFNet"),
    (["--task", "denoise", "--weights", "nafnet", "--tile", "64", "--overlap", "32"], "larger than twice"),
    (["--task", "denoise", "--scale", "2", "--weights", "nafnet"], "applies to --task sr only"),
    (["--task", "inpaint", "--weights", "nafnet"], "--task: Input should be 'denoise', 'deblur' or 'sr'"),
])
def test_exit_2_when_the_checkpoint_or_options_do_not_fit(tmp_path, weights, args, words):
    args = [str(weights[a]) if a in weights else a for a in args]
    code, output = _cli("restore", "--input", _one_small_image(tmp_path), "--output", tmp_path / "out", *args,
                        "--quiet")
    assert code == 2, output
    assert words in " ".join(output.split())
    assert not (tmp_path / "out" / "a.png").exists()


@pytest.mark.parametrize("args, words", [
    (["restore"], "--task is required"),
    (["restore", "--task", "inpaint"], "(got 'inpaint')"),
    (["segment", "--task", "denoise"], "No such option: --task"),
    (["restore", "--task", "sr", "--scale", "2"], "schedules need a Prefect server"),
])
def test_serve_checks_its_options_before_serving(tmp_path, monkeypatch, args, words):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code, output = _cli("serve", *args, "--input", tmp_path, "--output", tmp_path / "out", "--cron", "0 2 * * *")
    assert code == 2, output
    assert words in " ".join(output.split())


def test_exit_2_without_bundled_demo_weights(tmp_path, monkeypatch):
    from imagingflows.models import backend

    monkeypatch.setattr(backend, "WEIGHTS_DIR", tmp_path / "no_weights")
    for task, name in (("denoise", "nafnet_denoise"), ("sr", "hat_sr_x2")):
        code, output = _cli("restore", "--task", task, "--input", _one_small_image(tmp_path),
                            "--output", tmp_path / "out", "--quiet")
        text = " ".join(output.split())
        assert code == 2 and "no bundled demo weights" in text and name in text and "--weights" in text


# ----------------------------------------------------------------------------- resume

def test_resume_skips_done_images_and_redoes_changed_ones(tmp_path, weights):
    src = tmp_path / "in"
    rgb = read_image(SAMPLES / "chelsea.jpg").array
    write_image(src / "a.png", rgb[:40, :40])
    write_image(src / "b.tif", rgb[40:80, :48])
    out = tmp_path / "out"
    opts = dict(task="denoise", weights=str(weights["nafnet"]), device="cpu")
    assert restore(src, out, **opts)["counts"] == {"done": 2, "failed": 0, "skipped": 0}
    assert restore(src, out, resume=True, **opts)["counts"] == {"done": 0, "failed": 0, "skipped": 2}
    write_image(src / "b.tif", rgb[80:120, :48])  # new content, same name
    (out / "previews" / "a.png.png").unlink()  # a missing output is redone too
    result = restore(src, out, resume=True, **opts)
    assert result["outcomes"] == {"a.png": "done", "b.tif": "done"}
    assert restore(src, out, resume=True, **{**opts, "tile": 32, "overlap": 8})["counts"]["done"] == 2  # new config


# ----------------------------------------------------------------------------- evaluate

@pytest.fixture(scope="module")
def sr_pairs(tmp_path_factory) -> tuple[Path, Path]:
    """gt/ (one RGB, one odd-sized gray in a subfolder) and lr/ (bicubic x1/2, floor size)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("pairs")
    gt = {"a.png": read_image(SAMPLES / "astronaut.png").array[:64, :64],
          "sub/g.png": read_image(SAMPLES / "camera.png").array[:41, :50]}
    for rel, arr in gt.items():
        write_image(d / "gt" / rel, arr)
        im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        write_image(d / "lr" / rel, np.asarray(im.resize((arr.shape[1] // 2, arr.shape[0] // 2),
                                                         Image.Resampling.BICUBIC)))
    return d / "lr", d / "gt"


def test_evaluate_runs_then_scores_with_the_sr_recipe(sr_pairs, weights, tmp_path):
    lr, gt = sr_pairs
    ev = tmp_path / "ev"
    code, output = _cli("evaluate", "restore", "--task", "sr", "--scale", "2", "--input", lr, "--reference", gt,
                        "--output", ev, "--weights", weights["hat_x2"], "--device", "cpu", "--quiet")
    assert code == 0, output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["per_item"]) == {"a.png", "sub/g.png"}
    a, g = metrics["per_item"]["a.png"], metrics["per_item"]["sub/g.png"]
    assert a["recipe"] == "BasicSR: Y (BT.601, 16-235), crop 2"
    assert g["recipe"].startswith("BasicSR: gray, crop 2") and "reference cropped to 50x40" in g["recipe"]
    want = restore_metrics(read_image(ev / "a.png").color, read_image(gt / "a.png").color, "sr", 2)
    assert a["psnr"] == round(want["psnr"], 4) and a["ssim"] == round(want["ssim"], 5)
    assert {k: metrics["mean"][k] for k in ("psnr", "ssim")} == {"psnr": round((a["psnr"] + g["psnr"]) / 2, 5),
                                                                 "ssim": round((a["ssim"] + g["ssim"]) / 2, 5)}
    assert "psnr_input" in metrics["mean"] and "gain_db" in metrics["mean"]  # the bicubic baseline beside it
    assert "Y (BT.601, 16-235), crop 2" in metrics["conventions"]
    run = json.loads((ev / "run.json").read_text())  # the run's entries carry their metrics
    assert run["items"]["a.png"]["metrics"]["psnr"] == a["psnr"] and run["items"]["a.png"]["outputs"]
    html = (ev / "report.html").read_text()
    assert "BasicSR: Y (BT.601, 16-235), crop 2" in html and "psnr" in html

    # score only: task and scale come from the predictions' run.json
    code, output = _cli("evaluate", "restore", "--predictions", ev, "--reference", gt, "--output", tmp_path / "ev2",
                        "--quiet")
    assert code == 0, output
    again = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert again["per_item"] == metrics["per_item"] and again["mean"] == metrics["mean"]


def test_evaluate_predictions_denoise_rgb_recipe(tmp_path):
    clean = read_image(SAMPLES / "astronaut.png").array[:48, :48]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).round().astype(np.uint8)
    write_image(tmp_path / "pred" / "x.png", noisy)
    write_image(tmp_path / "gt" / "x.tif", clean)  # matched by name without suffix
    code, output = _cli("evaluate", "restore", "--task", "denoise", "--predictions", tmp_path / "pred",
                        "--reference", tmp_path / "gt", "--output", tmp_path / "ev", "--quiet")
    assert code == 0, output
    row = json.loads((tmp_path / "ev" / "metrics.json").read_text())["per_item"]["x.png"]
    want = restore_metrics(noisy, clean, "denoise")
    assert row == {"psnr": round(want["psnr"], 4), "ssim": round(want["ssim"], 5), "recipe": "BasicSR: RGB, crop 0"}


def test_evaluate_predictions_needs_the_task_and_a_reference(tmp_path):
    write_image(tmp_path / "pred" / "x.png", np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "gt").mkdir()
    code, output = _cli("evaluate", "restore", "--predictions", tmp_path / "pred", "--reference", tmp_path / "gt",
                        "--output", tmp_path / "ev", "--quiet")
    assert code == 2 and "--task" in output
    code, output = _cli("evaluate", "restore", "--task", "denoise", "--predictions", tmp_path / "pred",
                        "--output", tmp_path / "ev", "--quiet")
    assert code == 2 and "--reference" in output


# ----------------------------------------------------------------------------- discovery and samples

def test_discover_recursive_ids_collisions_and_skips(tmp_path):
    for rel in ("a.png", "a.jpg", "sub/b.TIF", "sub/deeper/c.jpeg", ".hidden/d.png", "old_out/e.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "old_out" / "run.json").write_text("{}")  # an earlier output folder inside the input
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "scan.bmp").write_bytes(b"x")
    items, errors = restoration.discover(tmp_path, {})
    assert [i.id for i in items] == ["a.png", "sub/b.TIF", "sub/deeper/c.jpeg"]
    assert dict(errors).keys() == {"a.jpg", "scan.bmp"}
    assert "would overwrite the output of a.png" in dict(errors)["a.jpg"]
    assert restoration.output_rel("sub/deeper/c.jpeg") == "sub/deeper/c.png"
    (tmp_path / "old_out" / "previews").mkdir()  # an output folder used as input: its previews left out
    (tmp_path / "old_out" / "previews" / "e.png.png").write_bytes(b"x")
    assert [i.id for i in restoration.discover(tmp_path / "old_out", {})[0]] == ["e.png"]
    assert restoration.output_rel("sub/b.TIF") == "sub/b.TIF"


def test_sample_generator_reproduces_the_committed_images():
    from sample_data import restore as samples

    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 2 * 1024 ** 2
    made = samples.images()
    assert sorted(made) == sorted(SAMPLE_FILES)
    for rel, arr in made.items():
        got = read_image(SAMPLES / rel)
        if rel.endswith(".jpg"):
            assert got.array.shape == arr.shape and np.abs(got.array.astype(int) - arr).mean() < 4
        else:
            np.testing.assert_array_equal(got.array, arr)
    assert read_image(SAMPLES / "astronaut.png").icc_profile == samples.srgb_profile()
