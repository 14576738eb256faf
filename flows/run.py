"""The ``run`` flow: ingest -> process each item (a Prefect task) -> manifest -> report.

Domain-free: the pipeline record (pipelines/) supplies discovery, the per-item
processing and the outputs that resume checks. Tasks take paths, ids and small
JSON configs; the model lives in the backend's per-process cache.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from imagingflows.flows.runners import UsageError, make_task_runner
from imagingflows.pipelines.base import get_pipeline
from imagingflows.tasks.ingest import InputError, Item, hash_inputs
from imagingflows.tasks.manifest import RunManifest, config_hash
from imagingflows.tasks.write import remove_stale_temps

log = logging.getLogger("imagingflows")

CHUNK = 64  # items in flight at once: keeps Prefect's per-run state and memory flat on huge batches


@dataclass
class RunPlan:
    """Everything decided before the flow starts (so bad set-ups exit 2 with one message)."""

    pipeline: str
    input_dir: Path
    output_dir: Path
    config: dict
    items: list[Item]
    errors: list[tuple[str, str]] = field(default_factory=list)


def pseudonym(case_id: str, key: bytes) -> str:
    """Stable per output folder (resume works) but keyed, so ids cannot be guessed back."""
    return "case-" + hmac.new(key, case_id.encode(), hashlib.sha256).hexdigest()[:10]


def anonymize_key(out_dir: Path) -> bytes:
    """The output folder's secret key for pseudonyms (created once, never reported)."""
    path = out_dir / ".anonymize-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    except FileExistsError:
        pass
    key = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        raise UsageError(f"{path} is damaged (expected 32 hex characters); delete it to start new pseudonyms")
    return bytes.fromhex(key)


def scrub(message: str, paths: dict[str, str] | None = None) -> str:
    """Replace what can carry patient-derived ids: input paths, file names, DICOM UIDs."""
    for role, p in sorted((paths or {}).items(), key=lambda kv: -len(kv[1])):
        message = message.replace(p, f"<{role} input>").replace(Path(p).name, f"<{role} file>")
        message = message.replace(str(Path(p).parent), "<case folder>")
    message = re.sub(r"\b\d+(?:\.\d+){3,}\b", "<uid>", message)
    return re.sub(r"[^\s,:;'\"()]+\.(?:nii(?:\.gz)?|dcm)\b", "<file>", message)


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
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise UsageError(f"input folder {input_dir} does not exist")
    if output_dir.resolve() == input_dir.resolve():
        raise UsageError("output folder must differ from the input folder (inputs are never touched)")
    check_writable(output_dir)
    try:
        config = pipe.prepare(dict(options))
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        raise UsageError(str(e)) from e
    items, errors = pipe.discover(input_dir, config)
    if not items and not errors:
        raise UsageError(f"input folder {input_dir} holds no {pipeline_name} inputs")
    if options.get("anonymize"):
        key = anonymize_key(output_dir)
        names = {i.id: pseudonym(i.id, key) for i in items} | {cid: pseudonym(cid, key) for cid, _ in errors}
        items = [Item(names[i.id], i.paths, i.meta) for i in items]
        errors = [(names[cid], scrub(msg.replace(cid, names[cid]))) for cid, msg in errors]
    return RunPlan(pipeline_name, input_dir, output_dir, config, items, errors)


@task(cache_policy=NO_CACHE, task_run_name="{pipeline_name}-{item_id}")
def process_item(pipeline_name: str, item_id: str, item: dict, out_dir: str, config: dict):
    """Run one item end to end (read, preprocess, infer, postprocess, write); returns its entry.

    A failure returns a Failed state whose message names the item and the problem (scrubbed of
    input paths under ``anonymize``); whatever the item had written is removed first.
    """
    import torch
    from prefect.states import Failed

    torch.set_num_threads(int(config.get("torch_threads") or torch.get_num_threads()))
    pipe = get_pipeline(pipeline_name)
    case_dir = Path(out_dir) / item_id
    start = time.perf_counter()
    try:
        entry = pipe.process(Item.from_dict(item), Path(out_dir), config)
        entry["seconds"] = round(time.perf_counter() - start, 2)  # this item's own time, not queueing
        return entry
    except Exception as exc:  # noqa: BLE001 - one bad item never sinks the batch
        shutil.rmtree(case_dir, ignore_errors=True)  # no partial outputs survive a failure
        message = describe_error(exc)
        if config.get("anonymize"):
            message = scrub(message, item["paths"])
        elif not isinstance(exc, InputError):
            _log().exception("%s: unexpected error", item_id)
        return Failed(message=message)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@flow(name="imagingflows-run", log_prints=False)
