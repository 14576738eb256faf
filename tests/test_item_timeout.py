"""``--item-timeout`` and transient read errors (issue 14, item 5), with a real slow item.

The items come from a plug-in pipeline (tests/plugins/slow_pipeline.py, registered through the
entry point as tests/test_plugins.py does) that sleeps, or fails its read with EIO, when an item's
text asks. The process runner kills the overrunning worker and starts a new one; the thread runner
reports the item failed at its deadline, goes on, and discards the late result. Either way the
reason is in run.json and nothing of the item is left in the output folder.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from imagingflows.flows import run_pipeline
from imagingflows.flows.runners import UsageError, make_task_runner, thread_timeout_reason
from imagingflows.pipelines import base
from imagingflows.tasks.ingest import InputError, retry_transient

PLUGIN = Path(__file__).parent / "plugins" / "slow_pipeline.py"


@pytest.fixture
def slow_pipeline(tmp_path, monkeypatch):
    """The plug-in installed as `pip install` would leave it (an entry point on the path)."""
    monkeypatch.setattr(base, "_PIPELINES", {})
    monkeypatch.setattr(base, "_BUILTINS_LOADED", False)
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PLUGIN, site / "slow_pipeline.py")
    info = site / "slow_pipeline-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-pipeline\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[imagingflows.pipelines]\nslow = slow_pipeline:pipeline\n")
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture
def state(tmp_path) -> Path:
    """The plug-in's folder for attempt counters and wake-up marks."""
    folder = tmp_path / "state"
    folder.mkdir()
    return folder


