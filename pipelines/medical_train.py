"""Train or fine-tune the segment model on a folder of BraTS-layout cases.

Each case needs its four modalities and a ``<case>_seg.nii.gz`` reference (labels
in the BraTS 2021 or 2023 convention, stated or detected from the values). Cases
are brought into the model frame once (orientation + spacing, MONAI), split into
train/validation with a seeded shuffle, and trained with the BraTS21 recipe
adapted to a CPU: random crops biased to the tumour, flips, intensity scale and
shift, DiceLoss + BCE on the sigmoid regions [TC, WT, ET], AdamW with a cosine
schedule. Every epoch writes ``last.pt`` (and ``best.pt`` on a new best validation
Dice) atomically, so a killed run resumes from its last epoch.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from imagingflows.pipelines import medical as seg
from imagingflows.pipelines.train_common import check_resume, cosine_lr, plot_curves as _plot, split_ids
from imagingflows.tasks.ingest import InputError, Item

log = logging.getLogger("imagingflows.train")

SCRATCH_PROFILE = {"axcodes": "RAS", "spacing": [2.0, 2.0, 2.0], "roi": [96, 96, 96],
                   "channels": list(seg.MODEL_CHANNELS)}


def find_training_cases(data_dir: Path) -> tuple[list[tuple[Item, Path]], list[tuple[str, str]]]:
    """(item, reference seg path) pairs; cases without a reference are errors."""
    items, errors = seg.discover(Path(data_dir), {"channels": seg.MODEL_CHANNELS})
    pairs = []
    for item in items:
        case_dir = Path(item.paths["flair"]).parent
        ref = seg.find_seg(case_dir, item.id) or seg.find_seg(case_dir.parent, item.id)
        if ref is None:
            errors.append((item.id, f"case {item.id}: no reference {item.id}_seg.nii.gz (or -seg) found"))
        else:
            pairs.append((item, ref))
    return pairs, errors


split_cases = split_ids  # the seeded split every training loop shares


def load_case_in_frame(item: Item, ref_path: Path, profile: dict, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (4, X, Y, Z) normalised, regions (3, X, Y, Z) float) in the model frame."""
    from imagingflows.tasks.preprocess import ModelFrame, normalize_nonzero, to_model_frame

    vols = seg.read_case(item, tuple(profile["channels"]))
    ref = seg.read_labels(str(ref_path))
    if ref.array.shape != vols[0].array.shape or not np.allclose(ref.affine, vols[0].affine, atol=1e-3):
        raise InputError(f"case {item.id}: reference {ref_path.name} is not on the image grid")
    convention = None if labels == "auto" else labels
    regions = seg.labels_to_regions(ref.array.astype(np.uint8), convention).astype(np.float32)
    frame = ModelFrame(profile["axcodes"], tuple(profile["spacing"]) if profile.get("spacing") else None)
    img, _ = to_model_frame(np.stack([v.array for v in vols]), vols[0].affine, frame)
    lab, _ = to_model_frame(regions, vols[0].affine, frame, mode="nearest")
    return normalize_nonzero(img).as_tensor().float(), lab.as_tensor().float()


def _augment(crop_size: list[int], seed: int, tumour_share: float = 0.5):
    """Random crops (``tumour_share`` of them centred on a tumour voxel), flips, intensity jitter.

    Half tumour-centred crops by default: a higher share (the BraTS21 recipe's 2:1 at 128^3)
    makes a small-crop model over-predict in the healthy brain it rarely sees.
    """
    from monai.transforms import (Compose, RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd,
                                  RandShiftIntensityd, SpatialPadd)

    keys = ["image", "label"]
    t = Compose([
        SpatialPadd(keys, spatial_size=crop_size),
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=crop_size,
                               pos=tumour_share, neg=1.0 - tumour_share, num_samples=1),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd("image", factors=0.1, prob=1.0),
        RandShiftIntensityd("image", offsets=0.1, prob=1.0),
    ])
    t.set_random_state(seed)
    return t


def _validate(lm, cases: list[tuple[torch.Tensor, torch.Tensor]], roi: list[int]) -> dict[str, float]:
    from imagingflows.models import sliding_window_predict

    lm.module.eval()
    scores = []
    for image, label in cases:
        probs = sliding_window_predict(lm, image[None], roi, overlap=0.25, postprocess=torch.sigmoid)[0]
        brain = (image != 0).any(0, keepdim=True)
        pred = ((probs > 0.5) & brain).numpy()
        scores.append(seg.region_metrics(pred, label.numpy() > 0.5, (1.0, 1.0, 1.0)))
    lm.module.train()
    return {r: float(np.mean([s[f"dice_{r}"] for s in scores])) for r in seg.REGIONS}


