"""The same flow on Prefect's process pool and on Dask: models load once per worker, outputs identical."""

from __future__ import annotations

import json

import pytest

from imagingflows.flows.runners import UsageError, make_task_runner
from imagingflows.models.backend import available_cores
from imagingflows.flows import segment


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


def test_dask_runner_local_and_on_an_existing_cluster_match_thread_runner(make_cases, tmp_path, tiny_weights):
    """``--runner dask`` (a LocalCluster of worker processes) and ``--runner dask=tcp://...`` (a
    scheduler started beforehand, as an operator's cluster would be) give the thread runner's bytes."""
    pytest.importorskip("prefect_dask", reason="the dask extra (pip install 'imagingflows[dask]') is not installed")
    from distributed import LocalCluster

    cases = make_cases(2, seed=30)
    a = segment(cases, tmp_path / "threads", weights=str(tiny_weights), device="cpu")
    b = segment(cases, tmp_path / "dask", weights=str(tiny_weights), device="cpu", runner="dask", workers=2)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        c = segment(cases, tmp_path / "cluster", weights=str(tiny_weights), device="cpu", runner=f"dask={address}")
    assert a["counts"]["done"] == b["counts"]["done"] == c["counts"]["done"] == 2
    for case in ("case30", "case31"):
        seg = f"{case}/{case}_seg.nii.gz"
        ref = (tmp_path / "threads" / seg).read_bytes()
        assert (tmp_path / "dask" / seg).read_bytes() == ref and (tmp_path / "cluster" / seg).read_bytes() == ref
    assert json.loads((tmp_path / "cluster" / "run.json").read_text())["device"]["runner"] == f"dask={address}"


def test_unknown_runner_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown runner 'ray'"):
        make_task_runner("ray")
