"""The ``run`` flow: ingest -> process each item (a Prefect task) -> manifest -> report.

Domain-free: the pipeline record (pipelines/) supplies discovery, the per-item
processing and the outputs that resume checks. Tasks take paths, ids and small
JSON configs; the model lives in the backend's per-process cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from uuid import UUID

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from imagingflows.flows.output_lock import OutputLock
from imagingflows.flows.parts import PartGroup, PartGroups, remove_parts
from imagingflows.flows.runners import (ItemTimedOut, UsageError, item_started, make_task_runner, thread_deadlines,
                                        thread_timeout_reason)
from imagingflows.flows.stop import Completions, StopRequest, ignore_stop_signals_in_workers
from imagingflows.pipelines.base import get_pipeline, part_item
from imagingflows.pipelines.options import OptionError
from imagingflows.tasks.ingest import READ_RETRIES, InputError, Item, hash_inputs, retry_transient
from imagingflows.tasks.manifest import RunManifest, config_hash
from imagingflows.tasks.write import remove_stale_temps

log = logging.getLogger("imagingflows")

CHUNK = 64  # items in flight at once: keeps Prefect's per-run state and memory flat on huge batches
#: run.json and the progress artifact are refreshed at most this often (s) when items land faster:
#: rewriting a 2000-item run.json takes ~0.1 s and each artifact update is a server round trip
REFRESH_S = 1.0
#: an item's own progress (tiles, windows) reaches the Prefect artifact at most this often (s): each
#: update is a server round trip whose CPU competes with the item's torch threads
ITEM_PROGRESS_S = 5.0


@dataclass
class RunPlan:
    """Everything decided before the flow starts (so bad set-ups exit 2 with one message)."""

    pipeline: str
    input_dir: Path
    output_dir: Path
    config: dict
    items: list[Item]
    errors: list[tuple[str, str]] = field(default_factory=list)


def pseudonym(item_id: str, key: bytes) -> str:
    """Stable per output folder (resume works) but keyed, so ids cannot be guessed back."""
    return "case-" + hmac.new(key, item_id.encode(), hashlib.sha256).hexdigest()[:10]


def default_anonymize_key() -> Path:
    """Where the pseudonym key lives unless ``--anonymize-key`` says: the user's config folder."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "imagingflows" / "anonymize.key"


def anonymize_key(out_dir: Path, key_path: str | os.PathLike | None = None) -> bytes:
    """The secret key for pseudonyms (created once, mode 0600, never reported).

    It must live outside the output folder: whoever holds it can map pseudonyms back to ids,
    and output folders are what people share.
    """
    path = Path(key_path).expanduser() if key_path else default_anonymize_key()
    out = out_dir.resolve()
    if path.resolve() == out or out in path.resolve().parents:
        raise UsageError(f"the anonymize key {path} is inside the output folder {out_dir}, which people share; "
                         "keep it elsewhere (--anonymize-key PATH)")
    legacy = out_dir / ".anonymize-key"
    if legacy.exists():
        raise UsageError(f"{legacy} holds the pseudonym key inside the output folder (written by an older "
                         f"version); move it out, e.g. `mv {legacy} {path}`, so the output can be shared")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        # written whole to a temp file, then linked into place: never a half-written key, and of
        # two runs creating it at once one wins and both use its key
        fd, tmp = tempfile.mkstemp(prefix=".tmp-key-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(16))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        raise UsageError(f"{path} is damaged (expected 32 hex characters); delete it to start new pseudonyms")
    return bytes.fromhex(key)


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".imagingflows-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output folder {out_dir} is not writable: {e.strerror or e}") from e


