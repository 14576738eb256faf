"""``run-flow status`` and ``run-flow report``: what a run folder's ``run.json`` says, for operators.

Both read only ``run.json`` (and look at the files beside it); neither starts Prefect nor touches an
item's outputs. What ``run.json`` holds (``tasks/manifest.py``, ``flows/run.py``):

- ``pipeline``, ``command`` (run / evaluate / train), ``started``, ``finished`` (None until the run
  closes: a killed or still running run), ``runs`` (start times of the earlier runs it resumed);
- ``summary``: the last run's ``done`` / ``failed`` / ``skipped`` / ``total`` (and ``interrupted``,
  ``not_finished`` after a stop), written when it closes; a resumed run keeps the previous one
  until it closes, so it counts only when ``finished`` is set;
- ``items``: every item the folder has a record of, ``status`` done or failed, ``error`` (the
  reason), ``seconds`` (the item's own time, not its queueing); ``parts``: parts of items that run
  in parts and are not merged yet.

Skipped items keep their ``done`` entry from the run that made them, so per-item times are over
every item recorded as done.
"""

from __future__ import annotations

import datetime as _dt
import json
import statistics
from pathlib import Path
from typing import Any

from imagingflows.flows.output_lock import OutputLock, _alive
from imagingflows.flows.runners import UsageError

MANIFEST = "run.json"
REPORTS = ("report.html", "report.md")


def read_manifest(run_dir: Path) -> tuple[Path, dict]:
    """``(path of run.json, its contents)``; raises :class:`UsageError` (one line naming the file)
    when the folder has none or it is not a run manifest. ``run_dir`` may also be run.json itself."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.name == MANIFEST and run_dir.is_file() else run_dir / MANIFEST
    if not path.parent.is_dir():
        raise UsageError(f"run folder {path.parent} does not exist")
    if not path.is_file():
        raise UsageError(f"{path} not found: {path.parent} is not a run folder (no {MANIFEST})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read: {getattr(e, 'strerror', None) or e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("items", {}), dict):
        raise UsageError(f"{path} is not a run manifest (expected a JSON object with an 'items' object)")
    return path, data


def first_line(reason: Any) -> str:
    """An error's first line (what the CLI prints per failed item)."""
    text = str(reason or "").strip()
    return text.splitlines()[0] if text else "failed"


