"""``run-flow serve``: the run flow as a scheduled deployment on a real Prefect server.

Each scheduled run plans the batch afresh and resumes, so finished cases are skipped
and new ones processed. Ephemeral mode has no scheduler: this needs
``prefect server start`` and ``PREFECT_API_URL``.
"""

from __future__ import annotations

from prefect import flow

from imagingflows.flows.run import execute, plan_run


@flow(name="imagingflows-scheduled")
def scheduled_run(pipeline: str, input_dir: str, output_dir: str, options: dict) -> dict:
    plan = plan_run(pipeline, input_dir, output_dir, options)
    return execute(plan, resume=True)


def serve_pipeline(pipeline: str, input_dir: str, output_dir: str, *, cron: str, name: str, options: dict) -> None:
    scheduled_run.serve(
        name=f"{pipeline}-{name}", cron=cron, pause_on_shutdown=False,
        parameters={"pipeline": pipeline, "input_dir": input_dir, "output_dir": output_dir, "options": options},
    )
