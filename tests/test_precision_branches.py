"""Both branches of ``precision auto`` on any host: $IMAGINGFLOWS_NATIVE_BF16 overrides the hardware
probe, so a host without native bf16 runs the bf16 branch (slowly, correctly) and one with it runs fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imagingflows.flows import restore, segment
from imagingflows.models.sliding_window import NATIVE_BF16_ENV, native_bf16, resolve_precision
from imagingflows.tasks.image_io import write_image

NAFNET = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1],
          "local_train_size": None}


@pytest.mark.parametrize("forced, expected", [("1", "bf16"), ("0", "fp32")])
def test_the_override_decides_auto(monkeypatch, forced, expected):
    monkeypatch.setenv(NATIVE_BF16_ENV, forced)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) is (forced == "1") and resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"  # explicit wins


@pytest.fixture(scope="module")
def nafnet_weights(tmp_path_factory):
    from imagingflows.models import nafnet
    from imagingflows.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "nafnet_tiny.pt"
    return save_checkpoint(path, nafnet.build(**NAFNET), arch="nafnet", config=NAFNET)


@pytest.mark.parametrize("forced", ["1", "0"])
def test_restore_auto_on_each_branch_keeps_16_bit_in_fp32(monkeypatch, tmp_path, nafnet_weights, forced):
    monkeypatch.setenv(NATIVE_BF16_ENV, forced)
    rng = np.random.default_rng(0)
    write_image(tmp_path / "in" / "eight.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    write_image(tmp_path / "in" / "sixteen.png", rng.integers(0, 65536, (40, 48, 3), dtype=np.uint16))
    result = restore(tmp_path / "in", tmp_path / "out", task="denoise", weights=str(nafnet_weights),
                     device="cpu", collapse_check=False)
    assert result["counts"]["done"] == 2, result
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    branch = "bf16" if forced == "1" else "fp32"
    assert run["config"]["precision"] == branch
    assert run["items"]["eight.png"]["inference"]["precision"] == branch
    assert run["items"]["sixteen.png"]["inference"]["precision"] == "fp32"  # bf16 keeps ~8 significant bits


@pytest.mark.parametrize("forced", ["1", "0"])
def test_segment_auto_on_each_branch(monkeypatch, make_cases, tiny_weights, tmp_path, forced):
    monkeypatch.setenv(NATIVE_BF16_ENV, forced)
    result = segment(make_cases(1, seed=60), tmp_path / "out", weights=str(tiny_weights), device="cpu")
    assert result["counts"]["done"] == 1
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["precision"] == ("bf16" if forced == "1" else "fp32")
