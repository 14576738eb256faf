"""One model reference for every pipeline: which weights, how they load, and the checks around them.

``prepare`` hooks call :func:`resolve_model` once per batch (the bundled demo weights when
none are given, a notice saying so, the spatial-dims check); ``process`` hooks call
:func:`model_of` per item, which also refuses weights replaced on disk mid-batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def resolve_model(cfg: dict, *, pipeline: str, demo: Callable[[], str | Path], trained_on: str,
                  spatial_dims: int, overrides: dict[str, Any] | None = None):
    """Load the run's model once and record what it is in ``cfg`` (changed in place).

    Args:
        cfg: run config with ``weights``, ``arch``, ``trust_checkpoint``, ``device``.
        pipeline: the pipeline's name, for messages.
        demo: returns the bundled weights, used when ``cfg["weights"]`` is empty (raises
            ``ValueError`` saying what to pass when there are none for these options).
        trained_on: what the demo weights were trained on (the report's notice).
        spatial_dims: 2 or 3; a checkpoint of another kind is refused.
        overrides: architecture options passed to the builder (None values are passed on: for
            some options None is a choice, e.g. NAFNet's global pooling).

    Sets ``weights`` (the file used), ``weights_sha256``, ``model`` (its description),
    ``model_overrides`` and, for the bundled file, ``demo_weights``. Returns the LoadedModel.
    """
    from imagingflows.models import cached_model

    weights = str(cfg.get("weights") or demo())
    bundled = _bundled(demo)
    if bundled is not None and Path(weights).resolve() == bundled:  # also when --weights names it
        cfg["demo_weights"] = {"file": bundled.name, "trained_on": trained_on}
    overrides = dict(overrides or {})
    lm = cached_model(weights, cfg.get("arch"), trust=bool(cfg.get("trust_checkpoint")),
                      device=cfg.get("device") or "cpu", **overrides)
    if lm.spec.spatial_dims != spatial_dims:
        raise ValueError(f"{weights}: {lm.spec.name} is a {lm.spec.spatial_dims}D model; {pipeline} needs a "
                         f"{spatial_dims}D one")
    cfg.update(weights=weights, weights_sha256=lm.weights_sha256, model=lm.describe(), model_overrides=overrides)
    return lm


def _bundled(demo: Callable[[], str | Path]) -> Path | None:
    try:
        return Path(demo()).resolve()
    except (ValueError, FileNotFoundError):  # no bundled file for these options: given weights only
        return None


def model_of(cfg: dict):
    """The run's model in this process (loaded on first use; workers load their own copy).

    Raises ``RuntimeError`` when the weights file no longer has the bytes the run started with:
    outputs of one batch never mix two models.
    """
    from imagingflows.models import cached_model

    lm = cached_model(cfg["weights"], cfg.get("arch"), trust=bool(cfg.get("trust_checkpoint")),
                      device=cfg.get("device") or "cpu", **(cfg.get("model_overrides") or {}))
    if cfg.get("weights_sha256") and lm.weights_sha256 != cfg["weights_sha256"]:
        raise RuntimeError(f"weights file {cfg['weights']} changed during the run; rerun to use the new weights")
    return lm
