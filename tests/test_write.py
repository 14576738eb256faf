"""Atomic writers and what a label map carries over from its input header."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from imagingflows.flows.run import scrub
from imagingflows.tasks.write import TEMP_PREFIX, write_nifti


def test_label_map_keeps_geometry_but_not_the_inputs_display_window_or_text(tmp_path):
    affine = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -4], [0, 0, 1.2, 7], [0, 0, 0, 1]])
    src = nib.Nifti1Image(np.ones((4, 5, 6), np.int16), affine)
    src.header["cal_max"], src.header["descrip"] = 3000, b"Smith John 1970"
    src.set_sform(affine, code=2)
    out = write_nifti(tmp_path / "seg.nii.gz", np.full((4, 5, 6), 4, np.uint8), affine, header=src.header)
    img = nib.load(out)
    assert np.array_equal(img.affine, affine.astype(np.float32)) and img.header["sform_code"] == 2  # NIfTI stores float32
    assert img.get_data_dtype() == np.uint8 and np.asarray(img.dataobj).max() == 4
    assert img.header["cal_max"] == 0 and b"Smith" not in img.header["descrip"].tobytes()
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_label_map_drops_every_text_field_and_extension_of_the_input(tmp_path):
    """With or without --anonymize: db_name, aux_file, intent_name and extensions can name the patient."""
    affine = np.diag([-1.2, 1.2, 2.5, 1.0])
    affine[:3, 3] = (90, -120, -60)
    src = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), affine)
    hdr = src.header
    hdr["db_name"], hdr["aux_file"], hdr["intent_name"] = b"SmithJ", b"SmithJ.txt", b"SmithJ"
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Smith^John"))
    hdr.set_xyzt_units("mm", "sec")
    src.set_sform(affine, code=4)  # MNI
    src.set_qform(affine, code=1)
    nib.save(src, tmp_path / "in.nii")
    header = nib.load(tmp_path / "in.nii").header  # as read_volume sees it
    assert len(header.extensions) == 1
    out = write_nifti(tmp_path / "seg.nii", np.zeros((4, 5, 6), np.uint8), affine, header=header)
    raw = out.read_bytes()
    assert b"Smith" not in raw
    img = nib.load(out)
    assert len(img.header.extensions) == 0
    assert (int(img.header["sform_code"]), int(img.header["qform_code"])) == (4, 1)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert np.allclose(img.affine, affine) and np.allclose(img.header.get_zooms(), (1.2, 1.2, 2.5))


def test_scrub_removes_paths_file_names_and_dicom_uids():
    msg = "/data/Doe/Doe_t1.nii.gz (t1): all zero; also Smith_notes.nii.gz and series 1.2.840.113619.2.55.3"
    clean = scrub(msg, {"t1": "/data/Doe/Doe_t1.nii.gz"})
    assert "Doe" not in clean and "Smith" not in clean and "1.2.840" not in clean
    assert "all zero" in clean
