"""The ``train`` flow: fine-tune or train a pipeline's model on the user's folder.

Training is one long Prefect task (the pipeline's ``train`` hook); it checkpoints
every epoch atomically and resumes from the run folder's ``last.pt``. ``run.json``
and ``report.html`` record the data, the seeded split, the curve and the result.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from imagingflows.flows.run import file_log, log, start_local_server
from imagingflows.flows.runners import UsageError
from imagingflows.pipelines.base import get_pipeline
from imagingflows.tasks.manifest import RunManifest


@task(cache_policy=NO_CACHE, task_run_name="train-{pipeline}")
def train_task(pipeline: str, data_dir: str, run_dir: str, config: dict) -> dict:
    return get_pipeline(pipeline).train(Path(data_dir), Path(run_dir), config)


@flow(name="imagingflows-train")
def train_flow(pipeline: str, data_dir: str, run_dir: str, config: dict) -> dict:
    from imagingflows.tasks.report import write_report

    manifest = RunManifest.open(Path(run_dir), pipeline=pipeline, command="train", resume=True,
                                packages=get_pipeline(pipeline).packages)
    manifest.set(config=config, data=data_dir)
    summary = train_task(pipeline, data_dir, run_dir, config)
    items = {cid: {"status": "failed", "error": msg} for cid, msg in summary.get("errors", [])}
    for h in summary["history"]:
        items[f"epoch {h['epoch']:03d}"] = {"status": "done", "seconds": h.get("seconds"),
                                             "summary": {"loss": round(h["loss"], 4)},
                                             "metrics": {k: v for k, v in h.items() if k.startswith("val_")}}
    keys = ("epochs_done", "best_dice", "best_psnr", "gain_db", "best_checkpoint", "last_checkpoint")
    manifest.set(items=items, model=summary["model"], split=summary["split"],
                 result={k: summary[k] for k in keys if k in summary},
        figures=["training_curve.png"] if (Path(run_dir) / "training_curve.png").is_file() else [])
    manifest.finish({k: v["status"] for k, v in items.items()})
    write_report(Path(run_dir), manifest.data)
    return summary


def train_pipeline(pipeline: str, data_dir: str | Path, run_dir: str | Path, config: dict) -> dict:
    """Python API and CLI entry: validates the folders, then runs the flow."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if not data_dir.is_dir():
        raise UsageError(f"training data folder {data_dir} does not exist")
    get_pipeline(pipeline)
    handlers = [file_log(run_dir / "run.log")]
    if not config.get("quiet"):
        handlers.append(logging.StreamHandler())  # one line per epoch on the terminal
        log.addHandler(handlers[-1])
    try:
        start_local_server()
        return train_flow(pipeline, str(data_dir), str(run_dir), config)
    except ValueError as e:
        raise UsageError(str(e)) from e
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
