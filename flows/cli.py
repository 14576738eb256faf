"""``run-flow``: one CLI for every registered pipeline and verb, generated from their declared options.

    run-flow segment --input scans/ --output out/          # run a batch
    run-flow restore --task denoise --input photos/ --output clean/
    run-flow restore --task sr --scale 2 --input small/ --output big/ --weights HAT_SRx2.pth
    run-flow train segment --data cases/ --output runs/x   # fine-tune / train
    run-flow evaluate segment --input cases/ --output ev/  # run, then score against references
    run-flow evaluate restore --predictions clean/ --reference gt/ --output ev/
    run-flow serve segment --cron "0 2 * * *" --input scans/ --output out/
    run-flow models                                        # registered architectures
    run-flow status out/ [--json] [--slowest N]            # what run.json says: counts, failures, timings
    run-flow report out/                                   # render report.html/.md again from run.json

``run-flow <pipeline>``, ``train <pipeline>``, ``evaluate <pipeline>`` and ``serve <pipeline>``
exist for every registered pipeline (plug-ins included); their options are the pipeline's
declarations (``pipelines/options.py``), so ``--help`` lists each with its unit and default.

Exit codes: 0 all items done; 1 some items failed (the rest done); 2 nothing could run (usage or
set-up error, one line); 130 / 143 stopped by SIGINT / SIGTERM (run.json keeps the finished items).
``status`` exits as the run it reads (0 finished with every item done, 1 otherwise, 2 no readable
run.json); ``report`` 0 when written, 2 when it cannot be.
Quiet and private by default: Prefect analytics and telemetry off unless the user set
those variables; no network calls.
"""

from __future__ import annotations

# Quiet, private defaults are set by imagingflows.flows (imported first, before prefect).
import contextlib
import logging
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape

from imagingflows.flows.commands import command, fields_of, given, optional
from imagingflows.pipelines.options import BatchOptions, EvaluateOptions, Options, ServeOptions, option

err = Console(stderr=True, soft_wrap=True)  # one message, one line (cron mail, grep)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        import torch

        print(f"imagingflows {metadata.version('imagingflows')} (torch {torch.__version__}, "
              f"prefect {metadata.version('prefect')}, monai {metadata.version('monai')})")
        raise typer.Exit(0)


