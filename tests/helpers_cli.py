"""Shared by the CLI and served-run tests: invoke ``run-flow`` in-process, write a folder of small PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from imagingflows.flows.cli import app


def cli(*args) -> tuple[int, str]:
    """``run-flow *args`` in this process: (exit code, what it printed). An exception that is not an
    exit is raised, so a crash reads as its traceback rather than as exit code 1."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def pngs(folder: Path, n: int, bad: bool = False, shape: tuple[int, int] = (32, 40), stem: str = "ok") -> Path:
    """``folder/{stem}0.png`` .. ``{stem}{n-1}.png``: random RGB, ``shape`` (height, width), seed 0; with
    ``bad``, also ``broken.png``, a PNG signature followed by junk."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / f"{stem}{i}.png")
    if bad:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder
