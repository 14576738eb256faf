"""The Python API: each pipeline as a plain function that runs the same Prefect flow as the CLI.

    from imagingflows.flows import segment, restore
    segment("scans/", "out/", weights="fold0/model.pt", resume=True)["counts"]
    restore("photos/", "clean/", task="denoise", tile=256)

Each returns ``{"counts": {"done", "failed", "skipped"}, "outcomes": {item: status},
"output_dir", "interrupted", "not_finished", "errors"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagingflows.flows.run import run_pipeline


def segment(input_dir: str | Path, output_dir: str | Path, **options: Any) -> dict:
    """Segment every case under ``input_dir`` into ``output_dir`` (same options as ``run-flow segment``)."""
    return run_pipeline("segment", input_dir, output_dir, **options)


def restore(input_dir: str | Path, output_dir: str | Path, *, task: str = "denoise", **options: Any) -> dict:
    """Restore every image under ``input_dir`` into ``output_dir`` (same options as ``run-flow restore``)."""
    return run_pipeline("restore", input_dir, output_dir, task=task, **options)


__all__ = ["segment", "restore", "run_pipeline"]
