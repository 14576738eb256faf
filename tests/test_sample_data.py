"""The synthetic BraTS generator (sample_data/brats.py): determinism, geometry, labels, files, contrasts."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sample_data import brats  # noqa: E402

SEED = 2  # a case with full necrosis, enhancing rim and oedema of moderate size


@pytest.fixture(scope="module")
def phantom():
    ph = brats.make_phantom(SEED)
    assert ph.necrosis == "full"
    return ph


@pytest.fixture(scope="module")
def lps2(phantom):
    """The phantom on a 2 mm LPS grid: (affine, shape, images, labels)."""
    affine, shape = brats.grid_for((2.0, 2.0, 2.0), "LPS")
    images, labels = phantom.sample(affine, shape)
    return affine, shape, images, labels


def _regions_mm3(labels: np.ndarray, voxel_mm3: float, et: int = 4) -> np.ndarray:
    """Volumes (mm3) of WT, TC, ET."""
    return np.array([(labels > 0).sum(), np.isin(labels, (1, et)).sum(), (labels == et).sum()]) * voxel_mm3


def test_grid_for_orientation_and_shape():
    affine, shape = brats.grid_for((2.0, 2.0, 2.0))
    assert shape == (80, 96, 80)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    centre = affine @ np.r_[(np.array(shape) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    for codes in ("LPS", "PIR", "ASL"):
        a, s = brats.grid_for((1.0, 1.5, 2.0), codes)
        assert "".join(nib.aff2axcodes(a)) == codes
        np.testing.assert_allclose(np.sqrt((a[:3, :3] ** 2).sum(0)), (1.0, 1.5, 2.0))
    a, s = brats.grid_for((2.0, 2.0, 2.0), "RAS", oblique_deg=10.0)
    assert not np.allclose(a[:3, :3], np.diag(np.diag(a[:3, :3])))  # really oblique
    assert all(n >= m for n, m in zip(s, (80, 96, 80)))  # grows to hold the rotated FOV
    with pytest.raises(ValueError):
        brats.grid_for(axcodes="RAR")


def test_deterministic(phantom, lps2):
    assert brats.make_phantom(SEED) == phantom
    affine, shape, images, labels = lps2
    again_images, again_labels = brats.make_phantom(SEED).sample(affine, shape)
    np.testing.assert_array_equal(again_labels, labels)
    for m in brats.MODALITIES_2021:
        np.testing.assert_array_equal(again_images[m], images[m])
        assert images[m].dtype == np.float32 and images[m].shape == shape
    other, other_labels = phantom.sample(affine, shape, noise_seed=SEED + 1)
    np.testing.assert_array_equal(other_labels, labels)  # labels never depend on the noise
    assert not np.array_equal(other["flair"], images["flair"])
    assert brats.make_phantom(SEED + 1) != phantom
    assert brats.random_case_params(7) == brats.random_case_params(7)


def test_labels_nested(lps2):
    _, _, _, labels = lps2
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 4}
    core = np.isin(labels, (1, 4))
    ring = ndimage.binary_dilation(core, iterations=1)
    assert (labels[ring] > 0).all(), "every NCR/ET voxel's neighbourhood lies in the whole tumour"


def test_same_world_content_on_different_grids(phantom, lps2):
    affine2, _, _, labels2 = lps2
    v2 = _regions_mm3(labels2, 8.0)
    # 1 mm RAS grid over the tumour's bounding box (+ margin), from the 2 mm labels
    ijk = np.argwhere(labels2 > 0)
    corners = (affine2 @ np.c_[ijk, np.ones(len(ijk))].T)[:3]
    lo, hi = corners.min(axis=1) - 6.0, corners.max(axis=1) + 6.0
    affine1 = np.eye(4)
    affine1[:3, 3] = lo
    shape1 = tuple(int(n) for n in np.ceil(hi - lo))
    _, labels1 = phantom.sample(affine1, shape1)
    assert labels1[[0, -1]].max() == 0 and labels1[:, [0, -1]].max() == 0 and labels1[:, :, [0, -1]].max() == 0
    v1 = _regions_mm3(labels1, 1.0)
    np.testing.assert_allclose(v2, v1, rtol=0.05)
    # an oblique, axis-permuted, anisotropic grid, shifted off the origin
    affine3, shape3 = brats.grid_for((1.5, 1.5, 2.5), "PIR", oblique_deg=10.0, origin_jitter=np.array([0.7, -1.3, 0.4]))
    _, labels3 = phantom.sample(affine3, shape3)
    np.testing.assert_allclose(_regions_mm3(labels3, 1.5 * 1.5 * 2.5), v1, rtol=0.05)
    # the tumour is where the phantom says, in world coordinates, on every grid
    assert phantom.labels_at(np.array([phantom.tumour_center]))[0] in (1, 4)


def test_contrasts(phantom, lps2):
    affine, shape, images, labels = lps2
    t = phantom.tissue_fractions(affine, shape)
    wm = (t["wm"] > 0.95) & (labels == 0)
    gm = (t["gm"] > 0.9) & (labels == 0)
    csf = (t["csf"] > 0.9) & (labels == 0)
    ed, ncr, et = labels == 2, labels == 1, labels == 4
    regions = dict(wm=wm, gm=gm, csf=csf, ed=ed, ncr=ncr, et=et)
    mean = {m: {k: float(images[m][r].mean()) for k, r in regions.items()} for m in images}
    assert mean["flair"]["ed"] > 1.5 * mean["flair"]["wm"]
    assert mean["flair"]["csf"] < mean["flair"]["wm"] < mean["flair"]["gm"]
    assert mean["t1ce"]["et"] > 2.0 * mean["t1ce"]["ncr"]
    assert mean["t1ce"]["et"] > 1.3 * mean["t1ce"]["wm"]
    assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
    assert mean["t1"]["ed"] < mean["t1"]["wm"] and mean["t1"]["ncr"] < mean["t1"]["wm"]
    assert mean["t2"]["csf"] > mean["t2"]["gm"] > mean["t2"]["wm"]
    assert mean["t2"]["ed"] > mean["t2"]["wm"] and mean["t2"]["ncr"] > mean["t2"]["wm"]


def test_make_case_2023_files(tmp_path):
    case_id = "BraTS-GLI-00007-000"
    kw = dict(spacing=(3.0, 3.0, 3.0), axcodes="PIR", oblique_deg=7.0)
    folder = brats.make_case(tmp_path, case_id, SEED, naming="2023", labels="2023", **kw)
    assert folder == tmp_path / case_id
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"{case_id}-{s}.nii.gz" for s in ("t2f", "t1c", "t1n", "t2w", "seg")])
    affine, shape = brats.grid_for(kw["spacing"], kw["axcodes"], kw["oblique_deg"])
    brain = brats.make_phantom(SEED).brain_mask(affine, shape)
    assert brain[[0, -1]].sum() == brain[:, [0, -1]].sum() == brain[:, :, [0, -1]].sum() == 0  # not cut by the FOV
    for suffix in ("t2f", "t1c", "t1n", "t2w", "seg"):
        img = nib.load(folder / f"{case_id}-{suffix}.nii.gz")
        assert img.shape == shape
        np.testing.assert_allclose(img.affine, affine, atol=1e-4)
        np.testing.assert_allclose(img.get_qform(), affine, atol=1e-4)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        data = np.asanyarray(img.dataobj)
        if suffix == "seg":
            assert data.dtype == np.uint8
            assert set(np.unique(data).tolist()) == {0, 1, 2, 3}
            assert not data[~brain].any()
        else:
            assert data.dtype == np.int16
            assert not data[~brain].any(), "skull-stripped: exactly 0 outside the brain"
            assert (data[brain] > 0).all(), "nonzero everywhere inside the brain"
            assert 500 < data.max() < 6000


def test_cli_2021_naming(tmp_path):
    assert brats.main(["--out", str(tmp_path), "--n", "1", "--seed", "5", "--spacing", "3", "3", "3"]) == 0
    folder = tmp_path / "synth_005"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"synth_005_{m}.nii.gz" for m in (*brats.MODALITIES_2021, "seg"))
    seg = np.asanyarray(nib.load(folder / "synth_005_seg.nii.gz").dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4} and (seg == 4).any()
    params = brats.random_case_params(5)
    img = nib.load(folder / "synth_005_t1ce.nii.gz")
    expected, _ = brats.grid_for(
        (3.0, 3.0, 3.0), params["axcodes"], params["oblique_deg"], origin_jitter=params["origin_jitter"]
    )
    np.testing.assert_allclose(img.affine, expected, atol=1e-4)


def test_random_case_params_ranges():
    codes = set()
    for s in range(40):
        p = brats.random_case_params(s)
        assert all(1.0 <= v <= 2.5 for v in p["spacing"])
        assert abs(p["oblique_deg"]) <= 15.0
        codes.add(p["axcodes"])
    assert {"RAS", "LPS"} <= codes and len(codes) >= 4
