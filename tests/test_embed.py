"""`run-flow embed`: real GeoTIFF scenes -> GeoParquet of per-tile Scale-MAE embeddings that overlay the
source (CRS, tile polygons = windows), edge tiles kept, nodata tiles skipped and counted, embeddings
equal to the encoder run directly on the same pixels; bad scenes fail alone."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from imagingflows.flows import run_pipeline
from imagingflows.models import load
from imagingflows.tasks.geo_write import read_geoparquet_metadata

ROOT = Path(__file__).resolve().parents[1]
SCENES = ROOT / "sample_data" / "remote_sensing"
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16, 3 bands
OPTS = {"weights": str(ENCODER), "num_heads": 4, "tile": 64, "device": "cpu", "precision": "fp32"}


@pytest.fixture
def scenes(tmp_path) -> Path:
    folder = tmp_path / "scenes"
    folder.mkdir()
    shutil.copy(SCENES / "RGB.byte.tif", folder / "rgb.tif")
    shutil.copytree(SCENES / "landsat8_LC80200392015216LGN00", folder / "landsat")
    return folder


def test_embeddings_overlay_the_scene_and_match_the_encoder(scenes, tmp_path):
    out = tmp_path / "out"
    result = run_pipeline("embed", scenes, out, **OPTS, bands="1,2,3")
    assert result["counts"]["done"] == 2, result["errors"]
    frame = gpd.read_parquet(out / "rgb.parquet")
    with rasterio.open(scenes / "rgb.tif") as src:
        assert frame.crs == src.crs
        tiles = math.ceil(src.height / 64) * math.ceil(src.width / 64)  # edge tiles kept (padded)
        mask = src.dataset_mask()
        empty = sum(not mask[r:r + 64, c:c + 64].any() for r in range(0, src.height, 64)
                    for c in range(0, src.width, 64))
        for _, row in frame.sample(5, random_state=0).iterrows():
            left, top = src.transform @ (row["col"], row["row"])
            right, bottom = src.transform @ (row["col"] + 64, row["row"] + 64)
            assert np.allclose(row.geometry.bounds, (left, bottom, right, top))
        first = frame.iloc[len(frame) // 2]
        pixels = src.read(window=Window(first["col"], first["row"], 64, 64), boundless=True, fill_value=0)
        valid = src.dataset_mask(window=Window(first["col"], first["row"], 64, 64), boundless=True) > 0
    assert len(frame) + empty == tiles and 0 < empty < tiles
    entry = json.loads((out / "run.json").read_text())["items"]["rgb"]
    assert entry["summary"] == {"tiles": tiles, "embedded": len(frame), "skipped_nodata": empty, "dim": 64}

    meta = read_geoparquet_metadata(out / "rgb.parquet")  # the normalisation is recorded in the file
    mean, std = np.array(meta["normalization"]["mean"]), np.array(meta["normalization"]["std"])
    x = np.where(valid[None], (pixels - mean[:, None, None]) / std[:, None, None], 0).astype(np.float32)
    encoder = load(ENCODER, num_heads=4)
    with torch.inference_mode():
        expected = encoder.module.forward_features(torch.from_numpy(x)[None], torch.tensor([1.0]))[0, 0]
    assert np.abs(np.asarray(first["embedding"]) - expected.numpy()).max() <= 1e-5
    assert first["res"] == 1.0 and first["weights_sha256"] == encoder.weights_sha256


def test_band_folder_stacked_by_name_and_bad_scenes_fail_alone(scenes, tmp_path):
    (scenes / "broken.tif").write_bytes((SCENES / "shade.tif").read_bytes()[:5000])  # truncated
    shutil.copy(SCENES / "shade.tif", scenes / "one_band.tif")
    out = tmp_path / "out"
    result = run_pipeline("embed", scenes, out, **OPTS, bands="B4,B3,B2", pool="mean")
    assert result["outcomes"]["landsat"] == "done"
    assert set(result["errors"]) == {"rgb", "broken", "one_band"}  # rgb has no band named B4
    assert "broken.tif" in result["errors"]["broken"]
    frame = gpd.read_parquet(out / "landsat.parquet")
    assert frame.crs.to_epsg() == 32616 and frame["nodata_fraction"].max() > 0  # padded edge tiles
    assert not (out / "rgb.parquet").exists()

    again = run_pipeline("embed", scenes, out, **OPTS, bands="B4,B3,B2", pool="mean", resume=True)
    assert again["outcomes"]["landsat"] == "skipped"
    other = run_pipeline("embed", scenes, out, **OPTS, bands="B4,B3,B2", pool="cls", resume=True)
    assert other["outcomes"]["landsat"] == "done"  # pool changes outputs: not skipped


def test_a_scene_whose_bands_do_not_fit_the_model_names_them(tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(SCENES / "landsat8_LC80200392015216LGN00", folder / "landsat")
    result = run_pipeline("embed", folder, tmp_path / "out", **OPTS)
    assert "6 bands (B2, B3, B4, B5, B6, B7) but the model takes 3; choose them with --bands" in \
        result["errors"]["landsat"]
