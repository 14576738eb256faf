"""A plug-in pipeline for the item-timeout and read-retry tests (tests/test_item_timeout.py).

Every ``*.txt`` under the input folder is an item; its text says what the item does:

- ``sleep N``: writes its first output (``<id>.first``), then sleeps N seconds holding a half-written
  temp file of its main output open (what a killed item leaves behind), then writes it;
- ``eio K``: its read raises ``OSError(EIO)`` on the first K attempts (counted in ``--state``), as a
  network file system does on a hiccup, then reads the real file;
- anything else: upper-cased at once.

Each finished item records when it finished (``summary.finished_at``, wall-clock seconds).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from imagingflows.pipelines.base import Pipeline
from imagingflows.pipelines.options import Options, option
from imagingflows.tasks.ingest import Item
from imagingflows.tasks.write import atomic_path, write_bytes


class SlowRun(Options):
    state: Path | None = option(None, "Folder for attempt counters and wake-up marks.", output=False)


def discover(input_dir: Path, config: dict):
    return [Item(p.relative_to(input_dir).as_posix(), {"text": str(p)}) for p in sorted(input_dir.rglob("*.txt"))], []


def prepare(config: dict) -> dict:
    return {**config, "model": {"name": "slow"}, "weights_sha256": None}


def _read(path: str, item_id: str, state: Path | None) -> str:
    text = Path(path).read_text()
    words = text.split()
    if words[:1] == ["eio"] and state is not None:
        counter = state / f"{item_id}.attempts"
        attempts = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempts + 1))
        if attempts < int(words[1]):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
    return text


def process(item: Item, out_dir: Path, config: dict) -> dict:
    state = Path(config["state"]) if config.get("state") else None
    text = _read(item.paths["text"], item.id, state)
    words = text.split()
    if words[:1] == ["sleep"]:
        write_bytes(out_dir / f"{item.id}.first", b"written before the sleep")
        with atomic_path(out_dir / item.id) as tmp:
            tmp.write_bytes(b"half")
            time.sleep(float(words[1]))
            tmp.write_bytes(text.upper().encode())
        if state is not None:
            (state / f"{item.id}.woke").write_text(str(time.time()))
    else:
        write_bytes(out_dir / item.id, text.upper().encode())
    return {"outputs": {"text": item.id}, "summary": {"finished_at": time.time(), "pid": os.getpid()}}


def expected_outputs(item_id: str, out_dir: Path) -> list[Path]:
    return [out_dir / item_id, out_dir / f"{item_id}.first"]


def pipeline() -> Pipeline:
    return Pipeline(name="slow", description="sleeps or fails reads on request (a plug-in test)", discover=discover,
                    prepare=prepare, process=process, expected_outputs=expected_outputs, run_options=SlowRun)
