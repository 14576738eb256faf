"""Atomic writers and what a label map carries over from its input header."""

from __future__ import annotations

import contextlib
import errno
import json
import resource
import signal

import nibabel as nib
import numpy as np
import pytest

from imagingflows.pipelines.medical import scrub
from imagingflows.models.atomic import atomic_path
from imagingflows.tasks.write import TEMP_PREFIX, WriteError, write_bytes, write_json, write_nifti, write_png


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


# ----------------------------------------------------------------------------- a failure in the middle of a write

OLD = b"the previous run's complete file\n"
LIMIT = 4096  # bytes a process may write into any one file while the limit holds


@contextlib.contextmanager
def _file_size_limit(limit: int = LIMIT):
    """Writes past ``limit`` bytes fail with EFBIG (as on a full disk) after the first ``limit`` bytes landed.

    SIGXFSZ is ignored meanwhile, so the kernel returns the error instead of killing the process.
    """
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def _big_bytes(path):
    write_bytes(path, np.random.default_rng(0).bytes(64 * LIMIT))


def _big_json(path):
    write_json(path, {"values": np.random.default_rng(0).random(8 * LIMIT)})


def _big_nifti(path):
    write_nifti(path, np.random.default_rng(0).random((32, 32, 32)).astype(np.float32), np.eye(4))


def _big_png(path):
    write_png(path, np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))


WRITERS = {"bytes": (_big_bytes, "out.bin"), "json": (_big_json, "run.json"),
           "nifti": (_big_nifti, "seg.nii"), "nifti_gz": (_big_nifti, "seg.nii.gz"), "png": (_big_png, "prev.png")}


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def _file_too_large(exc: BaseException) -> bool:
    """The error, or the one a WriteError wraps, is the kernel's EFBIG: the write really stopped part way."""
    return any(isinstance(e, OSError) and e.errno == errno.EFBIG for e in (exc, exc.__cause__))


@pytest.mark.parametrize("kind", WRITERS)
def test_a_write_that_fails_part_way_keeps_the_old_file_byte_for_byte(tmp_path, kind):
    write, name = WRITERS[kind]
    target = tmp_path / name
    target.write_bytes(OLD)
    write(tmp_path / "unlimited" / name)  # the same write succeeds without the limit, and is larger than it
    assert (tmp_path / "unlimited" / name).stat().st_size > LIMIT
    with _file_size_limit(), pytest.raises((OSError, WriteError)) as info:
        write(target)
    assert _file_too_large(info.value), info.value
    assert target.read_bytes() == OLD
    assert _leftovers(tmp_path) == sorted([name, "unlimited"])  # no .tmp-* beside it


@pytest.mark.parametrize("kind", [k for k in WRITERS if k != "png"])  # Pillow deletes a file it failed to write
def test_a_write_that_fails_part_way_leaves_nothing_where_there_was_nothing(tmp_path, kind):
    write, name = WRITERS[kind]
    with _file_size_limit(), pytest.raises((OSError, WriteError)) as info:
        write(tmp_path / name)
    assert _file_too_large(info.value), info.value
    assert _leftovers(tmp_path) == []


def test_a_nifti_write_failure_names_the_file(tmp_path):
    target = tmp_path / "case00" / "case00_seg.nii.gz"
    with _file_size_limit(), pytest.raises(WriteError) as info:
        _big_nifti(target)
    assert str(target) in str(info.value) and "NIfTI" in str(info.value)
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("error", [RuntimeError("writer crashed"), KeyboardInterrupt()])
@pytest.mark.parametrize("existed", [True, False])
def test_atomic_path_error_after_part_of_the_data_keeps_old_or_nothing(tmp_path, error, existed):
    target = tmp_path / "labels.nii.gz"
    if existed:
        target.write_bytes(OLD)
    seen = {}
    with pytest.raises(type(error)):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            seen["tmp"], seen["size"] = tmp, tmp.stat().st_size
            assert target.read_bytes() == OLD if existed else not target.exists()  # nothing visible yet
            raise error
    assert seen["size"] == len(b"half of the new") and seen["tmp"].name.endswith(".nii.gz")
    assert not seen["tmp"].exists()
    assert target.read_bytes() == OLD if existed else not target.exists()
    assert _leftovers(tmp_path) == (["labels.nii.gz"] if existed else [])


def test_atomic_path_success_replaces_the_old_file_whole(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(OLD)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == ["out.bin"]


def test_json_whose_serialiser_fails_part_way_keeps_the_old_file(tmp_path):
    """The third of four values cannot be serialised: nothing of the first two reaches the file."""
    target = tmp_path / "run.json"
    write_json(target, {"status": "done"})
    before = target.read_bytes()
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(target, {"a": np.float32(1.5), "b": [1, 2], "c": object(), "d": "late"})
    assert target.read_bytes() == before and json.loads(before) == {"status": "done"}
    assert _leftovers(tmp_path) == ["run.json"]
    with pytest.raises(TypeError):
        write_json(tmp_path / "new.json", {"a": 1, "c": object()})
    assert _leftovers(tmp_path) == ["run.json"]
