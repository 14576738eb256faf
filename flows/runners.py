"""Pick Prefect's task runner from ``--runner thread|process|dask[=tcp://host:8786]``."""

from __future__ import annotations


class UsageError(ValueError):
    """Nothing can run (bad options, empty input, unreadable weights...): exit code 2."""


def make_task_runner(runner: str = "thread", workers: int = 1):
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    kind, _, address = runner.partition("=")
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise UsageError("--runner dask needs prefect-dask: pip install 'imagingflows[dask]'") from e
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    raise UsageError(f"unknown runner {runner!r}; expected thread, process or dask[=tcp://host:port]")
