"""SIGINT (Ctrl-C) and SIGTERM (cron, systemd) mid-batch: the run stops submitting, lets the
running item finish, writes run.json with every finished item, ends the processes it started
(Prefect's ephemeral server) and exits 130 / 143 with one line; ``--resume`` skips what finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    return env


def _done_items(out: Path) -> list[str]:
    try:
        items = json.loads((out / "run.json").read_text())["items"]
    except (OSError, ValueError, KeyError):
        return []
    return [k for k, v in items.items() if v.get("status") == "done"]


def _segment(cases: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return [str(BIN / "run-flow"), "segment", "-i", str(cases), "-o", str(out), "--weights", str(weights),
            "--device", "cpu", "--precision", "fp32", "--quiet", *extra]


@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_mid_batch_keeps_the_record_and_leaves_nothing_running(signame, code, make_cases, tiny_weights,
                                                                        tmp_path):
    cases, out = make_cases(6, seed=40), tmp_path / "out"
    proc = subprocess.Popen(_segment(cases, out, tiny_weights), env=_env(tmp_path / "home"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    family: set[int] = set()
    deadline = time.monotonic() + 300
    while not _done_items(out) and proc.poll() is None and time.monotonic() < deadline:
        family |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        time.sleep(0.1)
    assert proc.poll() is None, f"the batch ended before the signal: {proc.communicate()}"
    family |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    sent = time.monotonic()
    proc.send_signal(getattr(signal, signame))
    stdout, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent

    assert proc.returncode == code, stderr
    assert took < 60, f"took {took:.0f} s to stop"
    assert f"stopped by {signame}" in stderr and "Traceback" not in stderr + stdout
    assert len(stderr.strip().splitlines()) <= 3, stderr  # a summary and the stop line, no log spew
    run = json.loads((out / "run.json").read_text())
    done = _done_items(out)
    assert 1 <= len(done) < 6 and run["summary"]["interrupted"] == signame
    assert run["summary"]["not_finished"] == 6 - len(done)
    for case in done:
        assert (out / case / f"{case}_seg.nii.gz").is_file()
    assert not list(out.rglob(".tmp-*")) and not (out / ".imagingflows.lock").exists()
    time.sleep(1)
    left = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes of the run still running: {[psutil.Process(p).cmdline() for p in left]}"

    again = subprocess.run(_segment(cases, out, tiny_weights, "--resume"), env=_env(tmp_path / "home"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["skipped"] == len(done) and summary["done"] == 6 - len(done)
