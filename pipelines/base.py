"""The record every domain pipeline fills in, and the registry of pipelines.

A pipeline file is the only place that knows a domain; flows call these hooks
with paths and small JSON configs.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from imagingflows.pipelines.options import Options, TrainOptions
from imagingflows.tasks.ingest import Item

#: ``(input_dir, config) -> (items, [(item_id, error message)])``
Discover = Callable[[Path, dict], tuple[list[Item], list[tuple[str, str]]]]
#: ``options config -> resolved config`` (adds ``model``, ``weights_sha256``; raises when nothing can run)
Prepare = Callable[[dict], dict]
#: ``(item, out_dir, resolved config) -> manifest entry`` with ``outputs`` and ``summary``
Process = Callable[[Item, Path, dict], dict]
#: ``(item_id, out_dir) -> [paths]`` that must exist for an item to count as done
ExpectedOutputs = Callable[[str, Path], list[Path]]
#: ``(prediction path, reference path, evaluate config) -> {metric: value}``
Evaluate = Callable[[str, str, Any], dict]
#: ``(folder, item_id) -> path or None``
Find = Callable[[Path, str], Path | None]
#: ``(data_dir or None, run_dir, train config) -> summary`` with ``history``, ``model``, ``split``,
#: ``result`` (what run.json records) and ``headline`` (one line for the terminal)
Train = Callable[[Path | None, Path, dict], dict]
#: ``(item, config) -> [(first, stop), ...]``: ranges of the item's work units (tiles, say) to run as
#: separate parts, spread over the workers like items; ``[]`` runs the item whole
Split = Callable[[Item, dict], list[tuple[int, int]]]
#: ``(item, [its parts' manifest entries, in order], out_dir, config) -> the item's manifest entry``
Merge = Callable[[Item, list[dict], Path, dict], dict]

_PART_ID = re.compile(r"^(?P<of>.*)#part(?P<first>\d+)-(?P<stop>\d+)$")


def part_item(item: Item, first: int, stop: int) -> Item:
    """The part of ``item`` covering its work units ``first .. stop - 1``; the id says which, so a
    resumed run with other part sizes never takes one part for another."""
    meta = {**(item.meta or {}), "part": {"of": item.id, "first": int(first), "stop": int(stop)}}
    return Item(f"{item.id}#part{first}-{stop}", item.paths, meta)


def part_of(item_id: str) -> tuple[str, int, int] | None:
    """``"<item>#part<first>-<stop>"`` -> ``(item, first, stop)``; None for a whole item's id."""
    m = _PART_ID.match(item_id)
    return (m["of"], int(m["first"]), int(m["stop"])) if m else None


def parts_folder(out_dir: Path, item_id: str) -> Path:
    """Where an item's parts keep their results until they are merged (removed after the merge)."""
    return Path(out_dir) / ".parts" / item_id


def run_folder_items(pred_dir: Path) -> list[str]:
    """Default ``list_predictions``: the items a run recorded as done in ``pred_dir/run.json``."""
    path = Path(pred_dir) / "run.json"
    if not path.is_file():
        raise ValueError(f"{pred_dir} has no run.json: give the output folder of a `run-flow` batch")
    items = json.loads(path.read_text()).get("items") or {}
    return sorted(k for k, v in items.items() if v.get("status") == "done")


def find_file(folder: Path, item_id: str) -> Path | None:
    """Default ``find_prediction`` / ``find_reference``: ``folder/<item_id>`` when it is a file."""
    path = Path(folder) / item_id
    return path if path.is_file() else None


def scrub_paths(message: str, paths: dict[str, str] | None = None) -> str:
    """Default ``scrub``: replace an item's input paths, file names and folder in ``message``."""
    for role, p in sorted((paths or {}).items(), key=lambda kv: -len(kv[1])):
        message = message.replace(p, f"<{role} input>").replace(Path(p).name, f"<{role} file>")
        message = message.replace(str(Path(p).parent), "<case folder>")
    return re.sub(r"\b\d+(?:\.\d+){3,}\b", "<uid>", message)  # DICOM-style UIDs