def plan_run(pipeline_name: str, input_dir: str | Path, output_dir: str | Path, options: dict) -> RunPlan:
    """Validate the set-up, load the model once, find the items. Raises :class:`UsageError`."""
    from imagingflows.models.checkpoints import CheckpointError

    pipe = get_pipeline(pipeline_name)
    try:
        options = pipe.run_config(options)
    except OptionError as e:
        raise UsageError(f"{pipeline_name}: {e}") from e
    key_path = options.pop("anonymize_key", None)  # a local secret's place: not part of the config
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise UsageError(f"input folder {input_dir} does not exist")
    if output_dir.resolve() == input_dir.resolve():
        raise UsageError("output folder must differ from the input folder (inputs are never touched)")
    check_writable(output_dir)
    try:
        config = pipe.prepare(options)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        raise UsageError(str(e)) from e
    items, errors = pipe.discover(input_dir, config)
    if not items and not errors:
        raise UsageError(f"input folder {input_dir} holds no {pipeline_name} inputs")
    if options.get("anonymize"):
        key = anonymize_key(output_dir, key_path)
        names = {i.id: pseudonym(i.id, key) for i in items} | {cid: pseudonym(cid, key) for cid, _ in errors}
        items = [Item(names[i.id], i.paths, i.meta) for i in items]
        errors = [(names[cid], pipe.scrub(msg.replace(cid, names[cid]), None)) for cid, msg in errors]
    return RunPlan(pipeline_name, input_dir, output_dir, config, items, errors)


@task(cache_policy=NO_CACHE, task_run_name="{pipeline_name}-{item_id}")
def process_item(pipeline_name: str, item_id: str, item: dict, out_dir: str, config: dict,
                 progress_artifact: str | None = None, position: list[int] | None = None):
    """Run one item end to end (read, preprocess, infer, postprocess, write); returns its entry.

    A failure returns a Failed state whose message names the item and the problem (scrubbed of
    input paths under ``anonymize``); whatever the item had written is removed first.
    ``progress_artifact`` / ``position`` ([items finished before it, total]) let the item report
    its tiles or windows to the run's progress artifact and terminal bar.
    """
    import torch
    from prefect.states import Failed

    from imagingflows.models.progress import listen

    item_started()  # a process worker's --item-timeout clock starts here
    ignore_stop_signals_in_workers(config)
    torch.set_num_threads(int(config.get("torch_threads") or torch.get_num_threads()))
    pipe = get_pipeline(pipeline_name)
    watched = _thread_deadline(config)  # thread runner + --item-timeout: the flow may give up on it
    if watched:
        thread_deadlines().begin((out_dir, item_id))
    start = time.perf_counter()

    def attempt() -> tuple[str, dict]:  # before processing: the inputs as read (a part has its item's)
        input_hash = item.get("meta", {}).get("input_hash") or hash_inputs(list(item["paths"].values()))
        with listen(_ItemProgress(item_id, progress_artifact, position)):
            return input_hash, pipe.process(Item.from_dict(item), Path(out_dir), config)

    def again(retry: int, error: OSError, wait: float) -> None:
        pipe.remove_failed(item_id, Path(out_dir))  # what the failed attempt wrote
        _log().warning("%s: transient read error (%s), retry %d of %d in %g s", item_id,
                       errno.errorcode.get(error.errno, error.errno), retry, READ_RETRIES, wait)

    try:
        input_hash, entry = retry_transient(attempt, what=item_id, on_retry=again)
        entry["input_hash"] = input_hash
        entry["seconds"] = round(time.perf_counter() - start, 2)  # this item's own time, not queueing
        failure = None
    except Exception as exc:  # noqa: BLE001 - one bad item never sinks the batch
        failure = exc
    if watched and not thread_deadlines().finish((out_dir, item_id)):  # the run gave up on it at its deadline
        pipe.remove_failed(item_id, Path(out_dir))
        return Failed(message=thread_timeout_reason(config["item_timeout"]))
    if failure is not None:
        return Failed(message=_failure(pipe, item_id, item, out_dir, config, failure, "unexpected error"))
    return entry


def _thread_deadline(config: dict) -> bool:
    """True when the flow itself watches this batch's items' deadlines (thread runner + --item-timeout)."""
    runner = (config.get("device_info") or {}).get("runner", "thread")
    return bool(config.get("item_timeout")) and runner == "thread"


def _failure(pipe, item_id: str, item: dict, out_dir: str, config: dict, exc: BaseException, what: str) -> str:
    """Remove what the failed item wrote (no partial outputs survive), log the unexpected, and
    return the reason (scrubbed of input paths under ``anonymize``)."""
    pipe.remove_failed(item_id, Path(out_dir))
    message = describe_error(exc)
    if config.get("anonymize"):
        return pipe.scrub(message, item["paths"])
    if not isinstance(exc, InputError):
        _log().exception("%s: %s", item_id, what)
    return message