def _seconds(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value >= 0
    return float(value) if ok else None


def _time(value: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _state(run_dir: Path, data: dict, summary: dict) -> tuple[str, int | None]:
    """``finished``, ``interrupted`` (stopped by a signal), ``running`` (the folder's lock is held by a
    live process) or ``unfinished`` (no close recorded: killed, or the machine went down); the pid."""
    try:
        pid = int((run_dir / OutputLock.NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = None
    if pid is not None and _alive(pid):
        return "running", pid
    if data.get("finished"):
        return ("interrupted" if summary.get("interrupted") else "finished"), None
    return "unfinished", None


def _counts(data: dict, summary: dict, items: dict[str, dict], state: str) -> dict:
    """The last run's counts (its ``summary``), or what run.json records so far when that run did
    not close (a resumed run keeps the previous summary until it does): skipped is then None."""
    if data.get("finished") and summary and state != "running":
        counts = {k: summary.get(k, 0) for k in ("done", "failed", "skipped")}
        return {**counts, "total": summary.get("total", sum(counts.values()))}
    statuses = [v.get("status") for v in items.values()]
    return {"done": statuses.count("done"), "failed": statuses.count("failed"), "skipped": None,
            "total": len(items)}


def _timings(data: dict, items: dict[str, dict], state: str) -> tuple[dict, dict[str, float]]:
    """Wall time of the last run (closed runs only) and the items' own times (done items)."""
    done = {k: _seconds(v.get("seconds")) for k, v in items.items() if v.get("status") == "done"}
    times = {k: s for k, s in done.items() if s is not None}
    started, finished = _time(data.get("started")), _time(data.get("finished"))
    wall = (finished - started).total_seconds() if started and finished and state != "running" else None
    values = list(times.values())
    return {"wall_seconds": round(wall, 2) if wall is not None and wall >= 0 else None,
            "item_seconds": round(sum(values), 2) if values else None,
            "mean_seconds": round(statistics.fmean(values), 3) if values else None,
            "median_seconds": round(statistics.median(values), 3) if values else None,
            "timed_items": len(values)}, times


def summarise(run_dir: str | Path, slowest: int = 5) -> dict:
    """The status of a run folder as a JSON-able dict (``run-flow status --json`` prints it).

    Keys: ``run_dir``, ``manifest``, ``pipeline``, ``command``, ``state`` (see :func:`_state`),
    ``pid``, ``started``, ``finished``, ``updated`` (run.json's last write), ``earlier_runs``,
    ``counts`` (see :func:`_counts`), ``recorded`` (items in run.json by status), ``interrupted``
    (the signal), ``not_finished``, ``parts_pending``, ``failed`` ([{item, reason}], the reason's
    first line), ``timings`` (wall_seconds, item_seconds, mean_seconds, median_seconds,
    timed_items), ``slowest`` ([{item, seconds}], at most ``slowest``), ``report`` ({html, md}:
    paths, None when absent), ``metrics`` (an evaluation's means, else None).
    """
    path, data = read_manifest(Path(run_dir))
    folder = path.parent
    items = {str(k): (v if isinstance(v, dict) else {}) for k, v in data.get("items", {}).items()}
    summary = data.get("summary") if isinstance(data.get("summary"), dict) and data.get("finished") else {}
    state, pid = _state(folder, data, summary)
    recorded: dict[str, int] = {}
    for entry in items.values():
        recorded[str(entry.get("status"))] = recorded.get(str(entry.get("status")), 0) + 1
    timings, times = _timings(data, items, state)
    order = sorted(times.items(), key=lambda kv: (-kv[1], kv[0]))[:max(0, slowest)]
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    runs, parts = data.get("runs"), data.get("parts")
    return {
        "run_dir": str(folder), "manifest": str(path), "pipeline": data.get("pipeline"),
        "command": data.get("command"), "state": state, "pid": pid, "started": data.get("started"),
        "finished": data.get("finished"),
        "updated": _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds"),
        "earlier_runs": len(runs) if isinstance(runs, list) else 0,
        "counts": _counts(data, summary, items, state), "recorded": recorded,
        "interrupted": summary.get("interrupted"), "not_finished": summary.get("not_finished"),
        "parts_pending": len(parts) if isinstance(parts, dict) else 0,
        "failed": [{"item": k, "reason": first_line(v.get("error"))} for k, v in items.items()
                   if v.get("status") == "failed"],
        "timings": timings, "slowest": [{"item": k, "seconds": s} for k, s in order],
        "report": {name.split(".")[1]: str(folder / name) if (folder / name).is_file() else None for name in REPORTS},
        "metrics": metrics.get("mean") if isinstance(metrics.get("mean"), dict) else None,
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def render_status(status: dict) -> str:
    """The text of ``run-flow status`` (one fact a line, failures one line each)."""
    c, t = status["counts"], status["timings"]
    state = {"finished": "finished", "running": f"running (pid {status['pid']})",
             "interrupted": f"stopped by {status['interrupted']}, {status['not_finished']} items not finished "
                            "(rerun with --resume)",
             "unfinished": "did not finish (killed, or the machine stopped; rerun with --resume)"}[status["state"]]
    what = f"{status['pipeline'] or '?'}" + (f" {status['command']}" if status["command"] not in (None, "run") else "")
    lines = [f"{what}: {status['run_dir']}",
             f"  ran:     {status['started'] or '?'} -> {status['finished'] or '...'}: {state}"
             + (f"; {status['earlier_runs']} earlier run(s) in this folder" if status["earlier_runs"] else ""),
             f"  updated: {status['updated']} (run.json)"]
    skipped = "?" if c["skipped"] is None else c["skipped"]
    lines.append(f"  items:   {c['done']} done, {c['failed']} failed, {skipped} skipped ({c['total']} in all"
                 + ("" if status["state"] in ("finished", "interrupted") else ", so far") + ")")
    if status["parts_pending"]:
        lines.append(f"  parts:   {status['parts_pending']} parts recorded for items not merged yet")
    if status["failed"]:
        lines.append(f"  failed:  {len(status['failed'])}")
        lines.extend(f"    {f['item']}: {f['reason']}" for f in status["failed"])
    if t["timed_items"]:
        lines.append(f"  time:    wall {_duration(t['wall_seconds'])}; items {_duration(t['item_seconds'])} in all, "
                     f"mean {t['mean_seconds']:.2f} s, median {t['median_seconds']:.2f} s ({t['timed_items']} timed)")
    else:
        lines.append(f"  time:    wall {_duration(t['wall_seconds'])}; no timed items")
    if status["slowest"]:
        lines.append("  slowest: " + ", ".join(f"{s['item']} {s['seconds']:.2f} s" for s in status["slowest"]))
    if status["metrics"]:
        lines.append("  metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                               for k, v in status["metrics"].items()))
    report = [p for p in status["report"].values() if p]
    lines.append(f"  report:  {', '.join(report)}" if report
                 else f"  report:  none yet (run-flow report {status['run_dir']})")
    return "\n".join(lines)


def status_exit_code(status: dict) -> int:
    """0: the run finished and no item failed; 1: some items failed, or it stopped or did not finish
    (still running included): not every item is done."""
    return 0 if status["state"] == "finished" and not status["failed"] and not status["counts"]["failed"] else 1


def rerender_report(run_dir: str | Path) -> list[Path]:
    """Write report.html and report.md again from run.json with the run's own renderer (atomically:
    temp file, then rename); nothing else in the folder is touched. Returns the two paths."""
    from imagingflows.tasks.report import write_report

    path, data = read_manifest(Path(run_dir))
    try:
        return write_report(path.parent, data)
    except OSError as e:
        raise UsageError(f"cannot write the report in {path.parent}: {e.strerror or e}") from e
