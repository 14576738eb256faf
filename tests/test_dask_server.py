"""Dask workers against a real Prefect server (issue 14, item 2).

A real ``dask scheduler`` and two ``dask worker`` processes (one thread each) on localhost, a real
``prefect server start`` (tests/prefect_server.py), and ``run-flow segment --runner
dask=tcp://127.0.0.1:PORT`` run as a CLI subprocess with ``PREFECT_API_URL`` pointing at the server
(the workers get it too, as every node of an operator's cluster would). The outputs equal a local
thread-runner run's byte for byte, and the server holds the flow run and one completed task run per
item, read back through the Prefect client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prefect_server import free_port, prefect_server, server_env, stop_group

pytest.importorskip("prefect_dask", reason="the dask extra (pip install 'imagingflows[dask]') is not installed")
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in its own group (so everything it starts is ended with it), output to ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _dask_cluster(env: dict[str, str], logs: Path, workers: int = 2) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` + ``workers`` x ``dask worker --nthreads 1``; returns (address, processes)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [_start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--no-dashboard"], env, logs / "scheduler.log")]
    try:
        for i in range(workers):
            procs.append(_start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                 "--no-dashboard", "--name", f"w{i}"], env, logs / f"worker{i}.log"))
        deadline = time.monotonic() + 90
        while True:  # the scheduler takes a moment to listen; Client raises until it does
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(workers, timeout=max(1.0, deadline - time.monotonic()))
                break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise
                time.sleep(0.5)
    except BaseException:
        for p in procs:
            stop_group(p)
        tails = "\n".join(f"{f.name}: {f.read_text()[-800:]}" for f in sorted(logs.glob("*.log")))
        raise RuntimeError(f"the dask cluster did not start:\n{tails}") from None
    return address, procs


def test_dask_workers_against_a_prefect_server_match_a_local_run(make_cases, tiny_weights, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from distributed import Client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from imagingflows.flows import segment

    cases = make_cases(2, seed=60)
    local = segment(cases, tmp_path / "local", weights=str(tiny_weights), device="cpu", precision="fp32")
    assert local["counts"]["done"] == 2

    logs = tmp_path / "logs"
    logs.mkdir()
    with prefect_server(tmp_path / "server-home") as url:
        env = server_env(tmp_path / "client-home", PREFECT_API_URL=url)
        address, procs = _dask_cluster(env, logs)
        try:
            out = tmp_path / "dask"
            run = subprocess.run(
                [str(BIN / "run-flow"), "segment", "-i", str(cases), "-o", str(out), "--weights", str(tiny_weights),
                 "--device", "cpu", "--precision", "fp32", "--runner", f"dask={address}", "--quiet"],
                env=env, capture_output=True, text=True, timeout=300)
            with Client(address, timeout=10) as client:  # what the scheduler ran, per task name prefix
                ran = client.run_on_scheduler(lambda dask_scheduler: {
                    name: dict(p.state_counts)
                    for name, p in dask_scheduler.task_prefixes.items()})
        finally:
            for p in procs:
                stop_group(p)
        assert run.returncode == 0, run.stderr[-3000:]

        for case in ("case60", "case61"):
            seg = f"{case}/{case}_seg.nii.gz"
            assert (out / seg).read_bytes() == (tmp_path / "local" / seg).read_bytes(), seg
        record = json.loads((out / "run.json").read_text())
        assert record["device"]["runner"] == f"dask={address}"

        with temporary_settings({PREFECT_API_URL: url}):
            with get_client(sync_client=True) as client:
                flow_runs = [r for r in client.read_flow_runs() if r.name and r.state_type]
                runs = [r for r in flow_runs if client.read_flow(r.flow_id).name == "imagingflows-run"]
                assert len(runs) == 1, [(r.name, r.state_type) for r in flow_runs]
                assert runs[0].state.is_completed(), runs[0].state
                tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
        items = {t.name: t for t in tasks if t.name.startswith("segment-")}
        assert sorted(items) == ["segment-case60", "segment-case61"], [t.name for t in tasks]
        assert all(t.state.is_completed() for t in items.values()), {k: t.state for k, t in items.items()}
        assert all(t.start_time and t.end_time for t in items.values())
        assert ran.get("process_item", {}).get("memory") == 2, ran  # both items computed on the Dask workers
