"""Labels are right in world space: flipped, axis-permuted and oblique copies of one case.

Each copy holds the same world content on a different voxel grid. Its output must have
the copy's exact affine and shape, and, resampled onto the original grid, agree with
the original's output. Runs the trained demo model: a random network would not notice a
case fed to it in the wrong orientation.

Flipped and permuted copies are exact re-gridings of the same voxels: their outputs must
agree to Dice >= 0.99 (measured: 1.0). The oblique copy is a new acquisition of the same
phantom on a grid rotated by 10 degrees (its own noise and partial volumes), resampled by
the pipeline onto a world-aligned grid; agreement there is bounded by the model's
stability and by the nearest-neighbour comparison itself. Measured with the current demo
weights: labels TC 0.955, WT 0.968, ET 0.888; probabilities (linear resampling) TC 0.972,
WT 0.985, ET 0.949 (the interim weights gave TC 0.83 / 0.83). The thresholds below sit just
under those figures.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from imagingflows.flows import segment
from imagingflows.pipelines.medical import labels_to_regions
from sample_data import brats

MODALITIES = ("flair", "t1ce", "t1", "t2")
EXACT = {"TC": 0.99, "WT": 0.99, "ET": 0.99}
OBLIQUE_LABELS = {"TC": 0.93, "WT": 0.95, "ET": 0.86}
OBLIQUE_PROBABILITIES = {"TC": 0.95, "WT": 0.97, "ET": 0.92}


def _write_copy(src_dir, dst_root, name, transform):
    """Re-grid every file of a case exactly: ``transform(array, affine) -> (array, affine)``."""
    out = dst_root / name
    out.mkdir(parents=True)
    for f in sorted(src_dir.glob("*.nii.gz")):
        img = nib.load(f)
        arr, aff = transform(np.asarray(img.dataobj), img.affine)
        new = nib.Nifti1Image(np.ascontiguousarray(arr), aff)
        new.set_qform(aff, code=1)
        new.set_sform(aff, code=1)
        nib.save(new, out / f.name.replace(src_dir.name, name))
    return out


def _flip0(arr, aff):
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, arr.shape[0] - 1
    return arr[::-1], aff @ flip


def _permute(arr, aff):
    order = (2, 0, 1)
    perm = np.eye(4)[:, list(order) + [3]]
    return arr.transpose(order), aff @ perm


def _resample_nearest(labels, affine, target_affine, target_shape):
    """Nearest-neighbour lookup of ``labels`` at the voxel centres of the target grid."""
    ijk = np.indices(target_shape).reshape(3, -1)
    world = target_affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    src = np.rint((np.linalg.inv(affine) @ world)[:3]).astype(int)
    inside = np.all((src >= 0) & (src < np.array(labels.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], labels.dtype)
    out[inside] = labels[src[0, inside], src[1, inside], src[2, inside]]
    return out.reshape(target_shape)


def _dice(a, b):
    return 1.0 if not a.any() and not b.any() else 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, demo_weights):
    root = tmp_path_factory.mktemp("geometry")
    cases = root / "in"
    orig = brats.make_case(cases, "orig", seed=4242, spacing=(2.0, 2.0, 2.0), axcodes="RAS")
    _write_copy(orig, cases, "flipped", _flip0)
    _write_copy(orig, cases, "permuted", _permute)
    brats.make_case(cases, "oblique", seed=4242, spacing=(2.0, 2.0, 2.0), axcodes="RAS", oblique_deg=10.0)
    result = segment(cases, root / "out", weights=str(demo_weights), device="cpu", overlap=0.25,
                     save_probabilities=True)
    assert result["counts"]["done"] == 4, result
    return cases, root / "out"


@pytest.mark.parametrize("copy", ["flipped", "permuted", "oblique"])
def test_output_keeps_the_input_grid_and_agrees_in_world_space(outputs, copy):
    cases, out = outputs
    src = nib.load(cases / copy / f"{copy}_flair.nii.gz")
    seg = nib.load(out / copy / f"{copy}_seg.nii.gz")
    assert seg.shape == src.shape
    assert np.array_equal(seg.affine, src.affine)
    assert seg.get_data_dtype() == np.uint8

    ref = nib.load(out / "orig" / "orig_seg.nii.gz")
    moved = _resample_nearest(np.asarray(seg.dataobj), seg.affine, ref.affine, ref.shape)
    ref_regions = labels_to_regions(np.asarray(ref.dataobj))
    moved_regions = labels_to_regions(moved)
    assert ref_regions[1].sum() > 500  # the demo model found the tumour in the original
    dices = {r: _dice(moved_regions[i], ref_regions[i]) for i, r in enumerate(("TC", "WT", "ET"))}
    bar = OBLIQUE_LABELS if copy == "oblique" else EXACT
    assert all(dices[r] >= bar[r] for r in bar), dices


def _resample_linear(values, affine, target_affine, target_shape):
    from scipy.ndimage import map_coordinates

    ijk = np.indices(target_shape).reshape(3, -1)
    world = target_affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    src = (np.linalg.inv(affine) @ world)[:3]
    return np.stack([map_coordinates(values[..., c], src, order=1, mode="constant").reshape(target_shape)
                     for c in range(values.shape[-1])])


@pytest.mark.parametrize("copy", ["flipped", "permuted", "oblique"])
def test_probabilities_agree_in_world_space(outputs, copy):
    """Region probabilities resampled (linear) onto the original grid give the original's regions."""
    _, out = outputs
    ref = nib.load(out / "orig" / "orig_probs.nii.gz")
    img = nib.load(out / copy / f"{copy}_probs.nii.gz")
    assert img.shape[:3] == nib.load(out / copy / f"{copy}_seg.nii.gz").shape
    moved = _resample_linear(np.asarray(img.dataobj), img.affine, ref.affine, ref.shape[:3]) > 0.5
    orig = np.moveaxis(np.asarray(ref.dataobj), -1, 0) > 0.5
    brain = nib.load(out.parent / "in" / "orig" / "orig_flair.nii.gz").get_fdata() > 0
    dices = {r: _dice(moved[i] & brain, orig[i] & brain) for i, r in enumerate(("TC", "WT", "ET"))}
    bar = OBLIQUE_PROBABILITIES if copy == "oblique" else EXACT
    assert all(dices[r] >= bar[r] for r in bar), dices


def test_the_record_and_report_say_demo_weights_ran(outputs):
    """Demo weights were trained on synthetic phantoms: run.json and the report say so."""
    import json

    _, out = outputs
    run = json.loads((out / "run.json").read_text())
    assert run["demo_weights"]["file"] == "swin_unetr_brats.pt"
    assert "synthetic" in run["demo_weights"]["trained_on"]
    assert "Demo weights" in (out / "report.html").read_text()
