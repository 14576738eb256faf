"""The Python API: each registered pipeline as a plain function running the same Prefect flow as the CLI.

    from imagingflows.flows import segment, restore, train
    segment("scans/", "out/", weights="fold0/model.pt", resume=True)["counts"]
    restore("photos/", "clean/", task="denoise", tile=256)
    train("segment", data="cases/", output="runs/x", epochs=20)

``imagingflows.flows.<name>`` is :func:`pipeline_function` of that pipeline (plug-ins included).
Each returns ``{"counts": {"done", "failed", "skipped"}, "outcomes": {item: status},
"output_dir", "interrupted", "not_finished", "errors"}``; options are the pipeline's run
options (``run-flow <name> --help``) and are validated (an unknown or bad one is a UsageError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from imagingflows.flows.run import run_pipeline
from imagingflows.flows.train import train_pipeline as train


def pipeline_function(name: str) -> Callable[..., dict]:
    """``f(input_dir, output_dir, *, resume=False, runner="thread", workers=1, **options)`` for a pipeline."""
    from imagingflows.pipelines.base import get_pipeline

    pipe = get_pipeline(name)  # an unknown name is a ValueError naming the available ones

    def run(input_dir: str | Path, output_dir: str | Path, **options: Any) -> dict:
        return run_pipeline(name, input_dir, output_dir, **options)

    fields = ", ".join(pipe.run_options.model_fields)
    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"{pipe.description}: every item under ``input_dir`` into ``output_dir``.\n\nOptions: {fields}."
    return run


__all__ = ["pipeline_function", "run_pipeline", "train"]
