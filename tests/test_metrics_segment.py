"""BraTS region conventions and the Dice/HD95 metric rules (MONAI metrics underneath)."""

from __future__ import annotations

import numpy as np
import pytest

from imagingflows.pipelines.medical import (HD95_EMPTY_PENALTY, detect_convention, labels_to_regions,
                                            region_metrics, regions_to_labels, statistics)
from imagingflows.tasks.ingest import InputError


def _labels(convention: str) -> np.ndarray:
    et = 4 if convention == "2021" else 3
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[4:16, 4:16, 4:16] = 2
    lab[7:13, 7:13, 7:13] = et
    lab[9:11, 9:11, 9:11] = 1
    return lab


@pytest.mark.parametrize("convention", ["2021", "2023"])
def test_regions_round_trip_and_nesting(convention):
    lab = _labels(convention)
    assert detect_convention(lab) == convention
    tc, wt, et = labels_to_regions(lab)
    assert tc.sum() == 6**3 and wt.sum() == 12**3 and et.sum() == 6**3 - 2**3
    assert not (tc & ~wt).any() and not (et & ~tc).any()
    assert np.array_equal(regions_to_labels(np.stack([tc, wt, et]), convention), lab)


def test_mixed_or_foreign_label_values_are_rejected():
    lab = _labels("2021")
    lab[0, 0, 0] = 3
    with pytest.raises(InputError, match="mix BraTS 2021"):
        detect_convention(lab)
    lab[0, 0, 0] = 7
    with pytest.raises(InputError, match="not BraTS labels"):
        detect_convention(lab)


def test_empty_region_rules():
    empty = np.zeros((3, 10, 10, 10), bool)
    some = empty.copy()
    some[:, 3:6, 3:6, 3:6] = True
    both_empty = region_metrics(empty, empty, (1, 1, 1))
    assert both_empty["dice_ET"] == 1.0 and both_empty["hd95_ET"] == 0.0
    one_empty = region_metrics(some, empty, (1, 1, 1))
    assert one_empty["dice_WT"] == 0.0 and one_empty["hd95_WT"] == HD95_EMPTY_PENALTY
    assert region_metrics(empty, some, (1, 1, 1))["dice_TC"] == 0.0


def test_dice_and_hd95_in_millimetres():
    ref = np.zeros((3, 30, 30, 30), bool)
    ref[:, 10:20, 10:20, 10:20] = True
    pred = np.roll(ref, 2, axis=1)  # shifted 2 voxels along the first spatial axis
    m = region_metrics(pred, ref, (2.5, 1.0, 1.0))
    assert m["dice_WT"] == pytest.approx(0.8, abs=1e-4)  # 8/10 overlap
    assert m["hd95_WT"] == pytest.approx(5.0, abs=1e-3)  # 2 voxels x 2.5 mm
    m_iso = region_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m_iso["hd95_WT"] == pytest.approx(2.0, abs=1e-3)


def test_statistics_volumes_use_the_voxel_size():
    lab = _labels("2021")
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    s = statistics(lab, affine, "2021")
    assert s["voxel_volume_mm3"] == pytest.approx(9.0)
    assert s["regions_mm3"]["WT"] == pytest.approx(12**3 * 9.0)
    assert s["labels_mm3"]["NCR"] == pytest.approx(8 * 9.0)
