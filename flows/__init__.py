"""Prefect flows (run, train, evaluate, serve) and the ``run-flow`` CLI.

Importing this package, which every path to Prefect in imagingflows goes through (the CLI and
the Python API alike), sets quiet and private defaults before Prefect is imported: analytics and
telemetry off, warnings-only logging. A variable the user has set is left as it is.
"""

import os

PRIVATE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    # the embedded server's 20 s default start-up wait fails on a loaded 2-core box (cron jobs)
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}

for _var, _value in PRIVATE_DEFAULTS.items():
    os.environ.setdefault(_var, _value)


def __getattr__(name: str):
    # The Python API, imported on first use so that `import imagingflows.flows` stays light:
    # run_pipeline, train, and one function per registered pipeline (`from imagingflows.flows import segment`).
    import importlib

    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(name)  # dunders and submodules: the import system goes on to load them
    api = importlib.import_module(f"{__name__}.api")

    if name in api.__all__:
        return getattr(api, name)
    from imagingflows.pipelines.base import pipeline_names

    if name in pipeline_names():
        return api.pipeline_function(name)
    raise AttributeError(f"module 'imagingflows.flows' has no attribute {name!r}")