def train(data_dir: Path, run_dir: Path, config: dict) -> dict:
    """Train; returns a summary (epochs, best Dice per region, checkpoint paths, split)."""
    from monai.losses import DiceLoss

    from imagingflows.models.backend import LoadedModel, load, select_device
    from imagingflows.models.checkpoints import save_checkpoint
    from imagingflows.models.registry import get_spec

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs, errors = find_training_cases(Path(data_dir))
    if len(pairs) < 2:
        raise ValueError(f"{data_dir}: need at least 2 cases with references to train, found {len(pairs)}"
                         + "".join(f"\n  {cid}: {msg}" for cid, msg in errors))
    device = select_device(config.get("device", "cpu"))
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    resume_state = None

    if last_path.is_file():
        lm = load(last_path, device=str(device))  # one read: weights and training state
        resume_state = lm.meta.get("train_state")
        profile = lm.meta["profile"]
    elif config.get("weights"):
        lm = load(config["weights"], trust=bool(config.get("trust_checkpoint")), device=str(device))
        profile = {**seg.FOREIGN_PROFILE, **(lm.meta.get("profile") or {})}
    else:
        spec = get_spec("swin_unetr")
        model_cfg = {"in_channels": 4, "out_channels": 3, "feature_size": int(config.get("feature_size", 12)),
                     "patch_merging": "current"}
        profile = dict(SCRATCH_PROFILE)
        lm = LoadedModel(spec.build(**model_cfg).to(device), spec, model_cfg, None, None, {}, device)
    if config.get("spacing"):
        profile["spacing"] = list(config["spacing"])
    crop = list(config.get("roi") or [64, 64, 64])
    labels = config.get("labels", "auto")
    settings = {"weights": config.get("weights"), "lr": float(config.get("lr", 1e-3)), "roi": crop,
                "spacing": config.get("spacing"), "labels": labels, "batch_size": int(config.get("batch_size", 2)),
                "tumour_share": float(config.get("tumour_share", 0.5)),
                "feature_size": None if config.get("weights") else int(config.get("feature_size", 12))}
    check_resume(run_dir, (resume_state or {}).get("settings"), settings)

    ids = [item.id for item, _ in pairs]
    train_ids, val_ids = (resume_state["split"]["train"], resume_state["split"]["val"]) if resume_state else \
        split_cases(ids, float(config.get("val_fraction", 0.2)), seed)
    by_id = {item.id: (item, ref) for item, ref in pairs}
    t0 = time.perf_counter()
    data = {cid: load_case_in_frame(*by_id[cid], profile, labels) for cid in train_ids + val_ids if cid in by_id}
    log.info("loaded %d cases in %.1fs", len(data), time.perf_counter() - t0)

    net = lm.module.to(device).train()
    epochs = int(config.get("epochs", 10))
    steps = int(config.get("steps_per_epoch") or len(train_ids))
    batch = int(config.get("batch_size", 2))
    base_lr = float(config.get("lr", 1e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=base_lr, weight_decay=1e-5)
    # batch=True: Dice over the whole batch per region, so a crop without tumour does not
    # contribute a 0/0 Dice term (unstable with per-sample Dice)
    dice_loss = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    bce = torch.nn.BCEWithLogitsLoss()
    history: list[dict] = []
    start_epoch = 0
    if resume_state:
        opt.load_state_dict(resume_state["optimizer"])
        history = resume_state["history"]
        start_epoch = resume_state["epoch"]
    best = max((h["val_mean"] for h in history), default=-1.0)
    augment = _augment(crop, seed + start_epoch, float(config.get("tumour_share", 0.5)))
    rng = random.Random(seed * 1000 + start_epoch)

    total_steps = epochs * steps
    for epoch in range(start_epoch, epochs):
        t_epoch = time.perf_counter()
        losses = []
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(base_lr, (epoch * steps + step) / max(1, total_steps))
            crops = [augment({"image": data[c][0], "label": data[c][1]})[0]
                     for c in (rng.choice(train_ids) for _ in range(batch))]
            x = torch.stack([torch.as_tensor(c["image"]) for c in crops]).to(device)
            y = torch.stack([torch.as_tensor(c["label"]) for c in crops]).to(device)
            logits = net(x)
            loss = dice_loss(logits, y) + bce(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
        val = _validate(lm, [data[c] for c in val_ids], profile["roi"]) if val_ids else {}
        val_mean = float(np.mean(list(val.values()))) if val else float("nan")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_mean": val_mean,
                        **{f"val_{k}": v for k, v in val.items()}, "seconds": round(time.perf_counter() - t_epoch, 1),
                        "lr": opt.param_groups[0]["lr"]})
        log.info("epoch %d/%d loss %.4f val Dice %s", epoch + 1, epochs, history[-1]["loss"], val)
        meta = {"profile": profile, "label_convention_trained": labels, "history": history,
                "data": str(data_dir), "split": {"train": train_ids, "val": val_ids}}
        state = {"epoch": epoch + 1, "optimizer": opt.state_dict(), "settings": settings,
                 "history": history, "split": {"train": train_ids, "val": val_ids}}
        if val_mean > best:
            best = val_mean
            save_checkpoint(best_path, net, arch="swin_unetr", config=lm.config, meta=meta)
        save_checkpoint(last_path, net, arch="swin_unetr", config=lm.config, meta={**meta, "train_state": state})
        plot_curves(history, run_dir / "training_curve.png")
    return {
        "epochs_done": len(history), "best_dice": round(best, 4) if best >= 0 else None,
        "best_checkpoint": str(best_path) if best_path.is_file() else str(last_path),
        "last_checkpoint": str(last_path), "history": history,
        "split": {"train": train_ids, "val": val_ids, "seed": seed}, "errors": errors, "profile": profile,
        "model": {"arch": "swin_unetr", "config": lm.config},
    }


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and validation Dice per region per epoch as a PNG (written atomically)."""
    return _plot(history, path, loss_label="train loss (Dice + BCE)", ylabel="validation Dice", ylim=(0, 1),
                 series={r: f"val_{r}" for r in seg.REGIONS},
                 colors=dict(zip(seg.REGIONS, ("tab:red", "tab:orange", "tab:blue"))))
