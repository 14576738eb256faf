"""DICOM series reading: geometry against TotalSegmentator's own mask, HU, and one test per error.

Data: tests/data/ct_dicom (20 JPEG 2000 lossless CT slices) and tests/data/ct_dicom_seg.nii.gz
(TotalSegmentator's prediction for that series, made through dicom2nifti); see tests/data/README.md.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from imagingflows.tasks.dicom import DicomSeriesError, is_dicom_series_dir, read_dicom_series

DATA = Path(__file__).parent / "data"
SERIES = DATA / "ct_dicom"
MASK = DATA / "ct_dicom_seg.nii.gz"
# File names sorted: ...16573 is the top slice (z = -766.5), ...16592 the bottom (z = -804.5).
FILES = sorted(SERIES.iterdir())
BONE_LABELS = [32, 33, 69, 70, *range(97, 116)]  # vertebrae T11-T12, humeri, ribs (labels_total.json)


@pytest.fixture(scope="module")
def full():
    return read_dicom_series(SERIES)


@pytest.fixture(scope="module")
def mask():
    img = nib.load(MASK)
    return np.asanyarray(img.dataobj), img.affine


def copy_series(tmp_path: Path, indices, name: str = "series") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for i in indices:
        shutil.copy(FILES[i], folder / FILES[i].name)
        (folder / FILES[i].name).chmod(0o644)
    return folder


def edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)


def raises(folder: Path, pattern: str):
    """pytest.raises that also requires the folder in the message."""
    return pytest.raises(DicomSeriesError, match=re.escape(str(folder)) + ".*" + pattern)


# --------------------------------------------------------------------------- geometry and values


def test_shape_and_affine_match_totalsegmentator_mask(full, mask):
    array, affine, info = full
    m, m_affine = mask
    assert array.shape == m.shape == (512, 512, 20)
    assert array.dtype == np.float32
    np.testing.assert_allclose(affine, m_affine, atol=1e-3)
    assert nib.aff2axcodes(affine) == ("L", "A", "S") == nib.aff2axcodes(m_affine)
    assert info["axcodes"] == "LAS" and info["native_axcodes"] == "LPS"


def test_array_lines_up_with_mask(full, mask):
    array, _, _ = full
    m, _ = mask

    def inside_body(lbl):
        return float((array[lbl > 0] > -500).mean())

    def bone_dense(lbl):
        return float((array[np.isin(lbl, BONE_LABELS)] > 150).mean())

    assert inside_body(m) > 0.95
    assert bone_dense(m) > 0.65
    for wrong in (m[::-1], m[:, ::-1], m[:, :, ::-1], m.transpose(1, 0, 2)):
        assert bone_dense(wrong) < bone_dense(m) - 0.2
    assert inside_body(m[:, ::-1]) < inside_body(m) - 0.1
    # anatomy in world space: liver (label 5) on the patient's right (RAS x > 0), spleen (1) on the left
    _, affine, _ = full
    centroid_x = {lbl: (affine[:3, :3] @ np.argwhere(m == lbl).mean(0) + affine[:3, 3])[0] for lbl in (1, 5)}
    assert centroid_x[5] > 0 > centroid_x[1]


def test_hounsfield_units_and_info(full):
    array, _, info = full
    assert array.min() == -1024.0  # raw 0 + RescaleIntercept -1024
    assert 1000 < array.max() < 3100
    assert -200 < float(np.median(array[array > -500])) < 200  # soft tissue
    assert info["modality"] == "CT"
    assert info["n_slices"] == 20
    assert info["rescale"]["slope"] == 1.0 and info["rescale"]["intercept"] == -1024.0
    assert info["rescale"]["type"] == "HU"
    assert info["transfer_syntax"]["uid"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert "series_uid" in info
    assert not any("patient" in k.lower() or "date" in k.lower() for k in info)


def test_slice_spacing_comes_from_positions_not_thickness(full):
    _, affine, info = full
    assert info["slice_thickness"] == 3.0
    assert info["slice_spacing"] == pytest.approx(2.0)
    assert info["spacing"] == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert np.linalg.norm(affine[:3, 2]) == pytest.approx(2.0)


def test_sorted_by_position_not_name_or_instance_number(tmp_path, full):
    # files 7..10 hold z = -780.5 ... -786.5, i.e. slices 12..9 of the full volume
    folder = tmp_path / "shuffled"
    folder.mkdir()
    for new_name, i, instance in [("a", 9, 5), ("b", 7, 1), ("c", 10, 9), ("d", 8, 2)]:
        shutil.copy(FILES[i], folder / new_name)
        (folder / new_name).chmod(0o644)
        edit(folder / new_name, InstanceNumber=instance)
    array, affine, _ = read_dicom_series(folder)
    full_array, full_affine, _ = full
    np.testing.assert_array_equal(array, full_array[:, :, 9:13])
    np.testing.assert_allclose(affine, full_affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 9], [0, 0, 0, 1]]))


def test_native_orientation_keeps_dicom_order(full):
    array, affine, info = read_dicom_series(SERIES, orientation=None)
    las_array, las_affine, _ = full
    assert info["axcodes"] == "LPS"
    np.testing.assert_array_equal(array, las_array[:, ::-1, :])
    # the same voxel lands on the same world point
    ijk = np.array([10, 20, 3, 1])
    las_ijk = np.array([10, 511 - 20, 3, 1])
    np.testing.assert_allclose(affine @ ijk, las_affine @ las_ijk, atol=1e-6)
    # DICOM origin (LPS) = ImagePositionPatient of the lowest slice, negated x/y for RAS
    np.testing.assert_allclose(affine[:3, 3], [249.51171875, 437.51171875, -804.5])


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


@pytest.mark.parametrize(
    "rotation",
    [
        _rotation("y", 90),  # sagittal
        _rotation("x", -90),  # coronal
        _rotation("y", 180),  # feet first
        _rotation("x", 20) @ _rotation("y", -15) @ _rotation("z", 10),  # oblique
    ],
    ids=["sagittal", "coronal", "feet_first", "oblique"],
)
def test_every_pixel_lands_at_its_dicom_world_position(tmp_path, rotation):
    """Convention-free check: for any orientation, the voxel that the affine assigns to a pixel's
    DICOM world position (IPP + col * dc * row_dir + row * dr * col_dir) holds that pixel's HU."""
    folder = copy_series(tmp_path, [4, 5, 6])
    centre = np.array([0.0, -188.0, -775.0])
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        iop = np.array(ds.ImageOrientationPatient, float)
        ipp = np.array(ds.ImagePositionPatient, float)
        ds.ImageOrientationPatient = [round(float(v), 8) for v in np.r_[rotation @ iop[:3], rotation @ iop[3:]]]
        ds.ImagePositionPatient = [round(float(v), 6) for v in rotation @ (ipp - centre) + centre]
        ds.save_as(f)
    array, affine, info = read_dicom_series(folder)
    assert info["axcodes"] == "LAS"
    rr, cc = (g.ravel() for g in np.meshgrid([0, 5, 200, 511], [0, 9, 300, 511], indexing="ij"))
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array[rr, cc].astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        iop = np.array(ds.ImageOrientationPatient, float)
        ipp = np.array(ds.ImagePositionPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        lps = ipp[:, None] + np.outer(iop[:3], cc * dc) + np.outer(iop[3:], rr * dr)
        ras = np.diag([-1.0, -1.0, 1.0]) @ lps
        ijk = np.linalg.solve(affine[:3, :3], ras - affine[:3, 3:4])
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
        i, j, k = np.round(ijk).astype(int)
        np.testing.assert_array_equal(array[i, j, k], hu)


# --------------------------------------------------------------------------- is_dicom_series_dir


def test_is_dicom_series_dir(tmp_path):
    assert is_dicom_series_dir(SERIES)
    assert not is_dicom_series_dir(FILES[0])
    assert not is_dicom_series_dir(DATA)  # holds a .nii.gz and folders
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_dicom_series_dir(empty)
    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.txt").write_text("not dicom\n")
    assert not is_dicom_series_dir(text)
    ok = copy_series(tmp_path, [0, 1])
    (ok / ".DS_Store").write_bytes(b"\0" * 200)  # hidden files are ignored
    assert is_dicom_series_dir(ok)
    (ok / "notes.txt").write_text("stray\n")
    assert not is_dicom_series_dir(ok)


# --------------------------------------------------------------------------- errors


def test_error_missing_path(tmp_path):
    with raises(tmp_path / "nope", "not found"):
        read_dicom_series(tmp_path / "nope")


def test_error_single_file_instead_of_folder(tmp_path):
    folder = copy_series(tmp_path, [0])
    f = next(folder.iterdir())
    with raises(f, "found a single file.*not a 3D volume"):
        read_dicom_series(f)


def test_error_only_text_files(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello\n")
    with raises(folder, "expected DICOM files of one series, found 1 non-DICOM file.*readme.txt"):
        read_dicom_series(folder)


def test_error_empty_folder_and_parent_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises(empty, "found no files"):
        read_dicom_series(empty)
    copy_series(empty, [0, 1])
    with raises(empty, "subfolder.*series.*not its parent"):
        read_dicom_series(empty)


def test_error_non_dicom_file_next_to_slices(tmp_path):
    folder = copy_series(tmp_path, [0, 1, 2])
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 fake")
    with raises(folder, "found 1 non-DICOM file.*report.pdf"):
        read_dicom_series(folder)


def test_error_two_series(tmp_path):
    folder = copy_series(tmp_path, [0, 1, 2, 3])
    edit(folder / FILES[2].name, SeriesInstanceUID="1.2.826.0.1.3680043.8.498.1")
    with raises(folder, r"expected one DICOM series, found 2 SeriesInstanceUIDs.*1\.2\.826\.0\.1\.3680043\.8\.498\.1 \(1 file.*own folder"):
        read_dicom_series(folder)


def test_error_two_series_quotes_no_free_text(tmp_path):
    """SeriesDescription can carry a name; the error names series by UID and number only."""
    folder = copy_series(tmp_path, [0, 1, 2])
    edit(folder / FILES[0].name, SeriesInstanceUID="1.2.826.0.1.3680043.8.498.2", SeriesNumber=7,
         SeriesDescription="Smith John follow-up")
    with pytest.raises(DicomSeriesError, match=r"found 2 SeriesInstanceUIDs") as err:
        read_dicom_series(folder)
    assert "Smith" not in str(err.value)
    assert "series number 7" in str(err.value)  # still says which series is which


def test_error_single_slice(tmp_path):
    folder = copy_series(tmp_path, [5])
    with raises(folder, "expected at least 2 slices.*found 1.*not a volume"):
        read_dicom_series(folder)


def test_error_inconsistent_orientation(tmp_path):
    folder = copy_series(tmp_path, [0, 1, 2])
    edit(folder / FILES[1].name, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with raises(folder, "expected the same ImageOrientationPatient in every slice, found 2 different"):
        read_dicom_series(folder)


def test_error_different_rows_columns(tmp_path):
    folder = copy_series(tmp_path, [0, 1, 2])
    edit(folder / FILES[0].name, Rows=256, Columns=256)
    with raises(folder, r"expected the same image size \(Rows x Columns\).*512x512 in 2 file.*256x256 in 1 file"):
        read_dicom_series(folder)


def test_error_duplicate_positions(tmp_path):
    folder = copy_series(tmp_path, [0, 1, 2, 3])
    edit(folder / FILES[2].name, ImagePositionPatient=pydicom.dcmread(FILES[1]).ImagePositionPatient)
    with raises(folder, "expected one slice per position, found 1 duplicate.*-768.500 mm"):
        read_dicom_series(folder)


def test_error_non_uniform_spacing(tmp_path):
    folder = copy_series(tmp_path, [0, 1, 2, 4, 5])  # slice 3 missing: gaps 2, 2, 4, 2 mm
    with raises(folder, "expected uniform slice spacing.*found spacing from 2 to 4 mm.*missing"):
        read_dicom_series(folder)


def test_error_gantry_tilt(tmp_path):
    folder = copy_series(tmp_path, [0, 1, 2, 3])
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.3 * (z + 766.5), z]  # ~17 degrees of tilt
        ds.save_as(f)
    with raises(folder, "gantry tilt"):
        read_dicom_series(folder)


def test_error_multiframe(tmp_path):
    folder = copy_series(tmp_path, [0, 1])
    edit(folder / FILES[0].name, NumberOfFrames=2)
    with raises(folder, "multi-frame"):
        read_dicom_series(folder)


def test_error_undecodable_pixel_data_names_file_and_syntax(tmp_path):
    from pydicom.encaps import encapsulate

    folder = copy_series(tmp_path, [0, 1, 2])
    bad = folder / FILES[1].name
    ds = pydicom.dcmread(bad)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])  # a broken JPEG 2000 codestream
    ds.save_as(bad)
    with raises(folder, re.escape(bad.name) + r".*JPEG 2000 Image Compression \(Lossless Only\).*1\.2\.840\.10008\.1\.2\.4\.90.*corrupt"):
        read_dicom_series(folder)


def test_error_missing_decoder_says_which_package(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    folder = copy_series(tmp_path, [0, 1])
    bad = folder / FILES[0].name
    ds = pydicom.dcmread(bad)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # header now claims JPEG-LS
    ds.save_as(bad, enforce_file_format=True)
    pattern = re.escape(bad.name) + r".*JPEG-LS Lossless Image Compression"
    if not get_decoder(JPEGLSLossless).is_available:
        pattern += ".*No decoder.*is installed.*pip install (python-gdcm|pylibjpeg pylibjpeg-libjpeg|pyjpegls)"
    with raises(folder, pattern):
        read_dicom_series(folder)