@task(cache_policy=NO_CACHE, task_run_name="{pipeline_name}-{item_id}-merge")
def merge_item(pipeline_name: str, item_id: str, item: dict, part_entries: list[dict], out_dir: str,
               config: dict):
    """Join the parts of an item that ran in parts into its outputs; returns the item's entry.

    A failure returns a Failed state naming the problem; the item's own outputs are removed, the
    parts' results stay (a resumed run merges again without rerunning them).
    """
    from prefect.states import Failed

    pipe = get_pipeline(pipeline_name)
    start = time.perf_counter()
    try:
        input_hash = item.get("meta", {}).get("input_hash") or hash_inputs(list(item["paths"].values()))
        entry = pipe.merge(Item.from_dict(item), part_entries, Path(out_dir), config)
        entry["input_hash"] = input_hash
        entry["seconds"] = round(sum(e.get("seconds") or 0 for e in part_entries) + time.perf_counter() - start, 2)
        entry["parts"] = len(part_entries)
        return entry
    except Exception as exc:  # noqa: BLE001 - one bad item never sinks the batch
        return Failed(message=_failure(pipe, item_id, item, out_dir, config, exc,
                                       "unexpected error while merging its parts"))


class _ItemProgress:
    """Listener for one item's tiles/windows: the terminal bar (same process) and the Prefect
    progress artifact (any process), at most a few updates per second."""

    def __init__(self, item_id: str, artifact: str | None, position: list[int] | None) -> None:
        self.item_id, self.artifact = item_id, artifact
        self.before, self.total = (position or [0, 1])
        self.last = time.monotonic()  # an item shorter than ITEM_PROGRESS_S leaves the artifact to the flow

    def __call__(self, unit: str, done: int, total: int) -> None:
        callback = _item_callback()
        if callback is not None:
            callback(self.item_id, unit, done, total)
        now_ = time.monotonic()
        if self.artifact is None or now_ - self.last < ITEM_PROGRESS_S:
            return
        self.last = now_
        from prefect.artifacts import update_progress_artifact

        share = (self.before + done / max(total, 1)) / max(self.total, 1)
        try:
            update_progress_artifact(UUID(self.artifact), progress=min(100.0, 100.0 * share),
                                     description=f"{self.item_id}: {unit} {done}/{total}")
        except Exception:  # noqa: BLE001 - progress is a convenience
            pass


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@flow(name="imagingflows-run", log_prints=False)
def run_flow(
    pipeline: str, input_dir: str, output_dir: str, config: dict[str, Any],
    items: list[dict], errors: list[list[str]], resume: bool = False, max_in_flight: int = CHUNK,
) -> dict:
    """Process every item; record each outcome in run.json as it lands; write the report.

    At most ``max_in_flight`` items are submitted at once, so on SIGINT/SIGTERM nothing more is
    started; items already running get :data:`~imagingflows.flows.stop.STOP_GRACE_SECONDS` to finish, then run.json and
    the report are written with every finished item and the flow returns ``interrupted``.
    """
    pipe = get_pipeline(pipeline)
    out = Path(output_dir)
    # 1. plan: the manifest, the items that failed discovery, the items resume skips, the parts
    manifest, cfg_hash = _open_manifest(pipe, out, config, resume)
    outcomes = {item_id: "failed" for item_id, _ in errors}
    for item_id, message in errors:
        manifest.record(item_id, {"status": "failed", "error": message})
        _log().error("%s: %s", item_id, message)
    groups = PartGroups()
    todo: deque = deque()
    merges: list[PartGroup] = []  # items whose parts were all done before this run
    for d in items:
        if resume and _up_to_date(pipe, manifest, d, out, cfg_hash, config):
            outcomes[d["id"]] = "skipped"
            continue
        parts = _split(pipe, d, config)
        if isinstance(parts, str):  # the item could not be split: it fails with that reason
            manifest.record(d["id"], {"status": "failed", "error": parts, "config_hash": cfg_hash})
            outcomes[d["id"]] = "failed"
            _log().error("%s: %s", d["id"], parts)
            continue
        if not parts:
            todo.append(d)
            continue
        group = groups.add(d, [p["id"] for p in parts])
        for part in parts:
            if resume and _up_to_date(pipe, manifest, part, out, cfg_hash, config, section="parts"):
                group.entries[part["id"]] = manifest.entry(part["id"], "parts")
            else:
                todo.append(part)
        if group.complete:
            merges.append(group)
    progress = _Progress(len(items) + len(errors), len(outcomes), _progress_callback())

    # 2. submit at most max_in_flight tasks (items, parts, merges); 3. record each as it lands
    completions, stop = Completions(), StopRequest()

    def merge(group: PartGroup) -> None:
        completions.add(merge_item.submit(pipeline, group.item["id"], group.item, group.ordered_entries(),
                                          output_dir, config), {**group.item, "merge": True})

    def close_item(d: dict, entry: dict) -> None:
        manifest.record(d["id"], entry)
        outcomes[d["id"]] = entry["status"]
        progress.advance(d["id"], entry["status"])

    def land(d: dict, entry: dict) -> None:
        if "part" not in d.get("meta", {}) or d.get("merge"):
            close_item(d, entry)
            if d.get("merge") and entry["status"] == "done":
                manifest.drop_parts(groups.groups[d["id"]].part_ids)
                remove_parts(out, d["id"])
            return
        manifest.record_part(d["id"], entry)
        group = groups.landed(d, entry)
        if group is not None and group.failure():
            close_item(group.item, {"status": "failed", "error": group.failure(), "config_hash": cfg_hash})
        elif group is not None and not stop.requested:
            merge(group)

    def give_up_on_overdue_threads() -> None:
        """Thread runner with --item-timeout: an item past its deadline is reported failed now (its
        thread runs on; its task discards its result when it returns) and the batch goes on."""
        if not _thread_deadline(config):
            return
        for key, (fut, d) in list(completions.pending.items()):
            if d.get("merge") or not thread_deadlines().overdue((output_dir, d["id"]), config["item_timeout"]):
                continue
            if thread_deadlines().abandon((output_dir, d["id"])):
                completions.pending.pop(key)
                pipe.remove_failed(d["id"], out)  # what it wrote so far (its task removes the rest)
                land(d, _failed_entry(d, thread_timeout_reason(config["item_timeout"]), cfg_hash, config))

    with stop.installed(), _flushed(manifest):
        for group in merges:
            merge(group)
        while todo or completions.pending:
            while todo and not stop.requested and len(completions.pending) < max(1, max_in_flight):
                d = todo.popleft()
                completions.add(process_item.submit(pipeline, d["id"], d, output_dir, config, progress.artifact_key,
                                                    [progress.done, progress.total]), d)
            if stop.requested and (not completions.pending or stop.out_of_time()):
                break
            give_up_on_overdue_threads()
            manifest.flush(due_only=True)  # what landed since the last save, once REFRESH_S has passed
            progress.flush(due_only=True)
            landed = completions.next()
            if landed is None:
                continue
            fut, d = landed
            land(d, _entry_of(pipe, fut, d, out, cfg_hash, config))

    # 4. close the run: counts, report, artifacts
    unfinished = list(dict.fromkeys(
        [groups.item_of(d) for d in todo] + [groups.item_of(d) for _, d in completions.pending.values()]
        + [g.item["id"] for g in groups.groups.values() if g.item["id"] not in outcomes]))
    extra = {"interrupted": stop.signal, "not_finished": len(unfinished)} if stop.requested else {}
    counts = manifest.finish(outcomes, **extra)
    progress.flush()
    _publish(pipeline, out, manifest)
    if stop.requested:
        _log().warning("stopped by %s: %d items not finished (rerun with --resume)", stop.signal, len(unfinished))
    return {"counts": counts, "outcomes": outcomes, "output_dir": str(out), "interrupted": stop.signal,
            "not_finished": unfinished, "errors": _errors(manifest, outcomes)}


