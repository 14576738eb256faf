"""A case whose modalities are DICOM series folders runs through the segment pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from imagingflows.pipelines import segment
from imagingflows.pipelines.medical import discover

SERIES = Path(__file__).parent / "data" / "ct_dicom"
MASK = Path(__file__).parent / "data" / "ct_dicom_seg.nii.gz"


def test_dicom_series_folders_as_modalities(tmp_path, tiny_weights):
    case = tmp_path / "in" / "ct01"
    for name in ("ct01_flair", "ct01_t1ce", "ct01_t1", "ct01_t2"):  # one series folder per modality
        shutil.copytree(SERIES, case / name)
    items, errors = discover(tmp_path / "in", {})
    assert not errors and [i.id for i in items] == ["ct01"]
    assert Path(items[0].paths["t1ce"]).name == "ct01_t1ce"

    result = segment(tmp_path / "in", tmp_path / "out", weights=str(tiny_weights), device="cpu")
    assert result["counts"]["done"] == 1, result
    seg = nib.load(tmp_path / "out" / "ct01" / "ct01_seg.nii.gz")
    ref = nib.load(MASK)  # made from this series by dicom2nifti: the geometry it must read as
    assert seg.shape == ref.shape == (512, 512, 20)
    assert np.allclose(seg.affine, ref.affine, atol=1e-3)
