"""Camera RAW through rawpy: DNG files written by sample_data/dng.py (every pattern, black and white levels,
XYZ colour matrix, as-shot neutral) are read back by LibRaw and developed to the image they were made
from; linear vs sRGB output (ICC embedded); files that are not Bayer CFA files fail alone, by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from imagingflows.flows import run_pipeline
from sample_data.dng import D65_XYZ, EXPOSURE, _srational, clean_image, write_dng

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


@pytest.fixture(scope="module")
def dngs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw") / "in"
    image = clean_image()
    for pattern in PATTERNS:
        write_dng(folder / f"shot_{pattern.lower()}.dng", image, pattern, black=256, white=4095)
    return folder


def _psnr(a: np.ndarray, b: np.ndarray, crop: int = 4) -> float:
    a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def test_every_pattern_is_read_from_the_file_and_developed_back(dngs, tmp_path):
    out = tmp_path / "linear"
    result = run_pipeline("demosaic", dngs, out, method="menon", linear=True)
    assert result["counts"]["done"] == 4, result["errors"]
    truth = EXPOSURE * clean_image()
    items = json.loads((out / "run.json").read_text())["items"]
    for pattern in PATTERNS:
        entry = items[f"shot_{pattern.lower()}"]
        assert entry["summary"]["pattern"] == pattern  # from raw_pattern + color_desc, no --pattern given
        assert entry["summary"]["black"] == [[256.0, 256.0], [256.0, 256.0]] and entry["summary"]["white"] == 4095
        assert entry["inference"]["wb"] == pytest.approx(list(1 / D65_XYZ * D65_XYZ[1]), rel=1e-4)  # 1 / neutral
        developed = tifffile.imread(out / f"shot_{pattern.lower()}.tif").astype(np.float64) / 65535
        assert developed.shape == truth.shape
        assert _psnr(developed, truth) > 33  # black, white, white balance and matrix all right
        assert np.abs(developed.mean((0, 1)) - truth.mean((0, 1))).max() < 0.003  # no brightening


def test_srgb_output_is_the_encoded_linear_one_with_its_profile(dngs, tmp_path):
    lin = run_pipeline("demosaic", dngs, tmp_path / "lin", method="bilinear", linear=True)
    enc = run_pipeline("demosaic", dngs, tmp_path / "enc", method="bilinear")
    assert lin["counts"]["done"] == enc["counts"]["done"] == 4
    name = "shot_rggb.tif"
    linear = tifffile.imread(tmp_path / "lin" / name).astype(np.float64) / 65535
    with tifffile.TiffFile(tmp_path / "enc" / name) as tif:
        encoded = tif.pages[0].asarray().astype(np.float64) / 65535
        icc = tif.pages[0].tags.get(34675)
        icc = icc.value if icc is not None else None
    from imagingflows.tasks.icc import linear_srgb_profile, srgb_profile

    assert icc is not None and bytes(icc) == srgb_profile()
    expected = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    assert np.abs(encoded - expected).max() < 2e-3  # the sRGB curve of the same values (16-bit rounding)
    with tifffile.TiffFile(tmp_path / "lin" / name) as tif:
        assert bytes(tif.pages[0].tags[34675].value) == linear_srgb_profile()  # says so: gamma 1.0, sRGB primaries


def test_wb_none_leaves_the_camera_balance(dngs, tmp_path):
    out = tmp_path / "nowb"
    run_pipeline("demosaic", dngs, out, method="bilinear", linear=True, wb="none")
    entry = json.loads((out / "run.json").read_text())["items"]["shot_grbg"]
    assert entry["inference"]["wb"] == [1.0, 1.0, 1.0] and entry["inference"]["wb_from"] == "none"


def test_files_that_are_not_bayer_cfa_fail_alone_by_name(dngs, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "good.dng").write_bytes((dngs / "shot_rggb.dng").read_bytes())
    (inp / "truncated.dng").write_bytes((dngs / "shot_rggb.dng").read_bytes()[:3000])
    img = clean_image()[:64, :96]
    common = [(254, "I", 1, 0, True), (50706, "B", 4, bytes([1, 4, 0, 0]), True), (50717, "H", 1, 4095, True),
              (50721, "2i", 9, _srational(np.eye(3).ravel()), True), (50778, "H", 1, 21, True)]
    tifffile.imwrite(inp / "linear.dng", (img * 4000).astype(np.uint16), photometric=34892, planarconfig=1,
                     extratags=common + [(50708, "s", 0, "linear", True)])
    xtrans = "GGRGGBGGBGGRBRGRBGGGBGGRGGRGGBRBGBRG"
    tifffile.imwrite(inp / "xtrans.dng", np.full((64, 96), 900, np.uint16), photometric=32803, planarconfig=1,
                     extratags=common + [(33421, "H", 2, (6, 6), True), (50708, "s", 0, "xtrans", True),
                                         (33422, "B", 36, bytes("RGB".index(c) for c in xtrans), True)])
    write_dng(inp / "inverted.dng", img, "RGGB", black=4000, white=1000)
    result = run_pipeline("demosaic", inp, tmp_path / "out", method="bilinear")
    assert result["outcomes"] == {"good": "done", "truncated": "failed", "linear": "failed", "xtrans": "failed",
                                  "inverted": "failed"}
    errors = result["errors"]
    assert "truncated.dng: not a RAW file LibRaw can read" in errors["truncated"]
    assert "linear.dng: not a CFA file" in errors["linear"] and "linear" in errors["linear"]
    assert "xtrans.dng" in errors["xtrans"] and "X-Trans" in errors["xtrans"]
    assert "inverted.dng: white level 1000" in errors["inverted"] and "black level 4000" in errors["inverted"]


def test_an_xtrans_raw_goes_to_demosaicnets_xtrans_model(tmp_path):
    from imagingflows.models.demosaicnet import DemosaicNetError, load_package_state_dict
    from imagingflows.models.demosaicnet_xtrans import XTRANS_CELL

    try:
        load_package_state_dict("xtrans.pth")
    except DemosaicNetError as e:
        pytest.skip(str(e))
    shifted = "/".join(row[2:] + row[:2] for row in XTRANS_CELL[3:] + XTRANS_CELL[:3])  # a shift of the cell
    write_dng(tmp_path / "in" / "fuji.dng", clean_image(), shifted)
    result = run_pipeline("demosaic", tmp_path / "in", tmp_path / "out", method="demosaicnet", linear=True)
    assert result["counts"]["done"] == 1, result["errors"]
    entry = json.loads((tmp_path / "out" / "run.json").read_text())["items"]["fuji"]
    assert entry["summary"]["pattern"] == shifted and entry["summary"]["method"] == "demosaicnet-xtrans"
    developed = tifffile.imread(tmp_path / "out" / "fuji.tif").astype(np.float64) / 65535
    assert _psnr(developed, EXPOSURE * clean_image(), crop=6) > 33
