"""Resuming a training run folder with other settings is refused with the differences named
(it used to go on training the old model while run.json recorded the new settings); more
epochs resume as before."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagingflows.pipelines.restore_train import train as train_restore
from imagingflows.pipelines.train_common import check_resume

TINY_NAFNET = {"width": 8, "enc_blk_nums": [1], "dec_blk_nums": [1], "middle_blk_num": 1}


def test_check_resume_names_each_difference_and_ignores_old_runs(tmp_path):
    check_resume(tmp_path, None, {"lr": 0.1})  # a run folder from before settings were recorded
    check_resume(tmp_path, {"roi": [64, 64, 64], "lr": 1e-3}, {"roi": (64, 64, 64), "lr": 1e-3})  # same
    with pytest.raises(ValueError, match=r"feature_size 12 \(asked now: 24\), lr 0.001 \(asked now: 0.01\)"):
        check_resume(tmp_path, {"feature_size": 12, "lr": 1e-3}, {"feature_size": 24, "lr": 0.01})


def test_restore_training_refuses_other_settings_and_resumes_with_more_epochs(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(clean / f"{i}.png")
    run = tmp_path / "run"
    cfg = {"task": "denoise", "epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch": 32,
           "val_fraction": 0.34, "lr": 1e-3, "arch_config": TINY_NAFNET, "val_crop": 32}
    train_restore(clean, run, cfg)
    with pytest.raises(ValueError, match=r"started with other settings: .*lr 0.001 \(asked now: 0.01\)"):
        train_restore(clean, run, {**cfg, "epochs": 2, "lr": 0.01})
    with pytest.raises(ValueError, match=r"loss 'psnr' \(asked now: 'l1'\)"):
        train_restore(clean, run, {**cfg, "epochs": 2, "loss": "l1"})
    again = train_restore(clean, run, {**cfg, "epochs": 2})
    assert [h["epoch"] for h in again["history"]] == [1, 2]