def _inputs(folder: Path, texts: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in texts.items():
        (folder / name).write_text(text)
    return folder


def _left_of(out: Path, item: str) -> list[str]:
    """What the item (or any half-written temp) left in the output folder."""
    return sorted(p.name for p in out.rglob("*") if p.name.startswith((item, ".tmp-")))


def test_process_runner_kills_the_overrunning_worker_and_goes_on(slow_pipeline, state, tmp_path):
    inp = _inputs(tmp_path / "in", {"a.txt": "one", "b.txt": "sleep 120", "c.txt": "three", "d.txt": "four"})
    out = tmp_path / "out"
    result = run_pipeline("slow", inp, out, runner="process", workers=1, item_timeout=3, state=str(state))

    assert result["counts"] == {"done": 3, "failed": 1, "skipped": 0}
    reason = "timed out after 3 s (--item-timeout); its worker process was killed and a new one started"
    assert result["errors"] == {"b.txt": reason}
    items = json.loads((out / "run.json").read_text())["items"]
    assert items["b.txt"]["status"] == "failed" and items["b.txt"]["error"] == reason
    assert json.loads((out / "run.json").read_text())["config"]["item_timeout"] == 3.0
    assert not (state / "b.txt.woke").exists()  # it never got past its sleep: the worker was ended
    assert _left_of(out, "b.txt") == []  # its first output and its half-written temp are gone
    assert [(out / k).read_text() for k in ("a.txt", "c.txt", "d.txt")] == ["ONE", "THREE", "FOUR"]
    pids = {k: items[k]["summary"]["pid"] for k in ("a.txt", "c.txt", "d.txt")}
    assert pids["a.txt"] != pids["c.txt"] == pids["d.txt"], pids  # one worker, replaced after b.txt


def test_thread_runner_reports_the_item_at_its_deadline_and_discards_its_late_result(slow_pipeline, state, tmp_path):
    inp = _inputs(tmp_path / "in", {"a.txt": "one", "b.txt": "sleep 6", "c.txt": "three", "d.txt": "four"})
    out = tmp_path / "out"
    result = run_pipeline("slow", inp, out, runner="thread", workers=1, item_timeout=2, state=str(state))

    assert result["counts"] == {"done": 3, "failed": 1, "skipped": 0}
    assert result["errors"] == {"b.txt": thread_timeout_reason(2)}
    assert "cannot be interrupted" in thread_timeout_reason(2) and "--runner process" in thread_timeout_reason(2)
    items = json.loads((out / "run.json").read_text())["items"]
    assert items["b.txt"] == {**items["b.txt"], "status": "failed", "error": thread_timeout_reason(2)}
    woke = float((state / "b.txt.woke").read_text())  # it ran to its end (a thread cannot be stopped) ...
    assert all(items[k]["summary"]["finished_at"] < woke for k in ("c.txt", "d.txt"))  # ... while the batch went on
    assert _left_of(out, "b.txt") == []  # ... and what it wrote after its deadline was removed
    assert [(out / k).read_text() for k in ("a.txt", "c.txt", "d.txt")] == ["ONE", "THREE", "FOUR"]


def test_transient_read_errors_are_retried_with_backoff_then_fail_the_item(slow_pipeline, state, tmp_path):
    inp = _inputs(tmp_path / "in", {"flaky.txt": "eio 2", "dead.txt": "eio 9", "fine.txt": "fine"})
    out = tmp_path / "out"
    result = run_pipeline("slow", inp, out, workers=2, state=str(state))

    assert result["counts"] == {"done": 2, "failed": 1, "skipped": 0}
    assert (out / "flaky.txt").read_text() == "EIO 2" and (state / "flaky.txt.attempts").read_text() == "3"
    assert (state / "dead.txt.attempts").read_text() == "4"  # the first attempt and 3 retries
    assert result["errors"]["dead.txt"].startswith(
        "dead.txt: transient read error (EIO) on each of 4 attempts, the last: [Errno 5] Input/output error")
    assert "retry 2 of 3 in 2 s" in (out / "run.log").read_text()
    assert _left_of(out, "dead.txt") == []


def test_retry_waits_with_backoff_and_raises_other_errors_at_once():
    waits, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise InputError("x.nii: not a NIfTI image") from OSError(errno.ESTALE, "Stale file handle")
        return "read"

    assert retry_transient(flaky, what="x", sleep=waits.append) == "read" and waits == [1.0, 2.0]
    waits.clear()

    def broken():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(InputError, match=r"x: transient read error \(EIO\) on each of 4 attempts"):
        retry_transient(broken, what="x", sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0]
    with pytest.raises(FileNotFoundError):  # not transient: no retry
        retry_transient(lambda: open("/nonexistent/file"), what="x", sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0]


def test_item_timeout_refuses_dask_and_non_positive_values(slow_pipeline, tmp_path):
    with pytest.raises(UsageError, match="--item-timeout is not available with --runner dask"):
        make_task_runner("dask=tcp://127.0.0.1:8786", 1, item_timeout=5)
    inp = _inputs(tmp_path / "in", {"a.txt": "one"})
    with pytest.raises(UsageError, match="--item-timeout must be a positive number of seconds"):
        run_pipeline("slow", inp, tmp_path / "out", item_timeout=0)


def _cli(*args) -> tuple[int, str]:
    from typer.testing import CliRunner

    from imagingflows.flows.cli import build_app  # built now: the plug-in is registered

    result = CliRunner().invoke(build_app(), [str(a) for a in args])
    return result.exit_code, result.output


def test_the_cli_flag_fails_the_overrunning_item_and_exits_1(slow_pipeline, state, tmp_path):
    inp = _inputs(tmp_path / "in", {"a.txt": "one", "b.txt": "sleep 4", "c.txt": "three"})
    out = tmp_path / "out"
    code, said = _cli("slow", "--input", inp, "--output", out, "--item-timeout", "1.5", "--state", state, "--quiet")

    assert code == 1, said
    assert "failed b.txt: timed out after 1.5 s" in " ".join(said.split())  # also under --quiet (cron mail)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["item_timeout"] == 1.5 and run["items"]["b.txt"]["error"] == thread_timeout_reason(1.5)
    assert [(out / k).read_text() for k in ("a.txt", "c.txt")] == ["ONE", "THREE"]

    code, said = _cli("slow", "--input", inp, "--output", tmp_path / "out2", "--item-timeout", "0")
    assert code == 2 and "--item-timeout must be a positive number of seconds" in said
    assert not (tmp_path / "out2" / "run.json").exists()


def test_serve_and_deployments_take_the_timeout_and_resume(slow_pipeline, tmp_path):
    from imagingflows.flows.deployments import pipeline_flow

    inp = _inputs(tmp_path / "in", {"a.txt": "one"})
    # refused before any server is asked (none runs here): dask cannot end an item
    code, said = _cli("serve", "slow", "--cron", "0 2 * * *", "--input", inp, "--output", tmp_path / "out",
                      "--runner", "dask=tcp://127.0.0.1:1", "--item-timeout", "5", "--no-resume")
    assert code == 2 and "--item-timeout is not available with --runner dask" in said
    params = pipeline_flow("slow").parameters.properties
    assert params["item_timeout"]["default"] is None and params["resume"]["default"] is True