@dataclass(frozen=True)
class Pipeline:
    """The contract of one domain pipeline: typed options and hooks; flows call only these.

    Required: ``name``, ``description``, ``discover``, ``prepare``, ``process``,
    ``expected_outputs``. Everything else has a default, so a minimal pipeline is a few
    functions in one file (see the README, "Adding a pipeline").

    Attributes:
        run_options: the options of ``run-flow <name>`` (an :class:`Options` model); fields marked
            ``output=True`` key resume.
        derived_output_keys: keys ``prepare`` adds from the model that change outputs (the
            channels a checkpoint takes, the precision ``auto`` resolved to); hashed with the fields.
        cleanup: ``(item_id, out_dir)``, called when an item failed, removes what it wrote
            (default: its expected outputs, or its own folder; never the output folder).
        scrub: ``(message, item paths) -> message`` under anonymize (default: input paths and names).
        evaluate: scores one prediction; None: no ``run-flow evaluate <name>``.
        evaluate_summary: ``(per_item metrics, out_dir, config) -> {"metrics", "figures", "files", "text"}``:
            run-level results that are not a mean of the items (counts summed over items), pictures, and a
            ``text`` (a table) the CLI prints instead of its one-line mean (see flows/evaluate.py); None: the
            mean only.
        list_predictions: ``pred_dir -> [item ids]`` to score (default: the items done in its run.json).
        find_prediction / find_reference: locate an item's files (default: ``folder/<item_id>``).
        references_in_input: True when the input folder holds the references too, so
            ``evaluate --input X`` scores against ``X`` unless ``--reference`` says otherwise.
        evaluate_run_options: options ``run-flow evaluate <name> --input X`` adds to the run it starts (under
            what was typed: a typed value wins), e.g. ``{"simulate": True}`` for a pipeline whose evaluation
            run makes its own inputs from the references.
        evaluate_config: ``(pred_dir, options) -> config`` for ``evaluate`` (raises ``ValueError`` when
            scoring cannot start); default: the options as given.
        metric_conventions: how metrics are computed (text, or ``config -> text``).
        train / train_options: the training hook and its options; None: no ``run-flow train <name>``.
        split / merge: run a big item as parts (``split``; their ids come from :func:`part_item`,
            their results go under :func:`parts_folder`, ``expected_outputs`` of a part id names
            them) and join the parts' results into the item's outputs (``merge``); both or neither.
        packages: distributions whose versions run.json records besides the core ones.
    """

    name: str
    description: str
    discover: Discover
    prepare: Prepare
    process: Process
    expected_outputs: ExpectedOutputs
    run_options: type[Options] = Options
    derived_output_keys: tuple[str, ...] = ()
    cleanup: Callable[[str, Path], None] | None = None
    scrub: Callable[[str, dict[str, str] | None], str] = scrub_paths
    evaluate: Evaluate | None = None
    evaluate_summary: Callable[[dict, Path, Any], dict] | None = None
    list_predictions: Callable[[Path], list[str]] = run_folder_items
    find_prediction: Find = find_file
    find_reference: Find = find_file
    references_in_input: bool = False
    evaluate_run_options: dict[str, Any] = field(default_factory=dict)
    evaluate_config: Callable[[Path, dict], Any] | None = None
    metric_conventions: str | Callable[[Any], str] = ""
    train: Train | None = None
    train_options: type[TrainOptions] | None = None
    packages: tuple[str, ...] = field(default=())
    split: Split | None = None
    merge: Merge | None = None

    def __post_init__(self) -> None:
        if (self.split is None) != (self.merge is None):
            raise ValueError(f"pipeline {self.name!r}: give split and merge together (or neither)")

    def output_keys(self) -> tuple[str, ...]:
        """Config keys whose values key resume: the output fields, then the derived keys."""
        return tuple(dict.fromkeys(self.run_options.output_fields() + self.derived_output_keys))

    def run_config(self, options: dict) -> dict:
        """Validated run options as the flows' JSON config (raises ``OptionError``)."""
        return self.run_options.parse(options).to_config()

    def remove_failed(self, item_id: str, out_dir: Path) -> None:
        """Delete what a failed item wrote (the ``cleanup`` hook, else its expected outputs)."""
        if self.cleanup is not None:
            self.cleanup(item_id, out_dir)
            return
        out = Path(out_dir).resolve()
        for path in self.expected_outputs(item_id, out_dir):
            path = Path(path)
            owned = path.parent.resolve()
            if item_id and owned != out and out in owned.parents and owned.name == item_id:
                shutil.rmtree(owned, ignore_errors=True)  # the item's own folder (segment's <case>/)
            elif path.is_file() and out in path.resolve().parents:
                path.unlink(missing_ok=True)

    def conventions(self, config: Any) -> str:
        text = self.metric_conventions
        return text(config) if callable(text) else text


#: names a pipeline cannot take: they are the CLI's own commands
RESERVED_NAMES = ("train", "evaluate", "serve", "export", "models")


_PIPELINES: dict[str, Callable[[], Pipeline]] = {}


def register(name: str, factory: Callable[[], Pipeline]) -> None:
    """Add a pipeline under ``name``; a second, different factory for a name is an error naming both."""
    if name in RESERVED_NAMES:
        raise ValueError(f"pipeline name {name!r} is taken by the command `run-flow {name}` ({_where(factory)})")
    existing = _PIPELINES.get(name)
    if existing is not None and existing is not factory:
        raise ValueError(f"pipeline {name!r} is registered twice: by {_where(existing)} and by {_where(factory)}")
    _PIPELINES[name] = factory


def _where(factory: Callable) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


def pipeline_names() -> list[str]:
    _ensure_registered()
    return sorted(_PIPELINES)


def get_pipeline(name: str) -> Pipeline:
    _ensure_registered()
    if name not in _PIPELINES:
        close = difflib.get_close_matches(name, list(_PIPELINES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown pipeline {name!r}.{hint} Available: {', '.join(sorted(_PIPELINES))}")
    return _PIPELINES[name]()


#: entry-point group through which an installed package adds pipelines:
#: ``[project.entry-points."imagingflows.pipelines"] toy = "toy_pipeline:pipeline"``
ENTRY_POINT_GROUP = "imagingflows.pipelines"

_BUILTINS_LOADED = False


def _ensure_registered() -> None:
    # The built-in pipelines (an explicit list, no folder scan), then the installed plug-ins. Each
    # process does this on first use, so process and Dask workers see the same pipelines as the
    # parent; a plug-in cannot hide a built-in (a taken name is an error naming both).
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        from imagingflows.pipelines import classify, demosaic, medical, remote_sensing, restoration

        register("segment", medical.pipeline)
        register("restore", restoration.pipeline)
        register("embed", remote_sensing.pipeline)
        register("classify", classify.pipeline)
        register("demosaic", demosaic.pipeline)
        for name, factory in _plugins():
            register(name, factory)
        _BUILTINS_LOADED = True


def _plugins() -> list[tuple[str, Callable[[], Pipeline]]]:
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            factory = ep.load()
        except Exception as e:  # noqa: BLE001 - name the plug-in that cannot load
            dist = getattr(ep.dist, "name", "?")
            raise ValueError(f"pipeline plug-in {ep.name!r} ({ep.value}, from {dist}) cannot be loaded: "
                             f"{type(e).__name__}: {e}") from e
        found.append((ep.name, factory))
    return found