def _split(pipe, d: dict, config: dict) -> list[dict] | str:
    """The item's parts (dicts), ``[]`` to run it whole, or the reason it cannot be split."""
    if pipe.split is None:
        return []
    item = Item.from_dict(d)
    try:
        ranges = pipe.split(item, config)
    except Exception as exc:  # noqa: BLE001 - a bad item fails alone, as in processing
        message = describe_error(exc)
        return pipe.scrub(message, d["paths"]) if config.get("anonymize") else message
    if len(ranges) <= 1:
        return []
    d["meta"] = {**d.get("meta", {}), "input_hash": hash_inputs(list(d["paths"].values()))}  # once, for all parts
    return [part_item(Item.from_dict(d), first, stop).to_dict() for first, stop in ranges]


def _open_manifest(pipe, out: Path, config: dict, resume: bool) -> tuple[RunManifest, str]:
    """run.json opened (kept on resume) with this run's config and its hash."""
    manifest = _BatchManifest.open(out, pipeline=pipe.name, command="run", resume=resume, packages=pipe.packages)
    cfg_hash = config_hash(config, pipe.output_keys() + RUN_CONFIG_KEYS)
    manifest.set(config=config, config_hash=cfg_hash, model=config.get("model"),
                 device=config.get("device_info"), anonymized=bool(config.get("anonymize")),
                 demo_weights=config.get("demo_weights"))
    return manifest, cfg_hash


