"""``run-flow serve``: the run flow as a scheduled deployment on a real Prefect server.

Each scheduled run plans the batch afresh and resumes, so finished items are skipped
and new ones processed. Ephemeral mode has no scheduler: this needs
``prefect server start`` and ``PREFECT_API_URL``.

Before serving, the server is checked (reachable, a valid cron); after the deployment
is registered, a background check waits for the server's scheduler to create runs for
it and says so, or says clearly that none appeared (a scheduler that fails silently,
as Prefect 3.8.8's did with SQLAlchemy 2.1, otherwise looks exactly like a quiet night).

:func:`run_batch` is one run as the server sees it, shared with the work-pool deployments
(``flows/deployments.py``, ``prefect.yaml``): the item lines in the run's logs, a final state
whose message gives the counts (Failed when an item failed or nothing could run), the item
table, report and progress artifacts from ``flows/run.py`` on its ``imagingflows-run`` child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator

from prefect import flow

from imagingflows.flows.run import execute, plan_run
from imagingflows.flows.runners import UsageError

#: how long the scheduler may take to create the first runs (its loop is 60 s by default)
SCHEDULE_CHECK_SECONDS = 120.0


@flow(name="imagingflows-scheduled")
def scheduled_run(pipeline: str, input_dir: str, output_dir: str, options: dict[str, Any],
                  runner: str = "thread", workers: int = 1, resume: bool = True,
                  item_timeout: float | None = None):
    """One scheduled batch: ``options`` are the pipeline's run options (the deployment's form
    shows them typed, see :func:`parameter_schema`); resumes unless ``resume`` is false;
    ``item_timeout``: seconds an item may run (see :func:`~imagingflows.flows.run.execute`)."""
    return run_batch(pipeline, input_dir, output_dir, options, resume=resume, runner=runner, workers=workers,
                     item_timeout=item_timeout)


def run_batch(pipeline: str, input_dir: str, output_dir: str, options: dict, *, resume: bool = True,
              runner: str = "thread", workers: int = 1, item_timeout: float | None = None):
    """Plan and run one batch inside a flow run (served or on a work pool); returns its final state.

    The ``imagingflows`` log lines (each item done, failed or skipped as up to date) go to the
    server as the run's logs, and a summary line ends them. The state is Completed with the
    counts as its message ("3 done, 0 failed, 2 skipped (up to date)"; "all 5 items up to date:
    nothing to do" when resume finds everything done), or Failed when an item failed (the rest
    are done, as the CLI's exit 1) or nothing could run (input folder gone, bad options, the
    output folder in use by a run still going: the reason is the message); a failed run is what Prefect's automations and notifications see.
    A Completed state's data is :func:`~imagingflows.flows.run.execute`'s result.
    """
    from prefect.states import Completed, Failed

    with logs_to_server() as logger:
        try:  # a set-up error, or the output folder still in use by the previous run
            plan = plan_run(pipeline, input_dir, output_dir, options)
            result = execute(plan, resume=resume, runner=runner, workers=workers, item_timeout=item_timeout)
        except UsageError as e:
            logger.error("%s: nothing could run: %s", pipeline, e)
            return Failed(message=f"nothing could run: {e}")
        message = summary_line(result)
        logger.log(logging.ERROR if result["counts"]["failed"] else logging.INFO, "%s: %s", pipeline, message)
    if result["counts"]["failed"] or result.get("interrupted"):
        return Failed(message=message)  # a failed state's data must be an exception: the counts are in run.json
    return Completed(message=message, data=result)


def summary_line(result: dict) -> str:
    """One line for a finished batch: its counts, the first failures, or that nothing was left to do."""
    counts = result["counts"]
    total = sum(counts.values())
    if total and counts["skipped"] == total:
        return f"all {total} items up to date: nothing to do (skipped)"
    line = f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped (up to date)"
    errors = result.get("errors") or {}
    if errors:
        first = "; ".join(_named(k, v) for k, v in list(errors.items())[:3])
        line += f"; {first}" + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    if result.get("interrupted"):
        line += f"; stopped by {result['interrupted']}, {len(result.get('not_finished') or [])} not finished"
    return line


def _named(item_id: str, error: str | None) -> str:
    """An item's failure in one line, naming the item once (most reasons already name its file)."""
    first = (error or "failed").splitlines()[0]
    return first if item_id in first else f"{item_id}: {first}"


@contextlib.contextmanager
def logs_to_server() -> Iterator[logging.Logger]:
    """The ``imagingflows`` logger, at INFO, also sending to the server as the current run's logs.

    Prefect ships only its own run loggers (``PREFECT_LOGGING_EXTRA_LOGGERS`` adds others); this
    makes the item lines of a served or deployed run visible in the UI's logs tab without it.
    """
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("imagingflows")
    added = None
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        added = APILogHandler()
        logger.addHandler(added)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield logger
    finally:
        logger.setLevel(level)
        if added is not None:
            logger.removeHandler(added)


