"""The fast inference path gives the float32 whole-volume answer (agreement, not speed).

Speed is shown by ``benchmarks/segment.py``; here the levers (foreground crop, skipped
empty windows, the precision resolved at run time) are checked for what they change:
inside the brain, nothing that matters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imagingflows.models.sliding_window import foreground_box, native_bf16, resolve_precision
from imagingflows.pipelines import medical as seg
from imagingflows.tasks.ingest import Item

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "brats" / "synth_1000"


def test_foreground_box_is_tight_and_clipped():
    x = torch.zeros(1, 2, 10, 12, 14)
    x[0, 1, 3:5, 4:9, 13] = 1.0
    assert foreground_box(x) == (slice(3, 5), slice(4, 9), slice(13, 14))
    assert foreground_box(x, margin=2) == (slice(1, 7), slice(2, 11), slice(11, 14))
    assert foreground_box(torch.zeros(1, 1, 4, 4, 4)) is None


def test_precision_auto_follows_the_hardware():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", cpu)


def _sample_case():
    paths = {m: str(next(SAMPLE.glob(f"*_{m}.nii.gz"))) for m in seg.MODEL_CHANNELS}
    vols = seg.read_case(Item(id="synth_1000", paths=paths), seg.MODEL_CHANNELS)
    ref = seg.read_labels(str(next(SAMPLE.glob("*_seg.nii.gz"))))
    brain = np.any(np.stack([v.array != 0 for v in vols]), axis=0)
    return vols, ref, brain


def _regions(vols, brain, **options):
    cfg = seg.prepare({"device": "cpu", **options})
    probs, run = seg.predict_regions(vols, cfg)
    return probs, (probs > 0.5) & brain[None], run


def test_fast_path_agrees_with_plain_float32(demo_weights):
    vols, ref, brain = _sample_case()
    plain_p, plain, plain_run = _regions(vols, brain, precision="fp32", crop_foreground=False, skip_empty=False)
    fast_p, fast, fast_run = _regions(vols, brain)  # the defaults

    assert plain_run["box"] is None and plain_run["skipped_windows"] == 0
    assert fast_run["box"] is not None and fast_run["windows"] < plain_run["windows"]
    assert fast_run["precision"] == resolve_precision("auto", torch.device("cpu"))

    labels_plain = seg.regions_to_labels(plain)
    labels_fast = seg.regions_to_labels(fast)
    agreement = float((labels_plain == labels_fast)[brain].mean())
    assert agreement >= 0.995, agreement
    truth = seg.labels_to_regions(ref.array.astype(np.uint8))
    spacing = (1.0, 1.0, 1.0)
    d_plain = seg.region_metrics(plain, truth, spacing)
    d_fast = seg.region_metrics(fast, truth, spacing)
    for r in seg.REGIONS:
        assert abs(d_plain[f"dice_{r}"] - d_fast[f"dice_{r}"]) <= 0.005, (r, d_plain, d_fast)
    assert float(np.abs(plain_p - fast_p)[:, brain].mean()) < 0.01  # a few boundary voxels differ more


def test_skipping_empty_windows_changes_nothing_inside_the_brain(demo_weights):
    """Zero padding around the case adds windows with no signal: they are skipped, exactly."""
    from imagingflows.models import cached_model
    from imagingflows.models.backend import predict_volume

    cfg = seg.prepare({"device": "cpu"})
    lm = cached_model(cfg["weights"], device="cpu")
    x = torch.zeros(1, 4, 120, 64, 64)  # 3 windows along the first axis, the first all background
    x[:, :, 70:110, 8:56, 8:56] = torch.randn(1, 4, 40, 48, 48, generator=torch.Generator().manual_seed(0))
    kw = dict(overlap=0.25, postprocess=torch.sigmoid, precision="fp32")
    plain, plain_run = predict_volume(lm, x, [64, 64, 64], **kw)
    skipped, skip_run = predict_volume(lm, x, [64, 64, 64], skip_empty=True, **kw)
    inside = (x != 0).any(1, keepdim=True).expand_as(plain)
    assert skip_run.skipped_windows > 0
    assert skip_run.windows == plain_run.windows
    assert torch.equal(plain[inside], skipped[inside])
    assert float(skipped[~inside].abs().max()) < float(plain[~inside].abs().max())


def test_bf16_path_stays_close_to_float32(tiny_weights):
    """Forced bf16 autocast (slow where bf16 is emulated, so on the tiny 4 mm model)."""
    from imagingflows.models import cached_model
    from imagingflows.models.backend import predict_volume

    lm = cached_model(str(tiny_weights), device="cpu")
    x = torch.randn(1, 4, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    p32, _ = predict_volume(lm, x, [64, 64, 64], postprocess=torch.sigmoid, precision="fp32")
    p16, run = predict_volume(lm, x, [64, 64, 64], postprocess=torch.sigmoid, precision="bf16")
    assert run.precision == "bf16"
    assert p16.dtype == torch.float32
    assert float((p32 - p16).abs().max()) < 0.05
    assert float(((p32 > 0.5) == (p16 > 0.5)).float().mean()) > 0.99