class _BatchManifest(RunManifest):
    """run.json saved when an item lands, but at most every :data:`REFRESH_S` (and at most 5% of the
    time on saving): rewriting it after each of thousands of short items costs O(items^2).

    A change not yet saved is written by :meth:`flush` (the flow calls it while it waits, so an
    item's record reaches the disk within about ``REFRESH_S``) and by :meth:`finish`. Items slower
    than ``REFRESH_S`` are saved as each lands, as before; a run killed in between redoes (resume)
    at most the items of the last ``REFRESH_S``: their outputs exist but are not recorded done.
    """

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        super().__init__(path, data)
        self._saved_at, self._cost, self._dirty = -float("inf"), 0.0, False

    def _save(self) -> None:  # called under the lock by every change
        self._dirty = True
        if self._due():
            self._write()

    def _due(self) -> bool:
        return time.monotonic() - self._saved_at >= max(REFRESH_S, 20 * self._cost)

    def _write(self) -> None:
        start = time.monotonic()
        super()._save()
        self._saved_at = time.monotonic()
        self._cost, self._dirty = self._saved_at - start, False

    def flush(self, due_only: bool = False) -> None:
        """Save unsaved changes (``due_only``: only once the interval has passed)."""
        with self._lock:
            if self._dirty and (not due_only or self._due()):
                self._write()

    def finish(self, outcomes: dict[str, str], **extra: Any) -> dict[str, int]:
        counts = super().finish(outcomes, **extra)
        self.flush()
        return counts


@contextlib.contextmanager
def _flushed(manifest: _BatchManifest):
    """Save what landed even when the flow ends by an exception."""
    try:
        yield
    finally:
        manifest.flush()


def _up_to_date(pipe, manifest: RunManifest, d: dict, out: Path, cfg_hash: str, config: dict,
                section: str = "items") -> bool:
    """Resume's rule for one item (or part); its inputs are hashed only to confirm a skip (every
    item that runs hashes its own inside its task, so the first result comes at once)."""
    known = d.get("meta", {}).get("input_hash")  # a part's: its item's, hashed once
    fresh = manifest.up_to_date(d["id"], input_hash=known or (lambda: hash_inputs(list(d["paths"].values()))),
                                cfg_hash=cfg_hash, weights_hash=config.get("weights_sha256"),
                                outputs=pipe.expected_outputs(d["id"], out), section=section)
    if fresh:
        _log().info("%s: up to date, skipped", d["id"])
    return fresh


def _failed_entry(d: dict, reason: str, cfg_hash: str, config: dict) -> dict:
    entry = {"status": "failed", "error": reason, "config_hash": cfg_hash,
             "weights_sha256": config.get("weights_sha256")}
    if not config.get("anonymize"):
        entry["inputs"] = d["paths"]
    _log().error("%s: %s", d["id"], reason)
    return entry


