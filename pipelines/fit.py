"""The one training loop every domain's ``train`` feeds (segment: Swin UNETR; restore: NAFNet/HAT).

A domain builds its parts — the model, the batches, the loss, the validation, the settings a
resumed run must match — and :func:`fit` runs the loop they share: resume from the run folder's
``last.pt`` (weights, optimizer state, history, split), AdamW with a cosine LR per step, epochs of
steps, validation each epoch, ``best.pt`` when the validation score improves and ``last.pt`` (with
the training state) every epoch, both written atomically, the curve PNG, and a summary whose
``result`` and ``headline`` need no knowledge of the domain's metric names.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from imagingflows.pipelines.train_common import check_resume, cosine_lr, plot_curves, split_ids

log = logging.getLogger("imagingflows.train")

Batch = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class AdamW:
    """The optimizer's settings (recorded in the resume settings)."""

    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Score:
    """The validation number the run maximises and how it is reported.

    ``key``: its history key (``"val_mean"``); ``name``: the summary key of its best value
    (``"best_dice"``); ``label`` / ``unit``: how a person reads it (``"PSNR"``, ``"dB"``);
    ``digits``: rounding in the summary; ``shown``: its format in the headline;
    ``gain``: (summary key, history key) of a gain over the input, taken from the last epoch
    (``("gain_db", "val_gain_db")``), or None.
    """

    key: str
    name: str
    label: str
    unit: str = ""
    digits: int = 4
    shown: str = ".3f"
    gain: tuple[str, str] | None = None


def open_run(run_dir: Path, build: Callable[[], object], device: str):
    """The run folder's ``last.pt`` (weights and training state, one read) when it exists, else ``build()``.

    ``build() -> LoadedModel``: the model a fresh run starts from (scratch or ``--weights``).
    """
    from imagingflows.models.backend import load

    last = Path(run_dir) / "last.pt"
    return load(last, device=str(device)) if last.is_file() else build()


def resume_state(run_dir: Path, lm, settings: dict) -> dict | None:
    """``last.pt``'s training state (None for a fresh run), after refusing other ``settings``.

    When ``lm`` was not read from ``last.pt`` itself, ``last.pt``'s weights are loaded into it
    (same architecture required), so the loop continues from them either way.
    """
    from imagingflows.models.checkpoints import read_checkpoint

    last = Path(run_dir) / "last.pt"
    if not last.is_file():
        return None
    from_last = lm.weights is not None and Path(lm.weights).resolve() == last.resolve()
    ckpt = None if from_last else read_checkpoint(last)
    state = (lm.meta if from_last else ckpt.meta).get("train_state")
    check_resume(Path(run_dir), (state or {}).get("settings"), settings)
    if ckpt is not None:
        if ckpt.arch != lm.spec.name:
            raise ValueError(f"{last} holds a {ckpt.arch} model; this run trains {lm.spec.name}: "
                             "give a new --output folder")
        lm.module.load_state_dict(ckpt.state_dict)
    return state


def run_split(state: dict | None, ids: list[str], val_fraction: float, seed: int) -> dict:
    """``{"train", "val", "seed"}``: the resumed run's split, else a seeded new one."""
    if state:
        return {"train": state["split"]["train"], "val": state["split"]["val"], "seed": seed}
    train, val = split_ids(ids, val_fraction, seed)
    return {"train": train, "val": val, "seed": seed}


