"""The ``train`` flow: fine-tune or train a pipeline's model on the user's folder.

Training is one long Prefect task (the pipeline's ``train`` hook); it checkpoints
every epoch atomically and resumes from the run folder's ``last.pt``. ``run.json``
and ``report.html`` record the data, the seeded split, the curve and the result.
"""

from __future__ import annotations

import logging
from typing import get_args
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from imagingflows.flows.run import file_log, log, start_local_server
from imagingflows.flows.runners import UsageError
from imagingflows.pipelines.base import get_pipeline
from imagingflows.pipelines.options import OptionError, flag_of
from imagingflows.tasks.manifest import RunManifest


@task(cache_policy=NO_CACHE, task_run_name="train-{pipeline}")
def train_task(pipeline: str, data_dir: str | None, run_dir: str, config: dict) -> dict:
    return get_pipeline(pipeline).train(Path(data_dir) if data_dir else None, Path(run_dir), config)


@flow(name="imagingflows-train")
def train_flow(pipeline: str, data_dir: str | None, run_dir: str, config: dict) -> dict:
    from imagingflows.tasks.report import write_report

    manifest = RunManifest.open(Path(run_dir), pipeline=pipeline, command="train", resume=True,
                                packages=get_pipeline(pipeline).packages)
    manifest.set(config=config, data=data_dir)
    summary = train_task(pipeline, data_dir, run_dir, config)
    items = {cid: {"status": "failed", "error": msg} for cid, msg in summary.get("errors", [])}
    for h in summary.get("history", []):
        items[f"epoch {h['epoch']:03d}"] = {"status": "done", "seconds": h.get("seconds"),
                                             "summary": {"loss": round(h["loss"], 4)},
                                             "metrics": {k: v for k, v in h.items() if k.startswith("val_")}}
    manifest.set(items=items, model=summary.get("model"), split=summary.get("split"), result=result_of(summary),
                 figures=["training_curve.png"] if (Path(run_dir) / "training_curve.png").is_file() else [])
    manifest.finish({k: v["status"] for k, v in items.items()})
    write_report(Path(run_dir), manifest.data)
    return summary


def result_of(summary: dict) -> dict:
    """What run.json records as the result: the hook's ``result``, else its scalar entries."""
    if isinstance(summary.get("result"), dict):
        return summary["result"]
    return {k: v for k, v in summary.items() if isinstance(v, (str, int, float, type(None))) and k != "headline"}


def headline(summary: dict) -> str:
    """One line for the terminal: the hook's ``headline``, else its result entries."""
    return summary.get("headline") or ", ".join(f"{k} {v}" for k, v in result_of(summary).items())


def train_pipeline(pipeline: str, **options) -> dict:
    """Python API and CLI entry: validates the options and folders, then runs the flow.

    ``options``: the pipeline's train options (``data``, ``output`` and the rest; see
    ``run-flow train <pipeline> --help``). Raises :class:`UsageError` when nothing can start.
    """
    pipe = get_pipeline(pipeline)
    if pipe.train is None or pipe.train_options is None:
        raise UsageError(f"the {pipeline} pipeline has no training")
    try:
        config = pipe.train_options.parse(options).to_config()
    except OptionError as e:
        raise UsageError(f"train {pipeline}: {e}") from e
    for key, field in pipe.train_options.model_fields.items():  # every path given (folder or file) must exist
        if key != "output" and config.get(key) and Path in (get_args(field.annotation) or (field.annotation,)) \
                and not Path(config[key]).exists():
            raise UsageError(f"{flag_of(key)} {config[key]} does not exist")
    data_dir = Path(config["data"]) if config.get("data") else None
    run_dir = Path(config.pop("output"))
    handlers = [file_log(run_dir / "run.log")]
    if not config.get("quiet"):
        handlers.append(logging.StreamHandler())  # one line per epoch on the terminal
        log.addHandler(handlers[-1])
    try:
        start_local_server()
        return train_flow(pipeline, str(data_dir) if data_dir else None, str(run_dir), config)
    except ValueError as e:
        raise UsageError(str(e)) from e
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