def _entry_of(pipe, fut, d: dict, out: Path, cfg_hash: str, config: dict) -> dict:
    """The manifest entry of a landed item: done with its outputs, or failed with the reason.

    A task that never reported back (its worker was killed at ``--item-timeout``, or died) is
    failed here: its outputs are removed and its Prefect task run is set Failed with the reason.
    """
    try:
        fut.wait()  # the done callback can fire before the future's Prefect state is final
    except Exception as exc:  # noqa: BLE001 - ItemTimedOut, or a worker process that died
        reason = str(exc) if isinstance(exc, ItemTimedOut) else f"its worker ended without a result: {exc}"
        pipe.remove_failed(d["id"], out)
        _fail_task_run(fut.task_run_id, reason)
        return _failed_entry(d, reason, cfg_hash, config)
    entry = {"config_hash": cfg_hash, "weights_sha256": config.get("weights_sha256")}
    if not config.get("anonymize"):
        entry["inputs"] = d["paths"]
    if fut.state.is_completed():
        entry.update(status="done", **fut.result())  # with the input_hash the task computed
        _log().info("%s: done", d["id"])
    else:
        entry.update(status="failed", error=fut.state.message or f"task ended {fut.state.type}")
        _log().error("%s: %s", d["id"], entry["error"])
    return entry


def _fail_task_run(task_run_id, reason: str) -> None:
    """Set a task run whose worker was killed (it stays Running otherwise) to Failed with ``reason``."""
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(task_run_id, Failed(message=reason), force=True)
    except Exception as e:  # noqa: BLE001 - run.json is the record; the server's view is a convenience
        _log().warning("could not mark task run %s failed on the Prefect server: %s", task_run_id, e)


def _errors(manifest: RunManifest, outcomes: dict[str, str]) -> dict[str, str]:
    """This run's failed items and their reasons."""
    return {k: (manifest.entry(k) or {}).get("error") or "failed" for k, v in outcomes.items() if v == "failed"}


#: run-level settings that change output bytes: float rounding depends on torch's thread count
#: (reductions are split by thread) and on the device, so they key resume like model options do
RUN_CONFIG_KEYS = ("torch_threads", "device_type")


def _log() -> logging.Logger:
    # Flows and tasks reach module state through functions: the process and Dask runners
    # pickle flow/task functions by value, and a logger with file handlers (or the terminal
    # progress callback) cannot be pickled.
    return logging.getLogger("imagingflows")


def _progress_callback() -> Callable | None:
    return _CALLBACKS.get()[0]


def _item_callback() -> Callable | None:
    return _CALLBACKS.get()[1]


#: items the markdown artifact lists at most (the failed, then the slowest): the UI renders it whole
ARTIFACT_ITEMS = 100


