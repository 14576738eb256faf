"""Bad scenes in one batch through the CLI: each one clear error naming the file and the problem, the others
done, no output of a failed scene left, exit 1; no CRS runs with a warning unless --require-crs; a scene
smaller than a tile runs as one padded tile and says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin
from typer.testing import CliRunner

from imagingflows.flows.cli import build_app

ROOT = Path(__file__).resolve().parents[1]
RGB = ROOT / "sample_data" / "remote_sensing" / "RGB.byte.tif"
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"
ARGS = ["--weights", str(ENCODER), "--num-heads", "4", "--tile", "64", "--device", "cpu", "--precision", "fp32",
        "--quiet"]
UTM = "EPSG:32618"


def _write(path: Path, data: np.ndarray, **profile) -> None:
    meta = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2],
            "dtype": data.dtype.name, **profile}
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad") / "scenes"
    d.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (3, 100, 100), dtype=np.uint8)
    shutil.copy(RGB, d / "good.tif")
    _write(d / "nocrs.tif", pixels)
    _write(d / "allnodata.tif", np.zeros((3, 80, 80), np.uint8), nodata=0, crs=UTM,
           transform=from_origin(300000, 4000000, 30, 30))
    _write(d / "rotated.tif", pixels, crs=UTM, transform=Affine(30, 5, 300000, 5, -30, 4000000))
    _write(d / "small.tif", pixels[:, :30, :40], crs=UTM, transform=from_origin(300000, 4000000, 30, 30))
    _write(d / "twoband.tif", pixels[:2], crs=UTM, transform=from_origin(300000, 4000000, 30, 30))
    (d / "truncated.tif").write_bytes(RGB.read_bytes()[: RGB.stat().st_size // 3])
    (d / "mixed").mkdir()
    for band, (h, w) in {"B2": (50, 50), "B3": (60, 50), "B4": (50, 50)}.items():
        _write(d / "mixed" / f"mixed_{band}.tif", rng.integers(1, 255, (1, h, w), dtype=np.uint16), crs=UTM,
               transform=from_origin(300000, 4000000, 30, 30))
    return d


def _run(scenes: Path, out: Path, *extra: str):
    result = CliRunner().invoke(build_app(), ["embed", "-i", str(scenes), "-o", str(out), *ARGS, *extra])
    run = json.loads((out / "run.json").read_text())
    return result, run["items"]


def test_each_bad_scene_fails_alone_with_its_reason(scenes, tmp_path):
    result, items = _run(scenes, tmp_path / "out")
    assert result.exit_code == 1, result.output
    status = {k: v["status"] for k, v in items.items()}
    assert status == {"good": "done", "nocrs": "done", "small": "done", "allnodata": "failed", "rotated": "failed",
                      "twoband": "failed", "truncated": "failed", "mixed": "failed"}
    errors = {k: v["error"] for k, v in items.items() if v["status"] == "failed"}
    expected = {"allnodata": ("allnodata.tif", "no valid pixel"), "rotated": ("rotated.tif", "rotat"),
                "twoband": ("twoband.tif", "2 bands"), "truncated": ("truncated.tif", "truncated"),
                "mixed": ("mixed_B3.tif", "60")}
    for scene, words in expected.items():
        assert all(w in errors[scene] for w in words), (scene, errors[scene])
        assert "\n" not in errors[scene] and not (tmp_path / "out" / f"{scene}.parquet").exists()
    assert any("not georeferenced" in w for w in items["nocrs"]["warnings"])
    assert any("smaller than one tile" in w for w in items["small"]["warnings"])
    assert items["small"]["summary"]["tiles"] == 1 and items["small"]["summary"]["embedded"] == 1
    for scene in errors:  # the terminal names each failure (cron mail)
        assert scene in result.output


def test_require_crs_fails_a_scene_without_one(scenes, tmp_path):
    result, items = _run(scenes, tmp_path / "out", "--require-crs")
    assert result.exit_code == 1
    assert items["nocrs"]["status"] == "failed" and "no CRS (--require-crs)" in items["nocrs"]["error"]
    assert items["good"]["status"] == "done"
