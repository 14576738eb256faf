"""Train a classify head (``run-flow train classify``) on frozen Scale-MAE features, tile or patch level.

In:  ``--data``: an ImageFolder-style tree ``<class>/<chip>.tif`` (GeoTIFF, plain TIFF or PNG, any
     depth below the class folder); class names are the sorted folder names. Each chip is read as one
     ``--tile`` x ``--tile`` tile centred on it (a larger chip is cropped to its centre, a smaller one
     padded; padding and nodata pixels are invalid and 0 after normalisation, as in ``classify``).
Out: ``best.pt`` / ``last.pt`` (a ``linear_probe`` or ``knn_probe`` checkpoint whose meta records what
     ``classify`` needs: level, classes, encoder file and SHA-256, bands, tile, res, pool, normalisation,
     the held-out accuracy), ``training_curve.png`` (linear); with ``--finetune`` also
     ``encoder_best.pt`` / ``encoder_last.pt``, the fine-tuned encoder of each (see below).

Recipe: a seeded split of the chip ids (``train_common.split_ids``); per-band mean / std measured over
every valid pixel of the training chips (recorded, so ``classify`` normalises scenes the same way);
each chip embedded once and the features cached: at tile level one per chip (class token or masked
patch-token mean), at patch level one per valid patch token, labelled with its chip's class (the split
stays by chip, so no held-out patch shares a chip with a training one). ``linear``:
the MAE linear probe trained with cross-entropy on random batches of cached features by
:func:`pipelines.fit.fit` (AdamW, cosine LR, resume, best/last). ``knn``: the bank is the training
features (a seeded sample of ``--bank-size`` beyond that), nothing is optimised (no epochs). Both are
scored by accuracy on the held-out chips' features.

``--finetune`` (linear head only): the encoder and the probe train together end to end
(:func:`finetune_fit`: AdamW, cosine LR, the encoder at ``--encoder-lr``, default ``--lr / 10``, fp32);
nothing is cached: each step reads ``batch_size`` random training chips from disk again; each epoch
re-embeds the same held-out chips with the current encoder, so the score compares with the frozen
probe's. The probe's BatchNorm statistics restart every epoch (the features move). The encoder of
each epoch is written as ``encoder_last.pt`` (our format, ``scale_mae``, config with ``num_heads``,
the original encoder's meta with the normalisation it was fine-tuned with) and copied to
``encoder_best.pt`` when the epoch is the best; ``best.pt`` / ``last.pt`` record the matching file
and its SHA-256 as their encoder, so ``classify --weights best.pt`` runs the fine-tuned encoder.
A resumed run reads ``encoder_last.pt`` (checked against ``last.pt``) and the optimizer state of
both in ``last.pt``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import model_validator

from imagingflows.pipelines.options import Precision, TrainOptions, option
from imagingflows.pipelines.remote_sensing_options import Bands
from imagingflows.tasks.ingest import InputError

log = logging.getLogger("imagingflows.train")

CHIP_SUFFIXES = (".tif", ".tiff", ".png")
ENCODER_BEST, ENCODER_LAST = "encoder_best.pt", "encoder_last.pt"  # --finetune: the encoder of best.pt / last.pt
NO_TARGET = 255  # --finetune at patch level: a patch without a label or a valid pixel


def check_finetune(opts):
    """The options' check across fields (one-line usage errors): ``--finetune`` needs the linear head and
    trains in fp32; ``--encoder-lr`` needs ``--finetune``."""
    if not opts.finetune:
        if opts.encoder_lr is not None:
            raise ValueError("--encoder-lr applies to --finetune (the encoder is frozen without it)")
        return opts
    if opts.head != "linear":
        raise ValueError("--finetune trains the encoder with a linear head; a kNN head has no weights to train: "
                         "use --head linear, or drop --finetune")
    if opts.precision in ("bf16", "fp16"):
        raise ValueError(f"--finetune trains in fp32; --precision {opts.precision} applies to a frozen encoder only")
    return opts


class ClassifyTrain(TrainOptions):
    data: Path | None = option(None, "Chips in one folder per class: <class>/<chip>.tif (GeoTIFF, TIFF or PNG); "
                                     "class names are the sorted folder names.", output=True)
    encoder: Path = option(..., "Frozen Scale-MAE encoder checkpoint the features come from (recorded with its "
                                "SHA-256 in the head).", output=True)
    num_heads: int | None = option(None, "Encoder attention heads, for a width that is not an official size.",
                                   unit="heads", ge=1, output=True)
    head: Literal["linear", "knn"] = option("linear", "linear: a linear probe trained with cross-entropy; knn: a "
                                                      "cosine k-nearest-neighbour vote over the training chips.",
                                            output=True)
    bands: Bands | None = option(None, "Bands in the encoder's order (index or name). Default: all, in order.",
                                 metavar="B1,B2,...", output=True)
    tile: int | None = option(None, "Side of the tile read from each chip (centred; cropped or padded). "
                                    "Default: the encoder's input size.", unit="pixels", ge=16, output=True)
    res: float = option(1.0, "Scale-MAE's relative GSD scale of every chip.", unit="relative scale", gt=0,
                        output=True)
    level: Literal["tile", "patch"] = option("tile", "tile: one label per tile (its pooled embedding); patch: one "
                                                     "label per patch token, each valid patch of a chip labelled "
                                                     "with the chip's class.", output=True)
    pool: Literal["cls", "mean"] = option("cls", "Tile level: cls: the class token; mean: the mean of the patch "
                                                 "tokens over valid patches.", output=True)
    bank_size: int = option(65536, "kNN: most training features kept in the bank (a seeded sample beyond that).",
                            unit="features", ge=1, output=True)
    nodata: float | None = option(None, "Nodata value of every band, overriding the files'.", unit="data values",
                                  output=True)
    k: int = option(20, "kNN: neighbours that vote.", unit="chips", ge=1, output=True)
    temperature: float = option(0.07, "kNN: T of the vote weight exp(cosine / T).", unit="cosine units", gt=0,
                                output=True)
    batch_size: int = option(64, "Linear: features per optimiser step (also chips per encoder pass).",
                             unit="chips", ge=1, output=True)
    precision: Precision = option("auto", "Encoder precision: auto (bf16 where native, else fp32), fp32, bf16, "
                                          "fp16 (CUDA).", output=True)
    finetune: bool = option(False, "Linear head: train the encoder with it end to end (fp32), reading the training "
                                   "chips again each step; writes encoder_best.pt / encoder_last.pt beside the "
                                   "head, which records them.", output=True)
    encoder_lr: float | None = option(None, "--finetune: the encoder's peak learning rate. Default: --lr / 10.",
                                      unit="per step", gt=0, output=True)

    _finetune_needs_linear = model_validator(mode="after")(check_finetune)


# ----------------------------------------------------------------------------- chips

@dataclass(frozen=True)
class Chip:
    """One labelled chip: ``id`` = ``<class>/<path below it without suffix>``."""

    id: str
    path: Path
    label: int


def find_chips(data_dir: Path) -> tuple[dict[int, str], list[Chip]]:
    """``({index: class name}, chips)`` of an ImageFolder tree; fewer than 2 classes is an error."""
    if data_dir is None or not Path(data_dir).is_dir():
        raise ValueError(f"--data {data_dir}: not a folder of <class>/<chip>.tif")
    data_dir = Path(data_dir)
    folders = sorted(d for d in data_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = {d.name: sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in CHIP_SUFFIXES
                            and not p.name.startswith(".")) for d in folders}
    names = [n for n in sorted(found) if found[n]]
    if len(names) < 2:
        raise ValueError(f"{data_dir}: need at least 2 class folders holding chips ({', '.join(CHIP_SUFFIXES)}), "
                         f"found {len(names)}" + (f" ({names[0]})" if names else ""))
    chips = [Chip(f"{n}/{p.relative_to(data_dir / n).with_suffix('').as_posix()}", p, i)
             for i, n in enumerate(names) for p in found[n]]
    return dict(enumerate(names)), chips


def read_chip(chip: Chip, tile: int, bands, nodata, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels float32 (C, tile, tile), valid bool (tile, tile))``: the tile centred on the chip."""
    from imagingflows.tasks.raster_io import TileWindow, open_raster, read_tile

    src = open_raster(chip.path, bands=bands, nodata=nodata)
    if src.count != channels:
        raise InputError(f"{chip.path}: {src.count} bands ({', '.join(src.band_names)}) but the encoder takes "
                         f"{channels}; choose them with --bands")
    # negative offsets pad both sides (the reader is boundless)
    window = TileWindow((src.height - tile) // 2, (src.width - tile) // 2, tile)
    pixels, valid = read_tile(src, window)
    if not valid.any():
        raise InputError(f"{chip.path}: no valid pixel (every pixel is nodata)")
    return pixels, valid


def chip_moments(pixels: np.ndarray, valid: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, mean (C,), M2 (C,))`` over the valid pixels (float64; M2 = sum of squared deviations)."""
    x = pixels[:, valid].astype(np.float64)  # (C, n)
    mean = x.mean(axis=1)
    return x.shape[1], mean, ((x - mean[:, None]) ** 2).sum(axis=1)


def merge_moments(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Chan's pairwise merge of per-chip moments -> ``(mean (C,), std (C,), n)`` (population std, >= 1e-6)."""
    n, mean, m2 = parts[0]
    for nb, mb, m2b in parts[1:]:
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta ** 2 * (n * nb / total)
        n = total
    return mean.astype(np.float32), np.maximum(np.sqrt(m2 / n), 1e-6).astype(np.float32), n


def scan_chips(chips: list[Chip], cfg: dict) -> tuple[list[Chip], dict, list[tuple[str, str]]]:
    """Read every chip once: ``(good chips, {id: moments}, [(id, error)])`` (unusable chips are errors)."""
    good, moments, errors = [], {}, []
    for chip in chips:
        try:
            pixels, valid = read_chip(chip, cfg["tile"], cfg["bands"], cfg["nodata"], cfg["channels"])
        except InputError as e:
            errors.append((chip.id, str(e)))
            continue
        good.append(chip)
        moments[chip.id] = chip_moments(pixels, valid)
    return good, moments, errors


def normalise(read: list, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``[(pixels (C, T, T), valid (T, T))]`` -> ``(B, C, T, T)`` float32, ``(x - mean) / std``, 0 where invalid."""
    return np.stack([np.where(v[None], (p - mean[:, None, None]) / std[:, None, None], 0)
                     for p, v in read]).astype(np.float32)


def embed_chips(lm, chips: list[Chip], mean: np.ndarray, std: np.ndarray, cfg: dict):
    """Features of ``chips`` and their labels: ``(feats (M, D) float32, labels (M,) long)``, chips in order,
    ``batch_size`` chips per encoder pass. Tile level: M = len(chips), the pooled embedding of each;
    patch level: the token of every valid patch (row-major), labelled with its chip's class."""
    import torch

    from imagingflows.models.encoder import encode
    from imagingflows.pipelines.remote_sensing import patch_validity, pool_tokens

    feats, labels = [], []
    for start in range(0, len(chips), cfg["batch_size"]):
        part = chips[start:start + cfg["batch_size"]]
        read = [read_chip(c, cfg["tile"], cfg["bands"], cfg["nodata"], cfg["channels"]) for c in part]
        valid = patch_validity(np.stack([v for _, v in read]), cfg["patch_size"])  # (B, N)
        x = normalise(read, mean, std)
        res = torch.full((len(read),), cfg["res"], dtype=torch.float32)
        tokens = encode(lm, torch.from_numpy(x), res, cfg["precision"])  # (B, 1 + N, D)
        chip_labels = torch.tensor([c.label for c in part])
        if cfg["level"] == "tile":
            feats.append(torch.from_numpy(pool_tokens(tokens, valid, cfg["pool"])))
            labels.append(chip_labels)
        else:
            keep = torch.from_numpy(valid)
            feats.append(tokens[:, 1:][keep])
            labels.append(chip_labels[:, None].expand_as(keep)[keep])
    if not feats:
        return torch.zeros(0, int(lm.config["embed_dim"])), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats).float(), torch.cat(labels).long()


# ----------------------------------------------------------------------------- scoring

def accuracy(net, feats, labels) -> float:
    """Share of ``feats (N, D)`` whose top score is ``labels (N,)``; NaN for N = 0."""
    import torch

    if len(labels) == 0:
        return math.nan
    net.eval()
    device = next(iter(net.buffers())).device
    with torch.inference_mode():
        pred = net(feats.to(device)).argmax(-1).cpu()
    return float((pred == labels).float().mean())


def held_out(net, feats, labels, chips: int) -> dict:
    """What ``fit`` records each epoch (``accuracy``: of the held-out features, one per chip at tile level,
    per valid patch at patch level) and stores in the meta (``held_out``)."""
    acc = accuracy(net, feats, labels)
    if not math.isfinite(acc):
        return {}
    return {"accuracy": acc, "held_out": {"accuracy": round(acc, 4), "chips": int(chips), "features": len(labels)}}


# ----------------------------------------------------------------------------- train

def _score():
    from imagingflows.pipelines import fit

    return fit.Score("val_accuracy", "best_accuracy", "accuracy", digits=4, shown=".3f")


def _encoder(opts: ClassifyTrain, device):
    from imagingflows.models import load
    from imagingflows.pipelines.remote_sensing import ENCODERS

    overrides = {"num_heads": opts.num_heads} if opts.num_heads else {}
    lm = load(opts.encoder, trust=opts.trust_checkpoint, device=str(device), **overrides)
    if lm.spec.name not in ENCODERS:
        raise ValueError(f"--encoder {opts.encoder} is a {lm.spec.name} model; classify needs a Scale-MAE encoder")
    return lm


def _resolve(opts: ClassifyTrain, lm) -> dict:
    """The reading and embedding settings: tile, patch, channels, precision (resolved)."""
    from imagingflows.models.sliding_window import resolve_precision

    patch = int(lm.spec.grid_of(lm.config))
    tile = int(opts.tile or lm.config.get("img_size") or 224)
    if tile % patch:
        raise ValueError(f"--tile {tile} is not a multiple of the encoder's patch size {patch}")
    return {"tile": tile, "patch_size": patch, "channels": int(lm.spec.channels_of(lm.config)),
            "bands": list(opts.bands) if opts.bands else None, "nodata": opts.nodata, "res": float(opts.res),
            "pool": opts.pool, "level": opts.level, "batch_size": opts.batch_size,
            "precision": "fp32" if opts.finetune else resolve_precision(opts.precision, lm.device)}


def _settings(opts: ClassifyTrain, enc, cfg: dict, classes: dict) -> dict:
    """What a resumed or retrained run in the same folder must match (fit's guard)."""
    s = {"head": opts.head, "level": cfg["level"], "encoder_sha256": enc.weights_sha256, "num_heads": opts.num_heads,
         "classes": [classes[i] for i in sorted(classes)], "bands": cfg["bands"], "tile": cfg["tile"],
         "res": cfg["res"], "pool": cfg["pool"], "nodata": cfg["nodata"], "precision": cfg["precision"],
         "seed": opts.seed, "val_fraction": opts.val_fraction, "data": str(opts.data)}
    if opts.head == "knn":
        s.update(k=opts.k, temperature=opts.temperature, bank_size=opts.bank_size)
    else:
        s.update(lr=opts.lr, batch_size=opts.batch_size, steps_per_epoch=opts.steps_per_epoch)
    return s


def _head_meta(opts, enc, cfg: dict, classes: dict, stats: tuple, chips: dict) -> dict:
    """The meta ``classify.prepare`` reads (plus the data's description)."""
    mean, std, n = stats
    return {"level": cfg["level"], "classes": dict(classes),
            "encoder": {"file": str(Path(opts.encoder).resolve()), "sha256": enc.weights_sha256},
            "bands": cfg["bands"], "tile": cfg["tile"], "res": cfg["res"], "pool": cfg["pool"],
            "normalization": {"mean": mean.tolist(), "std": std.tolist(),
                              "from": f"training chips ({n} valid pixels)"},
            "num_heads": opts.num_heads, "data": str(opts.data), "chips": chips}


def train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    """Train a tile- or patch-level head; returns the :func:`fit.fit`-style summary (``best_accuracy``, ``result``,
    ``headline``, ``history``, ``split``, ``model``, ``errors``)."""
    import torch

    from imagingflows.models.backend import select_device
    from imagingflows.pipelines import fit

    opts = ClassifyTrain.parse({**config, "data": str(data_dir) if data_dir else config.get("data"),
                                "output": str(run_dir)})
    if opts.data is None:
        raise ValueError("--data is required: a folder of <class>/<chip>.tif")
    if opts.weights is not None:
        raise ValueError("--weights is not used by train classify: the encoder is --encoder and heads train from "
                         "scratch")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(opts.device)
    classes, chips = find_chips(opts.data)
    enc = _encoder(opts, device)
    cfg = _resolve(opts, enc)
    settings = _settings(opts, enc, cfg, classes)
    if opts.finetune:
        settings = finetune_settings(opts, settings)
    dim = int(enc.config["embed_dim"])
    torch.manual_seed(opts.seed)  # the probe's initial weights
    lm = _open(run_dir, opts.head, dim, len(classes), device)
    state = _guard(run_dir, lm, settings)
    good, moments, errors = scan_chips(chips, cfg)
    split = fit.run_split(state, [c.id for c in good], opts.val_fraction, opts.seed)
    by_id = {c.id: c for c in good}
    missing = [i for i in split["train"] + split["val"] if i not in by_id]
    if missing:
        raise ValueError(f"{run_dir}: the run's split names chips that are gone or unreadable now "
                         f"({', '.join(missing[:3])}); give a new --output folder")
    train_chips, val_chips = [by_id[i] for i in split["train"]], [by_id[i] for i in split["val"]]
    if len(train_chips) < 2:
        raise ValueError(f"{opts.data}: need at least 2 training chips, have {len(train_chips)}")
    stats = merge_moments([moments[c.id] for c in train_chips])
    per_class = {classes[i]: {"train": sum(c.label == i for c in train_chips),
                              "val": sum(c.label == i for c in val_chips)} for i in classes}
    meta = _head_meta(opts, enc, cfg, classes, stats, per_class)
    if opts.finetune:
        return {**_finetune_chips(run_dir, enc, lm, state, train_chips, val_chips, stats, opts, cfg, meta, settings,
                                  split), "errors": errors}
    xt, yt = embed_chips(enc, train_chips, stats[0], stats[1], cfg)
    xv, yv = embed_chips(enc, val_chips, stats[0], stats[1], cfg)
    if opts.head == "knn":
        summary = _knn(run_dir, xt, yt, xv, yv, len(classes), opts, meta, settings, split, device)
    else:
        summary = _linear(run_dir, lm, xt, yt, xv, yv, opts, meta, settings, split)
    return {**summary, "errors": errors}


def _open(run_dir: Path, head: str, dim: int, classes: int, device):
    """The linear probe to train (``last.pt``'s when resuming); None for kNN (built from the features)."""
    from imagingflows.models.backend import LoadedModel
    from imagingflows.models.heads import LINEAR_SPEC, LinearProbe
    from imagingflows.pipelines import fit

    if head == "knn":
        return None
    config = {"dim": dim, "classes": classes}
    return fit.open_run(run_dir, lambda: LoadedModel(LinearProbe(dim, classes).to(device), LINEAR_SPEC, config,
                                                      None, None, {}, device), device)


def _guard(run_dir: Path, lm, settings: dict) -> dict | None:
    """``last.pt``'s training state (None: a fresh folder) after refusing other settings, before any chip is
    read. A kNN run is guarded the same way (its ``last.pt`` records the settings too)."""
    from imagingflows.models.checkpoints import read_checkpoint
    from imagingflows.pipelines import fit
    from imagingflows.pipelines.train_common import check_resume

    if lm is not None:
        return _same_mode(run_dir, fit.resume_state(run_dir, lm, settings), settings)
    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    state = read_checkpoint(last).meta.get("train_state")
    check_resume(run_dir, (state or {}).get("settings"), settings)
    return _same_mode(run_dir, state, settings)


def _same_mode(run_dir: Path, state: dict | None, settings: dict) -> dict | None:
    """``state``, after refusing a frozen run in a ``--finetune`` folder and the reverse (a frozen run's
    settings have no ``finetune`` key, so :func:`check_resume` alone would let either through)."""
    saved = bool(((state or {}).get("settings") or {}).get("finetune", False))
    if state is not None and saved != bool(settings.get("finetune", False)):
        raise ValueError(f"{run_dir} holds a training run started with other settings: finetune {saved!r} (asked "
                         f"now: {not saved!r}); give a new --output folder, or the run's own settings to resume it")
    return state


def feature_batches(xt, yt, batch: int, seed: int):
    """``fit``'s batch factory over cached features: ``start_epoch -> draw() -> (x (batch, D), y (batch,))``,
    random rows from a generator seeded by the epoch the run starts at (a resumed run draws as it would have)."""
    import torch

    def batches(start_epoch: int):
        gen = torch.Generator().manual_seed(seed * 1000 + start_epoch)

        def draw():
            idx = torch.randint(len(yt), (batch,), generator=gen)
            return xt[idx], yt[idx]
        return draw
    return batches


def _linear(run_dir, lm, xt, yt, xv, yv, opts: ClassifyTrain, meta: dict, settings: dict, split: dict) -> dict:
    """Cross-entropy on random batches of the cached training features, through :func:`fit.fit`."""
    import torch.nn.functional as F

    from imagingflows.pipelines import fit

    batches = feature_batches(xt, yt, min(opts.batch_size, len(yt)), opts.seed)  # BatchNorm needs >= 2 values

    return fit.fit(
        lm, run_dir, optimizer=fit.AdamW(opts.lr), batches=batches, loss=F.cross_entropy,
        validate=lambda net: held_out(net, xv, yv, len(split["val"])), score=_score(), settings=settings, meta=meta, split=split,
        epochs=opts.epochs, steps=opts.steps_per_epoch,
        curve={"loss_label": "train loss (cross-entropy)", "series": {"held-out accuracy": "val_accuracy"},
               "ylabel": "held-out accuracy", "ylim": (0.0, 1.0)},
        describe=lambda v: f"held-out accuracy {v.get('accuracy', math.nan):.3f}")


def _knn(run_dir, xt, yt, xv, yv, classes: int, opts: ClassifyTrain, meta: dict, settings: dict, split: dict,
         device) -> dict:
    """The bank is the training features; scored on the held-out chips; best.pt = last.pt (no epochs)."""
    import torch

    from imagingflows.models.backend import LoadedModel
    from imagingflows.models.checkpoints import save_checkpoint
    from imagingflows.models.heads import KNN_SPEC, KnnProbe, knn_config
    from imagingflows.pipelines import fit

    if len(yt) > opts.bank_size:  # a seeded sample keeps the bank (and each query's similarities) bounded
        keep = torch.randperm(len(yt), generator=torch.Generator().manual_seed(opts.seed))[:opts.bank_size]
        xt, yt = xt[keep.sort().values], yt[keep.sort().values]
    probe = KnnProbe(xt, yt, classes, k=opts.k, temperature=opts.temperature).to(device)
    val = held_out(probe, xv, yv, len(split["val"]))
    ck_meta = {**meta, **{k: v for k, v in val.items() if k != "accuracy"}, "history": [], "split": split}
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    for path, extra in ((best_path, {}), (last_path, {"train_state": {"epoch": 0, "history": [], "split": split,
                                                                       "settings": settings}})):
        save_checkpoint(path, probe, arch="knn_probe", config=knn_config(probe), meta={**ck_meta, **extra})
    lm = LoadedModel(probe, KNN_SPEC, knn_config(probe), str(best_path), None, ck_meta, device)
    return fit.summary(lm, [], val.get("accuracy", -math.inf), _score(), split, best_path, last_path)


# ----------------------------------------------------------------------------- --finetune

def finetune_settings(opts: ClassifyTrain, settings: dict) -> dict:
    """The frozen linear probe's resume settings plus what fine-tuning adds (the loop's optimizer included)."""
    return {**settings, "finetune": True, "encoder_lr": float(opts.encoder_lr or opts.lr / 10), "weight_decay": 0.0,
            "betas": [0.9, 0.999], "grad_clip": None}


def tuned_logits(encoder, head, x, keep, res: float, level: str, pool: str):
    """``x (B, C, T, T)`` through the encoder and the head, with gradients. ``keep (B, N)`` bool: the patches
    that count (valid at tile level, for the mean pool; valid and labelled at patch level). Returns logits
    ``(B, K)`` at tile level, ``(M, K)`` for the ``M = keep.sum()`` kept patches (row-major) at patch level."""
    import torch

    tokens = encoder.forward_features(x, torch.full((len(x),), res, dtype=torch.float32, device=x.device))
    if level == "patch":
        return head(tokens[:, 1:][keep])
    if pool == "cls":
        return head(tokens[:, 0])
    w = keep.float()[..., None]  # (B, N, 1)
    return head((tokens[:, 1:] * w).sum(1) / w.sum(1).clamp_min(1))


def chip_batches(chips: list[Chip], mean: np.ndarray, std: np.ndarray, cfg: dict, batch: int, seed: int):
    """The fine-tune batch factory over chips read from disk: ``start_epoch -> draw() -> (x (B, C, T, T),
    keep (B, N) bool, y)``, ``y`` the chips' labels ``(B,)`` at tile level, ``(B, N)`` per patch (the chip's
    label, :data:`NO_TARGET` on invalid patches) at patch level; random chips from a generator seeded by
    the epoch the run starts at."""
    import torch

    from imagingflows.pipelines.remote_sensing import patch_validity

    def batches(start_epoch: int):
        gen = torch.Generator().manual_seed(seed * 1000 + start_epoch)

        def draw():
            part = [chips[i] for i in torch.randint(len(chips), (batch,), generator=gen).tolist()]
            read = [read_chip(c, cfg["tile"], cfg["bands"], cfg["nodata"], cfg["channels"]) for c in part]
            keep = torch.from_numpy(patch_validity(np.stack([v for _, v in read]), cfg["patch_size"]))
            labels = torch.tensor([c.label for c in part])
            y = labels if cfg["level"] == "tile" else torch.where(keep, labels[:, None], NO_TARGET)
            return torch.from_numpy(normalise(read, mean, std)), keep, y
        return draw
    return batches


def _finetune_chips(run_dir: Path, enc, head, state, train_chips, val_chips, stats, opts, cfg: dict, meta: dict,
                    settings: dict, split: dict) -> dict:
    """Tile-level (and chip patch-level) fine-tuning: batches of chips read again, the held-out chips
    re-embedded by the current encoder each epoch and scored as the frozen probe is."""
    batches = chip_batches(train_chips, stats[0], stats[1], cfg, min(opts.batch_size, len(train_chips)), opts.seed)
    return finetune_fit(
        enc, head, run_dir, state=state, opts=opts, cfg=cfg, batches=batches,
        validate=lambda net: held_out(net, *embed_chips(enc, val_chips, stats[0], stats[1], cfg), len(val_chips)),
        score=_score(), settings=settings, meta=meta, split=split,
        curve={"loss_label": "train loss (cross-entropy)", "series": {"held-out accuracy": "val_accuracy"},
               "ylabel": "held-out accuracy", "ylim": (0.0, 1.0)},
        describe=lambda v: f"held-out accuracy {v.get('accuracy', math.nan):.3f}")


def encoder_meta(enc, meta: dict, settings: dict) -> dict:
    """The fine-tuned encoder's meta: the original's, with the bands and normalisation it was fine-tuned with
    (the head's; the original's normalisation is kept under ``finetuned.from_normalization``)."""
    orig = {k: v for k, v in (enc.meta or {}).items() if k not in ("train_state", "history", "split")}
    return {**orig, "bands": meta["bands"] or orig.get("bands"), "normalization": meta["normalization"],
            "num_heads": enc.config.get("num_heads"),
            "finetuned": {"from": {"file": str(Path(enc.weights).resolve()), "sha256": enc.weights_sha256},
                          "from_normalization": orig.get("normalization"), "level": meta["level"],
                          "classes": meta["classes"], "data": meta["data"], "lr": settings["lr"],
                          "encoder_lr": settings["encoder_lr"]}}


def _resume_encoder(run_dir: Path, enc, head) -> None:
    """Load ``encoder_last.pt`` into ``enc`` after checking it is the encoder ``last.pt`` (``head``) records."""
    from imagingflows.models.checkpoints import load_strict, read_checkpoint

    path = run_dir / ENCODER_LAST
    if not path.is_file():
        raise ValueError(f"{run_dir / 'last.pt'} is a --finetune run but {path.name} is missing beside it: give a new "
                         "--output folder")
    ckpt = read_checkpoint(path)
    want = (head.meta.get("encoder") or {}).get("sha256")
    if ckpt.sha256 != want:
        raise ValueError(f"{path} is not the encoder {run_dir / 'last.pt'} records (SHA-256 {ckpt.sha256[:12]} vs "
                         f"{str(want)[:12]}; a run stopped while saving?): give a new --output folder")
    load_strict(enc.module, ckpt.state_dict, source=str(path))


def finetune_fit(enc, head, run_dir: Path, *, state: dict | None, opts, cfg: dict, batches, validate, score,
                 settings: dict, meta: dict, split: dict, curve: dict, describe) -> dict:
    """:func:`fit.fit`'s loop for an encoder and a linear head trained together; returns its summary plus
    ``encoder`` (the best epoch's encoder file).

    ``enc`` / ``head``: LoadedModels (``head`` read from ``last.pt`` when resuming, ``state`` its training
    state after the settings check); ``batches(start_epoch) -> draw() -> (x, keep, y)`` (:func:`chip_batches`);
    ``validate(head_module) -> {name: value}`` with the encoder's current weights (numbers go into the
    history, the rest into the meta). AdamW (no weight decay) with two groups, the head at ``lr`` and the
    encoder at ``encoder_lr``, each on the cosine schedule; fp32. Each epoch: ``encoder_last.pt``, copied to
    ``encoder_best.pt`` when the score improves, then ``best.pt`` / ``last.pt`` recording the matching file and
    SHA-256 (``last.pt`` also the optimizer state of both groups).
    """
    import shutil

    import torch
    import torch.nn.functional as F

    from imagingflows.models.atomic import atomic_path
    from imagingflows.models.checkpoints import save_checkpoint, sha256_file
    from imagingflows.pipelines import fit
    from imagingflows.pipelines.train_common import cosine_lr, plot_curves

    run_dir = Path(run_dir)
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    enc_best, enc_last = run_dir / ENCODER_BEST, run_dir / ENCODER_LAST
    if state:
        _resume_encoder(run_dir, enc, head)
    device, lr, encoder_lr = enc.device, settings["lr"], settings["encoder_lr"]
    encoder, probe = enc.module.to(device).float(), head.module.to(device)
    opt = torch.optim.AdamW([{"params": list(probe.parameters()), "lr": lr},
                             {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": encoder_lr}],
                            lr=lr, weight_decay=settings["weight_decay"], betas=tuple(settings["betas"]))
    history: list[dict] = state["history"] if state else []
    start = state["epoch"] if state else 0
    if state:
        opt.load_state_dict(state["optimizer"])
    meta = {**meta, "finetune": {"from_encoder": meta["encoder"], "lr": lr, "encoder_lr": encoder_lr}}
    enc_meta = encoder_meta(enc, meta, settings)
    best = max((h[score.key] for h in history if math.isfinite(h.get(score.key, math.nan))), default=-math.inf)
    draw = batches(start)
    epochs, steps = opts.epochs, opts.steps_per_epoch
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        probe.norm.reset_running_stats()  # this epoch's features only: the encoder moves
        encoder.train()
        probe.train()
        losses = []
        for s in range(steps):
            progress = (epoch * steps + s) / max(1, epochs * steps)
            for group, base in zip(opt.param_groups, (lr, encoder_lr)):
                group["lr"] = cosine_lr(base, progress)
            x, keep, y = (t.to(device) for t in draw())
            logits = tuned_logits(encoder, probe, x, keep, cfg["res"], cfg["level"], cfg["pool"])
            loss = F.cross_entropy(logits, y if y.ndim == 1 else y[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
        encoder.eval()
        val = validate(probe)
        numbers = {f"val_{k}": float(v) for k, v in val.items() if isinstance(v, (int, float, np.floating))}
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **numbers,
                        "seconds": round(time.perf_counter() - t0, 1), "lr": opt.param_groups[0]["lr"],
                        "encoder_lr": opt.param_groups[1]["lr"]})
        log.info("epoch %d/%d loss %.4f %s (fine-tuned encoder)", epoch + 1, epochs, history[-1]["loss"],
                 describe(val))
        ck_meta = {**meta, **{k: v for k, v in val.items() if f"val_{k}" not in numbers},
                   "history": history, "split": split}
        save_checkpoint(enc_last, encoder, arch=enc.spec.name, config=enc.config,
                        meta={**enc_meta, "finetuned": {**enc_meta["finetuned"], "epoch": epoch + 1}})
        sha = sha256_file(enc_last)
        now = numbers.get(score.key, math.nan)
        if now > best:  # False for NaN, as in fit
            best = now
            with atomic_path(enc_best) as tmp:
                shutil.copyfile(enc_last, tmp)
            save_checkpoint(best_path, probe, arch=head.spec.name, config=head.config,
                            meta={**ck_meta, "encoder": {"file": str(enc_best.resolve()), "sha256": sha}})
        save_checkpoint(last_path, probe, arch=head.spec.name, config=head.config, meta={
            **ck_meta, "encoder": {"file": str(enc_last.resolve()), "sha256": sha}, "train_state": {
                "epoch": epoch + 1, "optimizer": opt.state_dict(), "history": history, "split": split,
                "settings": settings}})
        plot_curves(history, run_dir / "training_curve.png", **curve)
    out = fit.summary(head, history, best, score, split, best_path, last_path)
    encoder_file = str(enc_best if best_path.is_file() else enc_last)
    result = {**out["result"], "encoder_checkpoint": encoder_file}
    return {**out, "result": result, "encoder": encoder_file,
            "headline": out["headline"] + f"; fine-tuned encoder -> {encoder_file}"}
