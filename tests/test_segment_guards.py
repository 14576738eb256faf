"""Segment refuses what the model cannot use, and says when it ran on doubtful input.

- identical modalities (one image given as several sequences) fail the case, naming them;
- values unlike MR intensities (CT in Hounsfield units: air at -1000) run with a warning
  in the case's manifest entry; generated BraTS-like data never gets one;
- the bundled demo weights are named, with what they were trained on, in the config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imagingflows.flows.run import run_pipeline
from imagingflows.pipelines.medical import MODEL_CHANNELS, intensity_warnings, prepare, read_case
from imagingflows.tasks.ingest import Item

SUFFIX = {"flair": "_flair", "t1ce": "_t1ce", "t1": "_t1", "t2": "_t2"}


def _files(case_dir: Path, case: str) -> dict[str, Path]:
    return {m: case_dir / f"{case}{SUFFIX[m]}.nii.gz" for m in MODEL_CHANNELS}


def _save_like(ref: Path, arr: np.ndarray, path: Path) -> None:
    img = nib.load(ref)
    out = nib.Nifti1Image(arr, img.affine)
    out.set_data_dtype(arr.dtype)
    out.set_sform(img.affine, code=1)
    out.set_qform(img.affine, code=1)
    nib.save(out, str(path))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_weights):
    """One batch: a good case, one image copied as all four modalities, t1 copied as t1ce,
    and a case whose background is -1000 (CT-like air) around MR-like tissue."""
    from sample_data import brats

    root = tmp_path_factory.mktemp("guards")
    inp, out = root / "in", root / "out"
    good = brats.make_case(inp, "case00", 0, spacing=(3.0, 3.0, 3.0))
    src = brats.make_case(root / "src", "src01", 1, spacing=(3.0, 3.0, 3.0), with_seg=False)
    src_files = _files(src, "src01")

    copy = _files(inp / "copy01", "copy01")
    (inp / "copy01").mkdir()
    for p in copy.values():
        shutil.copyfile(src_files["flair"], p)

    pair = _files(inp / "pair02", "pair02")
    (inp / "pair02").mkdir()
    for m, p in pair.items():
        shutil.copyfile(src_files["t1" if m == "t1ce" else m], p)

    ct = _files(inp / "ct03", "ct03")
    (inp / "ct03").mkdir()
    for m, p in ct.items():
        arr = np.asarray(nib.load(src_files[m]).dataobj)
        _save_like(src_files[m], np.where(arr > 0, arr, -1000).astype(np.int16), p)

    result = run_pipeline("segment", inp, out, precision="fp32", weights=str(tiny_weights), device="cpu")
    run = json.loads((out / "run.json").read_text())
    return {"out": out, "result": result, "items": run["items"], "good": good}


def test_identical_modalities_fail_the_case_naming_them(guarded):
    items, out = guarded["items"], guarded["out"]
    entry = items["copy01"]
    assert entry["status"] == "failed", entry
    assert "flair, t1ce, t1, t2" in entry["error"] and "identical" in entry["error"], entry["error"]
    assert "copy01" in entry["error"] and len(entry["error"].splitlines()) == 1
    entry = items["pair02"]
    assert entry["status"] == "failed", entry
    assert "modalities t1ce, t1 hold identical" in entry["error"], entry["error"]
    assert not (out / "copy01").exists() and not (out / "pair02").exists()


def test_ct_like_values_warn_but_the_case_runs(guarded):
    entry = guarded["items"]["ct03"]
    assert entry["status"] == "done", entry
    warnings = entry["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1 and isinstance(warnings[0], str)
    assert "flair, t1ce, t1, t2" in warnings[0] and "Hounsfield" in warnings[0], warnings
    assert (guarded["out"] / "ct03" / "ct03_seg.nii.gz").is_file()


def test_the_good_case_is_done_without_warnings(guarded):
    entry = guarded["items"]["case00"]
    assert entry["status"] == "done" and "warnings" not in entry, entry
    assert guarded["result"]["counts"] == {"done": 2, "failed": 2, "skipped": 0}


@pytest.mark.parametrize("seed,dtype", [(7, "int16"), (8, "uint16"), (9, "float32")])
def test_generated_brats_data_never_warns(tmp_path, seed, dtype):
    from sample_data import brats

    params = brats.random_case_params(seed)  # the orientation/obliquity/grid shift of the training data
    params.update(spacing=(4.0, 4.0, 4.0), dtype=dtype, with_seg=False)
    case = brats.make_case(tmp_path, "synth", seed, **params)
    paths = {m: str(p) for m, p in _files(case, "synth").items()}
    vols = read_case(Item("synth", paths), MODEL_CHANNELS)
    assert intensity_warnings(MODEL_CHANNELS, vols) == []
    # the same volumes with CT-like air outside the brain do warn
    from imagingflows.tasks.ingest import Volume

    ct = [Volume(np.where(v.array > 0, v.array, -1024.0).astype(np.float32), v.affine, None, v.source) for v in vols]
    (warning,) = intensity_warnings(MODEL_CHANNELS, ct)
    assert "Hounsfield" in warning and "minimum -1024" in warning


def test_demo_weights_are_named_with_what_they_were_trained_on(tiny_weights):
    cfg = prepare({"device": "cpu", "precision": "fp32"})
    demo = cfg["demo_weights"]
    assert demo["file"] == "swin_unetr_brats.pt"
    assert "synthetic" in demo["trained_on"] and "sample_data/brats.py" in demo["trained_on"]
    assert "MODEL_CARD.md" in demo["trained_on"] and len(demo["trained_on"].split(". ")) == 1
    assert "demo_weights" not in prepare({"weights": str(tiny_weights), "device": "cpu", "precision": "fp32"})
