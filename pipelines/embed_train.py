"""Continued Scale-MAE pretraining on the user's scenes (``run-flow train embed``).

In:  ``--data``: scenes as ``embed`` finds them (GeoTIFF files, ``*_B<n>.tif`` band folders), optionally
     only ``--scenes``; ``--bands`` in the encoder's channel order (``red|B4,green|B3,blue|B2``: per
     position the first name a scene has, so one spec serves RGB files and Landsat folders).
     ``--weights``: an official pretraining file (``{"model": ...}``), TorchGeo's encoder-only file,
     one of our ``scale_mae`` checkpoints or a ``mae.pt`` written here; without it a fresh encoder
     of ``--embed-dim/--depth/--num-heads/--patch-size``.
Out: ``encoder.pt`` (our format: arch ``scale_mae``, config with ``num_heads``; meta: the training
     scenes' per-band ``normalization`` that ``embed`` applies, bands, the res convention, training
     record) for ``run-flow embed --weights``; ``encoder_official.pth`` = ``{"model": encoder
     state_dict}`` (official keys; loads with ``--arch scale_mae --num-heads N``); ``mae.pt`` =
     ``{"model": encoder + decoder state dict, "config", "meta"}`` (official key names; ``--weights``
     of a later run continues encoder and decoder); ``best.pt``/``last.pt`` (:func:`fit.fit`, resume).

Normalisation (``--normalization``): ``model``: one per-band mean/std measured on sampled valid pixels of
all the scenes (``raster_io.sample_band_stats``), recorded as ``meta.normalization`` for ``embed``;
``scene``: each scene by its own statistics (what ``embed`` measures for a model without them), for
scenes of different products or units; nothing recorded.

Recipe: every crop is a random square of side ``s`` (log-uniform in ``[min_scale, max_scale] x tile``,
read window by window), normalised, invalid pixels 0, area-resized to ``tile``;
``res = s / tile * base_res`` (so native pixels at the input size have ``res = base_res``, what
``embed`` uses by default: 1.0). Crops with more than ``max_nodata`` invalid pixels are redrawn; patches
holding invalid pixels do not count in the loss. The bottom ``val_fraction`` of every scene's rows is held
out: a fixed (seeded) set of crops there, with fixed masks, gives the validation loss; training crops come
from the rows above. MAE loss (mask ratio, ``norm_pix_loss``), AdamW(0.9, 0.95), cosine LR (:mod:`fit`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np

from imagingflows.pipelines.options import TrainOptions, option
from imagingflows.pipelines.remote_sensing_options import Bands
from imagingflows.tasks.ingest import InputError

log = logging.getLogger("imagingflows.train")
OFFICIAL_FILE, ENCODER_FILE, MAE_FILE = "encoder_official.pth", "encoder.pt", "mae.pt"


class EmbedTrain(TrainOptions):
    data: Path | None = option(None, "Scenes as embed reads them: GeoTIFF files and *_B<n>.tif band folders.",
                               output=True)
    weights: Path | None = option(None, "Continue from this encoder: an official Scale-MAE pretraining file, "
                                        "TorchGeo's encoder-only file, one of ours, or a mae.pt written here. "
                                        "Default: a fresh encoder (--embed-dim, --depth, --num-heads).",
                                  output=True)
    scenes: Bands | None = option(None, "Only these scenes (ids as embed names them, e.g. RGB.byte). Default: all.",
                                  metavar="ID1,ID2,...", output=True)
    bands: Bands | None = option(None, "Bands in the encoder's order, by index or name; 'red|B4' takes the first "
                                       "a scene has. Default: all, in order.", metavar="B1,B2,...", output=True)
    nodata: float | None = option(None, "Nodata value of every band, overriding the files'.", unit="data values",
                                  output=True)
    tile: int = option(64, "Encoder input side (a multiple of the patch size); crops are resized to it.",
                       unit="pixels", ge=16, output=True)
    embed_dim: int = option(96, "Fresh encoder: width (a multiple of 4 and of --num-heads).", unit="channels", ge=4, output=True)
    depth: int = option(4, "Fresh encoder: transformer blocks.", unit="blocks", ge=1, output=True)
    num_heads: int | None = option(None, "Attention heads (fresh encoder: default 4; --weights: needed when the "
                                         "width is not an official size).", unit="heads", ge=1, output=True)
    patch_size: int = option(16, "Fresh encoder: patch side.", unit="pixels", ge=2, output=True)
    decoder_dim: int = option(64, "Decoder width (a multiple of 4).", unit="channels", ge=4, output=True)
    decoder_depth: int = option(2, "Decoder blocks.", unit="blocks", ge=1, output=True)
    decoder_heads: int = option(4, "Decoder attention heads.", unit="heads", ge=1, output=True)
    mask_ratio: float = option(0.75, "Share of patches masked.", unit="fraction", gt=0, lt=1, output=True)
    base_res: float = option(1.0, "res of native pixels at the input size (embed's default res is 1.0).",
                             unit="relative scale", gt=0, output=True)
    min_scale: float = option(0.5, "Smallest crop side, as a multiple of --tile.", unit="x tile", gt=0, output=True)
    max_scale: float = option(2.0, "Largest crop side, as a multiple of --tile.", unit="x tile", gt=0, output=True)
    normalization: Literal["model", "scene"] = option(
        "model", "model: one per-band mean/std over every training scene, recorded in encoder.pt (embed applies it "
                 "to any scene); scene: each scene normalised by its own statistics and none recorded (embed then "
                 "measures each scene's own): for scenes of different products or units.", output=True)
    max_nodata: float = option(0.25, "Redraw crops with a larger share of invalid pixels.", unit="fraction", ge=0,
                               lt=1, output=True)
    val_crops: int = option(32, "Fixed held-out crops for the validation loss.", unit="crops", ge=1, output=True)
    val_fraction: float = option(0.2, "Bottom share of every scene's rows held out for validation.",
                                 unit="fraction", gt=0, lt=1, output=True)
    lr: float = option(5e-4, "Peak learning rate (AdamW(0.9, 0.95), cosine decay).", unit="per step", gt=0,
                       output=True)
    weight_decay: float = option(0.05, "AdamW weight decay.", unit="per step, x lr", ge=0, output=True)
    batch_size: int = option(32, "Crops per optimiser step.", unit="crops", ge=1, output=True)
    threads: int = option(0, "Torch CPU threads (0: every available core).", unit="threads", ge=0, output=False)


# ----------------------------------------------------------------------------- scenes

def open_scenes(opts: EmbedTrain, channels: int) -> list[tuple[str, object]]:
    """``[(scene id, RasterSource)]`` with the run's bands; no scene, or any scene that cannot give
    ``channels`` bands, is one error listing them all."""
    from imagingflows.pipelines.remote_sensing import discover, resolve_bands
    from imagingflows.tasks.raster_io import open_raster

    if opts.data is None or not Path(opts.data).is_dir():
        raise ValueError(f"--data {opts.data}: not a folder of scenes (GeoTIFF files or *_B<n>.tif band folders)")
    items, _ = discover(Path(opts.data), {})
    if opts.scenes:
        unknown = sorted(set(opts.scenes) - {i.id for i in items})
        if unknown:
            raise ValueError(f"--scenes: {', '.join(unknown)} not found in {opts.data} (scenes there: "
                             f"{', '.join(i.id for i in items) or 'none'})")
        items = [i for i in items if i.id in opts.scenes]
    if not items:
        raise ValueError(f"--data {opts.data}: no scenes (*.tif / *.tiff files or *_B<n>.tif band folders)")
    opened, bad = [], []
    for item in items:
        path = item.paths["scene"]
        try:
            src = open_raster(path, bands=resolve_bands(path, opts.bands), nodata=opts.nodata)
        except InputError as e:
            bad.append(str(e))
            continue
        if src.count != channels:
            bad.append(f"{path}: {src.count} bands ({', '.join(src.band_names)}) but the encoder takes {channels}")
        else:
            opened.append((item.id, src))
    if bad:
        raise ValueError("scenes the encoder cannot take (choose bands with --bands, scenes with --scenes): "
                         + "; ".join(bad))
    return opened


def band_stats(sources: list) -> tuple[np.ndarray, np.ndarray, int, list[str], dict]:
    """Per-band ``(mean (C,), std (C,), n, warnings, {scene: (mean, std)})`` over sampled valid pixels of every
    scene (merged moments) and of each; a warning when the scenes' spreads differ more than tenfold (different
    units or scaling: one normalisation cannot serve them all)."""
    from imagingflows.pipelines.classify_train import merge_moments
    from imagingflows.tasks.raster_io import sample_band_stats

    parts, spread, own = [], {}, {}
    for sid, src in sources:
        mean, std, n = sample_band_stats(src)
        if n:
            parts.append((n, np.asarray(mean, np.float64), np.asarray(std, np.float64) ** 2 * n))
            spread[sid] = float(np.max(std))
            own[sid] = (np.asarray(mean, np.float32), np.maximum(np.asarray(std, np.float32), 1e-6))
    if not parts:
        raise ValueError("the training scenes have no valid pixel")
    warnings = []
    if spread and max(spread.values()) > 10 * max(min(spread.values()), 1e-12):
        said = ", ".join(f"{sid} {v:.4g}" for sid, v in sorted(spread.items()))
        warnings.append(f"the scenes' value spreads differ more than tenfold (largest band std: {said}): they are in "
                        "different units or scalings, and the one normalisation the encoder records fits none "
                        "well; train on scenes of one product, or with --normalization scene")
    return (*merge_moments(parts), warnings, own)


# ----------------------------------------------------------------------------- crops

class CropSampler:
    """Random multi-scale crops of the scenes' rows ``[r0, r1)`` (train: above the held-out strip, val: in it).

    ``draw(rng, n) -> MaeInput`` of ``n`` crops: images ``(n, C, tile, tile)``, res ``(n,)``, noise ``(n, N)``,
    weight ``(n, N)`` (1 for patches without invalid pixels).
    """

    def __init__(self, sources: list, rows: dict[str, tuple[int, int]], stats: dict, opts: EmbedTrain,
                 patch: int, tile: int) -> None:
        side = self._min_side(opts, tile)
        self.sources = [(sid, src) for sid, src in sources if min(rows[sid][1] - rows[sid][0], src.width) >= side]
        self.rows, self.patch, self.tile, self.opts = rows, patch, tile, opts
        self.stats = {sid: (m[:, None, None], s[:, None, None]) for sid, (m, s) in stats.items()}  # per scene
        area = np.array([(rows[s][1] - rows[s][0]) * src.width for s, src in self.sources], float)
        self.p = area / area.sum() if len(area) else area

    @staticmethod
    def _min_side(opts: EmbedTrain, tile: int) -> int:
        return max(2, int(round(opts.min_scale * tile)))

    def crop(self, rng: np.random.Generator):
        """One crop: ``(x (C, tile, tile), res, valid (tile, tile) float)``."""
        import torch
        import torch.nn.functional as F

        from imagingflows.tasks.raster_io import TileWindow, read_tile

        opts, tile = self.opts, self.tile
        for _ in range(50):
            sid, src = self.sources[rng.choice(len(self.sources), p=self.p)]
            r0, r1 = self.rows[sid]
            hi = min(opts.max_scale * tile, r1 - r0, src.width)
            lo = min(opts.min_scale * tile, hi)
            side = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
            window = TileWindow(int(rng.integers(r0, r1 - side + 1)), int(rng.integers(0, src.width - side + 1)), side)
            pixels, valid = read_tile(src, window)
            if 1.0 - valid.mean() > opts.max_nodata:
                continue
            mean, std = self.stats[sid]
            x = torch.from_numpy(np.where(valid[None], (pixels - mean) / std, 0).astype(np.float32))[None]
            v = torch.from_numpy(valid.astype(np.float32))[None, None]
            mode = {"mode": "area"} if side >= tile else {"mode": "bilinear", "align_corners": False}
            x, v = F.interpolate(x, size=(tile, tile), **mode)[0], F.interpolate(v, size=(tile, tile), **mode)[0, 0]
            return x, side / tile * opts.base_res, v
        raise ValueError(f"found no crop with at most {opts.max_nodata:.0%} invalid pixels in 50 tries "
                         "(raise --max-nodata, or check the scenes' nodata)")

    def draw(self, rng: np.random.Generator, n: int):
        import torch

        from imagingflows.models.scale_mae_pretrain import MaeInput

        crops = [self.crop(rng) for _ in range(n)]
        g = self.tile // self.patch
        valid = torch.stack([c[2] for c in crops])  # (n, T, T)
        weight = (valid.reshape(n, g, self.patch, g, self.patch).amin(dim=(2, 4)) > 0.999).float().reshape(n, -1)
        return MaeInput(torch.stack([c[0] for c in crops]), torch.tensor([c[1] for c in crops], dtype=torch.float32),
                        torch.from_numpy(rng.random((n, g * g)).astype(np.float32)), weight)


def split_rows(sources: list, fraction: float) -> tuple[dict, dict]:
    """``(train rows, val rows)`` per scene: the bottom ``fraction`` of its rows held out."""
    train, val = {}, {}
    for sid, src in sources:
        cut = int(round(src.height * (1 - fraction)))
        train[sid], val[sid] = (0, cut), (cut, src.height)
    return train, val


# ----------------------------------------------------------------------------- model

def _start(opts: EmbedTrain) -> tuple:
    """``(ScaleMAEPretrain, config, start record)``: fresh, or the encoder (and a fitting decoder) of ``--weights``."""
    import torch

    from imagingflows.models import scale_mae
    from imagingflows.models.checkpoints import load_strict, read_checkpoint
    from imagingflows.models.scale_mae_pretrain import (SPEC, ScaleMAEPretrain, decoder_state_dict,
                                                        encoder_state_dict)

    decoder = {"decoder_embed_dim": opts.decoder_dim, "decoder_depth": opts.decoder_depth,
               "decoder_num_heads": opts.decoder_heads, "mask_ratio": opts.mask_ratio, "norm_pix_loss": True}
    torch.manual_seed(opts.seed)
    if opts.weights is None:
        enc = {**SPEC.default_config, "img_size": opts.tile, "patch_size": opts.patch_size, "embed_dim": opts.embed_dim,
               "depth": opts.depth, "num_heads": opts.num_heads or 4, "in_chans": _channels(opts)}
        config = {**{k: enc[k] for k in scale_mae.SPEC.default_config}, **decoder}
        return ScaleMAEPretrain(**config).init_weights(), config, {"from": "scratch"}
    ckpt = read_checkpoint(opts.weights, trust=opts.trust_checkpoint)
    if ckpt.ours and ckpt.arch != "scale_mae":
        raise ValueError(f"--weights {opts.weights} is a {ckpt.arch} model, not a Scale-MAE encoder")
    sd = encoder_state_dict(ckpt.state_dict)
    try:
        enc = dict(ckpt.config) if ckpt.ours else scale_mae.hparams_from_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"--weights {opts.weights}: {e}") from None
    if opts.num_heads:
        enc["num_heads"] = opts.num_heads
    if enc.get("num_heads") is None:
        raise ValueError(f"--weights {opts.weights}: width {enc['embed_dim']} is not an official Scale-MAE size and "
                         "the head count is not in the weights: pass --num-heads")
    config = {**enc, **decoder}
    model = ScaleMAEPretrain(**config).init_weights()
    encoder = scale_mae.ScaleMAEEncoder(**enc)
    load_strict(encoder, sd, source=str(opts.weights))
    model.load_state_dict(encoder.state_dict(), strict=False)
    dec = decoder_state_dict(ckpt.state_dict)
    own = decoder_state_dict(model.state_dict())
    fits = set(dec) == set(own) and all(dec[k].shape == own[k].shape for k in own)
    if fits:
        model.load_state_dict(dec, strict=False)
    return model, config, {"from": str(opts.weights), "sha256": ckpt.sha256,
                           "decoder": "from the weights" if fits else "fresh"}


def _channels(opts: EmbedTrain) -> int:
    """A fresh encoder's input channels: one per ``--bands`` entry, else the first scene's band count."""
    from imagingflows.pipelines.remote_sensing import discover, resolve_bands
    from imagingflows.tasks.raster_io import open_raster

    if opts.bands:
        return len(opts.bands)
    if opts.data is None or not Path(opts.data).is_dir():
        raise ValueError(f"--data {opts.data}: not a folder of scenes (GeoTIFF files or *_B<n>.tif band folders)")
    items = [i for i in discover(Path(opts.data), {})[0] if not opts.scenes or i.id in opts.scenes]
    if not items:
        raise ValueError(f"--data {opts.data}: no scenes (*.tif / *.tiff files or *_B<n>.tif band folders)")
    return open_raster(items[0].paths["scene"], nodata=opts.nodata).count


# ----------------------------------------------------------------------------- train

def _validate(net, batches: list) -> dict:
    """Weighted mean masked-patch loss over the fixed held-out batches; ``r2 = 1 - loss`` (the score:
    with ``norm_pix_loss`` predicting 0 scores about 0)."""
    import torch

    net.eval()
    total, count = 0.0, 0.0
    device = next(net.parameters()).device
    with torch.no_grad():
        for batch in batches:
            b = batch.to(device)
            loss, _, mask = net(b)
            n = float((mask * b.weight).sum())
            total, count = total + float(loss) * n, count + n
    loss = total / max(count, 1.0)
    return {"loss": loss, "r2": 1.0 - loss}


def train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    """Pretrain; returns :func:`fit.fit`'s summary with the encoder files added to ``result``."""
    import torch

    from imagingflows.models.backend import LoadedModel, available_cores, select_device
    from imagingflows.models.scale_mae_pretrain import SPEC
    from imagingflows.pipelines import fit

    opts = EmbedTrain.parse({**config, "data": str(data_dir) if data_dir else config.get("data"),
                             "output": str(run_dir)})
    torch.set_num_threads(opts.threads or available_cores())
    if opts.min_scale > opts.max_scale:
        raise ValueError(f"--min-scale {opts.min_scale} is larger than --max-scale {opts.max_scale}")
    run_dir = Path(run_dir)
    device = select_device(opts.device)
    t0 = time.perf_counter()
    model, cfg, start = _start(opts)
    patch, tile, channels = int(cfg["patch_size"]), int(opts.tile), int(cfg["in_chans"])
    if tile % patch:
        raise ValueError(f"--tile {tile} is not a multiple of the patch size {patch}")
    sources = open_scenes(opts, channels)
    train_rows, val_rows = split_rows(sources, opts.val_fraction)
    mean, std, n_pixels, warnings, own = band_stats(sources)
    if opts.normalization == "scene":
        warnings, stats = [], own
        missing = [sid for sid, _ in sources if sid not in own]
        if missing:
            raise ValueError(f"scenes without any valid pixel: {', '.join(missing)}")
    else:
        stats = {sid: (mean, std) for sid, _ in sources}
    for w in warnings:
        log.warning(w)
    train_crops = CropSampler(sources, train_rows, stats, opts, patch, tile)
    val_crops = CropSampler(sources, val_rows, stats, opts, patch, tile)
    for name, sampler, rows in (("training", train_crops, train_rows), ("held-out", val_crops, val_rows)):
        if not sampler.sources:
            raise ValueError(f"no scene has {name} rows for a {CropSampler._min_side(opts, tile)}-pixel crop "
                             f"(rows: {rows}); lower --tile or --min-scale, or change --val-fraction")
    val_rng = np.random.default_rng([opts.seed, 1])
    sizes = [min(opts.batch_size, opts.val_crops - s) for s in range(0, opts.val_crops, opts.batch_size)]
    val_batches = [val_crops.draw(val_rng, n) for n in sizes]
    lm = LoadedModel(model.to(device), SPEC, cfg, str(opts.weights) if opts.weights else None,
                     start.get("sha256"), {}, device)
    initial = _validate(lm.module, val_batches)["loss"]
    settings = {k: v for k, v in opts.to_config().items()
                if k in EmbedTrain.output_fields() and k not in ("lr", "weight_decay")}
    settings["weights_sha256"] = start.get("sha256")
    normalization = {"mean": mean.tolist(), "std": std.tolist(),
                     "from": f"training scenes ({n_pixels} sampled valid pixels)"}
    meta = {"normalization": normalization if opts.normalization == "model" else None,
            "normalization_per_scene": {sid: {"mean": m.tolist(), "std": s.tolist()} for sid, (m, s) in own.items()},
            "bands": list(opts.bands) if opts.bands else None,
            "band_names": {sid: list(src.band_names) for sid, src in sources}, "tile": tile,
            "res_convention": {"base": opts.base_res, "rule": "res = crop side / input side x base: native pixels "
                                                                "at the input size have res = base (embed's --res)"},
            "start": start, "data": str(opts.data), "scenes": [sid for sid, _ in sources]}
    split = {"train": [f"{s} rows {a}-{b}" for s, (a, b) in train_rows.items()],
             "val": [f"{s} rows {a}-{b}" for s, (a, b) in val_rows.items() if s in dict(val_crops.sources)],
             "seed": opts.seed}

    def batches(start_epoch: int):
        rng = np.random.default_rng([opts.seed, 2, start_epoch])
        return lambda: (train_crops.draw(rng, opts.batch_size), torch.zeros(1))

    summary = fit.fit(
        lm, run_dir, optimizer=fit.AdamW(opts.lr, opts.weight_decay, (0.9, 0.95)), batches=batches,
        loss=lambda out, _: out[0], validate=lambda net: _validate(net, val_batches),
        score=fit.Score("val_r2", "best_r2", "masked-patch R² (1 - loss)", digits=4, shown=".4f"),
        settings=settings, meta={**meta, "val_loss_initial": initial}, split=split, epochs=opts.epochs,
        steps=opts.steps_per_epoch, grad_clip=None,
        curve={"loss_label": "train loss (masked-patch MSE)", "series": {"held-out R²": "val_r2"},
               "ylabel": "held-out 1 - loss"},
        describe=lambda v: f"held-out loss {v['loss']:.4f}")
    files = export(run_dir, cfg, meta, summary, initial, time.perf_counter() - t0, opts)
    result = {**summary["result"], **files, **({"warnings": warnings} if warnings else {})}
    return {**summary, "result": result, **files,
            "headline": summary["headline"] + f"; encoder -> {files['encoder']}"}


