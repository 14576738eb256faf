"""The same flow on Prefect's process pool: models load once per worker, outputs identical."""

from __future__ import annotations

import json

import pytest

from imagingflows.flows.runners import UsageError, make_task_runner
from imagingflows.models.backend import available_cores
from imagingflows.pipelines import segment


def test_process_runner_matches_thread_runner(make_cases, tmp_path, tiny_weights):
    cases = make_cases(2, seed=20)
    a = segment(cases, tmp_path / "threads", weights=str(tiny_weights), device="cpu")
    b = segment(cases, tmp_path / "procs", weights=str(tiny_weights), device="cpu", runner="process", workers=2)
    assert a["counts"]["done"] == b["counts"]["done"] == 2
    for case in ("case20", "case21"):
        seg = f"{case}/{case}_seg.nii.gz"
        assert (tmp_path / "threads" / seg).read_bytes() == (tmp_path / "procs" / seg).read_bytes()
    device = json.loads((tmp_path / "procs" / "run.json").read_text())["device"]
    assert device["runner"] == "process" and device["workers"] == 2
    assert device["workers"] * device["torch_threads"] <= max(available_cores(), device["workers"])


def test_unknown_runner_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown runner 'ray'"):
        make_task_runner("ray")
