"""Engines beyond restore (issue 13): ``--engine`` on embed (the Scale-MAE encoder's ``forward_features``,
cosine rule) and demosaic (JDD and DemosaicNet's ``forward_valid``, 50 dB rule, with ``--precision``).

Each branch forced, never read off the host: channels-last needs no compiler; bf16 is asked for
explicitly (emulated on a host without native bf16: slower, same rounding); ``$IMAGINGFLOWS_CXX`` points
at a missing compiler where ``auto`` must not compile; ``$IMAGINGFLOWS_CACHE`` is a temp folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import data

from imagingflows.flows import run_pipeline
from imagingflows.models import scale_mae
from imagingflows.models.cfa import mosaic as make_mosaic
from imagingflows.models.demosaic_methods import engine_target, get_method
from imagingflows.models.engines import CXX_ENV, choose

ROOT = Path(__file__).resolve().parents[1]
ENCODER = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16, 3 bands


pytestmark = pytest.mark.usefixtures("engine_cache")  # a private engine cache per test (conftest)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return scale_mae.SPEC.agreement.measure(torch.from_numpy(a), torch.from_numpy(b))


def test_embed_channels_last_and_auto_keep_the_cosine_rule_and_the_config_hash(tmp_path, monkeypatch):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    shutil.copy(ROOT / "sample_data" / "remote_sensing" / "RGB.byte.tif", scenes / "rgb.tif")
    opts = {"weights": str(ENCODER), "num_heads": 4, "tile": 64, "device": "cpu", "precision": "fp32",
            "bands": "1,2,3"}
    monkeypatch.setenv(CXX_ENV, "/nonexistent/bin/g++")  # auto measures eager and channels-last only
    runs = {}
    for engine in ("eager", "channels-last", "auto"):
        result = run_pipeline("embed", scenes, tmp_path / engine, **opts, engine=engine)
        assert result["counts"]["done"] == 1, result["errors"]
        runs[engine] = json.loads((tmp_path / engine / "run.json").read_text())
        used = runs[engine]["config"]["engine_used"]
        assert used["requested"] == engine and runs[engine]["config"]["engine_outputs"] is None
    cl = runs["channels-last"]["config"]["engine_used"]
    assert cl["used"] == "channels-last" and cl["rule"] == "cosine >= 0.9999"
    assert cl["measurements"]["channels-last"]["agreement"] >= 0.9999
    auto = runs["auto"]["config"]["engine_used"]  # which engine wins is the host's: only invariants
    assert auto["used"] in ("eager", "channels-last", "openvino") and "no C++ compiler" in auto["reason"]
    assert len({r["config_hash"] for r in runs.values()}) == 1  # an engine that agrees does not redo a resume
    vectors = {e: np.stack(gpd.read_parquet(tmp_path / e / "rgb.parquet")["embedding"].to_numpy()) for e in runs}
    for engine in ("channels-last", "auto"):
        assert _cosine(vectors["eager"], vectors[engine]) >= 0.9999


def _mosaic_png(folder: Path) -> np.ndarray:
    clean = data.astronaut()[100:228, 150:310].astype(np.float32) / 255.0  # (128, 160, 3)
    m = make_mosaic(torch.from_numpy(clean).permute(2, 0, 1)[None], "GBRG")[0, 0].numpy()
    folder.mkdir()
    Image.fromarray(np.round(m * 65535).astype(np.uint16)).save(folder / "m.png")
    return clean


def test_demosaic_jdd_engine_and_bf16_keep_50_db_and_are_recorded(tmp_path):
    _mosaic_png(tmp_path / "in")
    out = {}
    for engine, precision in (("eager", "fp32"), ("channels-last", "fp32"), ("channels-last", "bf16")):
        name = f"{engine}-{precision}"
        result = run_pipeline("demosaic", tmp_path / "in", tmp_path / name, pattern="GBRG", method="jdd",
                              noise=0.0, engine=engine, precision=precision)
        assert result["counts"]["done"] == 1, result["errors"]
        run = json.loads((tmp_path / name / "run.json").read_text())
        used = run["config"]["engine_used"]
        assert used["used"] == engine and used["rule"] == "psnr_db >= 50"
        assert run["config"]["precision"] == precision
        out[name] = (tifffile.imread(tmp_path / name / "m.tif").astype(np.float64) / 65535, run["config_hash"])
    ref, ref_hash = out["eager-fp32"]
    for name in ("channels-last-fp32", "channels-last-bf16"):
        got, digest = out[name]
        assert 10 * np.log10(1.0 / max(np.mean((got - ref) ** 2), 1e-20)) >= 50, name
    assert out["channels-last-fp32"][1] == ref_hash  # same outputs within the rule: same resume hash
    assert out["channels-last-bf16"][1] != ref_hash  # precision is an output field


def test_demosaicnet_through_an_engine_agrees_and_auto_never_picks_a_disagreeing_one(monkeypatch):
    pytest.importorskip("rawpy")  # the demosaic extra brings demosaicnet's weights
    from imagingflows.models.demosaicnet import DemosaicNetError, load_package_state_dict

    try:
        load_package_state_dict()
    except DemosaicNetError as e:
        pytest.skip(str(e))
    clean = data.astronaut()[100:196, 150:262].astype(np.float32) / 255.0  # a photograph, (96, 112, 3)
    x = make_mosaic(torch.from_numpy(clean).permute(2, 0, 1)[None], "RGGB")
    ref = get_method("demosaicnet")(x, "RGGB", tile=None)
    for precision in ("fp32", "bf16"):
        got = get_method("demosaicnet", engine="channels-last", precision=precision)(x, "RGGB", tile=None)
        assert got.dtype == torch.float32
        mse = float((got.clamp(0, 1) - ref.clamp(0, 1)).double().pow(2).mean())
        assert 10 * np.log10(1 / max(mse, 1e-20)) >= 50, precision
    monkeypatch.setenv(CXX_ENV, "/nonexistent/bin/g++")
    from imagingflows.models.demosaicnet import engine_inputs

    target = engine_target("demosaicnet")
    assert target.method == "forward_valid" and target.inputs[0].shape[1] == 3
    small = engine_inputs(32)  # the pipeline measures 256 pixels; a smaller window keeps the test quick
    picked = choose(target.net, target.spec, target.config, "channels-last", inputs=small,
                    method=target.method, weights_sha256=target.weights_sha256)
    assert picked.used == "channels-last" and picked.agrees and picked.rule == "psnr_db >= 50"
    compiled = choose(target.net, target.spec, target.config, "compile", inputs=small,
                      method=target.method, weights_sha256=target.weights_sha256)
    assert compiled.used == "eager" and "no C++ compiler" in compiled.reason and not compiled.changes_outputs


def test_segment_channels_last_keeps_the_voxel_rule_and_auto_leaves_compile_out(make_cases, tiny_weights,
                                                                                tmp_path):
    import nibabel as nib

    from imagingflows.models import load, swin_unetr
    from imagingflows.pipelines.medical import measurement_windows

    cases = make_cases(1)
    runs = {}
    for engine in ("eager", "channels-last"):
        result = run_pipeline("segment", cases, tmp_path / engine, weights=str(tiny_weights), device="cpu",
                              precision="fp32", engine=engine)
        assert result["counts"]["done"] == 1, result["errors"]
        runs[engine] = json.loads((tmp_path / engine / "run.json").read_text())
    used = runs["channels-last"]["config"]["engine_used"]
    assert used["used"] == "channels-last" and used["rule"] == "labels_equal >= 0.995" and used["agrees"]
    assert runs["channels-last"]["config"]["engine_outputs"] is None
    assert runs["channels-last"]["config_hash"] == runs["eager"]["config_hash"]
    case = next(iter(runs["eager"]["items"]))
    labels = {e: np.asarray(nib.load(next((tmp_path / e).rglob(f"{case}*seg*.nii.gz"))).dataobj) for e in runs}
    assert (labels["channels-last"] == labels["eager"]).mean() >= 0.995
    lm = load(tiny_weights)
    picked = choose(lm.module, lm.spec, lm.config, "auto", inputs=(measurement_windows(4, (32, 32, 64), 1),),
                    weights_sha256=lm.weights_sha256)  # compile is never measured by auto (4 min to compile)
    assert set(picked.measurements) == set(swin_unetr.SPEC.engine_candidates) == {"eager", "channels-last"}
    assert picked.used in ("eager", "channels-last") and not picked.changes_outputs
