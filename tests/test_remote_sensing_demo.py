"""The bundled remote-sensing demo weights: embed and classify run on the sample scenes with no --weights,
take the bands the encoder records (either naming), and the class map scores what the model card says on
the held-out east strip; the demo's data keep the held-out strip out of the encoder's training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio

from imagingflows.flows import run_pipeline
from sample_data import remote_sensing_demo as demo


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "scenes"
    demo.scenes(folder)
    return folder


def test_embed_with_the_demo_encoder_takes_both_namings_of_rgb(scenes, tmp_path):
    result = run_pipeline("embed", scenes, tmp_path / "emb", device="cpu", precision="fp32")
    assert result["counts"]["done"] == 2, result["errors"]
    run = json.loads((tmp_path / "emb" / "run.json").read_text())
    assert run["demo_weights"]  # the notice that these are demo weights travels with the outputs
    bands = {k: v["inference"]["bands"] for k, v in run["items"].items()}
    assert bands == {"RGB.byte": ["red", "green", "blue"], demo.LANDSAT: ["B4", "B3", "B2"]}
    assert run["items"]["RGB.byte"]["summary"]["dim"] == 96


def test_demo_head_scores_the_model_card_figures_on_the_held_out_strip(scenes, tmp_path):
    maps = tmp_path / "maps"
    result = run_pipeline("classify", scenes / demo.LANDSAT, maps, device="cpu", precision="fp32")
    assert result["counts"]["done"] == 1, result["errors"]
    data = demo.prepare(tmp_path / "data")
    reference = Path(demo.east_reference(Path(data["classify"]), tmp_path / "ref")).parent
    from imagingflows.flows.evaluate import evaluate_flow

    scored = evaluate_flow("classify", str(maps), str(reference), str(tmp_path / "eval"))
    m = scored["metrics"]["per_item"][demo.LANDSAT]
    assert m["scored"] == 107937  # the east strip's labelled pixels
    assert m["accuracy"] == pytest.approx(0.834, abs=0.01) and m["miou"] == pytest.approx(0.252, abs=0.02)


def test_the_encoders_data_hold_no_pixel_of_the_held_out_strip(tmp_path):
    data = demo.prepare(tmp_path / "data")
    west = Path(data["encoder"]) / f"{demo.LANDSAT}_west"
    with rasterio.open(west / "l8_B4.tif") as w, rasterio.open(demo.ROOT / demo.LANDSAT / "l8_B4.tif") as full:
        assert w.width == demo.WEST_COLUMNS and w.transform == full.transform and w.crs == full.crs
        assert (w.read(1) == full.read(1)[:, :demo.WEST_COLUMNS]).all()
    assert sorted(p.name for p in Path(data["encoder"]).iterdir()) == ["RGB.byte.tif", f"{demo.LANDSAT}_west"]
