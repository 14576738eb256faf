"""Schedules fire on a real Prefect server: the server's scheduler itself creates the run (no
``run_deployment``), the served runner executes it, the outputs land; ``serve`` says so."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from helpers_cli import pngs
from prefect_server import BIN, free_port, prefect_server, server_env, stop_group

pytestmark = pytest.mark.slow


def _completed_runs(url: str, deployment: str) -> list[dict]:
    dep = httpx.get(f"{url}/deployments/name/{deployment}", timeout=10)
    if dep.status_code != 200:
        return []
    body = {"flow_runs": {"deployment_id": {"any_": [dep.json()["id"]]}, "state": {"type": {"any_": ["COMPLETED"]}}}}
    return httpx.post(f"{url}/flow_runs/filter", json=body, timeout=10).json()


def test_the_servers_scheduler_creates_and_completes_a_run(tmp_path):
    images = pngs(tmp_path / "in", 2, shape=(40, 48), stem="img")
    out = tmp_path / "out"
    with prefect_server(tmp_path / "server") as url:
        serve = subprocess.Popen(
            [str(BIN / "run-flow"), "serve", "restore", "--task", "denoise", "--cron", "* * * * *",
             "-i", str(images), "-o", str(out), "--name", "every-minute", "--tile", "256", "--workers", "2"],
            env=server_env(tmp_path / "client", PREFECT_API_URL=url), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline, runs = time.monotonic() + 200, []
            while time.monotonic() < deadline and not runs and serve.poll() is None:
                time.sleep(3)
                runs = _completed_runs(url, "imagingflows-scheduled/restore-every-minute")
            deployment = httpx.get(f"{url}/deployments/name/imagingflows-scheduled/restore-every-minute",
                                   timeout=10).json()
        finally:
            stop_group(serve)
        said = serve.stdout.read()
        silent = _watch_a_deployment_without_runs(url)
    assert runs, f"no scheduled run completed; serve said:\n{said[-3000:]}"
    assert runs[0]["auto_scheduled"] is True  # made by the server's scheduler, not by a manual trigger
    assert "schedule active" in said and "scheduled run(s) for imagingflows-scheduled/restore-every-minute" in said
    assert "warning: after 3 s the server has created no scheduled runs for nothing/here" in silent
    manifest = json.loads((out / "run.json").read_text())
    assert {k: v["status"] for k, v in manifest["items"].items()} == {"img0.png": "done", "img1.png": "done"}
    assert manifest["config"]["tile"] == 256 and manifest["device"]["workers"] == 2  # every run option travels
    # the server holds a typed form for the options (what the UI shows), not a bare object
    form = deployment["parameter_openapi_schema"]["properties"]["options"]["properties"]
    assert form["tile"]["type"] == "integer" and form["tile"]["default"] == 512
    assert form["task"]["enum"] == ["denoise", "deblur", "sr"]
    assert deployment["parameters"]["options"]["task"] == "denoise" and deployment["parameters"]["workers"] == 2


def _watch_a_deployment_without_runs(url: str) -> str:
    """What serve says when the scheduler makes no runs (as with Prefect 3.8.8 and SQLAlchemy 2.1)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from imagingflows.flows.serve import watch_schedule

    lines: list[str] = []
    with temporary_settings({PREFECT_API_URL: url}):
        assert watch_schedule(uuid.uuid4(), "nothing/here", lines.append, within=3, every=1) is False
    return "\n".join(lines)


def _serve(*args: str, url: str, home: Path) -> subprocess.CompletedProcess:
    env = server_env(home, PREFECT_API_URL=url)
    return subprocess.run([str(BIN / "run-flow"), "serve", "restore", "--task", "denoise", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_serve_without_a_server_is_one_line_and_exit_2(tmp_path):
    done = _serve("--cron", "0 2 * * *", "-i", str(tmp_path), "-o", str(tmp_path / "o"),
                  url=f"http://127.0.0.1:{free_port()}/api", home=tmp_path / "home")
    assert done.returncode == 2, done.stderr
    assert "no Prefect server answers at PREFECT_API_URL" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout and len(done.stderr.strip().splitlines()) <= 2


def test_serve_with_an_invalid_cron_is_one_line_and_exit_2(tmp_path):
    done = _serve("--cron", "every night", "-i", str(tmp_path), "-o", str(tmp_path / "o"),
                  url=f"http://127.0.0.1:{free_port()}/api", home=tmp_path / "home")
    assert done.returncode == 2, done.stderr
    assert "invalid --cron 'every night'" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "ValidationError" not in done.stderr
