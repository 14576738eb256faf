"""A case whose modalities are DICOM series folders runs through the segment pipeline.

The only DICOM data at hand is one CT series, so it also shows the guards: the series
copied as all four modalities fails (identical modalities); four copies made different
(RescaleIntercept shifted per copy) run, with warnings that this is CT, not MRI. Both run
under ``anonymize`` with the patient's name in every slice: no output carries it.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from imagingflows.flows import segment
from imagingflows.pipelines.medical import discover

SERIES = Path(__file__).parent / "data" / "ct_dicom"
MASK = Path(__file__).parent / "data" / "ct_dicom_seg.nii.gz"
MODALITIES = ("flair", "t1ce", "t1", "t2")


def _copy_series(dst: Path, intercept_shift: float) -> None:
    """The CT series with a patient's name in every slice (pixel data untouched)."""
    dst.mkdir(parents=True)
    for f in sorted(SERIES.iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID = "Smith^John", "SMITHJ01"
        ds.SeriesDescription = "Smith John head"
        ds.RescaleIntercept = float(ds.RescaleIntercept) + intercept_shift
        ds.save_as(dst / f.name)


def test_dicom_series_folders_as_modalities(tmp_path, tiny_weights):
    inp = tmp_path / "in"
    for k, m in enumerate(MODALITIES):
        _copy_series(inp / "ct01" / f"ct01_{m}", intercept_shift=k)  # four different volumes
        _copy_series(inp / "same" / f"same_{m}", intercept_shift=0)  # one volume four times
    items, errors = discover(inp, {})
    assert not errors and [i.id for i in items] == ["ct01", "same"]
    assert Path(items[0].paths["t1ce"]).name == "ct01_t1ce"

    out = tmp_path / "out"
    result = segment(inp, out, weights=str(tiny_weights), device="cpu", precision="fp32", anonymize=True)
    assert result["counts"] == {"done": 1, "failed": 1, "skipped": 0}, result
    entries = json.loads((out / "run.json").read_text())["items"].values()
    done = next(e for e in entries if e["status"] == "done")
    failed = next(e for e in entries if e["status"] == "failed")
    assert "modalities flair, t1ce, t1, t2 hold identical voxel data" in failed["error"], failed["error"]
    assert any("Hounsfield" in w for w in done["warnings"]), done
    assert any("DICOM Modality is CT" in w for w in done["warnings"]), done

    (seg_path,) = out.rglob("*_seg.nii.gz")
    seg = nib.load(seg_path)
    ref = nib.load(MASK)  # made from this series by dicom2nifti: the geometry it must read as
    assert seg.shape == ref.shape == (512, 512, 20)
    assert np.allclose(seg.affine, ref.affine, atol=1e-3)
    for p in (p for p in out.rglob("*") if p.is_file()):  # no DICOM field reaches an output
        data = p.read_bytes()
        data = gzip.decompress(data) if p.name.endswith(".gz") else data
        assert b"smith" not in data.lower(), p
