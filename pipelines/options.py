"""Typed options, declared once: each pipeline's run, train and evaluate options are pydantic models.

Every field states its help text, default, unit and whether it changes outputs::

    class MyRun(ModelOptions):
        tile: int = option(512, "Tile side, context included.", unit="input pixels", ge=1, output=True)

From these declarations the CLI builds its commands (``run-flow <pipeline>``, ``train``,
``evaluate``, ``serve``), the Python API validates keyword arguments, a Prefect deployment
shows a parameter form, and resume hashes exactly the fields marked ``output=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from imagingflows.pipelines.engine_choice import DEFAULT_ENGINE, ENGINE_HELP


class OptionError(ValueError):
    """An option value the pipeline cannot take; the message is one line naming the option."""


def option(default: Any = ..., help: str = "", *, output: bool, unit: str | None = None,
           metavar: str | None = None, flags: tuple[str, ...] = (), **constraints: Any) -> Any:
    """A declared option (a pydantic ``Field`` carrying our metadata).

    Args:
        default: the value when not given (``...``: required).
        help: one sentence for ``--help`` and the deployment form.
        output: True when a different value can change output bytes (the resume hash covers it).
        unit: what a number counts (``"voxels"``, ``"input pixels"``, ``"fraction of the window"``).
        metavar: how the CLI shows the value (``"X Y Z"``); by default derived from the type.
        flags: CLI spellings (default ``--field-name``), e.g. ``("--input", "-i")``.
        constraints: pydantic bounds (``ge``, ``gt``, ``le``, ``lt``).
    """
    extra = {"output": output, "unit": unit, "metavar": metavar, "flags": list(flags)}
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def meta(field: FieldInfo) -> dict:
    """Our metadata of a field (``output``, ``unit``, ``metavar``, ``flags``); {} when undeclared."""
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


class Options(BaseModel):
    """Base of every option set: unknown names and wrong types are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def output_fields(cls) -> tuple[str, ...]:
        """Names of the fields marked as changing outputs."""
        return tuple(name for name, f in cls.model_fields.items() if meta(f).get("output"))

    @classmethod
    def unmarked_fields(cls) -> list[str]:
        """Fields declared without ``option(..., output=...)`` (a test keeps this empty)."""
        return [name for name, f in cls.model_fields.items() if not isinstance(meta(f).get("output"), bool)]

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "Options":
        """Validate ``values``; raises :class:`OptionError` with one line naming the first bad option."""
        try:
            return cls(**dict(values))
        except ValidationError as e:
            raise OptionError(describe(e)) from None

    def to_config(self) -> dict:
        """The options as a JSON-able dict (paths as strings, tuples as lists): the flows' config."""
        return self.model_dump(mode="json")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe(error: ValidationError) -> str:
    """One line for the first problem: ``--roi: Input should be a valid integer (got 'x')``."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int))
    if first.get("type") == "extra_forbidden":
        return f"unknown option {where!r} ({flag_of(where)})"
    if first.get("type") == "missing":
        return f"{flag_of(where)} is required"
    got = first.get("input")
    said = first.get("msg", "invalid value").replace("Value error, ", "")
    if not where:  # a check across options: its message names them
        return said
    return f"{flag_of(where)}: {said}" + ("" if isinstance(got, dict) or got is None else f" (got {got!r})")


# ----------------------------------------------------------------------------- shared declarations

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Engine = Literal["eager", "auto", "channels-last", "compile", "openvino"]


class ModelOptions(Options):
    """What every pipeline that runs a model takes. The weights' bytes are hashed (weights_sha256),
    so their path is not an output field; the device type is hashed by the run itself."""

    weights: Path | None = option(None, "Checkpoint file (an official release or one of ours). "
                                        "Default: the bundled demo weights.", output=False)
    arch: str | None = option(None, "Architecture name when the checkpoint does not say "
                                    "(see `run-flow models`).", output=True)
    trust_checkpoint: bool = option(False, "Allow a full (unsafe) unpickle of a trusted legacy file.", output=False)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", output=False)
    precision: Precision = option("auto", "auto (bf16 where the CPU/GPU has native bf16, else fp32), fp32, "
                                          "bf16 or fp16 (CUDA).", output=True)
    engine: Engine = option(DEFAULT_ENGINE, ENGINE_HELP, output=False)  # why not an output: pipelines/engine_choice.py


class BatchOptions(Options):
    """How a batch runs (never part of the pipeline's config)."""

    input: Path = option(..., "Input folder (never modified).", flags=("--input", "-i"), output=False)
    output: Path = option(..., "Output folder: outputs, run.json, report.html, run.log.",
                          flags=("--output", "-o"), output=False)
    resume: bool = option(False, "Skip items whose outputs and hashes are up to date.", output=False)
    runner: str = option("thread", "thread, process or dask[=tcp://host:8786].", output=False)
    workers: int = option(1, "Items at once; torch threads are split between them.", unit="items", ge=1,
                          output=False)
    quiet: bool = option(False, "No progress bar (for cron).", flags=("--quiet", "-q"), output=False)
    item_timeout: float | None = option(
        None, "Fail an item still running after this long and go on. process: its worker is killed and "
              "replaced; thread: it is reported at the deadline but runs on in the background (a thread "
              "cannot be stopped inside a C call); not with dask.", unit="seconds", gt=0, output=False)


class ServeOptions(Options):
    """The schedule of ``run-flow serve``."""

    cron: str = option(..., "Schedule, e.g. '0 2 * * *'. Needs `prefect server start` and PREFECT_API_URL.",
                       output=False)
    name: str = option("nightly", "Deployment name (<pipeline>-<name> on the server).", output=False)
    resume: bool = option(True, "Each run skips the items already done (--no-resume: every run redoes all).",
                          output=False)


class EvaluateOptions(Options):
    """What ``run-flow evaluate <pipeline>`` takes besides the pipeline's run options."""

    input: Path | None = option(None, "Inputs to run the pipeline on before scoring.", flags=("--input", "-i"),
                                output=False)
    reference: Path | None = option(None, "Folder of references (ground truth).", output=False)
    predictions: Path | None = option(None, "Score these existing outputs instead of running.", output=False)
    output: Path = option(..., "Folder for outputs, metrics.json and the report.", flags=("--output", "-o"),
                          output=False)
    resume: bool = option(False, "Skip items whose outputs and hashes are up to date.", output=False)
    quiet: bool = option(False, "No progress bar and no summary.", flags=("--quiet", "-q"), output=False)


class TrainOptions(Options):
    """What every ``run-flow train <pipeline>`` takes. ``output=True`` marks what a resumed run must
    keep (its run folder refuses other values); more epochs continue a run."""

    data: Path | None = option(None, "Training data folder.", output=True)
    output: Path = option(..., "Run folder: checkpoints, curves, run.json (resumed when it exists).",
                          flags=("--output", "-o"), output=False)
    weights: Path | None = option(None, "Start from these weights (fine-tune). Default: from scratch.",
                                  output=True)
    epochs: int = option(10, "Epochs in all (a resumed run goes on to this many).", unit="epochs", ge=1,
                         output=False)
    steps_per_epoch: int = option(100, "Optimiser steps per epoch.", unit="steps", ge=1, output=True)
    val_fraction: float = option(0.2, "Share held out for validation.", unit="fraction", ge=0, lt=1,
                                 output=True)
    seed: int = option(0, "Seed of the split, the crops and the initial weights.", output=True)
    lr: float = option(1e-3, "Peak learning rate (AdamW, cosine decay over the run).", unit="per step", gt=0,
                       output=True)
    batch_size: int = option(8, "Crops per optimiser step.", unit="crops", ge=1, output=True)
    trust_checkpoint: bool = option(False, "Allow a full (unsafe) unpickle of a trusted legacy file.", output=False)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", output=False)
    quiet: bool = option(False, "No per-epoch lines on the terminal.", flags=("--quiet", "-q"), output=False)

