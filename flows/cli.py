"""``run-flow``: one CLI for every pipeline and verb.

    run-flow segment --input scans/ --output out/          # run a batch
    run-flow restore --task denoise --input photos/ --output clean/
    run-flow restore --task sr --scale 2 --input small/ --output big/ --weights HAT_SRx2.pth
    run-flow train segment --data cases/ --output runs/x   # fine-tune / train
    run-flow evaluate segment --input cases/ --reference refs/ --output ev/
    run-flow evaluate restore --task sr --scale 2 --input lr/ --reference gt/ --output ev/
    run-flow serve segment --cron "0 2 * * *" --input scans/ --output out/
    run-flow models                                        # registered architectures

Exit codes: 0 all items done; 1 some items failed (the rest done); 2 nothing could run.
Quiet and private by default: Prefect analytics and telemetry off unless the user set
those variables; no network calls.
"""

from __future__ import annotations

# Quiet, private defaults are set by imagingflows.flows (imported first, before prefect).
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Imaging pipelines as Prefect flows.")


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        import torch

        print(f"imagingflows {metadata.version('imagingflows')} (torch {torch.__version__}, "
              f"prefect {metadata.version('prefect')}, monai {metadata.version('monai')})")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Imaging pipelines as Prefect flows."""
err = Console(stderr=True, soft_wrap=True)  # one message, one line (cron mail, grep)

Roi = Optional[tuple[int, int, int]]
Size2 = Optional[tuple[int, int]]
Spacing = Optional[tuple[float, float, float]]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _segment_options(weights, arch, trust_checkpoint, patch_merging, roi, overlap, sw_batch_size, spacing,
                     axcodes, labels, device, anonymize, save_probabilities=False, precision="auto",
                     crop_foreground=True, skip_empty=True) -> dict:
    return {
        "precision": precision,
        "crop_foreground": crop_foreground,
        "skip_empty": skip_empty,
        "save_probabilities": save_probabilities,
        "weights": str(weights) if weights else None,
        "arch": arch,
        "trust_checkpoint": trust_checkpoint,
        "model_overrides": {"patch_merging": patch_merging} if patch_merging else {},
        "roi": list(roi) if roi else None,
        "overlap": overlap,
        "sw_batch_size": sw_batch_size,
        "spacing": list(spacing) if spacing else None,
        "axcodes": axcodes,
        "labels": labels,
        "device": device,
        "anonymize": anonymize,
    }


def _restore_options(task, scale, weights, trust_checkpoint, tile, overlap, nafnet_local, precision,
                     device, pool_passes=1, whole_max_pixels=None, white_level=None) -> dict:
    return {
        "white_level": white_level,
        "task": task,
        "scale": scale,
        "weights": str(weights) if weights else None,
        "trust_checkpoint": trust_checkpoint,
        "tile": tile,
        "overlap": overlap,
        "nafnet_local": list(nafnet_local) if nafnet_local else None,
        "pool_passes": pool_passes,
        "whole_max_pixels": whole_max_pixels,
        "precision": precision,
        "device": device,
    }


#: exit codes of a run stopped by a signal (the shell's 128 + signal number)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def _run_batch(pipeline: str, input_dir: Path, output_dir: Path, options: dict, *, resume: bool,
               runner: str, workers: int, quiet: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from imagingflows.flows.run import execute, plan_run
    from imagingflows.flows.runners import UsageError

    try:
        plan = plan_run(pipeline, input_dir, output_dir, options)
        _quiet_prefect_console()
        total = len(plan.items) + len(plan.errors)
        if quiet:
            result = execute(plan, resume=resume, runner=runner, workers=workers)
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err, transient=False) as bar:
                job = bar.add_task(f"{pipeline}", total=total, completed=len(plan.errors))

                def tick(item_id: str, status: str) -> None:
                    bar.update(job, advance=1, description=f"{pipeline}: {item_id} {status}")

                def inside(item_id: str, unit: str, done: int, of: int) -> None:
                    bar.update(job, description=f"{pipeline}: {item_id} {unit} {done}/{of}")

                result = execute(plan, resume=resume, runner=runner, workers=workers, progress=tick,
                                 item_progress=inside)
    except UsageError as e:
        _fail(str(e))
    counts = result["counts"]
    if not quiet or counts.get("failed") or result.get("interrupted"):
        err.print(f"{pipeline}: {counts.get('done', 0)} done, {counts.get('skipped', 0)} skipped, "
                  f"{counts.get('failed', 0)} failed -> {output_dir}/report.html", highlight=False)
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


@app.command()
def segment(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of cases (one folder or file group per case)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (one subfolder per case)."),
    weights: Optional[Path] = typer.Option(None, help="Checkpoint (BraTS21 model.pt, ours). Default: demo weights."),
    arch: Optional[str] = typer.Option(None, help="Architecture name if it cannot be detected."),
    trust_checkpoint: bool = typer.Option(False, help="Allow a full (unsafe) unpickle of a trusted legacy file."),
    patch_merging: Optional[str] = typer.Option(
        None, help="Swin UNETR merging: 'legacy' (MONAI<1.5, all published weights) or 'current' (MONAI>=1.5)."),
    roi: Roi = typer.Option(None, help="Sliding-window size (multiples of 32). Default: the model's."),
    overlap: float = typer.Option(0.5, help="Window overlap in [0, 1)."),
    sw_batch_size: int = typer.Option(1, help="Windows per forward pass."),
    spacing: Spacing = typer.Option(None, help="Resample to this spacing (mm) for the model. Default: the model's."),
    axcodes: Optional[str] = typer.Option(None, help="Model frame orientation, e.g. RAS. Default: the model's."),
    labels: str = typer.Option("2021", help="Output label convention: 2021 (1,2,4) or 2023 (1,2,3)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, help="Skip cases whose outputs and hashes are up to date."),
    runner: str = typer.Option("thread", help="thread, process or dask[=tcp://host:8786]."),
    workers: int = typer.Option(1, min=1, help="Parallel items; torch threads are split between them."),
    anonymize: bool = typer.Option(False, help="Replace case ids by pseudonyms in outputs, logs and reports."),
    anonymize_key: Optional[Path] = typer.Option(
        None, help="The secret that maps ids to pseudonyms (created if missing; keep it private, outside the "
                   "output folder). Default: ~/.config/imagingflows/anonymize.key ($XDG_CONFIG_HOME honoured)."),
    save_probabilities: bool = typer.Option(False, help="Also write <case>_probs.nii.gz (TC, WT, ET sigmoid)."),
    precision: str = typer.Option(
        "auto", help="auto (bf16 where the CPU/GPU has native bf16, else fp32), fp32, bf16 or fp16 (CUDA)."),
    crop_foreground: bool = typer.Option(True, help="Run windows only over the brain's bounding box."),
    skip_empty: bool = typer.Option(True, help="Skip windows whose input is all background."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (for cron)."),
) -> None:
    """Segment brain tumours (TC/WT/ET) in every case of a folder."""
    options = _segment_options(weights, arch, trust_checkpoint, patch_merging, roi, overlap, sw_batch_size,
                               spacing, axcodes, labels, device, anonymize, save_probabilities, precision,
                               crop_foreground, skip_empty)
    if anonymize_key is not None:
        options["anonymize_key"] = str(anonymize_key)
    raise typer.Exit(_run_batch("segment", input, output, options, resume=resume, runner=runner,
                                workers=workers, quiet=quiet))


@app.command()
def restore(
    task: str = typer.Option(..., help="denoise, deblur (NAFNet) or sr (HAT super-resolution)."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder of PNG/JPEG/TIFF images (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (mirrors the input tree)."),
    scale: Optional[int] = typer.Option(None, min=1, help="SR factor (default: the checkpoint's; 2 for demo weights)."),
    weights: Optional[Path] = typer.Option(
        None, help="Checkpoint: official NAFNet/HAT release files or ours. Default: demo weights for the task."),
    trust_checkpoint: bool = typer.Option(False, help="Allow a full (unsafe) unpickle of a trusted legacy file."),
    tile: int = typer.Option(512, min=1, help="Tile side in input pixels, context included."),
    overlap: int = typer.Option(32, min=0, help="Context pixels on each side of a tile's kept centre."),
    nafnet_local: Size2 = typer.Option(
        None, help="NAFNetLocal: the training patch size H W (official GoPro/REDS deblur files get 256 256 "
                   "by default); 0 0 for plain NAFNet (global pooling)."),
    pool_passes: int = typer.Option(
        1, min=0, help="NAFNet in tiles: passes that first measure whole-image channel means (each costs one "
                       "more forward per tile; 0: each tile pools over itself, as a plain tiled forward)."),
    whole_max_pixels: Optional[int] = typer.Option(
        None, min=0, help="NAFNet: run the whole image in one forward up to this many pixels (default: what "
                          "fits about 2 GiB for the model's width; 0: always tiles)."),
    white_level: Optional[int] = typer.Option(
        None, min=1, help="The largest value the data can take (e.g. 1023 for 10-bit data in 16-bit files). "
                          "Default: from the file (PNG sBIT, TIFF tags), else the container's maximum."),
    precision: str = typer.Option(
        "auto", help="auto (bf16 where the CPU/GPU has native bf16, else fp32), fp32, bf16 or fp16 (CUDA)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    collapse_check: bool = typer.Option(
        True, help="Fail an item whose output collapsed (blank, flat or far darker than its input)."),
    resume: bool = typer.Option(False, help="Skip images whose outputs and hashes are up to date."),
    runner: str = typer.Option("thread", help="thread, process or dask[=tcp://host:8786]."),
    workers: int = typer.Option(1, min=1, help="Parallel images; torch threads are split between them."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (for cron)."),
) -> None:
    """Restore images (denoise, deblur, super-resolve); same bit depth, alpha and ICC profile kept."""
    options = _restore_options(task, scale, weights, trust_checkpoint, tile, overlap, nafnet_local, precision,
                               device, pool_passes, whole_max_pixels, white_level)
    options["collapse_check"] = collapse_check
    raise typer.Exit(_run_batch("restore", input, output, options, resume=resume, runner=runner,
                                workers=workers, quiet=quiet))


@app.command()
def train(
    pipeline: str = typer.Argument(..., help="Pipeline to train (segment, restore)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="segment: cases with references (<case>_seg.nii.gz); restore: clean images."),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder: checkpoints, curves, run.json."),
    weights: Optional[Path] = typer.Option(None, help="Start from these weights (fine-tune)."),
    epochs: int = typer.Option(10, min=1),
    steps_per_epoch: int = typer.Option(0, help="Optimiser steps per epoch (0: segment one per case, restore 100)."),
    val_fraction: float = typer.Option(0.2, help="Share of cases/images held out for validation."),
    seed: int = typer.Option(0),
    lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(0, help="Crops per step (0: segment 2, restore 8)."),
    feature_size: int = typer.Option(12, help="segment: Swin UNETR width from scratch (multiple of 12)."),
    roi: Roi = typer.Option(None, help="segment: training crop size (multiples of 32)."),
    spacing: Spacing = typer.Option(None, help="segment: model spacing in mm (default 2 2 2 from scratch)."),
    labels: str = typer.Option("auto", help="segment: reference labels 2021, 2023 or auto (from values)."),
    tumour_share: float = typer.Option(0.5, min=0.0, max=1.0, help="segment: share of crops centred on tumour."),
    task: str = typer.Option("denoise", help="restore: denoise, deblur or sr."),
    scale: int = typer.Option(2, help="restore: SR scale."),
    sigma: str = typer.Option(
        "25", help="restore denoise: Gaussian noise sigma on the 0-255 scale, or a range A-B drawn per crop "
                   "(a blind denoiser, e.g. 0-50)."),
    photometric: bool = typer.Option(
        False, help="restore: random brightness, contrast and gamma per crop (robust to dark images)."),
    patch: int = typer.Option(64, help="restore: training crop side (output pixels)."),
    loss: str = typer.Option("psnr", help="restore: psnr, charbonnier or l1."),
    input: Optional[Path] = typer.Option(None, "--input", help="restore: degraded images (paired with --reference)."),
    reference: Optional[Path] = typer.Option(None, help="restore: clean images matching --input by name."),
    trust_checkpoint: bool = typer.Option(False),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train or fine-tune a pipeline's model on your own data (resumes from the run folder)."""
    from imagingflows.flows.runners import UsageError
    from imagingflows.flows.train import train_pipeline

    _quiet_prefect_console()  # a set-up error is one line below, not Prefect's task traceback
    from imagingflows.pipelines.base import get_pipeline

    try:
        get_pipeline(pipeline)
    except ValueError as e:
        _fail(str(e))

    config = {
        "weights": str(weights) if weights else None, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
        "val_fraction": val_fraction, "seed": seed, "lr": lr, "trust_checkpoint": trust_checkpoint,
        "device": device, "quiet": quiet,
    }
    if pipeline == "restore":
        if data is None and not (input and reference):
            _fail("train restore needs --data clean/ (pairs made on the fly) or --input degraded/ --reference clean/")
        config.update(task=task, scale=scale, sigma=sigma, photometric=photometric, patch=patch, loss=loss, batch_size=batch_size or 8,
                      steps_per_epoch=steps_per_epoch or 100,
                      input=str(input) if input else None, reference=str(reference) if reference else None)
    else:
        if data is None:
            _fail(f"train {pipeline} needs --data")
        config.update(feature_size=feature_size, roi=list(roi) if roi else None,
                      spacing=list(spacing) if spacing else None, labels=labels, tumour_share=tumour_share,
                      batch_size=batch_size or 2)
    try:
        summary = train_pipeline(pipeline, data if data is not None else reference, output, config)
    except UsageError as e:
        _fail(str(e))
    if not quiet:
        best = (f"best validation PSNR {summary.get('best_psnr')} dB (gain {summary.get('gain_db')} dB)"
                if "best_psnr" in summary else f"best validation Dice {summary.get('best_dice')}")
        err.print(f"train {pipeline}: {summary.get('epochs_done')} epochs, {best} -> "
                  f"{summary.get('best_checkpoint')}", highlight=False)


