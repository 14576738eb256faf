"""A whole pipeline in one file, added through the plug-in entry point (tests/test_plugins.py):
every ``*.txt`` under the input folder is an item; the output is its text upper-cased."""

from __future__ import annotations

import hashlib
from pathlib import Path

from imagingflows.pipelines.base import Pipeline
from imagingflows.pipelines.options import Options, TrainOptions, option
from imagingflows.tasks.ingest import InputError, Item
from imagingflows.tasks.write import write_bytes


class ToyRun(Options):
    shout: bool = option(True, "Upper-case the text (else copy it as it is).", output=True)
    collapse_check: bool = option(True, "Fail an item whose text is empty.", output=False)


class ToyTrain(TrainOptions):
    data: Path = option(..., "Folder of example text files.", output=True)


def discover(input_dir: Path, config: dict):
    items = [Item(p.relative_to(input_dir).as_posix(), {"text": str(p)}) for p in sorted(input_dir.rglob("*.txt"))]
    return items, []


def prepare(config: dict) -> dict:
    return {**config, "model": {"name": "upper-case"}, "weights_sha256": None}


def process(item: Item, out_dir: Path, config: dict) -> dict:
    text = Path(item.paths["text"]).read_text()
    if "FAIL" in text:
        raise InputError(f"{item.id}: asks to fail")
    if config["collapse_check"] and not text:
        raise InputError(f"{item.id}: empty")
    write_bytes(out_dir / item.id, (text.upper() if config["shout"] else text).encode())
    return {"outputs": {"text": item.id}, "summary": {"characters": len(text)}}


def expected_outputs(item_id: str, out_dir: Path) -> list[Path]:
    return [out_dir / item_id]


def evaluate(prediction: str, reference: str, config) -> dict:
    return {"equal": float(Path(prediction).read_bytes() == Path(reference).read_bytes())}


def find(folder: Path, item_id: str) -> Path | None:
    path = folder / item_id
    return path if path.is_file() else None


def train(data_dir: Path, run_dir: Path, config: dict) -> dict:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*.txt")))).hexdigest()
    return {"history": [], "model": {"name": "upper-case", "data": digest}, "split": {},
            "result": {"data_sha256": digest}, "headline": f"learnt nothing from {digest[:8]}"}


def pipeline() -> Pipeline:
    return Pipeline(
        name="toy", description="upper-case text files (a plug-in test)", discover=discover, prepare=prepare,
        process=process, expected_outputs=expected_outputs, run_options=ToyRun, evaluate=evaluate,
        find_prediction=find, find_reference=find, metric_conventions="equal: 1 when the bytes match",
        train=train, train_options=ToyTrain, list_predictions=lambda folder: sorted(p.relative_to(folder).as_posix()
                                                            for p in folder.rglob("*.txt")),
    )
