"""Runs on a real Prefect server, read back through its API as the UI shows them.

One ``prefect server start`` for the module. ``run-flow serve restore`` and ``run-flow serve
segment`` register typed deployments and serve them; a triggered run completes, and the server
holds its state, its task runs (one per item), its logs (one line per item) and the artifacts
``flows/run.py`` publishes (the item table, the markdown report, the progress bar at 100 %). A
second run finds every item done and says so (state message, log line, run.json, the report).
Then the repo's ``prefect.yaml`` goes through ``prefect deploy --all`` onto a process work pool
and ``prefect worker start --run-once`` runs one deployment into a folder.

Here the client of the test process talks to that server, so this module replaces conftest's
ephemeral harness (``prefect_harness``) with it.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers_cli import pngs
from prefect_server import BIN, prefect_server, server_env, stop_group

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CRON = "0 0 1 1 *"  # a schedule that does not fire during the test: runs are triggered


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


@pytest.fixture(scope="module", autouse=True)
def prefect_harness(server):
    """Overrides conftest's session harness for this module: the client reads the real server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server}):
        yield


def _cases(folder: Path) -> Path:
    from sample_data import brats

    brats.make_case(folder, "case00", 0, spacing=(3.0, 3.0, 3.0))
    return folder


@pytest.fixture(scope="module")
def served(server, tmp_path_factory, tiny_weights):
    """Both serve processes, started together; ended (process groups) whatever happens."""
    root = tmp_path_factory.mktemp("served")
    setups = {
        "restore": (pngs(root / "restore-in", 2, shape=(40, 48), stem="img"), ["--task", "denoise", "--tile", "256"]),
        "segment": (_cases(root / "segment-in"), ["--weights", str(tiny_weights), "--device", "cpu"]),
    }
    procs, info, logs = {}, {}, []
    try:
        for name, (inputs, options) in setups.items():
            out, log = root / f"{name}-out", root / f"{name}-serve.log"
            env = server_env(root / f"{name}-home", PREFECT_API_URL=server)
            env["PREFECT_RUNNER_POLL_FREQUENCY"] = "1"  # a triggered run starts within a second
            procs[name] = subprocess.Popen(
                [str(BIN / "run-flow"), "serve", name, "--cron", CRON, "--name", "tests", "-i", str(inputs),
                 "-o", str(out), *options],
                env=env, stdout=_opened(logs, log),
                stderr=subprocess.STDOUT, start_new_session=True)
            info[name] = {"in": inputs, "out": out, "log": log, "deployment": f"imagingflows-scheduled/{name}-tests"}
        for name in setups:
            _wait_for_deployment(info[name]["deployment"], procs[name], info[name]["log"])
        yield info
    finally:
        for proc in procs.values():
            stop_group(proc)
        for f in logs:
            f.close()


def _opened(files: list, path: Path):
    files.append(path.open("w"))
    return files[-1]


def _wait_for_deployment(name: str, proc: subprocess.Popen, log: Path, within: float = 120) -> None:
    from prefect import get_client

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:  # noqa: BLE001 - not registered yet
                pass
        time.sleep(1)
    raise AssertionError(f"{name} was not registered within {within:.0f} s:\n{log.read_text()[-3000:]}")


def _start(deployment: str, **parameters):
    """Create a run of the deployment (due now); the FlowRun."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters or None, timeout=0)


def _wait(run, log: Path | None = None, within: float = 180):
    """The run once its state is final (COMPLETED, FAILED, ...)."""
    from prefect import get_client

    deadline = time.monotonic() + within
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(0.5)
    raise AssertionError(f"run {run.name}: no final state within {within:.0f} s (state {run.state})\n"
                         + (log.read_text()[-3000:] if log else ""))


@pytest.fixture(scope="module")
def first_runs(served, tmp_path_factory):
    """The first run of each served deployment, a restore run whose input folder is gone and one
    with a broken image, triggered together (the served runners run them at once) and waited for."""
    root = tmp_path_factory.mktemp("other-runs")
    gone, mixed = root / "gone", pngs(root / "mixed", 1, shape=(40, 48), stem="img")
    (mixed / "broken.png").write_bytes(b"not a png")
    restore = served["restore"]["deployment"]
    runs = {"restore": _start(restore), "segment": _start(served["segment"]["deployment"]),
            "gone": _start(restore, input_dir=str(gone)),
            "mixed": _start(restore, input_dir=str(mixed), output_dir=str(root / "mixed-out"))}
    done = {k: _wait(r, served["segment" if k == "segment" else "restore"]["log"]) for k, r in runs.items()}
    return {**done, "gone_dir": gone, "mixed_out": root / "mixed-out"}


def _on_server(run) -> dict:
    """What the server holds for a deployment's run and its ``imagingflows-run`` child: state,
    task runs, logs and artifacts (the logs are shipped in batches: waited for a moment)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId,
        LogFilter, LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run.id)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        ids = [run.id] + [c.id for c in children]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[c.id for c in children])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
        logs, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline:
            logs = [entry.message for entry in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))]
            if any("items up to date" in m or " done, " in m for m in logs):  # the last line of a batch
                break
            time.sleep(1)
    return {"run": run, "children": children, "tasks": tasks, "logs": logs,
            "artifacts": {a.type: a for a in artifacts if a.type != "table"} | {
                "table": [a for a in artifacts if a.type == "table"]}}


