"""``anonymize``: no header text of the input reaches any output file; geometry is untouched.

A generated case is rewritten with a header full of a patient's name (``db_name``,
``descrip``, ``aux_file``, ``intent_name`` and a comment extension ``PatientName=...``),
then segmented through the real flow; every file in the output folder is searched
(``.gz`` decompressed) for the name.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imagingflows.flows.run import run_pipeline
from imagingflows.pipelines.medical import MODEL_CHANNELS

SUFFIX = {"flair": "_flair", "t1ce": "_t1ce", "t1": "_t1", "t2": "_t2"}
NAMES = (b"smith", b"john")  # searched lower-case in lower-cased bytes


def _leaky_copy(path: Path) -> None:
    """Rewrite ``path`` in place with identifying header text; voxels and affine unchanged."""
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    hdr = img.header.copy()
    hdr["db_name"] = b"SmithJ"
    hdr["descrip"] = b"Smith^John 1970-01-01 MRN 123"
    hdr["aux_file"] = b"SmithJ_notes.txt"
    hdr["intent_name"] = b"SmithJohn"
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Smith^John"))
    out = nib.Nifti1Image(data, img.affine, header=hdr)
    out.set_sform(img.affine, code=2)  # aligned: must survive as is
    out.set_qform(img.affine, code=1)
    nib.save(out, str(path))


def _plain_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


@pytest.fixture(scope="module")
def anon_run(tmp_path_factory, tiny_weights):
    from sample_data import brats

    root = tmp_path_factory.mktemp("anonhdr")
    inp, out = root / "in", root / "out"
    case = brats.make_case(inp, "case00", 0, spacing=(3.0, 3.0, 3.0), axcodes="LPS")
    for m in MODEL_CHANNELS:
        _leaky_copy(case / f"case00{SUFFIX[m]}.nii.gz")
    ref = nib.load(case / "case00_flair.nii.gz")
    assert b"smith" in ref.header.extensions[0].get_content().lower()  # the input does carry the name
    result = run_pipeline("segment", inp, out, anonymize=True, precision="fp32", weights=str(tiny_weights),
                          device="cpu", save_probabilities=True)
    return {"out": out, "result": result, "ref": ref}


def test_no_name_in_any_output_file(anon_run):
    out = anon_run["out"]
    assert anon_run["result"]["counts"]["done"] == 1, anon_run["result"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name.endswith("_seg.nii.gz") for p in files) and any(p.name.endswith("_probs.nii.gz") for p in files)
    for p in files:
        text = _plain_bytes(p).lower()
        for name in NAMES:
            assert name not in text, (p.relative_to(out), name)


@pytest.mark.parametrize("kind", ["seg", "probs"])
def test_geometry_untouched_and_header_text_empty(anon_run, kind):
    ref = anon_run["ref"]
    (path,) = anon_run["out"].rglob(f"*_{kind}.nii.gz")
    img = nib.load(path)
    hdr = img.header
    assert np.array_equal(img.affine, ref.affine)
    assert np.array_equal(img.get_sform(), ref.get_sform())
    assert np.allclose(img.get_qform(), ref.get_qform(), atol=1e-5)
    assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (2, 1)
    assert np.allclose(hdr["pixdim"][1:4], ref.header["pixdim"][1:4])
    assert img.shape[:3] == ref.shape
    assert img.get_data_dtype() == (np.uint8 if kind == "seg" else np.float32)
    assert len(hdr.extensions) == 0
    for field in ("db_name", "aux_file", "intent_name"):
        assert hdr[field].tobytes().strip(b"\0") == b"", field
    assert hdr["descrip"].tobytes().strip(b"\0") == b"imagingflows"
