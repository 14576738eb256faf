"""The ``evaluate`` flow: score predictions against references, per item and mean.

``run-flow evaluate PIPE --input X --reference R`` first runs the pipeline into the
output folder (the run flow), then calls this on its outputs; with ``--predictions``
it scores outputs that already exist. Writes ``metrics.json`` and adds the metric
table to ``run.json`` / ``report.html``.

Run-level results: a pipeline's ``evaluate_summary(per_item, out_dir, config) -> {"metrics": {...},
"figures": [paths], "files": [paths], "text": str}`` (paths relative to ``out_dir``, written by it), for
metrics that are not a mean of the items (counts summed over items) and pictures (every key optional). Its
metrics go to ``metrics.json`` as ``overall`` (their numbers also to the report's metric table), its
figures to the report; its ``text`` (a table, say) is returned as ``text`` for the CLI to print
instead of the one-line mean. Structured per-item values (lists, dicts) stay in ``metrics.json``;
run.json and the report's item table get the scalars.
"""

from __future__ import annotations
from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from imagingflows.flows.runners import UsageError
from imagingflows.pipelines.base import get_pipeline
from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.manifest import RunManifest, now
from imagingflows.tasks.report import write_report
from imagingflows.tasks.write import write_json


@task(cache_policy=NO_CACHE, task_run_name="score-{item_id}")
def score_item(pipeline: str, item_id: str, prediction: str, reference: str, config: dict | None = None) -> dict:
    return get_pipeline(pipeline).evaluate(prediction, reference, config)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _scalars(m: dict) -> dict:
    return {k: v for k, v in m.items() if not isinstance(v, (list, tuple, dict))}


def _run_level(pipe, per_item: dict, out: Path, config) -> dict:
    """The pipeline's ``evaluate_summary`` results (see the module docstring); {} when it has none."""
    summarize = pipe.evaluate_summary
    return (summarize(per_item, out, config) or {}) if summarize is not None and per_item else {}


@flow(name="imagingflows-evaluate")
def evaluate_flow(pipeline: str, predictions: str, references: str, output_dir: str,
                  config: dict | None = None) -> dict:
    pipe = get_pipeline(pipeline)
    pred_dir, ref_dir, out = Path(predictions), Path(references), Path(output_dir)
    per_item: dict[str, dict] = {}
    failed: dict[str, str] = {}
    futures = {}
    ids = pipe.list_predictions(pred_dir)
    for cid in ids:
        try:
            pred, ref = pipe.find_prediction(pred_dir, cid), pipe.find_reference(ref_dir, cid)
        except InputError as e:
            failed[cid] = str(e)
            continue
        if pred is None or ref is None:
            failed[cid] = f"{cid}: {'prediction' if pred is None else 'reference'} not found"
            continue
        futures[cid] = score_item.submit(pipeline, cid, str(pred), str(ref), config)
    for cid, fut in futures.items():
        fut.wait()
        if fut.state.is_completed():
            per_item[cid] = fut.result()
        else:
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - reported per item
                failed[cid] = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
    keys = sorted({k for m in per_item.values() for k in m})  # the mean of numbers only (not labels)
    keys = [k for k in keys if all(_is_number(m.get(k)) for m in per_item.values())]
    mean = {k: round(float(np.mean([m[k] for m in per_item.values()])), 5) for k in keys} if per_item else {}
    conventions = pipe.conventions(config)
    run_level = _run_level(pipe, per_item, out, config)
    overall = run_level.get("metrics") or {}
    metrics = {"pipeline": pipeline, "conventions": conventions, "per_item": per_item,
               "mean": mean, **({"overall": overall} if overall else {}), "failed": failed, "n": len(per_item),
               **({"files": list(run_level["files"])} if run_level.get("files") else {}), "computed": now()}
    write_json(out / "metrics.json", metrics)

    manifest = RunManifest.open(out, pipeline=pipeline, command="evaluate", resume=True,
                                packages=get_pipeline(pipeline).packages)
    for cid, m in per_item.items():
        entry = manifest.entry(cid) or {"status": "done"}
        manifest.record(cid, {**entry, "metrics": _scalars(m)})
    for cid, msg in failed.items():
        manifest.record(cid, {**(manifest.entry(cid) or {}), "status": "failed", "error": msg})
    table = {"mean": mean, **({"overall": {k: v for k, v in overall.items() if _is_number(v)}} if overall else {})}
    figures = [f for f in manifest.data.get("figures") or [] if f not in run_level.get("figures", [])]
    manifest.set(metrics={**table, "labels": conventions}, finished=now(),
                 **({"figures": figures + list(run_level["figures"])} if run_level.get("figures") else {}))
    write_report(out, manifest.data)
    return {"metrics": metrics, "failed": failed, **({"text": run_level["text"]} if run_level.get("text") else {})}


def evaluate_pipeline(pipeline: str, predictions: str | Path, references: str | Path, output_dir: str | Path,
                      options: dict | None = None) -> dict:
    predictions, references = Path(predictions), Path(references)
    for label, folder in (("predictions", predictions), ("references", references)):
        if not folder.is_dir():
            raise UsageError(f"{label} folder {folder} does not exist")
    pipe = get_pipeline(pipeline)
    if pipe.evaluate is None:
        raise UsageError(f"the {pipeline} pipeline has no evaluation")
    config = None  # what the pipeline's evaluate hook gets (None unless it has an evaluate_config hook)
    if pipe.evaluate_config is not None:
        try:
            config = pipe.evaluate_config(predictions, dict(options or {}))
        except ValueError as e:
            raise UsageError(str(e)) from e
    try:
        pipe.list_predictions(predictions)
    except ValueError as e:  # e.g. no run.json to say which items there are
        raise UsageError(str(e)) from e
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    from imagingflows.flows.run import start_local_server

    start_local_server()
    result = evaluate_flow(pipeline, str(predictions), str(references), str(output_dir), config)
    if not result["metrics"]["per_item"] and result["failed"]:
        raise UsageError("no item could be scored:\n" + "\n".join(f"  {k}: {v}" for k, v in result["failed"].items()))
    return result



