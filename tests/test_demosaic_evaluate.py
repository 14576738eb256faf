"""`run-flow evaluate demosaic --input rgb_gt/`: clean RGB references mosaicked (one seeded 16-bit mosaic for every
method), demosaicked by torch methods and LibRaw, scored (CPSNR per image, per channel, s/MP) and the table printed;
the scores recomputed here from the written files and from the methods run directly; LibRaw's output is in the
mosaic's own scale; noise lowers every score and is the same on a rerun; bad names and grey images fail cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import data

from imagingflows.models.cfa import masks
from imagingflows.models.demosaic_methods import get_method
from imagingflows.pipelines.demosaic_evaluate import item_seed, simulate_mosaic

METHODS = ["bilinear", "malvar", "menon", "rawpy-ahd"]
NOISE = 0.0392


def _refs() -> dict[str, np.ndarray]:
    return {"astronaut": data.astronaut()[100:196, 150:278], "coffee": data.coffee()[100:196, 200:328]}


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from imagingflows.flows.cli import build_app

    return CliRunner().invoke(build_app(), ["evaluate", "demosaic", *args])


def _cpsnr(a: np.ndarray, b: np.ndarray, border: int = 4) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64))[border:-border, border:-border]
    return float(10 * np.log10(1.0 / np.mean(d ** 2)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demosaic_eval")
    refs = root / "gt"
    refs.mkdir()
    for name, rgb in _refs().items():
        Image.fromarray(rgb).save(refs / f"{name}.png")
    outs = {}
    for key, noise in (("clean", 0.0), ("noisy", NOISE)):
        out = _cli(["--input", str(refs), "-o", str(root / key), "--methods", ",".join(METHODS),
                    "--noise", str(noise)])
        outs[key] = out
    return {"root": root, "refs": refs, "cli": outs}


def test_every_method_is_scored_recomputed_and_the_table_printed(runs):
    out = runs["cli"]["clean"]
    assert out.exit_code == 0, out.output
    for name in METHODS:
        assert f"| {name} |" in out.output  # the CPSNR table, one row per method
    assert "border 4 px" in out.output and "RGGB" in out.output
    ev = runs["root"] / "clean"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert sorted(metrics["per_item"]) == ["astronaut", "coffee"] and not metrics["failed"]
    for name in METHODS:
        for key in ("cpsnr", "psnr_r", "psnr_g", "psnr_b", "s_per_mp"):
            assert f"{key}_{name}" in metrics["mean"] and f"{key}_{name}" in metrics["per_item"]["coffee"]
    assert (ev / "cpsnr_table.md").is_file() and (ev / "cpsnr_table.csv").read_text().startswith("method,CPSNR")
    for image_id, ref_u8 in _refs().items():
        ref = ref_u8.astype(np.float64) / 255
        scores = metrics["per_item"][image_id]
        written = tifffile.imread(ev / image_id / "bilinear.tif")
        assert written.dtype == np.uint16 and written.shape == (96, 128, 3)
        assert scores["cpsnr_bilinear"] == pytest.approx(_cpsnr(written / 65535, ref), abs=1e-3)
        mosaic = tifffile.imread(ev / image_id / "mosaic.tif")
        assert np.array_equal(mosaic, simulate_mosaic(ref.astype(np.float32), "RGGB", 0.0, item_seed(image_id)))
        direct = get_method("bilinear")(torch.from_numpy(mosaic.astype(np.float32) / 65535)[None, None], "RGGB")
        direct = np.round(direct[0].clamp(0, 1).permute(1, 2, 0).numpy() * 65535).astype(np.uint16)
        assert np.array_equal(direct, written)  # the run's output is the method on that mosaic
        assert scores["cpsnr_menon"] > scores["cpsnr_bilinear"] + 2
        assert scores["cpsnr_rawpy-ahd"] > 30  # LibRaw's levels and scale are right (a 2x error gives < 10 dB)
        timing = json.loads((ev / image_id / "timing.json").read_text())
        assert timing["pattern"] == "RGGB" and timing["noise"] == 0 and set(timing["methods"]) == set(METHODS)
        assert (ev / "previews" / f"{image_id}.png").is_file()


def test_libraw_output_is_the_mosaic_in_its_own_scale():
    from imagingflows.tasks.dng_write import write_cfa_dng
    from imagingflows.tasks.libraw_develop import libraw_demosaic
    from imagingflows.tasks.raw_io import read_raw

    ref = _refs()["astronaut"].astype(np.float32) / 255
    for pattern, gain in (("GRBG", 1.0), ("BGGR", 0.8)):  # 0.8: below LibRaw's adjust_maximum_thr (0.75 of the
        ref = ref * gain  # white level triggers a rescale to the data maximum unless it is turned off)
        mosaic = simulate_mosaic(ref, pattern, 0.0, 0)
        rgb = libraw_demosaic(mosaic, pattern, "rawpy-ahd")
        site = masks(pattern, *mosaic.shape).numpy().transpose(1, 2, 0).astype(bool)
        own = np.repeat(mosaic[..., None] / 65535.0, 3, 2)
        assert np.abs(rgb[site] - own[site]).max() < 1e-6  # each known sample comes back as it was: no gain
        assert _cpsnr(rgb, ref) > 33
        assert np.abs(rgb.mean((0, 1)) - ref.mean((0, 1))).max() < 0.003
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the DNG writer's file reads back as the mosaic it was given
        back = read_raw(write_cfa_dng(Path(tmp) / "m.dng", mosaic, "BGGR", black=0, white=65535))
        assert back.pattern == "BGGR" and back.white == 65535 and np.array_equal(back.mosaic, mosaic)


def test_noise_lowers_every_method_and_is_the_same_on_a_rerun(runs):
    from imagingflows.flows import run_pipeline

    out = runs["cli"]["noisy"]
    assert out.exit_code == 0, out.output
    clean = json.loads((runs["root"] / "clean" / "metrics.json").read_text())["mean"]
    noisy = json.loads((runs["root"] / "noisy" / "metrics.json").read_text())["mean"]
    for name in METHODS:
        assert noisy[f"cpsnr_{name}"] < clean[f"cpsnr_{name}"] - 3, name
    first = tifffile.imread(runs["root"] / "noisy" / "astronaut" / "mosaic.tif").astype(np.float64) / 65535
    plain = tifffile.imread(runs["root"] / "clean" / "astronaut" / "mosaic.tif").astype(np.float64) / 65535
    assert np.std(first - plain) == pytest.approx(NOISE, rel=0.1)  # the stated std on [0, 1] (some clipped)
    again = runs["root"] / "again"
    result = run_pipeline("demosaic", runs["refs"], again, simulate=True, methods="bilinear,rawpy-ahd", noise=NOISE)
    assert result["counts"]["done"] == 2, result["errors"]
    for image_id in ("astronaut", "coffee"):
        for name in ("mosaic", "bilinear", "rawpy-ahd"):
            a = tifffile.imread(runs["root"] / "noisy" / image_id / f"{name}.tif")
            assert np.array_equal(a, tifffile.imread(again / image_id / f"{name}.tif")), (image_id, name)
    other = tifffile.imread(again / "coffee" / "mosaic.tif").astype(np.float64) / 65535
    plain_coffee = tifffile.imread(runs["root"] / "clean" / "coffee" / "mosaic.tif").astype(np.float64) / 65535
    assert not np.allclose((other - plain_coffee)[:32, :32], (first - plain)[:32, :32])  # seeded per image


def test_rescoring_with_another_border(runs):
    ev = runs["root"] / "border8"
    out = _cli(["--predictions", str(runs["root"] / "clean"), "--reference", str(runs["refs"]), "-o", str(ev),
                "--border", "8"])
    assert out.exit_code == 0, out.output
    assert "border 8 px" in out.output
    metrics = json.loads((ev / "metrics.json").read_text())
    written = tifffile.imread(runs["root"] / "clean" / "coffee" / "menon.tif") / 65535
    ref = _refs()["coffee"] / 255
    assert metrics["per_item"]["coffee"]["cpsnr_menon"] == pytest.approx(_cpsnr(written, ref, 8), abs=1e-3)
    assert "cropping 8 px" in metrics["conventions"]


def test_an_unknown_method_is_a_usage_error_with_a_hint(tmp_path):
    (tmp_path / "gt").mkdir()
    Image.fromarray(_refs()["coffee"]).save(tmp_path / "gt" / "c.png")
    out = _cli(["--input", str(tmp_path / "gt"), "-o", str(tmp_path / "ev"), "--methods", "bilinear,menno"])
    assert out.exit_code == 2, out.output
    assert "did you mean 'menon'" in out.output.lower() and "--methods" in out.output


def test_a_grey_image_fails_by_name_and_the_others_go_on(tmp_path):
    refs = tmp_path / "gt"
    refs.mkdir()
    rgb = _refs()["coffee"]
    Image.fromarray(rgb).save(refs / "colour.png")
    Image.fromarray(rgb[:95, :127]).save(refs / "odd.png")
    Image.fromarray(rgb[..., 1]).save(refs / "grey.png")
    tifffile.imwrite(refs / "deep.tif", rgb.astype(np.uint16) * 257, photometric="rgb")  # 16-bit: / 65535
    ev = tmp_path / "ev"
    out = _cli(["--input", str(refs), "-o", str(ev), "--methods", "bilinear", "--pattern", "GBRG"])
    assert out.exit_code == 1, out.output
    assert "grey" in out.output and "a reference must be an RGB image" in out.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert sorted(metrics["per_item"]) == ["colour", "deep", "odd"]
    assert metrics["per_item"]["deep"]["cpsnr_bilinear"] == metrics["per_item"]["colour"]["cpsnr_bilinear"]
    run = json.loads((ev / "run.json").read_text())
    assert run["items"]["grey"]["status"] == "failed" and "grey.png: has 1 channel" in run["items"]["grey"]["error"]
    assert any("cropped to 94 x 126" in w for w in run["items"]["odd"]["warnings"])
    assert tifffile.imread(ev / "odd" / "bilinear.tif").shape == (94, 126, 3)
    assert not (ev / "grey").exists() and json.loads((ev / "colour" / "timing.json").read_text())["pattern"] == "GBRG"