def fit(lm, run_dir: Path, *, optimizer: AdamW, batches: Callable[[int], Batch],
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], validate: Callable[[torch.nn.Module], dict],
        score: Score, settings: dict, meta: dict, split: dict, epochs: int, steps: int,
        grad_clip: float | None = None, curve: dict | None = None,
        describe: Callable[[dict], str] | None = None) -> dict:
    """Train ``lm.module`` to ``epochs`` epochs of ``steps`` steps; returns the summary.

    ``batches(start_epoch) -> batch``: the domain's sampler for a run starting (or resuming) at
    ``start_epoch``; ``batch() -> (x, y)``, with ``loss(net(x), y)`` the scalar minimised.
    ``validate(net) -> {name: value}``: numbers go into the history as ``val_<name>``, anything
    else (a scoring recipe) into the checkpoint meta under its own name.
    ``settings``: what a resumed run must match (the optimizer's and ``grad_clip`` are added).
    ``meta``: stored in both checkpoints, with the history and ``split`` added.
    ``curve``: :func:`train_common.plot_curves` options (None: no PNG);
    ``describe(val) -> str``: the validation part of each epoch's log line.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    settings = {**settings, "lr": optimizer.lr, "weight_decay": optimizer.weight_decay,
                "betas": list(optimizer.betas), "grad_clip": grad_clip}
    state = resume_state(run_dir, lm, settings)
    net = lm.module.to(lm.device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=optimizer.lr, weight_decay=optimizer.weight_decay,
                            betas=tuple(optimizer.betas))
    history: list[dict] = state["history"] if state else []
    start = state["epoch"] if state else 0
    if state:
        opt.load_state_dict(state["optimizer"])
    best = max((h[score.key] for h in history if math.isfinite(h.get(score.key, math.nan))), default=-math.inf)
    batch = batches(start)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        losses = [_step(net, opt, batch, loss, grad_clip, lm.device,
                        cosine_lr(optimizer.lr, (epoch * steps + s) / max(1, epochs * steps))) for s in range(steps)]
        val = validate(net)
        net.train()
        numbers = {f"val_{k}": float(v) for k, v in val.items() if isinstance(v, (int, float, np.floating))}
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **numbers,
                        "seconds": round(time.perf_counter() - t0, 1), "lr": opt.param_groups[0]["lr"]})
        log.info("epoch %d/%d loss %.4f %s", epoch + 1, epochs, history[-1]["loss"],
                 describe(val) if describe else " ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
        ck_meta = {**meta, **{k: v for k, v in val.items() if f"val_{k}" not in numbers},
                   "history": history, "split": split}
        now = numbers.get(score.key, math.nan)
        if now > best:  # False for NaN: an epoch without a validation score is never the best
            best = now
            _save(best_path, lm, ck_meta)
        _save(last_path, lm, {**ck_meta, "train_state": {
            "epoch": epoch + 1, "optimizer": opt.state_dict(), "history": history, "split": split,
            "settings": settings}})
        if curve:
            plot_curves(history, run_dir / "training_curve.png", **curve)
    return summary(lm, history, best, score, split, best_path, last_path)


def _step(net, opt, batch: Batch, loss, grad_clip: float | None, device, lr: float) -> float:
    """One optimizer step at learning rate ``lr``; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    x, y = batch()
    value = loss(net(x.to(device)), y.to(device))
    opt.zero_grad(set_to_none=True)
    value.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()
    return value.detach().item()


def _save(path: Path, lm, meta: dict) -> None:
    from imagingflows.models.checkpoints import save_checkpoint

    save_checkpoint(path, lm.module, arch=lm.spec.name, config=lm.config, meta=meta)


def summary(lm, history: list[dict], best: float, score: Score, split: dict, best_path: Path,
            last_path: Path) -> dict:
    """The run's summary: the keys each domain returned before (``best_dice`` ...), plus ``result``
    (what run.json records) and ``headline`` (one terminal line), which name no domain metric."""
    best_value = round(best, score.digits) if math.isfinite(best) else None
    result = {"epochs_done": len(history), score.name: best_value}
    if score.gain:
        gain = history[-1].get(score.gain[1], math.nan) if history else math.nan
        result[score.gain[0]] = round(gain, score.digits) if math.isfinite(gain) else None
    result.update(best_checkpoint=str(best_path if best_path.is_file() else last_path),
                  last_checkpoint=str(last_path))
    return {**result, "history": history, "split": split, "model": {"arch": lm.spec.name, "config": lm.config},
            "result": result, "headline": headline(result, score)}


def headline(result: dict, score: Score) -> str:
    """``10 epochs, best validation PSNR 31.20 dB (gain +5.10 dB) -> runs/x/best.pt``."""
    n = result["epochs_done"]
    unit = f" {score.unit}" if score.unit else ""
    value = result[score.name]
    said = (f"best validation {score.label} {value:{score.shown}}{unit}" if value is not None
            else "no validation score")
    gain = result.get(score.gain[0]) if score.gain else None
    if gain is not None:
        said += f" (gain {gain:+{score.shown}}{unit})"
    return f"{n} epoch{'s' if n != 1 else ''}, {said} -> {result['best_checkpoint']}"
