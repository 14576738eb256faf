"""The record every domain pipeline fills in, and the registry of pipelines.

A pipeline file is the only place that knows a domain; flows call these hooks
with paths and small JSON configs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable



@dataclass(frozen=True)
class Pipeline:
    """Hooks of one domain pipeline.

    Attributes:
        discover: ``(input_dir, config) -> (items, [(item_id, error message)])``.
        prepare: ``config -> resolved config``; loads/validates the model once (raises
            ``CheckpointError`` / ``ValueError`` when nothing can run) and adds
            ``model`` (description) and ``weights_sha256``.
        process: ``(item, out_dir, resolved config) -> manifest entry`` with
            ``outputs`` (paths relative to ``out_dir``) and ``summary``.
        expected_outputs: ``(item_id, out_dir) -> [paths]`` that must exist for resume.
        output_config_keys: config keys that change outputs (their hash keys resume).
        evaluate: ``(prediction path, reference path, config) -> metrics dict``.
        find_prediction / find_reference: locate a case's files in a folder.
        metric_conventions: text stating how metrics are computed, or ``config -> text``.
        train: ``(data_dir, run_dir, config) -> training summary``.
        list_predictions: ``pred_dir -> [item ids]`` to score in a predictions folder; None: one
            folder or ``<case>_seg`` file per case (the segment layout).
        evaluate_config: ``(pred_dir, options) -> config`` passed to ``evaluate`` (raises
            ``ValueError`` when scoring cannot start); None: the options as given.
        packages: distributions whose versions run.json records besides the core ones
            (those the pipeline's outputs depend on: readers, writers, model libraries).
    """

    name: str
    description: str
    discover: Callable
    prepare: Callable
    process: Callable
    expected_outputs: Callable
    output_config_keys: tuple[str, ...]
    evaluate: Callable
    find_prediction: Callable
    find_reference: Callable
    metric_conventions: str | Callable[[dict | None], str]
    train: Callable
    list_predictions: Callable | None = None
    packages: tuple[str, ...] = ()
    evaluate_config: Callable | None = None


_PIPELINES: dict[str, Callable[[], Pipeline]] = {}


def register(name: str, factory: Callable[[], Pipeline]) -> None:
    """Add a pipeline under ``name``; a second, different factory for a name is an error naming both."""
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
        from imagingflows.pipelines import medical, restoration

        register("segment", medical.pipeline)
        register("restore", restoration.pipeline)
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