@app.command()
def evaluate(
    pipeline: str = typer.Argument(..., help="Pipeline to evaluate (segment, restore)."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Inputs to run the pipeline on."),
    reference: Optional[Path] = typer.Option(
        None, help="References (segment default: the seg files inside --input; restore: required)."),
    predictions: Optional[Path] = typer.Option(None, help="Score these existing outputs instead of running."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for outputs, metrics.json and the report."),
    weights: Optional[Path] = typer.Option(None),
    trust_checkpoint: bool = typer.Option(False),
    patch_merging: Optional[str] = typer.Option(None, help="segment only."),
    roi: Roi = typer.Option(None, help="segment only."),
    overlap: Optional[float] = typer.Option(
        None, help="segment: window overlap in [0, 1) (default 0.5); restore: tile context in pixels (default 32)."),
    task: Optional[str] = typer.Option(
        None, help="restore: denoise, deblur or sr (with --predictions, default: the run.json of that folder)."),
    scale: Optional[int] = typer.Option(None, min=1, help="restore --task sr: the factor (border crop = scale)."),
    tile: int = typer.Option(512, min=1, help="restore: tile side in input pixels."),
    nafnet_local: Size2 = typer.Option(None, help="restore: NAFNetLocal training patch size H W."),
    pool_passes: int = typer.Option(1, min=0, help="restore: NAFNet in tiles, passes measuring whole-image means."),
    precision: str = typer.Option("auto", help="restore: auto, fp32, bf16 or fp16 (CUDA)."),
    device: str = typer.Option("auto"),
    resume: bool = typer.Option(False),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a pipeline against references (Dice/HD95 per region for segment, PSNR/SSIM for restore)."""
    from imagingflows.flows.evaluate import evaluate_pipeline
    from imagingflows.flows.runners import UsageError
    from imagingflows.pipelines.base import get_pipeline

    try:
        get_pipeline(pipeline)
    except ValueError as e:
        _fail(str(e))
    if predictions is None and input is None:
        _fail("give --input (run the pipeline, then score) or --predictions (score existing outputs)")
    if pipeline == "restore":
        if reference is None:
            _fail("give --reference: the folder holding the clean (ground-truth) images")
        options = _restore_options(task, scale, weights, trust_checkpoint, tile, 32 if overlap is None else overlap,
                                   nafnet_local, precision, device, pool_passes)
        if overlap is not None and overlap != int(overlap):
            _fail(f"--overlap for restore is a number of pixels, got {overlap}")
        options["overlap"] = int(options["overlap"])
    else:
        if predictions is not None and reference is None and input is None:
            _fail("give --reference: the folder holding the reference label maps")
        options = _segment_options(weights, None, trust_checkpoint, patch_merging, roi,
                                   0.5 if overlap is None else overlap, 1, None, None, "2021", device, False)
    code = 0
    try:
        if predictions is None:
            code = _run_batch(pipeline, input, output, options, resume=resume, runner="thread", workers=1,
                              quiet=quiet)
        result = evaluate_pipeline(pipeline, predictions or output, reference or input, output, options)
    except UsageError as e:
        _fail(str(e))
    mean = result["metrics"].get("mean", {})
    if not quiet:
        err.print("mean: " + ", ".join(f"{k} {v:.4g}" for k, v in mean.items()), highlight=False)
        conventions = result["metrics"].get("conventions")
        if pipeline == "restore" and conventions:
            err.print(conventions, highlight=False)
    raise typer.Exit(1 if result["failed"] or code == 1 else 0)  # a case that failed to run is a failure


@app.command()
def serve(
    pipeline: str = typer.Argument(...),
    input: Path = typer.Option(..., "--input", "-i"),
    output: Path = typer.Option(..., "--output", "-o"),
    cron: str = typer.Option(..., help="Schedule, e.g. '0 2 * * *'. Needs `prefect server start` + PREFECT_API_URL."),
    name: str = typer.Option("nightly"),
    weights: Optional[Path] = typer.Option(None),
    task: Optional[str] = typer.Option(None, help="restore: denoise, deblur or sr (required for restore)."),
    scale: Optional[int] = typer.Option(None, min=1, help="restore --task sr: the factor."),
) -> None:
    """Serve a pipeline on a schedule (each run resumes: finished cases are skipped)."""
    from imagingflows.flows.serve import serve_pipeline
    from imagingflows.pipelines.base import get_pipeline

    try:
        get_pipeline(pipeline)
    except ValueError as e:
        _fail(str(e))
    if pipeline == "restore":
        from imagingflows.pipelines.restoration import TASKS

        if task not in TASKS:
            _fail(f"serve restore needs --task {', '.join(TASKS[:-1])} or {TASKS[-1]}, got {task}")
        options = _restore_options(task, scale, weights, False, None, None, None, "auto", "auto")  # pipeline defaults
    elif task is not None or scale is not None:
        _fail(f"--task and --scale are for restore, not {pipeline}")
    else:
        options = {"weights": str(weights) if weights else None}
    from imagingflows.flows.runners import UsageError

    try:  # serve_pipeline checks the cron, then the server, before registering anything
        serve_pipeline(pipeline, str(input), str(output), cron=cron, name=name, options=options,
                       say=lambda line: err.print(line, highlight=False))
    except UsageError as e:
        _fail(str(e))


@app.command()
def export(
    weights: Path = typer.Option(..., help="A checkpoint written by `run-flow train` (best.pt / last.pt)."),
    output: Path = typer.Option(..., "--output", "-o"),
    half: bool = typer.Option(True, help="Store weights as float16 (half the size; loaded as float32)."),
) -> None:
    """Export trained weights without optimizer state (e.g. to ship as demo weights)."""
    from imagingflows.models.checkpoints import CheckpointError, export_checkpoint

    try:
        path = export_checkpoint(weights, output, half=half)
    except CheckpointError as e:
        _fail(str(e))
    err.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)


@app.command()
def models() -> None:
    """List registered architectures."""
    from imagingflows.models.registry import REGISTRY

    for name in REGISTRY.names():
        err.print(f"{name}: {REGISTRY.get(name).description}", highlight=False)


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
        app(prog_name="run-flow")
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        sys.exit(SIGNAL_EXIT["SIGINT"])


if __name__ == "__main__":
    sys.exit(main())