def export(run_dir: Path, cfg: dict, meta: dict, summary: dict, initial: float, seconds: float,
           opts: EmbedTrain) -> dict:
    """The best checkpoint's encoder as ``encoder.pt`` and ``encoder_official.pth``, encoder + decoder as ``mae.pt``."""
    import torch

    from imagingflows.models.atomic import atomic_path
    from imagingflows.models.checkpoints import read_checkpoint, save_checkpoint
    from imagingflows.models.scale_mae import ScaleMAEEncoder
    from imagingflows.models.scale_mae_pretrain import ScaleMAEPretrain, encoder_config, encoder_state_dict

    best = read_checkpoint(summary["result"]["best_checkpoint"])
    model = ScaleMAEPretrain(**cfg)
    model.load_state_dict(best.state_dict)
    enc_cfg = encoder_config(cfg)
    encoder = ScaleMAEEncoder(**enc_cfg)
    encoder.load_state_dict(encoder_state_dict(model.state_dict()))
    history = summary["history"]
    best_row = max(history, key=lambda h: h.get("val_r2", -math.inf)) if history else {}
    training = {"data": str(opts.data), "scenes": meta["scenes"], "epochs": len(history),
                "steps": len(history) * opts.steps_per_epoch, "batch_size": opts.batch_size,
                "tile": opts.tile, "mask_ratio": opts.mask_ratio, "seconds_this_call": round(seconds, 1),
                "seconds_training": round(sum(h.get("seconds", 0) for h in history), 1),
                "val_loss_initial": round(initial, 5), "val_loss": round(best_row.get("val_loss", math.nan), 5),
                "best_epoch": best_row.get("epoch"), "start": meta["start"]}
    enc_meta = {k: v for k, v in meta.items() if k not in ("start", "data", "scenes")}
    enc_meta.update(training=training, num_heads=enc_cfg["num_heads"])
    run_dir = Path(run_dir)
    save_checkpoint(run_dir / ENCODER_FILE, encoder, arch="scale_mae", config=enc_cfg, meta=enc_meta)
    for name, obj in ((OFFICIAL_FILE, {"model": encoder.state_dict()}),
                      (MAE_FILE, {"model": model.state_dict(), "config": dict(cfg), "meta": enc_meta})):
        with atomic_path(run_dir / name) as tmp:
            torch.save(obj, tmp)
    return {"encoder": str(run_dir / ENCODER_FILE), "encoder_official": str(run_dir / OFFICIAL_FILE),
            "mae": str(run_dir / MAE_FILE), "val_loss_initial": training["val_loss_initial"],
            "val_loss": training["val_loss"]}