def _check_first_run(pipeline: str, run, info: dict, items: list[str], task_names: list[str]) -> None:
    held = _on_server(run)
    said = info["log"].read_text()[-3000:]
    assert held["run"].state.is_completed(), f"{held['run'].state}\n{held['logs']}\n{said}"
    assert held["run"].state.message == f"{len(items)} done, 0 failed, 0 skipped (up to date)"
    assert len(held["children"]) == 1 and held["children"][0].state.is_completed()  # the imagingflows-run flow
    assert sorted(t.name for t in held["tasks"]) == sorted(task_names)
    assert all(t.state.is_completed() for t in held["tasks"])
    for item in items:
        assert f"{item}: done" in held["logs"], held["logs"]
    assert f"{pipeline}: {held['run'].state.message}" in held["logs"]
    (table,) = held["artifacts"]["table"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert table.key == f"{pipeline}-run-items"
    assert sorted(r["item"] for r in rows) == sorted(items) and {r["status"] for r in rows} == {"done"}
    report = held["artifacts"]["markdown"]
    assert report.key == f"{pipeline}-run-report" and f"items: {len(items)} done, 0 failed, 0 skipped" in report.data
    assert float(held["artifacts"]["progress"].data) == 100.0
    manifest = json.loads((info["out"] / "run.json").read_text())
    assert {k: v["status"] for k, v in manifest["items"].items()} == {k: "done" for k in items}


def _check_resumed_run(pipeline: str, info: dict, items: list[str]) -> None:
    """The next run finds everything done: no task runs, every item skipped, and it says so
    (what resume itself decides is tests/test_resume.py's; here: that a served run says it)."""
    run_files = {"run.json", "run.log", "report.html", "report.md"}  # rewritten by every run
    outputs = {p: p.stat().st_mtime_ns for p in info["out"].rglob("*") if p.is_file() and p.name not in run_files}
    assert outputs
    held = _on_server(_wait(_start(info["deployment"]), info["log"]))
    assert held["run"].state.is_completed(), held["logs"]
    assert held["run"].state.message == f"all {len(items)} items up to date: nothing to do (skipped)"
    assert held["tasks"] == []
    for item in items:
        assert f"{item}: up to date, skipped" in held["logs"], held["logs"]
    assert f"{pipeline}: all {len(items)} items up to date: nothing to do (skipped)" in held["logs"]
    assert f"items: 0 done, 0 failed, {len(items)} skipped" in held["artifacts"]["markdown"].data
    summary = json.loads((info["out"] / "run.json").read_text())["summary"]
    assert summary["skipped"] == len(items) and summary["done"] == 0
    assert {p: p.stat().st_mtime_ns for p in outputs} == outputs  # nothing was written again


def test_served_restore_runs_on_the_server_and_a_rerun_skips_everything(served, first_runs):
    from prefect import get_client

    info = served["restore"]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(info["deployment"])
    form = deployment.parameter_openapi_schema["properties"]
    assert form["options"]["properties"]["task"]["enum"] == ["denoise", "deblur", "sr"]  # a typed form
    assert form["resume"]["type"] == "boolean" and deployment.parameters["options"]["task"] == "denoise"
    assert [s.schedule.cron for s in deployment.schedules] == [CRON]

    items = ["img0.png", "img1.png"]
    _check_first_run("restore", first_runs["restore"], info, items, [f"restore-{i}" for i in items])
    for item in items:  # restored, same size as the 48 x 40 input
        assert Image.open(info["out"] / item).size == (48, 40)
    _check_resumed_run("restore", info, items)


def test_served_segment_runs_on_the_server(served, first_runs):
    info = served["segment"]
    _check_first_run("segment", first_runs["segment"], info, ["case00"], ["segment-case00"])
    assert (info["out"] / "case00" / "case00_seg.nii.gz").is_file()


def test_a_served_run_with_a_failed_item_is_failed_and_names_it(first_runs):
    """The batch goes on (the good image is done), and the run's state says which item failed."""
    state = first_runs["mixed"].state
    assert state.is_failed(), state
    assert state.message.startswith("1 done, 1 failed, 0 skipped (up to date); "), state.message
    assert "broken.png: not an image Pillow recognises" in state.message
    manifest = json.loads((first_runs["mixed_out"] / "run.json").read_text())
    assert {k: v["status"] for k, v in manifest["items"].items()} == {"img0.png": "done", "broken.png": "failed"}


def test_a_served_run_that_cannot_start_fails_with_the_reason(first_runs):
    """A run whose input folder is gone fails at once, the reason as its state message."""
    state = first_runs["gone"].state
    assert state.is_failed()
    assert state.message == f"nothing could run: input folder {first_runs['gone_dir']} does not exist"


def test_every_prefect_yaml_deployment_loads_and_its_defaults_validate():
    """Each entrypoint imports a flow, its default parameters pass the flow's typed schema, and
    the default input folder (the bundled sample data) exists; every registered pipeline has one."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from imagingflows.pipelines.base import pipeline_names

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert sorted(d["name"] for d in deployments) == pipeline_names()
    for d in deployments:
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert flow.name == f"imagingflows-{d['name']}"
        checked = flow.validate_parameters(d["parameters"])
        assert type(checked["options"]).__name__.endswith("Run")  # the pipeline's options model
        assert (ROOT / d["parameters"]["input_dir"]).is_dir(), d["name"]
        assert d["work_pool"]["name"] == "imagingflows"


def test_prefect_yaml_deploys_and_a_process_worker_runs_a_deployment(server, tmp_path):
    """``prefect deploy --all`` from the repo root; one deployment runs on a process worker."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    env = server_env(tmp_path / "home", PREFECT_API_URL=server)

    def prefect(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)
        assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done

    prefect("work-pool", "create", "imagingflows", "--type", "process")
    prefect("--no-prompt", "deploy", "--all")
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    yaml_ones = {k: v for k, v in deployments.items() if v.work_pool_name == "imagingflows"}
    assert set(yaml_ones) == {"segment", "restore", "embed", "classify", "demosaic"}
    restore = yaml_ones["restore"]
    assert restore.entrypoint == "imagingflows.flows.deployments:restore"
    assert restore.parameters["options"] == {"task": "denoise"} and restore.parameters["resume"] is True
    assert restore.parameter_openapi_schema["definitions"]["RestoreRun"]["properties"]["task"]["enum"] == [
        "denoise", "deblur", "sr"]
    assert [s.schedule.cron for s in restore.schedules] == ["0 2 * * *"]
    assert all(not s.active for d in yaml_ones.values() for s in d.schedules)  # off until switched on
    # no pull step in the file: the worker runs in the folder `prefect deploy` ran in
    assert restore.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

    images, out = pngs(tmp_path / "in", 2, shape=(40, 48), stem="img"), tmp_path / "out"
    run = run_deployment("imagingflows-restore/restore", timeout=0,
                         parameters={"input_dir": str(images), "output_dir": str(out),
                                     "options": {"task": "denoise", "tile": 256}})
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "imagingflows", "--run-once"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            worker.wait(240)
        finally:
            stop_group(worker)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    said = (tmp_path / "worker.log").read_text()[-3000:]
    assert state.is_completed(), f"{state}\n{said}"
    assert state.message == "2 done, 0 failed, 0 skipped (up to date)"
    manifest = json.loads((out / "run.json").read_text())
    assert {k: v["status"] for k, v in manifest["items"].items()} == {"img0.png": "done", "img1.png": "done"}
    assert manifest["config"]["tile"] == 256
