"""The train and evaluate flows on generated cases (real Prefect, real MONAI, tiny settings)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from imagingflows.flows.evaluate import evaluate_pipeline
from imagingflows.flows.runners import UsageError
from imagingflows.flows.train import train_pipeline
from imagingflows.models.backend import load
from imagingflows.pipelines import medical as seg
from imagingflows.pipelines.medical_train import find_training_cases, load_case_in_frame, split_cases

TRAIN = {"epochs": 1, "steps_per_epoch": 1, "batch_size": 1, "roi": [64, 64, 64], "spacing": [4.0, 4.0, 4.0],
         "feature_size": 12, "val_fraction": 0.34, "seed": 3, "labels": "auto", "device": "cpu", "quiet": True}


def test_split_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    a = split_cases(ids, 0.2, seed=1)
    assert a == split_cases(list(reversed(ids)), 0.2, seed=1)  # independent of listing order
    assert len(a[1]) == 2 and not set(a[0]) & set(a[1]) and sorted(a[0] + a[1]) == sorted(ids)
    assert split_cases(ids, 0.2, seed=2) != a


def test_train_writes_checkpoints_curve_and_resumes(make_cases, tmp_path):
    data = make_cases(2, seed=0)
    make_cases(1, seed=2, folder="cases", naming="2023", labels="2023")  # 2023 labels detected from values
    run = tmp_path / "run"
    first = train_pipeline("segment", data=data, output=run, **TRAIN)
    assert first["epochs_done"] == 1
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file() and (run / "training_curve.png").is_file()
    manifest = json.loads((run / "run.json").read_text())
    assert sorted(manifest["split"]["train"] + manifest["split"]["val"]) == ["case00", "case01", "case02"]
    assert manifest["split"]["seed"] == 3 and len(manifest["split"]["val"]) == 1
    lm = load(run / "best.pt")
    assert lm.meta["profile"]["spacing"] == [4.0, 4.0, 4.0] and lm.config["patch_merging"] == "current"
    _assert_2023_labels_detected(data, "case02", lm.meta["profile"])
    before = {k: v.clone() for k, v in lm.module.state_dict().items()}

    second = train_pipeline("segment", data=data, output=run, **{**TRAIN, "epochs": 2})  # resumes from last.pt
    assert second["epochs_done"] == 2
    assert second["history"][0] == first["history"][0]
    after = load(run / "last.pt").module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert (run / "report.html").is_file()


def _assert_2023_labels_detected(data, case_id, profile):
    """With labels auto, training reads the 2023 case's ET (label 3): the regions equal those of labels 2023."""
    by_id = {item.id: (item, ref) for item, ref in find_training_cases(data)[0]}
    values = set(np.unique(np.asarray(nib.load(by_id[case_id][1]).dataobj)).tolist())
    assert values == {0, 1, 2, 3}  # the generator wrote 2023 labels (ET = 3, no 4)
    assert seg.detect_convention(np.asarray(nib.load(by_id[case_id][1]).dataobj).astype(np.uint8)) == "2023"
    _, auto = load_case_in_frame(*by_id[case_id], profile, "auto")
    _, as_2023 = load_case_in_frame(*by_id[case_id], profile, "2023")
    _, as_2021 = load_case_in_frame(*by_id[case_id], profile, "2021")
    assert torch.equal(auto, as_2023) and auto[2].sum() > 0  # [TC, WT, ET]: the enhancing tumour is there
    assert as_2021[2].sum() == 0 and not torch.equal(auto, as_2021)  # read as 2021 the ET would be lost


def test_train_needs_references(make_cases, tmp_path):
    data = make_cases(2, seed=0, with_seg=False)
    with pytest.raises(UsageError, match="need at least 2 cases with references"):
        train_pipeline("segment", data=data, output=tmp_path / "run", **TRAIN)


def test_evaluate_scores_predictions_against_references(make_cases, tmp_path):
    refs = make_cases(2, seed=5)
    preds = tmp_path / "preds"
    for case in ("case05", "case06"):
        (preds / case).mkdir(parents=True)
        shutil.copy(refs / case / f"{case}_seg.nii.gz", preds / case / f"{case}_seg.nii.gz")
    # damage one prediction: drop the enhancing tumour
    p = preds / "case06" / "case06_seg.nii.gz"
    img = nib.load(p)
    lab = np.asarray(img.dataobj).copy()
    lab[lab == 4] = 1
    nib.save(nib.Nifti1Image(lab, img.affine, img.header), p)

    out = tmp_path / "eval"
    result = evaluate_pipeline("segment", preds, refs, out)
    per = result["metrics"]["per_item"]
    assert per["case05"]["dice_WT"] == 1.0 and per["case05"]["hd95_ET"] == 0.0
    assert per["case06"]["dice_TC"] == 1.0 and per["case06"]["dice_ET"] == 0.0
    assert per["case06"]["hd95_ET"] == 373.13
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean"]["dice_ET"] == pytest.approx(0.5)
    assert "BraTS rule" in metrics["conventions"]
    assert "dice_ET" in (out / "report.html").read_text()