def run_flow(
    pipeline: str, input_dir: str, output_dir: str, config: dict[str, Any],
    items: list[dict], errors: list[list[str]], resume: bool = False,
) -> dict:
    """Process every item; record each outcome in run.json as it lands; write the report."""
    pipe = get_pipeline(pipeline)
    out = Path(output_dir)
    manifest = RunManifest.open(out, pipeline=pipeline, command="run", resume=resume)
    cfg_hash = config_hash(config, pipe.output_config_keys)
    manifest.set(config=config, config_hash=cfg_hash, model=config.get("model"),
                 device=config.get("device_info"), anonymized=bool(config.get("anonymize")))
    outcomes: dict[str, str] = {}
    for case_id, message in errors:
        manifest.record(case_id, {"status": "failed", "error": message})
        outcomes[case_id] = "failed"
        _log().error("%s: %s", case_id, message)

    todo = []
    for d in items:
        input_hash = hash_inputs(list(d["paths"].values()))
        if resume and manifest.up_to_date(d["id"], input_hash=input_hash, cfg_hash=cfg_hash,
                                          weights_hash=config.get("weights_sha256"),
                                          outputs=pipe.expected_outputs(d["id"], out)):
            outcomes[d["id"]] = "skipped"
            _log().info("%s: up to date, skipped", d["id"])
            continue
        todo.append((d, input_hash))

    progress = _Progress(len(items) + len(errors), len(outcomes), _progress_callback())
    for start in range(0, len(todo), CHUNK):
        chunk, futures = todo[start:start + CHUNK], []
        submitted = {}
        for d, h in chunk:
            fut = process_item.submit(pipeline, d["id"], d, output_dir, config)
            submitted[id(fut)] = (d, h)
            futures.append(fut)
        for fut in as_completed(futures):  # record each item as soon as it lands (a kill loses none)
            d, input_hash = submitted[id(fut)]
            fut.wait()  # as_completed can yield before the future's Prefect state is final
            entry = {"input_hash": input_hash, "config_hash": cfg_hash,
                     "weights_sha256": config.get("weights_sha256")}
            if not config.get("anonymize"):
                entry["inputs"] = d["paths"]
            if fut.state.is_completed():
                entry.update(status="done", **fut.result())
                _log().info("%s: done", d["id"])
            else:
                entry.update(status="failed", error=fut.state.message or f"task ended {fut.state.type}")
                _log().error("%s: %s", d["id"], entry["error"])
            manifest.record(d["id"], entry)
            outcomes[d["id"]] = entry["status"]
            progress.advance(d["id"], entry["status"])
    counts = manifest.finish(outcomes)
    _publish(pipeline, out, manifest)
    return {"counts": counts, "outcomes": outcomes, "output_dir": str(out)}


def _log() -> logging.Logger:
    # Flows and tasks reach module state through functions: the process and Dask runners
    # pickle flow/task functions by value, and a logger with file handlers (or the terminal
    # progress callback) cannot be pickled.
    return logging.getLogger("imagingflows")


def _progress_callback() -> Callable | None:
    return _CALLBACK


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
        create_markdown_artifact(render_markdown(manifest.data), key=f"{key}-report")
    except Exception as e:  # noqa: BLE001 - artifacts are a convenience; the files are the record
        log.warning("could not publish Prefect artifacts: %s", e)


class _Progress:
    """Feeds a Prefect progress artifact and an optional terminal callback."""

    def __init__(self, total: int, already: int, callback: Callable | None) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done, self.callback = max(total, 1), already, callback
        try:
            self.artifact = create_progress_artifact(progress=100.0 * already / self.total,
                                                     description="items processed")
        except Exception:  # noqa: BLE001
            self.artifact = None

    def advance(self, item_id: str, status: str) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        if self.artifact is not None:
            try:
                update_progress_artifact(self.artifact, progress=100.0 * self.done / self.total)
            except Exception:  # noqa: BLE001
                pass
        if self.callback:
            self.callback(item_id, status)


def execute(plan: RunPlan, *, resume: bool = False, runner: str = "thread", workers: int = 1,
            progress: Callable | None = None) -> dict:
    """Run a planned batch with the chosen task runner (shared by the CLI and the Python API)."""
    from imagingflows.models.backend import configure_threads, select_device

    remove_stale_temps(plan.output_dir)
    threads = configure_threads(workers)  # per item worker, thread or process: workers x threads <= cores
    config = dict(plan.config, torch_threads=threads,
                  device_info={"type": select_device(plan.config.get("device", "cpu")).type,
                               "torch_threads": threads, "runner": runner, "workers": workers})
    handler = file_log(plan.output_dir / "run.log")
    global _CALLBACK
    _CALLBACK = progress  # flow parameters must be JSON: the terminal callback stays process-local
    try:
        flow_fn = run_flow.with_options(task_runner=make_task_runner(runner, workers))
        return flow_fn(plan.pipeline, str(plan.input_dir), str(plan.output_dir), config,
                       [i.to_dict() for i in plan.items], [list(e) for e in plan.errors], resume)
    finally:
        _CALLBACK = None
        log.removeHandler(handler)
        handler.close()


_CALLBACK: Callable | None = None


def file_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the terminal shows the progress bar; run.log has the details
    return handler


def run_pipeline(pipeline: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                 resume: bool = False, runner: str = "thread", workers: int = 1, **options: Any) -> dict:
    """Python API: plan and run a batch; returns ``{"counts", "outcomes", "output_dir"}``."""
    plan = plan_run(pipeline, input_dir, output_dir, options)
    return execute(plan, resume=resume, runner=runner, workers=workers)
