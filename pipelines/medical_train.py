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
from imagingflows.pipelines.train_common import plot_curves as _plot, split_ids
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
    """Train; returns the :func:`fit.fit` summary (``best_dice``, ``result``, ``headline`` ...)
    plus the cases without a reference (``errors``) and the model frame (``profile``)."""
    from monai.losses import DiceLoss

    from imagingflows.models.backend import load, select_device
    from imagingflows.pipelines import fit

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs, errors = find_training_cases(Path(data_dir))
    if len(pairs) < 2:
        raise ValueError(f"{data_dir}: need at least 2 cases with references to train, found {len(pairs)}"
                         + "".join(f"\n  {cid}: {msg}" for cid, msg in errors))
    device = select_device(config.get("device", "cpu"))
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)  # before the scratch model is built: its initial weights
    if config.get("weights"):
        build = lambda: load(config["weights"], trust=bool(config.get("trust_checkpoint")), device=str(device))  # noqa: E731
    else:
        build = lambda: _scratch_model(int(config.get("feature_size", 12)), device)  # noqa: E731
    lm = fit.open_run(run_dir, build, device)
    profile = _frame(lm, config, resumed=(run_dir / "last.pt").is_file())
    crop = list(config.get("roi") or [64, 64, 64])
    labels = config.get("labels", "auto")
    batch, share = int(config.get("batch_size", 2)), float(config.get("tumour_share", 0.5))
    settings = {"weights": config.get("weights"), "lr": float(config.get("lr", 1e-3)), "roi": crop,
                "spacing": config.get("spacing"), "labels": labels, "batch_size": batch, "tumour_share": share,
                "feature_size": None if config.get("weights") else int(config.get("feature_size", 12)),
                "loss": "dice+bce"}
    split = fit.run_split(fit.resume_state(run_dir, lm, settings), [item.id for item, _ in pairs],
                          float(config.get("val_fraction", 0.2)), seed)
    by_id = {item.id: (item, ref) for item, ref in pairs}
    t0 = time.perf_counter()
    data = {cid: load_case_in_frame(*by_id[cid], profile, labels) for cid in split["train"] + split["val"]
            if cid in by_id}
    log.info("loaded %d cases in %.1fs", len(data), time.perf_counter() - t0)
    val_cases = [data[c] for c in split["val"]]

    def batches(start_epoch: int):
        """Crops of random training cases: a stream seeded from the epoch the run starts at."""
        augment = _augment(crop, seed + start_epoch, share)
        rng = random.Random(seed * 1000 + start_epoch)

        def draw() -> tuple[torch.Tensor, torch.Tensor]:  # (B, 4, *crop) images, (B, 3, *crop) regions
            crops = [augment({"image": data[c][0], "label": data[c][1]})[0]
                     for c in (rng.choice(split["train"]) for _ in range(batch))]
            return (torch.stack([torch.as_tensor(c["image"]) for c in crops]),
                    torch.stack([torch.as_tensor(c["label"]) for c in crops]))
        return draw

    # batch=True: Dice over the whole batch per region, so a crop without tumour does not
    # contribute a 0/0 Dice term (unstable with per-sample Dice)
    dice_loss = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    bce = torch.nn.BCEWithLogitsLoss()

    def validate(net) -> dict[str, float]:
        dice = _validate(lm, val_cases, profile["roi"]) if val_cases else {}
        return {"mean": float(np.mean(list(dice.values()))) if dice else float("nan"), **dice}

    out = fit.fit(
        lm, run_dir, optimizer=fit.AdamW(settings["lr"], weight_decay=1e-5), batches=batches,
        loss=lambda logits, y: dice_loss(logits, y) + bce(logits, y), validate=validate,
        score=fit.Score("val_mean", "best_dice", "Dice", digits=4, shown=".3f"), settings=settings,
        meta={"profile": profile, "label_convention_trained": labels, "data": str(data_dir)}, split=split,
        epochs=int(config.get("epochs", 10)), steps=int(config.get("steps_per_epoch") or len(split["train"])),
        curve=CURVE, describe=_describe)
    return {**out, "errors": errors, "profile": profile}


def _frame(lm, config: dict, resumed: bool) -> dict:
    """The model frame (orientation, spacing, window, channels) the run trains in: the resumed run's,
    the ``--weights`` checkpoint's (foreign defaults filled in), or the scratch one; ``--spacing`` wins."""
    if resumed:
        profile = lm.meta["profile"]
    elif config.get("weights"):
        profile = {**seg.FOREIGN_PROFILE, **(lm.meta.get("profile") or {})}
    else:
        profile = dict(SCRATCH_PROFILE)
    if config.get("spacing"):
        profile["spacing"] = list(config["spacing"])
    return profile


def _describe(val: dict) -> str:
    return "val Dice " + (", ".join(f"{r} {val[r]:.3f}" for r in seg.REGIONS if r in val) or "- (no validation cases)")


def _scratch_model(feature_size: int, device):
    """A fresh Swin UNETR (4 modalities in, the 3 regions out) of ``feature_size``."""
    from imagingflows.models.backend import LoadedModel
    from imagingflows.models.registry import get_spec

    spec = get_spec("swin_unetr")
    cfg = {"in_channels": 4, "out_channels": 3, "feature_size": feature_size, "patch_merging": "current"}
    return LoadedModel(spec.build(**cfg).to(device), spec, cfg, None, None, {}, device)


CURVE = {"loss_label": "train loss (Dice + BCE)", "ylabel": "validation Dice", "ylim": (0, 1),
         "series": {r: f"val_{r}" for r in seg.REGIONS},
         "colors": dict(zip(seg.REGIONS, ("tab:red", "tab:orange", "tab:blue")))}


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and validation Dice per region per epoch as a PNG (written atomically)."""
    return _plot(history, path, **CURVE)
