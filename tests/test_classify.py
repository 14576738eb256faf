"""`run-flow classify`: a head on frozen Scale-MAE features -> a COG class map that overlays the scene pixel
for pixel (CRS, transform, nodata 255 exactly on the scene's nodata), per-class areas, probabilities at
patch resolution, a preview; tile level gives one label per tile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rio_cogeo.cogeo import cog_validate

from imagingflows.flows import run_pipeline
from imagingflows.models import load
from imagingflows.models.checkpoints import save_checkpoint
from imagingflows.models.heads import KnnProbe, LinearProbe, knn_config

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "sample_data" / "remote_sensing" / "RGB.byte.tif"
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16
CLASSES = {0: "dark", 1: "bright", 2: "other"}


def _head(path: Path, level: str, kind: str = "linear") -> Path:
    torch.manual_seed(0)
    encoder = load(ENCODER, num_heads=4)
    meta = {"level": level, "classes": CLASSES, "encoder": {"file": ENCODER.name, "sha256": encoder.weights_sha256},
            "bands": ["1", "2", "3"], "tile": 64, "res": 1.0, "pool": "cls",
            "normalization": {"mean": [60.0, 60.0, 60.0], "std": [40.0, 40.0, 40.0]}}
    if kind == "linear":
        head = LinearProbe(64, 3).eval()
        with torch.no_grad():
            head.norm.running_mean.normal_()
            head.fc.weight.normal_()
        save_checkpoint(path, head, arch="linear_probe", config={"dim": 64, "classes": 3}, meta=meta)
    else:
        head = KnnProbe(torch.randn(30, 64), torch.arange(30) % 3, 3, k=5)
        save_checkpoint(path, head, arch="knn_probe", config=knn_config(head), meta=meta)
    shutil.copy(ENCODER, path.parent / ENCODER.name)  # the head finds its encoder beside it
    return path


@pytest.fixture
def scenes(tmp_path) -> Path:
    (tmp_path / "in").mkdir()
    shutil.copy(SCENE, tmp_path / "in" / "rgb.tif")
    return tmp_path / "in"


def test_patch_level_map_overlays_the_scene_exactly(scenes, tmp_path):
    head = _head(tmp_path / "heads" / "patch.pt", "patch")
    out = tmp_path / "out"
    result = run_pipeline("classify", scenes, out, weights=head, num_heads=4, probabilities=True, device="cpu",
                          precision="fp32")
    assert result["counts"]["done"] == 1, result["errors"]
    with rasterio.open(SCENE) as src, rasterio.open(out / "rgb_classes.tif") as cm:
        assert cm.crs == src.crs and cm.transform == src.transform and cm.shape == src.shape
        assert cm.nodata == 255 and cm.dtypes == ("uint8",) and cm.overviews(1)
        labels, nodata = cm.read(1), src.dataset_mask() == 0
    assert cog_validate(str(out / "rgb_classes.tif"))[0]
    assert np.array_equal(labels == 255, nodata)  # nodata exactly where the scene has none
    assert set(np.unique(labels[~nodata])) <= set(CLASSES)
    with rasterio.open(out / "rgb_probs.tif") as pr:
        assert pr.count == 3 and pr.transform.a == pytest.approx(16 * src.transform.a)
        probs = pr.read()
    inside = probs[0] >= 0
    assert np.allclose(probs[:, inside].sum(0), 1, atol=1e-5)
    areas = json.loads((out / "rgb_areas.json").read_text())["areas_km2"]
    pixel_km2 = abs(src.transform.a * src.transform.e) / 1e6
    assert sum(areas.values()) == pytest.approx((~nodata).sum() * pixel_km2, rel=1e-6)
    assert (out / "previews" / "rgb.png").is_file()
    assert "classify" in (out / "report.html").read_text()


def test_tile_level_gives_one_label_per_tile_and_resumes(scenes, tmp_path):
    head = _head(tmp_path / "heads" / "tile.pt", "tile", kind="knn")
    out = tmp_path / "out"
    assert run_pipeline("classify", scenes, out, weights=head, num_heads=4, device="cpu")["counts"]["done"] == 1
    with rasterio.open(out / "rgb_classes.tif") as cm:
        labels = cm.read(1)
    for r in range(0, labels.shape[0], 64):
        for c in range(0, labels.shape[1], 64):
            block = labels[r:r + 64, c:c + 64]
            assert len(set(np.unique(block)) - {255}) <= 1  # overlap 0: each tile's pixels share its label
    again = run_pipeline("classify", scenes, out, weights=head, num_heads=4, device="cpu", resume=True)
    assert again["outcomes"]["rgb"] == "skipped"


def test_an_encoder_other_than_the_heads_is_refused(scenes, tmp_path):
    from imagingflows.flows.runners import UsageError

    head = _head(tmp_path / "heads" / "patch.pt", "patch")
    other = tmp_path / "other.pth"
    sd = torch.load(ENCODER, weights_only=True)
    sd["model"]["norm.bias"] = sd["model"]["norm.bias"] + 1
    torch.save(sd, other)
    with pytest.raises(UsageError, match="is not the encoder"):
        run_pipeline("classify", scenes, tmp_path / "out", weights=head, encoder=other, num_heads=4)


def test_train_classify_from_the_cli_takes_an_encoder_file(tmp_path):
    from typer.testing import CliRunner

    from imagingflows.flows.cli import build_app

    out = CliRunner().invoke(build_app(), ["train", "classify", "--data", str(tmp_path / "nowhere"), "-o",
                                           str(tmp_path / "run"), "--encoder", str(ENCODER)])
    assert out.exit_code == 2 and "--data" in out.output and "does not exist" in out.output, out.output
    assert "--encoder" not in out.output  # an existing file is fine (it is not a folder)
