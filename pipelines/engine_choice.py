"""Resolve a run's ``--engine`` once per batch and record it (every pipeline that runs a network).

What ``prepare`` stores in the config:

- ``engine_used``: :meth:`~imagingflows.models.engines.EngineChoice.as_dict` (asked for, used, why, the
  measurements against eager float32), written to ``run.json``;
- ``engine_outputs``: None when the engine used is eager or measured to agree with it within the
  model's rule, else its name. Pipelines list it among their derived output keys, so it enters the
  config hash only when an engine may change outputs beyond the rule (a resumed batch is redone then).

Why ``engine`` itself is not an output field: an engine changes outputs by float rounding only, like
the thread count, and an engine that keeps the model's agreement rule must not redo a resumed batch.
"""

from __future__ import annotations

from typing import Any

#: the help text of every ``--engine`` option
ENGINE_HELP = ("How the network runs: eager (PyTorch as is), channels-last (NHWC memory format), compile "
               "(torch.compile, inductor; needs a C++ compiler, else eager with the reason in run.json), openvino "
               "(OpenVINO's CPU runtime; the imagingflows[openvino] extra, else eager with the reason) or auto "
               "(the fastest engine measured to agree with eager fp32 within the model's rule, e.g. 50 dB PSNR; "
               "measured once per model, device and torch version and cached in ~/.cache/imagingflows/engines "
               "or $IMAGINGFLOWS_CACHE).")

#: The default is eager: auto's first measurement compiles the model (tens of seconds on 2 cores), which a
#: batch of a few items (and the test suite) would pay every time the weights change.
DEFAULT_ENGINE = "eager"


def choose_engine(cfg: dict, target: Any, *, key: str = "engine") -> None:
    """Resolve ``cfg[key]`` for ``target`` (:class:`~imagingflows.models.engines.EngineTarget`: the network as
    the pipeline will call it) at ``cfg["precision"]`` and record ``engine_used`` / ``engine_outputs`` in ``cfg``."""
    from imagingflows.models.engines import choose

    choice = choose(target.net, target.spec, target.config, cfg.get(key) or DEFAULT_ENGINE,
                    precision=cfg.get("precision") or "fp32", device=target.device,
                    weights_sha256=target.weights_sha256, inputs=target.inputs, method=target.method)
    cfg["engine_used"] = choice.as_dict()
    cfg["engine_outputs"] = choice.used if choice.changes_outputs else None


def engine_of(cfg: dict) -> str:
    """The engine ``prepare`` chose (eager when none was)."""
    return (cfg.get("engine_used") or {}).get("used") or "eager"
