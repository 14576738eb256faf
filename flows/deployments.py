"""One Prefect flow per pipeline, for deployments on a work pool (``prefect deploy``, prefect.yaml).

Entrypoints are ``imagingflows.flows.deployments:<pipeline>`` (``restore``, ``segment``, ...); a
plug-in pipeline has one too (this module's ``__getattr__`` builds it on first use). Each flow is
named ``imagingflows-<pipeline>`` and takes

- ``input_dir``, ``output_dir``: folders as the worker sees them (relative to its working folder);
- ``options``: the pipeline's run options (``run-flow <pipeline> --help``), typed, so the
  deployment's form in the UI shows each with its type, default, bounds and help;
- ``resume`` (default true: a scheduled run skips the items already done), ``runner``, ``workers``,
  ``item_timeout`` (seconds an item may run; default none).

The run itself is :func:`imagingflows.flows.serve.run_batch`, the same as ``run-flow serve``'s.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from prefect import Flow, flow

from imagingflows.flows.serve import run_batch


@functools.cache
def pipeline_flow(name: str) -> Flow:
    """The deployable flow of one registered pipeline (an unknown name is a ValueError naming the known)."""
    from imagingflows.pipelines.base import get_pipeline

    pipe = get_pipeline(name)
    run_options = pipe.run_options

    def run(input_dir: str, output_dir: str, options: Any = None, resume: bool = True, runner: str = "thread",
            workers: int = 1, item_timeout: float | None = None) -> Any:
        given = options.model_dump(mode="json", exclude_unset=True) if options is not None else {}
        return run_batch(name, input_dir, output_dir, given, resume=resume, runner=runner, workers=workers,
                         item_timeout=item_timeout)

    try:  # options the pipeline can run with as they are default to those; otherwise they must be given
        default: Any = run_options()
    except ValueError:
        default = inspect.Parameter.empty
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("input_dir", kind, annotation=str),
              inspect.Parameter("output_dir", kind, annotation=str),
              inspect.Parameter("options", kind, annotation=run_options, default=default),
              inspect.Parameter("resume", kind, annotation=bool, default=True),
              inspect.Parameter("runner", kind, annotation=str, default="thread"),
              inspect.Parameter("workers", kind, annotation=int, default=1),
              inspect.Parameter("item_timeout", kind, annotation=float | None, default=None)]
    run.__signature__ = inspect.Signature(params)  # what Prefect reads for the parameter schema
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__name__ = run.__qualname__ = name
    run.__doc__ = (f"{pipe.description}: every item under input_dir into output_dir (run.json, report.html, "
                   "run.log there). Resumes by default: items already done are skipped.")
    return flow(run, name=f"imagingflows-{name}", description=run.__doc__)


def __getattr__(name: str) -> Flow:
    if name.startswith("__"):
        raise AttributeError(name)
    from imagingflows.pipelines.base import pipeline_names

    if name in pipeline_names():
        return pipeline_flow(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (pipelines: {', '.join(pipeline_names())})")
