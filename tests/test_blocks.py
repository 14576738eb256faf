"""Huge scenes in blocks (`--block-tiles`): a scene with more tiles than that runs as parts spread over the
workers, merged into the one file an unsplit run writes; resume works per block; a failed merge keeps its
blocks for the next run."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from imagingflows.flows import run_pipeline
from imagingflows.tasks.geo_write import read_geoparquet_metadata, read_vectors

sys.path.insert(0, str(Path(__file__).parent))
from test_classify import _head  # noqa: E402 - a head on the tiny encoder, written for the test

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "sample_data" / "remote_sensing" / "RGB.byte.tif"  # 718 x 791: 12 x 13 = 156 tiles of 64
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"
EMBED = {"weights": str(ENCODER), "num_heads": 4, "tile": 64, "device": "cpu", "precision": "fp32"}


@pytest.fixture
def scenes(tmp_path) -> Path:
    (tmp_path / "in").mkdir()
    shutil.copy(SCENE, tmp_path / "in" / "rgb.tif")
    return tmp_path / "in"


def _manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_embed_in_blocks_equals_the_unsplit_run(scenes, tmp_path):
    whole = run_pipeline("embed", scenes, tmp_path / "whole", **EMBED, block_tiles=0)
    split = run_pipeline("embed", scenes, tmp_path / "split", **EMBED, block_tiles=40, workers=2)
    assert whole["counts"]["done"] == split["counts"]["done"] == 1, split["errors"]
    a, b = gpd.read_parquet(tmp_path / "whole" / "rgb.parquet"), gpd.read_parquet(tmp_path / "split" / "rgb.parquet")
    columns = [c for c in a.columns if c != "embedding"]
    assert a[columns].equals(b[columns]) and a.crs == b.crs  # same tiles in the same order, same polygons
    va, vb = read_vectors(tmp_path / "whole" / "rgb.parquet"), read_vectors(tmp_path / "split" / "rgb.parquet")
    assert np.abs(va - vb).max() <= 1e-5  # batches are composed differently: float rounding only
    meta_a = read_geoparquet_metadata(tmp_path / "whole" / "rgb.parquet")
    assert read_geoparquet_metadata(tmp_path / "split" / "rgb.parquet") == meta_a
    import pyarrow.parquet as pq  # the merged file's GeoParquet bounding box is the scene's, not the first block's

    geo_a, geo_b = (json.loads(pq.read_schema(tmp_path / d / "rgb.parquet").metadata[b"geo"]) for d in ("whole", "split"))
    assert geo_b["columns"]["geometry"]["bbox"] == pytest.approx(geo_a["columns"]["geometry"]["bbox"])
    entry_a, entry_b = _manifest(tmp_path / "whole")["items"]["rgb"], _manifest(tmp_path / "split")["items"]["rgb"]
    assert entry_b["summary"] == entry_a["summary"] and entry_b["parts"] == 4  # 12 rows of 13 tiles: blocks of 3 rows
    assert not _manifest(tmp_path / "split")["parts"]  # merged: the blocks are forgotten ...
    assert not (tmp_path / "split" / ".parts").exists()  # ... and their files removed


def test_a_failed_merge_keeps_its_blocks_and_resume_runs_only_the_merge(scenes, tmp_path):
    out = tmp_path / "out"
    (out / "rgb.parquet").mkdir(parents=True)  # the merged file cannot be written: the merge fails
    first = run_pipeline("embed", scenes, out, **EMBED, block_tiles=40)
    assert first["counts"]["failed"] == 1 and "rgb.parquet" in first["errors"]["rgb"]
    parts = _manifest(out)["parts"]
    assert sorted(parts) == sorted(f"rgb#part{a}-{b}" for a, b in ((0, 39), (39, 78), (78, 117), (117, 156)))
    files = sorted((out / ".parts" / "rgb").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in files}
    assert len(files) == 4

    (out / "rgb.parquet").rmdir()
    again = run_pipeline("embed", scenes, out, **EMBED, block_tiles=40, resume=True)
    assert again["counts"]["done"] == 1, again["errors"]
    assert {p: stamps[p] for p in stamps} == stamps and not (out / ".parts").exists()  # merged, none rerun
    entry = _manifest(out)["items"]["rgb"]
    assert entry["status"] == "done" and entry["parts"] == 4
    whole = run_pipeline("embed", scenes, tmp_path / "whole", **EMBED, block_tiles=0)
    assert whole["counts"]["done"] == 1
    assert np.abs(read_vectors(out / "rgb.parquet") - read_vectors(tmp_path / "whole" / "rgb.parquet")).max() <= 1e-5


def test_resume_reruns_only_the_blocks_that_are_not_done(scenes, tmp_path):
    out = tmp_path / "out"
    (out / "rgb.parquet").mkdir(parents=True)
    run_pipeline("embed", scenes, out, **EMBED, block_tiles=40)
    victim = out / ".parts" / "rgb" / "tiles0000039-0000078.parquet"
    victim.unlink()  # one block's result lost (a disk cleaned, a kill between part and record)
    kept = {p.name: p.stat().st_mtime_ns for p in (out / ".parts" / "rgb").iterdir()}
    (out / "rgb.parquet").rmdir()
    log_before = (out / "run.log").read_text()
    again = run_pipeline("embed", scenes, out, **EMBED, block_tiles=40, resume=True)
    assert again["counts"]["done"] == 1, again["errors"]
    log = (out / "run.log").read_text()[len(log_before):]
    assert "rgb#part39-78: done" in log and "rgb#part0-39: up to date" in log
    assert "rgb#part78-117: done" not in log
    assert len(kept) == 3


def test_classify_in_blocks_gives_the_unsplit_class_map(scenes, tmp_path):
    head = _head(tmp_path / "heads" / "patch.pt", "patch")
    opts = {"weights": head, "num_heads": 4, "device": "cpu", "precision": "fp32", "probabilities": True}
    whole = run_pipeline("classify", scenes, tmp_path / "whole", **opts, block_tiles=0)
    split = run_pipeline("classify", scenes, tmp_path / "split", **opts, block_tiles=50, runner="process",
                         workers=2)
    assert whole["counts"]["done"] == split["counts"]["done"] == 1, split["errors"]
    for name in ("rgb_classes.tif", "rgb_probs.tif"):
        with rasterio.open(tmp_path / "whole" / name) as a, rasterio.open(tmp_path / "split" / name) as b:
            assert a.profile == b.profile
            if name == "rgb_classes.tif":
                assert np.array_equal(a.read(), b.read())
            else:
                assert np.abs(a.read() - b.read()).max() <= 1e-5  # overlap rows summed in another order
    entry = _manifest(tmp_path / "split")["items"]["rgb"]
    assert entry["parts"] > 1 and entry["summary"] == _manifest(tmp_path / "whole")["items"]["rgb"]["summary"]
    areas = [json.loads((tmp_path / d / "rgb_areas.json").read_text()) for d in ("whole", "split")]
    assert areas[0] == areas[1]
    assert not (tmp_path / "split" / ".parts").exists()
    assert os.listdir(tmp_path / "split" / "previews") == ["rgb.png"]


def test_patch_features_overlay_the_scene_and_survive_blocks(scenes, tmp_path):
    import tifffile
    import torch

    from imagingflows.models import load

    opts = {**EMBED, "patch_features": True, "overlap": 32}
    whole = run_pipeline("embed", scenes, tmp_path / "whole", **opts, block_tiles=0)
    split = run_pipeline("embed", scenes, tmp_path / "split", **opts, block_tiles=60)
    assert whole["counts"]["done"] == split["counts"]["done"] == 1, split["errors"]
    path = tmp_path / "whole" / "rgb_patches.tif"
    with tifffile.TiffFile(path) as tif:  # stored as IEEE half floats
        assert tif.pages[0].bitspersample == 16 and tif.pages[0].sampleformat == 3
    with rasterio.open(SCENE) as src, rasterio.open(path) as feats:
        assert feats.crs == src.crs and feats.count == 64 and feats.shape == (45, 50)  # ceil(718/16), ceil(791/16)
        assert feats.transform == src.transform @ rasterio.Affine.scale(16)
        cells = feats.read()
        mask = src.dataset_mask()
        # the tile at row 320, col 384 (stride 32): its core is its inner 2 x 2 patches (16 px trimmed per side)
        pixels = src.read(window=rasterio.windows.Window(384, 320, 64, 64)).astype(np.float32)
        valid = mask[320:384, 384:448] > 0
    assert valid.mean() > 0.9
    with rasterio.open(tmp_path / "split" / "rgb_patches.tif") as other:
        assert np.array_equal(np.isnan(other.read()), np.isnan(cells))
        assert np.nanmax(np.abs(other.read() - cells)) <= 1e-3  # half floats of float32 tokens
    assert not mask[:16, :16].any() and np.isnan(cells[:, 0, 0]).all()  # cells over the nodata collar are NaN
    meta = read_geoparquet_metadata(tmp_path / "whole" / "rgb.parquet")["normalization"]
    x = np.where(valid[None], (pixels - np.array(meta["mean"], np.float32)[:, None, None])
                 / np.array(meta["std"], np.float32)[:, None, None], 0)
    encoder = load(ENCODER, num_heads=4)
    with torch.no_grad():
        tokens = encoder.module.feature_map(torch.from_numpy(x[None]).float())[0].numpy()  # (64, 4, 4)
    core, expected = cells[:, 21:23, 25:27], tokens[:, 1:3, 1:3]  # cells 21-22 = pixels 336-367 of the tile
    written = ~np.isnan(core[0])  # NaN only where a patch holds no valid pixel
    assert written.sum() >= 3 and np.abs(core[:, written] - expected[:, written]).max() <= 2e-3


def test_the_cli_takes_comma_lists_and_block_tiles(scenes, tmp_path):
    from typer.testing import CliRunner

    from imagingflows.flows.cli import build_app

    out = tmp_path / "cli"
    result = CliRunner().invoke(build_app(), [
        "embed", "-i", str(scenes), "-o", str(out), "--weights", str(ENCODER), "--num-heads", "4", "--tile", "64",
        "--bands", "3,2,1", "--mean", "60,60,60", "--std", "40,40,40", "--block-tiles", "80", "--quiet"])
    assert result.exit_code == 0, result.output
    entry = _manifest(out)["items"]["rgb"]
    assert entry["parts"] == 2 and entry["inference"]["bands"] == ["blue", "green", "red"]  # 3,2,1 by description
    assert read_geoparquet_metadata(out / "rgb.parquet")["normalization"]["from"] == "given"
