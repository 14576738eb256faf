"""Domain pipelines; each is also a plain function (``segment(input_dir, output_dir, **options)``)."""

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


__all__ = ["segment"]