def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Imaging pipelines as Prefect flows."""


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if logging.getLogger("imagingflows").handlers:  # a --log-file is open: the reason goes there too
        logging.getLogger("imagingflows").error("error: %s", message)
    raise typer.Exit(code)


#: exit codes of a run stopped by a signal (the shell's 128 + signal number)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


class LogFileOption(Options):
    """``--log-file`` of the batch commands (besides run.log in the output folder)."""

    log_file: Path | None = option(None, "Also append the run.log lines to this file, with a start and an "
                                         "exit line per run (one log for many runs, e.g. cron).", output=False)


@contextlib.contextmanager
def _log_file(path: Path | None, what: str):
    """``--log-file``: what run.log gets (the ``imagingflows`` logger, flows/run.py's ``file_log``)
    is also appended to ``path``, between ``<what>: started`` and ``<what>: exit N``."""
    if path is None:
        yield
        return
    from imagingflows.flows.run import file_log, log

    try:
        handler = file_log(path)
    except OSError as e:
        _fail(f"--log-file {path} cannot be opened for appending: {e.strerror or e}")
    code: Any = 0
    log.info("%s: started", what)
    try:
        yield
    except typer.Exit as e:
        code = e.exit_code
        raise
    except (SystemExit, KeyboardInterrupt) as e:
        code = e.code if isinstance(e, SystemExit) else SIGNAL_EXIT["SIGINT"]
        raise
    except Exception as e:  # noqa: BLE001 - logged, then raised as before
        code = f"1 (crashed: {type(e).__name__}: {e})"
        raise
    finally:
        log.log(logging.INFO if code == 0 else logging.WARNING if code == 1 else logging.ERROR,
                "%s: exit %s", what, code)
        log.removeHandler(handler)
        handler.close()


def _run_batch(pipeline: str, input_dir: Path, output_dir: Path, options: dict, *, resume: bool,
               runner: str, workers: int, quiet: bool, item_timeout: float | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from imagingflows.flows.run import execute, plan_run
    from imagingflows.flows.runners import UsageError

    try:
        plan = plan_run(pipeline, input_dir, output_dir, options)
        _quiet_prefect_console()
        total = len(plan.items) + len(plan.errors)
        if quiet:
            result = execute(plan, resume=resume, runner=runner, workers=workers, item_timeout=item_timeout)
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err, transient=False) as bar:
                job = bar.add_task(f"{pipeline}", total=total, completed=len(plan.errors))

                def tick(item_id: str, status: str) -> None:
                    bar.update(job, advance=1, description=f"{pipeline}: {item_id} {status}")

                def inside(item_id: str, unit: str, done: int, of: int) -> None:
                    bar.update(job, description=f"{pipeline}: {item_id} {unit} {done}/{of}")

                result = execute(plan, resume=resume, runner=runner, workers=workers, progress=tick,
                                 item_progress=inside, item_timeout=item_timeout)
    except UsageError as e:
        _fail(str(e))
    counts = result["counts"]
    line = (f"{pipeline}: {counts.get('done', 0)} done, {counts.get('skipped', 0)} skipped, "
            f"{counts.get('failed', 0)} failed -> {output_dir}/report.html")
    if logging.getLogger("imagingflows").handlers:  # --log-file: the summary too
        logging.getLogger("imagingflows").info("%s", line)
    if not quiet or counts.get("failed") or result.get("interrupted"):
        err.print(line, highlight=False)
    for item_id, reason in result.get("errors", {}).items():  # also under --quiet: cron mails the reason
        first = (reason or "failed").strip().splitlines()[0]
        err.print(f"  [red]failed[/] {escape(item_id)}: {escape(first)}", highlight=False)
    if result.get("interrupted"):
        signame = result["interrupted"]
        err.print(f"stopped by {signame}: {len(result['not_finished'])} items not finished; run.json records "
                  f"the finished ones (rerun with --resume)", highlight=False)
        return SIGNAL_EXIT.get(signame, 1)
    return 1 if counts.get("failed") else 0


def _quiet_prefect_console() -> None:
    """Per-item failures are summarised by us (and kept in run.json, report, run.log); Prefect's
    console lines would repeat them, possibly with patient-derived paths. Its API logs stay."""
    import logging

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for h in logging.getLogger(name).handlers:
            if type(h).__name__ == "PrefectConsoleHandler" or (
                    isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)):
                h.setLevel(logging.CRITICAL)


# ----------------------------------------------------------------------------- the verbs

PATHS = ("input", "output")
#: the batch options a served deployment takes (resume is serve's own: on by default)
SERVE_RUN_LEVEL = ("runner", "workers", "item_timeout")


def _run(pipeline: str, ctx: typer.Context, **values: Any) -> None:
    batch = {k: values.pop(k) for k in BatchOptions.model_fields}
    log_file = values.pop("log_file")
    # only what was typed: the declarations' defaults apply in one place (a missing required
    # option is then "--task is required", one line)
    with _log_file(log_file, f"run-flow {pipeline} -> {batch['output']}"):
        code = _run_batch(pipeline, batch["input"], batch["output"], given(ctx, values), resume=batch["resume"],
                          runner=batch["runner"], workers=batch["workers"], quiet=batch["quiet"],
                          item_timeout=batch["item_timeout"])
        raise typer.Exit(code)


def _train(pipeline: str, ctx: typer.Context, **values: Any) -> None:
    from imagingflows.flows.runners import UsageError
    from imagingflows.flows.train import headline, train_pipeline

    _quiet_prefect_console()  # a set-up error is one line below, not Prefect's task traceback
    try:
        summary = train_pipeline(pipeline, **given(ctx, values))  # the declarations' defaults apply
    except UsageError as e:
        _fail(str(e))
    if not values.get("quiet"):
        err.print(f"train {pipeline}: {headline(summary)}", highlight=False)


def _evaluate(pipeline: str, ctx: typer.Context, **values: Any) -> None:
    from imagingflows.pipelines.base import get_pipeline

    pipe = get_pipeline(pipeline)
    ev = {k: values.pop(k) for k in EvaluateOptions.model_fields}
    with _log_file(values.pop("log_file"), f"run-flow evaluate {pipeline} -> {ev['output']}"):
        _evaluate_body(pipe, pipeline, ctx, ev, values)


def _evaluate_body(pipe, pipeline: str, ctx: typer.Context, ev: dict, values: dict) -> None:
    from imagingflows.flows.evaluate import evaluate_pipeline
    from imagingflows.flows.runners import UsageError

    if ev["predictions"] is None and ev["input"] is None:
        _fail("give --input (run the pipeline, then score) or --predictions (score existing outputs)")
    reference = ev["reference"] or (ev["input"] if pipe.references_in_input else None)
    if reference is None:
        _fail("give --reference: the folder holding the references (ground truth)")
    typed = given(ctx, values)  # scoring takes from the options only what was typed (not the defaults)
    code = 0
    try:
        if ev["predictions"] is None:
            typed = {**pipe.evaluate_run_options, **typed}  # the evaluation run's own options, under the typed
            code = _run_batch(pipeline, ev["input"], ev["output"], typed, resume=ev["resume"], runner="thread",
                              workers=1, quiet=ev["quiet"])
            if code not in (0, 1):  # stopped by a signal: nothing to score yet, exit as the run did
                raise typer.Exit(code)
        result = evaluate_pipeline(pipeline, ev["predictions"] or ev["output"], reference, ev["output"], typed)
    except UsageError as e:
        _fail(str(e))
    if not ev["quiet"]:
        if result.get("text"):  # the pipeline's own summary table (evaluate_summary's "text"), to stdout
            typer.echo(result["text"].rstrip("\n"))
        else:
            mean = result["metrics"].get("mean", {})
            err.print("mean: " + ", ".join(f"{k} {v:.4g}" for k, v in mean.items()), highlight=False)
        if result["metrics"].get("conventions"):
            err.print(result["metrics"]["conventions"], highlight=False)
    raise typer.Exit(1 if result["failed"] or code == 1 else 0)  # an item that failed to run is a failure


def _serve(pipeline: str, ctx: typer.Context, **values: Any) -> None:
    from imagingflows.flows.runners import UsageError
    from imagingflows.flows.serve import serve_pipeline

    schedule = {k: values.pop(k) for k in ServeOptions.model_fields}
    batch = {k: values.pop(k) for k in ("input", "output", *SERVE_RUN_LEVEL)}
    try:  # serve_pipeline checks the options, the cron and the server before registering anything
        serve_pipeline(pipeline, str(batch["input"]), str(batch["output"]), cron=schedule["cron"],
                       name=schedule["name"], options=given(ctx, values), runner=batch["runner"],
                       workers=batch["workers"], resume=schedule["resume"], item_timeout=batch["item_timeout"],
                       say=lambda line: err.print(line, highlight=False))
    except UsageError as e:
        _fail(str(e))


def export(
    weights: Path = typer.Option(..., help="A checkpoint written by `run-flow train` (best.pt / last.pt)."),
    output: Path = typer.Option(..., "--output", "-o", help="The file to write (written atomically)."),
    half: bool = typer.Option(True, help="Store weights as float16 (half the size; loaded as float32)."),
) -> None:
    """Export trained weights without optimizer state (e.g. to ship as demo weights)."""
    from imagingflows.models.checkpoints import CheckpointError, export_checkpoint

    try:
        path = export_checkpoint(weights, output, half=half)
    except CheckpointError as e:
        _fail(str(e))
    err.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)


def models() -> None:
    """List registered architectures."""
    from imagingflows.models.registry import REGISTRY

    for name in REGISTRY.names():
        err.print(f"{name}: {REGISTRY.get(name).description}", highlight=False)


RUN_DIR = typer.Argument(..., metavar="OUT", help="A run folder (the --output of a run; it holds run.json).",
                         show_default=False)


def status(
    run_dir: Path = RUN_DIR,
    slowest: int = typer.Option(5, "--slowest", min=0, metavar="N", help="List the N slowest items."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (for scripts)."),
) -> None:
    """Summarise a run folder from its run.json: counts, failures with reasons, timings, slowest items.

    Exit 0: it finished, every item done; 1: items failed, or it did not finish; 2: no readable run.json."""
    import json

    from imagingflows.flows.runners import UsageError
    from imagingflows.flows.status import render_status, status_exit_code, summarise

    try:
        summary = summarise(run_dir, slowest=slowest)
    except UsageError as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2) if as_json else render_status(summary))
    raise typer.Exit(status_exit_code(summary))


def report(run_dir: Path = RUN_DIR) -> None:
    """Render report.html and report.md of a run folder again from its run.json (finished or stopped).

    Item outputs are not touched; the two reports are replaced atomically. Exit 2 when it cannot."""
    from imagingflows.flows.runners import UsageError
    from imagingflows.flows.status import rerender_report

    try:
        paths = rerender_report(run_dir)
    except UsageError as e:
        _fail(str(e))
    err.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)


# ----------------------------------------------------------------------------- the app

class _PipelineCommands(TyperGroup):
    """A group whose commands are pipelines: a mistyped name is one line naming the close match
    and the available pipelines (exit 2), not a usage box."""

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            from imagingflows.pipelines.base import get_pipeline

            try:
                get_pipeline(name)
            except ValueError as e:
                _fail(str(e))
            _fail(f"the {name} pipeline has no `{ctx.info_name}` command")
        return super().resolve_command(ctx, args)


def build_app() -> typer.Typer:
    """The ``run-flow`` app with one command per registered pipeline and verb."""
    from imagingflows.pipelines.base import get_pipeline, pipeline_names

    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="Imaging pipelines as Prefect flows.", cls=_PipelineCommands)
    app.callback()(_root)
    verbs = {verb: typer.Typer(no_args_is_help=True, help=text, cls=_PipelineCommands) for verb, text in (
        ("train", "Train or fine-tune a pipeline's model on your own data (resumes from the run folder)."),
        ("evaluate", "Score a pipeline's outputs against references (runs it first with --input)."),
        ("serve", "Serve a pipeline on a schedule (each run resumes: finished items are skipped)."),
    )}
    batch = BatchOptions.model_fields
    paths = {k: batch[k] for k in PATHS}
    run_level = {k: f for k, f in batch.items() if k not in PATHS}
    for name in pipeline_names():
        pipe = get_pipeline(name)
        options = optional(fields_of(pipe.run_options))  # pydantic says what is missing: one line
        app.command(name, help=f"{pipe.description}.")(
            command(partial(_run, name), pipe.description, paths, options, run_level, LogFileOption.model_fields))
        if pipe.train is not None and pipe.train_options is not None:
            verbs["train"].command(name, help=f"Train the {name} model: {pipe.description}.")(
                command(partial(_train, name), name, optional(fields_of(pipe.train_options))))
        if pipe.evaluate is not None:
            scoring = EvaluateOptions.model_fields
            verbs["evaluate"].command(name, help=f"Score {name} outputs against references.")(
                command(partial(_evaluate, name), name, scoring, optional(
                    fields_of(pipe.run_options, leave_out=tuple(scoring)), note="Required to run the pipeline."),
                    LogFileOption.model_fields))
        verbs["serve"].command(name, help=f"Serve {name} on a schedule.")(
            command(partial(_serve, name), name, paths, ServeOptions.model_fields, options,
                    {k: run_level[k] for k in SERVE_RUN_LEVEL}))
    for verb, sub in verbs.items():
        app.add_typer(sub, name=verb)
    app.command()(export)
    app.command()(models)
    app.command()(status)
    app.command()(report)
    return app


def __getattr__(name: str):
    if name == "app":  # built on use: the registry (plug-ins included) is read then
        return build_app()
    raise AttributeError(name)


def _terminated(signum, frame) -> None:  # noqa: ARG001
    raise SystemExit(SIGNAL_EXIT["SIGTERM"])  # before/after a batch: exit cleanly (atexit runs)


def main() -> None:
    import atexit
    import signal

    from imagingflows.flows.stop import end_child_processes

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    # Registered before Prefect registers its ephemeral server's stop, so it runs after it (LIFO):
    # whatever is still running then (server, workers) is ended, never left behind.
    atexit.register(end_child_processes)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app = build_app()
    except ValueError as e:  # a pipeline plug-in that cannot load, or takes a taken name
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)
    try:
        app(prog_name="run-flow")
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        sys.exit(SIGNAL_EXIT["SIGINT"])


if __name__ == "__main__":
    sys.exit(main())
