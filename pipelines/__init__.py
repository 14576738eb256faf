"""Domain pipelines; each is also a plain function (``segment(input_dir, output_dir, **options)``,
``restore(input_dir, output_dir, task="denoise", **options)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def segment(input_dir: str | Path, output_dir: str | Path, **options: Any) -> dict:
    """Segment every case under ``input_dir`` into ``output_dir`` (same options as the CLI).

    Returns ``{"counts": {"done", "failed", "skipped"}, "outcomes": {case: status}, "output_dir"}``.
    Runs the same Prefect flow as ``run-flow segment``.
    """
    from imagingflows.flows.run import run_pipeline

    return run_pipeline("segment", input_dir, output_dir, **options)


def restore(input_dir: str | Path, output_dir: str | Path, *, task: str = "denoise", **options: Any) -> dict:
    """Restore every image under ``input_dir`` into ``output_dir`` (same options as ``run-flow restore``)."""
    from imagingflows.flows.run import run_pipeline

    return run_pipeline("restore", input_dir, output_dir, task=task, **options)


__all__ = ["segment", "restore"]