def parameter_schema(pipeline: str, base: dict) -> dict:
    """The deployment's parameter schema with ``options`` typed by the pipeline's run options.

    ``base``: Prefect's schema of :func:`scheduled_run` (``options`` is a plain object there); the
    UI then shows a form with each option's type, default, bounds and help.
    """
    from imagingflows.pipelines.base import get_pipeline

    typed = get_pipeline(pipeline).run_options.model_json_schema()
    schema = json.loads(json.dumps(base))
    props = schema["properties"]
    props["pipeline"].update(enum=[pipeline], readOnly=True)
    position = props["options"].get("position")
    props["options"] = {**typed, "title": "options", "position": position,
                        "description": f"Options of the {pipeline} pipeline (run-flow {pipeline} --help)."}
    schema.setdefault("definitions", {}).update(typed.pop("$defs", {}))
    return schema


def check_cron(cron: str) -> None:
    """Raise :class:`UsageError` unless ``cron`` is a schedule Prefect accepts."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError is many lines; one is enough
        raise UsageError(f"invalid --cron {cron!r}: expected five fields such as '0 2 * * *' "
                         "(minute hour day-of-month month day-of-week)") from e


def check_server(api_url: str, timeout: float = 5.0) -> None:
    """Raise :class:`UsageError` unless a Prefect server answers at ``api_url``."""
    import httpx

    try:
        response = httpx.get(api_url.rstrip("/") + "/health", timeout=timeout)
    except httpx.HTTPError as e:
        raise UsageError(f"no Prefect server answers at PREFECT_API_URL={api_url} ({type(e).__name__}); "
                         "start one with `prefect server start`") from e
    if response.status_code != 200:
        raise UsageError(f"PREFECT_API_URL={api_url} answered {response.status_code} to /health: "
                         "is it a Prefect server's API (ending in /api)?")


def scheduled_runs(deployment_id) -> list:
    """Flow runs in state Scheduled that the server holds for a deployment."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        )


def watch_schedule(deployment_id, name: str, say: Callable[[str], None], *,
                   within: float = SCHEDULE_CHECK_SECONDS, every: float = 2.0) -> bool:
    """Wait until the server's scheduler has created runs for the deployment; report either way."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            runs = scheduled_runs(deployment_id)
        except Exception:  # noqa: BLE001 - a busy server: try again until the deadline
            runs = []
        if runs:
            first = min(r.expected_start_time for r in runs if r.expected_start_time)
            say(f"schedule active: the server has {len(runs)} scheduled run(s) for {name}, "
                f"the next at {first.isoformat(timespec='seconds')}")
            return True
        time.sleep(every)
    say(f"warning: after {within:.0f} s the server has created no scheduled runs for {name}: its scheduler "
        "is not working (check the server's log for errors, and `prefect server services ls`); "
        "nothing will run on schedule")
    return False


def serve_pipeline(pipeline: str, input_dir: str, output_dir: str, *, cron: str, name: str, options: dict,
                   runner: str = "thread", workers: int = 1, resume: bool = True, item_timeout: float | None = None,
                   say: Callable[[str], None] = print) -> None:
    """Register ``imagingflows-scheduled/<pipeline>-<name>`` with the cron schedule and serve it (blocks).

    ``resume`` and ``item_timeout`` become the deployment's defaults (a manual run may override them).
    Raises :class:`UsageError` (before registering anything) for invalid options or cron, no
    ``PREFECT_API_URL``, or no server answering there.
    """
    from prefect.runner import Runner

    from imagingflows.flows.runners import make_task_runner
    from imagingflows.pipelines.base import get_pipeline
    from imagingflows.pipelines.options import OptionError

    try:
        options = get_pipeline(pipeline).run_config(options)  # checked now, not at 2 a.m.
    except (OptionError, ValueError) as e:
        raise UsageError(f"{pipeline}: {e}") from e
    make_task_runner(runner, workers, item_timeout)  # a bad --runner or --item-timeout is refused now too
    check_cron(cron)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise UsageError("schedules need a Prefect server: run `prefect server start` and set PREFECT_API_URL "
                         "(the embedded ephemeral mode has no scheduler)")
    check_server(api_url)
    from prefect.utilities.callables import ParameterSchema

    deployment = scheduled_run.to_deployment(
        name=f"{pipeline}-{name}", cron=cron,
        parameters={"pipeline": pipeline, "input_dir": input_dir, "output_dir": output_dir, "options": options,
                    "runner": runner, "workers": workers, "resume": resume, "item_timeout": item_timeout},
    )
    # Prefect derives the schema from the signature, where options is a dict; no public setter
    deployment._parameter_openapi_schema = ParameterSchema(
        **parameter_schema(pipeline, deployment._parameter_openapi_schema.model_dump()))
    served = Runner(name=f"imagingflows-{pipeline}-{name}", pause_on_shutdown=False)
    deployment_id = served.add_deployment(deployment)
    full_name = f"imagingflows-scheduled/{pipeline}-{name}"
    say(f"serving {full_name} on '{cron}'" + ("" if resume else ", every run redoing all items")
        + (f", items timing out after {item_timeout:g} s" if item_timeout else "") + " (Ctrl-C stops)")
    threading.Thread(target=watch_schedule, args=(deployment_id, full_name, say), daemon=True).start()
    try:
        asyncio.run(served.start())
    except KeyboardInterrupt:
        pass
