"""Float rounding depends on torch's thread count (reductions are split by thread; measured: 1e-6
in fp32 on the demo Swin UNETR, a few voxels at the threshold on real cases), and the thread count
follows ``--workers``. So the threads per item key resume like any output-changing option: the
same settings give the same bytes, other settings are recomputed, never silently mixed."""

from __future__ import annotations

import json

import pytest

from imagingflows.models.backend import available_cores
from imagingflows.flows import segment


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # both branches, whatever `auto` is on this host
def test_thread_count_keys_resume_and_same_settings_give_same_bytes(precision, make_cases, tiny_weights, tmp_path):
    if available_cores() < 2:
        pytest.skip("one core: every worker count runs one torch thread")
    cases, out, again = make_cases(2, seed=50), tmp_path / "out", tmp_path / "again"
    opts = dict(weights=str(tiny_weights), device="cpu", precision=precision)
    first = segment(cases, out, **opts)
    run1 = json.loads((out / "run.json").read_text())
    segment(cases, again, **opts)
    for case in first["outcomes"]:
        seg = f"{case}/{case}_seg.nii.gz"
        assert (out / seg).read_bytes() == (again / seg).read_bytes()  # same settings, same bytes

    second = segment(cases, out, resume=True, workers=2, **opts)  # 1 thread per worker instead of 2
    run2 = json.loads((out / "run.json").read_text())
    assert run1["device"]["torch_threads"] != run2["device"]["torch_threads"]
    assert run1["config_hash"] != run2["config_hash"]
    assert second["counts"] == {"done": 2, "failed": 0, "skipped": 0}  # recomputed, not mixed
    third = segment(cases, out, resume=True, workers=2, **opts)
    assert third["counts"]["skipped"] == 2
