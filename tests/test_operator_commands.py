"""Operator commands (issue 14, item 6) on real runs through the CLI (restore, the bundled demo
NAFNet on 32 x 40 images):

- ``run-flow status OUT/``: pipeline, when, counts, each failure with its one-line reason,
  timings, the slowest items, the report; ``--json`` the same facts; exit 0 / 1 / 2;
- ``run-flow report OUT/``: report.html/.md rendered again from run.json, item outputs untouched;
- ``--log-file``: the lines run.log gets, appended run after run, with a start and an exit line;
- exit codes: 0 all done, 1 some failed, 2 usage or set-up error (one line naming the file);
  ``--quiet`` prints only the summary and the failures, nothing when every item is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imagingflows.flows.cli import app
from imagingflows.flows.output_lock import OutputLock

from helpers_cli import cli, pngs


def _restore(inp: Path, out: Path, *extra) -> tuple[int, str]:
    return cli("restore", "--task", "denoise", "-i", inp, "-o", out, "--precision", "fp32", "--device", "cpu",
               "--quiet", *extra)


def _digests(out: Path) -> dict[str, tuple[str, int]]:
    """Every file but the reports and run.log: sha256 and mtime."""
    return {p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and p.name not in ("report.html", "report.md")}


def _read(report: Path | str) -> str:
    return report.read_text() if isinstance(report, Path) else report


def _tables(report: Path | str) -> Counter:
    """The table rows of a report (HTML ``<tr>`` or Markdown ``| a | b |``), each as its sorted
    cells, counted: the same rows whatever the order of their columns."""
    text = _read(report)
    if text.lstrip().startswith("<"):
        rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)]
                for r in re.findall(r"<tr[^>]*>(.*?)</tr>", text, re.S)]
    else:
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
                if line.startswith("|")]
    return Counter((cells[0], *sorted(cells[1:])) for cells in rows if cells)


def _text(report: Path | str) -> list[str]:
    """What a report says outside its tables."""
    text = re.sub(r"<table.*?</table>", "", _read(report), flags=re.S)
    return [line for line in text.splitlines() if not line.startswith("|")]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory) -> dict:
    """Two good images and one that is not an image, with --log-file."""
    root = tmp_path_factory.mktemp("bad")
    log = root / "logs" / "cron.log"
    code, text = _restore(pngs(root / "in", 2, bad=True), root / "out", "--log-file", log)
    return {"out": root / "out", "log": log, "code": code, "text": text}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> dict:
    """Two good images, then the same batch with --resume, both logging to one --log-file."""
    root = tmp_path_factory.mktemp("good")
    inp, out, log = pngs(root / "in", 2), root / "out", root / "cron.log"
    first = _restore(inp, out, "--log-file", log)
    second = _restore(inp, out, "--resume", "--log-file", log)
    return {"out": out, "log": log, "first": first, "second": second}


# ----------------------------------------------------------------------------- batch: exit codes, --quiet, --log-file

def test_batch_exit_codes_and_quiet_output(bad_run, good_run, tmp_path):
    assert good_run["first"] == (0, "") and good_run["second"] == (0, "")  # --quiet and all done: silent
    assert bad_run["code"] == 1
    lines = bad_run["text"].strip().splitlines()
    assert len(lines) == 2, bad_run["text"]  # the summary, then one line per failed item; no done items
    assert lines[0] == f"restore: 2 done, 0 skipped, 1 failed -> {bad_run['out']}/report.html"
    assert lines[1].startswith("  failed broken.png: ") and "not an image" in lines[1]
    code, text = _restore(tmp_path / "missing", tmp_path / "o")  # nothing can run: one line, exit 2
    assert code == 2 and text.strip() == f"error: input folder {tmp_path / 'missing'} does not exist"


def test_log_file_gets_the_run_log_lines_between_a_start_and_an_exit_line(bad_run):
    out = bad_run["out"]
    log = bad_run["log"].read_text().splitlines()
    run_log = (out / "run.log").read_text().splitlines()
    assert run_log and all(line in log for line in run_log)  # the same lines, same time stamps
    messages = [line.split(" ", 3)[3] for line in log]  # "date time LEVEL message"
    assert messages[0] == f"run-flow restore -> {out}: started"
    assert messages[-2] == f"restore: 2 done, 0 skipped, 1 failed -> {out}/report.html"
    assert messages[-1] == f"run-flow restore -> {out}: exit 1" and " WARNING " in log[-1]
    assert any(m.startswith("broken.png: ") and "not an image" in m for m in messages)
    assert {"ok0.png: done", "ok1.png: done"} <= set(messages)


def test_log_file_is_appended_run_after_run(good_run):
    messages = [line.split(" ", 3)[3] for line in good_run["log"].read_text().splitlines()]
    out = good_run["out"]
    assert messages.count(f"run-flow restore -> {out}: started") == 2
    assert messages.count(f"run-flow restore -> {out}: exit 0") == 2
    first = messages.index(f"run-flow restore -> {out}: exit 0")
    assert "ok0.png: done" in messages[:first] and "ok0.png: up to date, skipped" in messages[first:]
    assert messages[-2] == f"restore: 0 done, 2 skipped, 0 failed -> {out}/report.html"


def test_log_file_set_up_errors_are_logged_and_exit_2(tmp_path):
    log = tmp_path / "cron.log"
    code, text = _restore(tmp_path / "missing", tmp_path / "o", "--log-file", log)
    assert code == 2
    messages = [line.split(" ", 3)[3] for line in log.read_text().splitlines()]
    assert messages == [f"run-flow restore -> {tmp_path / 'o'}: started",
                        f"error: input folder {tmp_path / 'missing'} does not exist",
                        f"run-flow restore -> {tmp_path / 'o'}: exit 2"]
    (tmp_path / "file").write_text("")
    code, text = _restore(tmp_path / "missing", tmp_path / "o", "--log-file", tmp_path / "file" / "x.log")
    assert code == 2 and text.startswith(f"error: --log-file {tmp_path / 'file' / 'x.log'} cannot be opened")
    assert len(text.strip().splitlines()) == 1


def test_evaluate_takes_log_file_too():
    result = CliRunner().invoke(app, ["evaluate", "restore", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "--log-file" in result.output


# ----------------------------------------------------------------------------- status

def test_status_text_of_a_run_with_a_bad_input(bad_run):
    out = bad_run["out"]
    run = json.loads((out / "run.json").read_text())
    code, text = cli("status", out, "--slowest", "1")
    assert code == 1, text  # an item failed
    lines = text.splitlines()
    assert lines[0] == f"restore: {out}"
    assert lines[1] == f"  ran:     {run['started']} -> {run['finished']}: finished"
    assert "  items:   2 done, 1 failed, 0 skipped (3 in all)" in lines
    reason = run["items"]["broken.png"]["error"].splitlines()[0]
    assert lines[lines.index("  failed:  1") + 1] == f"    broken.png: {reason}"
    seconds = {k: v["seconds"] for k, v in run["items"].items() if v["status"] == "done"}
    slow = max(seconds, key=seconds.get)
    assert f"  slowest: {slow} {seconds[slow]:.2f} s" in lines  # --slowest 1: only the slowest
    (timing,) = [line for line in lines if line.startswith("  time:    wall ")]
    assert f"median {np.median(list(seconds.values())):.2f} s (2 timed)" in timing
    assert lines[-1] == f"  report:  {out}/report.html, {out}/report.md"


def test_status_json_says_the_same(bad_run):
    out = bad_run["out"]
    run = json.loads((out / "run.json").read_text())
    code, text = cli("status", out, "--json")
    assert code == 1
    s = json.loads(text)
    assert (s["pipeline"], s["command"], s["state"]) == ("restore", "run", "finished")
    assert (s["started"], s["finished"], s["manifest"]) == (run["started"], run["finished"], str(out / "run.json"))
    assert s["counts"] == {"done": 2, "failed": 1, "skipped": 0, "total": 3}
    assert s["failed"] == [{"item": "broken.png", "reason": run["items"]["broken.png"]["error"].splitlines()[0]}]
    seconds = {k: v["seconds"] for k, v in run["items"].items() if v["status"] == "done"}
    assert s["timings"]["timed_items"] == 2
    assert s["timings"]["median_seconds"] == pytest.approx(np.median(list(seconds.values())), abs=1e-3)
    assert s["timings"]["item_seconds"] == pytest.approx(sum(seconds.values()), abs=0.01)
    assert [x["item"] for x in s["slowest"]] == sorted(seconds, key=lambda k: (-seconds[k], k))  # default 5: all
    assert s["report"] == {"html": str(out / "report.html"), "md": str(out / "report.md")}


def test_status_of_a_resumed_run_counts_the_skipped_and_exits_0(good_run):
    code, text = cli("status", good_run["out"])
    assert code == 0, text
    assert "  items:   0 done, 0 failed, 2 skipped (2 in all)" in text.splitlines()
    assert "finished; 1 earlier run(s) in this folder" in text and "failed:" not in text
    s = json.loads(cli("status", good_run["out"], "--json", "--slowest", "0")[1])
    assert s["earlier_runs"] == 1 and s["slowest"] == [] and s["timings"]["timed_items"] == 2  # times of the first run


def test_status_of_a_stopped_a_killed_and_a_running_run(good_run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(good_run["out"], killed)
    run = json.loads((killed / "run.json").read_text())
    stopped = {**run, "summary": {**run["summary"], "interrupted": "SIGTERM", "not_finished": 1}}  # flows/run.py's
    (killed / "run.json").write_text(json.dumps(stopped))
    code, text = cli("status", killed)
    assert code == 1 and ": stopped by SIGTERM, 1 items not finished (rerun with --resume)" in text
    run["finished"] = None  # as a run killed (SIGKILL) after its items leaves it: RunManifest.open's record
    (killed / "run.json").write_text(json.dumps(run))
    code, text = cli("status", killed)
    assert code == 1 and "did not finish" in text
    assert "  items:   2 done, 0 failed, ? skipped (2 in all, so far)" in text.splitlines()
    (killed / OutputLock.NAME).write_text(f"{os.getpid()}\n")  # a live process holds the folder
    code, text = cli("status", killed, "--json")
    assert code == 1 and (json.loads(text)["state"], json.loads(text)["pid"]) == ("running", os.getpid())


@pytest.mark.parametrize("command", ["status", "report"])
def test_no_run_json_or_a_bad_one_is_one_line_naming_the_file_and_exit_2(command, tmp_path):
    code, text = cli(command, tmp_path)
    assert code == 2 and text.strip() == f"error: {tmp_path}/run.json not found: {tmp_path} is not a run folder " \
                                         "(no run.json)"
    code, text = cli(command, tmp_path / "nowhere")
    assert code == 2 and text.strip() == f"error: run folder {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "run.json").write_text('{"items": {"a": ')
    code, text = cli(command, tmp_path)
    assert code == 2 and len(text.strip().splitlines()) == 1
    assert text.startswith(f"error: {tmp_path}/run.json is not valid JSON (line 1, column")
    (tmp_path / "run.json").write_text("[1, 2]")
    code, text = cli(command, tmp_path)
    assert code == 2 and text.strip() == f"error: {tmp_path}/run.json is not a run manifest (expected a JSON " \
                                         "object with an 'items' object)"
    assert not (tmp_path / "report.html").exists()


# ----------------------------------------------------------------------------- report

def test_report_is_rendered_again_from_run_json_and_nothing_else_changes(bad_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(bad_run["out"], out, copy_function=shutil.copy2)
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    before = _digests(out)
    (out / "report.html").write_text("stale")
    (out / "report.md").unlink()
    code, text = cli("report", out)
    assert code == 0 and text.strip() == f"wrote {out}/report.html, {out}/report.md"
    # as the run wrote them, up to the order of columns (run.json's keys are sorted, the run's dicts were not)
    assert _tables(out / "report.html") == _tables(html) and _tables(out / "report.md") == _tables(md)
    assert _text(out / "report.html") == _text(html) and _text(out / "report.md") == _text(md)
    for name in ("ok0.png", "ok1.png", "broken.png"):
        assert sum(cells[0] == name for cells in _tables(html)) == 1 and name in md
    assert _digests(out) == before  # outputs, previews, run.json, run.log: same bytes, same mtimes
    top = {p.split("/")[0] for p in before} | {"report.html", "report.md"}
    assert {p.name for p in out.iterdir()} == top  # no temp file left