def _publish(pipeline: str, out: Path, manifest: RunManifest) -> None:
    """report.html/.md in the run folder, plus Prefect artifacts (table + markdown)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from imagingflows.tasks.report import render_markdown, write_report

    write_report(out, manifest.data)
    rows = [{"item": k, "status": v.get("status"), "seconds": v.get("seconds"), "error": v.get("error") or ""}
            for k, v in manifest.data["items"].items()]
    key = f"{pipeline}-{manifest.data['command']}".replace("_", "-").lower()
    try:
        create_table_artifact(rows, key=f"{key}-items", description=f"{pipeline}: per-item status")
        create_markdown_artifact(render_markdown(manifest.data, max_items=ARTIFACT_ITEMS), key=f"{key}-report")
    except Exception as e:  # noqa: BLE001 - artifacts are a convenience; the files are the record
        log.warning("could not publish Prefect artifacts: %s", e)


class _Progress:
    """Feeds a Prefect progress artifact and an optional terminal callback."""

    def __init__(self, total: int, already: int, callback: Callable | None) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done, self.callback = max(total, 1), already, callback
        self.shown, self.last, self.note = already, time.monotonic(), ""
        try:
            self.artifact = create_progress_artifact(progress=100.0 * already / self.total,
                                                     description="items processed")
        except Exception:  # noqa: BLE001
            self.artifact = None

    @property
    def artifact_key(self) -> str | None:
        return str(self.artifact) if self.artifact is not None else None

    def advance(self, item_id: str, status: str) -> None:
        self.done += 1
        self.note = f"items processed; last {item_id} {status}"
        self.flush(due_only=self.done < self.total)
        if self.callback:
            self.callback(item_id, status)

    def flush(self, due_only: bool = False) -> None:
        """Show the count on the artifact if it changed (``due_only``: and :data:`REFRESH_S` has passed
        since it was last shown); each update is a round trip to the server."""
        from prefect.artifacts import update_progress_artifact

        if self.artifact is None or self.shown == self.done or (due_only and time.monotonic() - self.last < REFRESH_S):
            return
        self.shown, self.last = self.done, time.monotonic()
        try:
            update_progress_artifact(self.artifact, progress=100.0 * self.done / self.total, description=self.note)
        except Exception:  # noqa: BLE001
            pass


def execute(plan: RunPlan, *, resume: bool = False, runner: str = "thread", workers: int = 1,
            progress: Callable | None = None, item_progress: Callable | None = None,
            item_timeout: float | None = None) -> dict:
    """Run a planned batch with the chosen task runner (shared by the CLI and the Python API).

    ``item_timeout`` (seconds, ``--item-timeout``): an item still running that long after its task
    started (its worker's model load included) is reported failed, "timed out after N s", with
    nothing of it left in the output folder, and the batch goes on. The process runner kills the
    item's worker and starts a new one; the thread runner cannot stop a thread, so the item runs on
    in the background (using a core) and its result is discarded when it returns (the run waits for
    it before it ends); Dask is refused (a :class:`UsageError`).

    ``progress(item_id, status)`` is called as each item lands, ``item_progress(item_id, unit,
    done, total)`` as its tiles or windows finish (thread runner; other runners report to the
    Prefect progress artifact only). The output folder is locked for the run (:class:`OutputLock`).
    Returns ``{"counts", "outcomes", "output_dir", "interrupted", "not_finished", "errors"}``.
    """
    from imagingflows.models.backend import configure_threads, select_device

    task_runner = make_task_runner(runner, workers, item_timeout)  # a bad value: refused before any lock or file
    with OutputLock(plan.output_dir):
        start_local_server()
        remove_stale_temps(plan.output_dir)
        threads = configure_threads(workers)  # per item worker, thread or process: workers x threads <= cores
        device_type = select_device(plan.config.get("device", "cpu")).type
        config = dict(plan.config, torch_threads=threads, device_type=device_type, parent_pid=os.getpid(),
                      device_info={"type": device_type, "torch_threads": threads, "runner": runner,
                                   "workers": workers})
        if item_timeout is not None:
            config["item_timeout"] = float(item_timeout)
        handler = file_log(plan.output_dir / "run.log")
        # flow parameters must be JSON: the callbacks travel in a ContextVar, which the flow (same
        # thread) and the thread runner's tasks (Prefect copies the context) see; other runners don't
        token = _CALLBACKS.set((progress, item_progress))
        try:
            flow_fn = run_flow.with_options(task_runner=task_runner)
            in_flight = CHUNK if runner.startswith("dask=") else workers  # a remote cluster sizes itself
            return flow_fn(plan.pipeline, str(plan.input_dir), str(plan.output_dir), config,
                           [i.to_dict() for i in plan.items], [list(e) for e in plan.errors], resume, in_flight)
        finally:
            _CALLBACKS.reset(token)
            log.removeHandler(handler)
            handler.close()
            remove_stale_temps(plan.output_dir)  # an item abandoned at a stop leaves none behind


#: (progress(item_id, status), item_progress(item_id, unit, done, total)) of the batch running in this context
_CALLBACKS: ContextVar[tuple[Callable | None, Callable | None]] = ContextVar("imagingflows_run_callbacks",
                                                                             default=(None, None))


def start_local_server() -> None:
    """Start Prefect's ephemeral server now, one process at a time per ``PREFECT_HOME``.

    On a fresh home the server's first start creates and migrates the SQLite database; two runs
    starting at once (cron jobs, two terminals) would migrate it together and one fails with
    "database is locked". Holding a file lock while starting serialises that; with a server
    (``PREFECT_API_URL``) this does nothing. The started server is the one Prefect reuses.
    """
    import fcntl

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".imagingflows-server-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SubprocessASGIServer().start()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def file_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the terminal shows the progress bar; run.log has the details
    return handler


def run_pipeline(pipeline: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                 resume: bool = False, runner: str = "thread", workers: int = 1,
                 item_timeout: float | None = None, **options: Any) -> dict:
    """Python API: plan and run a batch; returns ``{"counts", "outcomes", "output_dir"}``
    (``item_timeout``: see :func:`execute`)."""
    plan = plan_run(pipeline, input_dir, output_dir, options)
    return execute(plan, resume=resume, runner=runner, workers=workers, item_timeout=item_timeout)
