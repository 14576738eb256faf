"""Pieces every training loop shares: the seeded split, the LR schedule, the resume guard, the curve PNG."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np


def split_ids(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then the first ``val_fraction`` (at least one, if >1 id) for validation."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction)) if len(order) > 1 and val_fraction > 0 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def check_resume(run_dir: Path, saved: dict | None, wanted: dict) -> None:
    """Refuse to resume ``run_dir`` when it was started with other settings.

    ``saved``: the settings recorded in ``last.pt`` (None for runs that predate the record);
    ``wanted``: this call's. Resuming anyway would silently go on training the old model while
    run.json records the new settings. More epochs are fine: ``epochs`` is never compared.
    """
    if not saved:
        return
    norm = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731 - tuples vs lists, numpy scalars
    diff = [(k, saved[k], v) for k, v in wanted.items() if k in saved and norm(saved[k]) != norm(v)]
    if diff:
        said = ", ".join(f"{k} {old!r} (asked now: {new!r})" for k, old, new in diff)
        raise ValueError(f"{run_dir} holds a training run started with other settings: {said}; "
                         "give a new --output folder, or the run's own settings to resume it")


def cosine_lr(base_lr: float, progress: float, floor: float = 0.05) -> float:
    """Cosine decay over the whole run from the step's position in it (``progress`` in [0, 1]).

    Recomputed from the step, so a resumed run with more epochs continues smoothly; the
    floor keeps late epochs learning.
    """
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * progress)))


def plot_curves(history: list[dict], path: Path, *, loss_label: str, series: dict[str, str], ylabel: str,
                ylim: tuple[float, float] | None = None, colors: dict[str, str] | None = None) -> Path:
    """Loss and validation curves per epoch as a PNG (written atomically).

    ``series``: legend label -> history key, drawn when the key is present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from imagingflows.tasks.write import atomic_path

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [h["loss"] for h in history], "k-o", ms=3)
    a.set(xlabel="epoch", ylabel=loss_label, title="loss")
    for label, key in series.items():
        if history and key in history[0]:
            b.plot(ep, [h.get(key, np.nan) for h in history], "-o", ms=3, label=label,
                   color=(colors or {}).get(label))
    b.set(xlabel="epoch", ylabel=ylabel, title="validation")
    if ylim:
        b.set_ylim(*ylim)
    b.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
