"""Train our JDD network (joint demosaick-denoise, ``models/jdd.py``) on clean RGB images.

Training pairs are made on the fly from random crops of the clean images (90-degree rotations and
flips first):

* a share of the crops (``linear_share``) is converted from sRGB to linear light and darkened by a
  random exposure, as camera RAW data reach the network; the target is that linear crop;
* each crop is mosaicked with a pattern drawn from ``patterns`` (any of the four Bayer patterns),
  then noise is added on the [0, 1] mosaic: Gaussian of a std drawn per crop, uniform in the
  ``noise`` range (one crop in ``1 / CLEAN_SHARE`` gets the range's low end, with 0: clean), or
  Poisson-Gaussian (``noise_model="poisson-gaussian"``): variance ``a x + b`` at signal ``x`` with
  the std at mid-grey (x = 0.5) drawn from the range and split at random between shot (``a``) and
  read (``b``) noise; the mosaic is clipped to [0, 1] as a developed RAW is;
* the network gets the noise std map it would get at run time (the level, or ``sqrt(a x + b)``
  read from the noisy mosaic) and the crop read from the pattern's RGGB phase (a one-pixel shift,
  as :func:`imagingflows.models.jdd.demosaic_jdd` reads a window).

Validation: each held-out image (``--val-data``, else a seeded share of ``--data``), centre-cropped,
mosaicked (RGGB) and noised once per level with a fixed seed, is demosaicked whole and scored by
CPSNR (R, G and B together, a 4-pixel border left out), next to Menon 2007 on the same mosaic, so
each epoch shows the gain over the best classical method. The levels: the range's low end, 10/255
when inside the range, and its high end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: share of crops at the noise range's low end (clean crops when it starts at 0)
CLEAN_SHARE = 0.2
#: exposure range of the crops converted to linear light
LINEAR_GAIN = (0.25, 1.0)
BORDER = 4  # pixels per side left out of CPSNR (the evaluation's default)
PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


# ----------------------------------------------------------------------------- options

def parse_noise(value) -> tuple[float, float]:
    """``"0.02"`` -> (0.02, 0.02); ``"0-0.06"`` or ``"0..0.06"`` -> (0.0, 0.06); std on the [0, 1] scale."""
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    else:
        text = str(value).strip().replace("..", "-")
        parts = text.split("-") if "-" in text[1:] else [text]
    try:
        nums = [float(v) for v in parts]
    except ValueError:
        raise ValueError(f"--noise takes a std (0.02) or a range A..B (0..0.06) on the [0, 1] scale, "
                         f"got {value!r}") from None
    if len(nums) not in (1, 2) or not 0 <= nums[0] <= nums[-1] <= 0.5:
        raise ValueError(f"--noise must be a std or a range A..B with 0 <= A <= B <= 0.5, got {value!r}")
    return nums[0], nums[-1]


def parse_patterns(value) -> tuple[str, ...]:
    from imagingflows.models.cfa import check_pattern

    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = tuple(dict.fromkeys(check_pattern(p.strip()) for p in items if str(p).strip()))
    if not out:
        raise ValueError("--patterns needs at least one of RGGB, BGGR, GRBG, GBRG")
    return out


def val_levels(noise: tuple[float, float]) -> list[float]:
    """The validation noise levels: low end, 10/255 when inside the range, high end."""
    lo, hi = noise
    levels = {round(lo, 5), round(hi, 5)}
    if lo <= 10 / 255 <= hi:
        levels.add(round(10 / 255, 5))
    return sorted(levels)


# ----------------------------------------------------------------------------- pairs

def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def add_noise(mosaic: torch.Tensor, level: torch.Tensor, model: str, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy mosaic clipped to [0, 1], noise std map)`` for ``(B, 1, H, W)`` and levels ``(B,)``."""
    b = mosaic.shape[0]
    n = torch.randn(mosaic.shape, generator=gen)
    s = level.view(b, 1, 1, 1)
    if model == "gaussian":
        return (mosaic + s * n).clamp(0, 1), s.expand_as(mosaic).clone()
    if model != "poisson-gaussian":
        raise ValueError(f"noise model must be gaussian or poisson-gaussian, got {model!r}")
    shot_share = torch.rand(b, 1, 1, 1, generator=gen)
    a, r = shot_share * s ** 2 / 0.5, (1 - shot_share) * s ** 2  # std s at x = 0.5
    noisy = (mosaic + torch.sqrt(a * mosaic + r) * n).clamp(0, 1)
    return noisy, torch.sqrt(a * noisy + r)


def draw_levels(n: int, noise: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    lo, hi = noise
    s = lo + (hi - lo) * torch.rand(n, generator=gen)
    return torch.where(torch.rand(n, generator=gen) < CLEAN_SHARE, torch.full_like(s, lo), s)


def training_pairs(pool: list[torch.Tensor], batch: int, patch: int, cfg: dict, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(network input (B, 2, P, P), clean target (B, 3, P, P))``, P = ``patch`` (a multiple of 4)."""
    from imagingflows.models.cfa import mosaic as sample
    from imagingflows.models.jdd import native_shift
    from imagingflows.pipelines.restore_train import orient

    crops = []
    for _ in range(batch):
        img = pool[int(torch.randint(len(pool), (), generator=gen))]
        h, w = img.shape[1:]
        y = int(torch.randint(0, h - patch - 2 + 1, (), generator=gen))
        x = int(torch.randint(0, w - patch - 2 + 1, (), generator=gen))
        crop = img[:, y:y + patch + 2, x:x + patch + 2]
        crops.append(orient(crop, int(torch.randint(4, (), generator=gen)), bool(torch.randint(2, (), generator=gen))))
    clean = torch.stack(crops)  # (B, 3, P + 2, P + 2)
    linear = torch.rand(batch, generator=gen) < cfg["linear_share"]
    gain = LINEAR_GAIN[0] + (LINEAR_GAIN[1] - LINEAR_GAIN[0]) * torch.rand(batch, generator=gen)
    clean = torch.where(linear.view(-1, 1, 1, 1), srgb_to_linear(clean) * gain.view(-1, 1, 1, 1), clean)
    patterns = [cfg["patterns"][int(torch.randint(len(cfg["patterns"]), (), generator=gen))] for _ in range(batch)]
    mosaic = torch.cat([sample(clean[i:i + 1], p) for i, p in enumerate(patterns)])
    noisy, level = add_noise(mosaic, draw_levels(batch, cfg["noise"], gen), cfg["noise_model"], gen)
    inputs, targets = [], []
    for i, p in enumerate(patterns):
        dy, dx = native_shift(p)
        window = (slice(None), slice(dy, dy + patch), slice(dx, dx + patch))
        inputs.append(torch.cat([noisy[i][window], level[i][window]]))
        targets.append(clean[i][window])
    return torch.stack(inputs), torch.stack(targets)


# ----------------------------------------------------------------------------- validation

def cpsnr(pred: torch.Tensor, ref: torch.Tensor, border: int = BORDER) -> float:
    """CPSNR (dB) of ``(3, H, W)`` tensors, clipped to [0, 1]: the evaluation's own
    (:func:`imagingflows.pipelines.demosaic_evaluate.cpsnr`: one MSE over R, G and B, ``border`` px cut)."""
    from imagingflows.pipelines.demosaic_evaluate import cpsnr as score

    return score(pred.clamp(0, 1).permute(1, 2, 0).double().numpy(), ref.permute(1, 2, 0).double().numpy(), border)


def validation_set(images: list[torch.Tensor], noise: tuple[float, float], seed: int) -> list[dict]:
    """One entry per image and level: the RGGB mosaic (noised once, fixed seed), its level, the clean
    image and Menon 2007's CPSNR on the same mosaic."""
    from imagingflows.models.cfa import mosaic as sample
    from imagingflows.models.demosaic_methods import get_method

    gen, menon, out = torch.Generator().manual_seed(20_000 + seed), get_method("menon"), []
    for clean in images:
        m = sample(clean[None], "RGGB")
        for level in val_levels(noise):
            noisy = (m + level * torch.randn(m.shape, generator=gen)).clamp(0, 1)
            base = menon(noisy, "RGGB", tile=None)[0]
            out.append({"mosaic": noisy, "level": level, "clean": clean, "menon": cpsnr(base, clean)})
    return out


def validate(net: torch.nn.Module, val: list[dict]) -> dict:
    """Mean CPSNR of the network and of Menon over the validation set, and per level."""
    from imagingflows.models.jdd import demosaic_jdd

    net.eval()
    rows = []
    for v in val:
        pred = demosaic_jdd(v["mosaic"], "RGGB", net=net, tile=None, noise=v["level"])[0]
        rows.append((v["level"], cpsnr(pred, v["clean"]), v["menon"]))
    net.train()
    out = {"cpsnr": float(np.mean([r[1] for r in rows])), "menon_cpsnr": float(np.mean([r[2] for r in rows]))}
    out["gain_db"] = out["cpsnr"] - out["menon_cpsnr"]
    for level in sorted({r[0] for r in rows}):
        out[f"cpsnr_at_{level:g}"] = float(np.mean([r[1] for r in rows if r[0] == level]))
        out[f"menon_at_{level:g}"] = float(np.mean([r[2] for r in rows if r[0] == level]))
    return out


def _describe(v: dict) -> str:
    return "val CPSNR %.2f dB (Menon %.2f dB, gain %+.2f dB)" % (
        v.get("cpsnr", np.nan), v.get("menon_cpsnr", np.nan), v.get("gain_db", np.nan))


# ----------------------------------------------------------------------------- training

def _centre(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop of ``(3, H, W)`` to at most ``size``, sides multiples of 4."""
    h, w = (min(size, n) // 4 * 4 for n in x.shape[1:])
    y0, x0 = (x.shape[1] - h) // 4 * 2, (x.shape[2] - w) // 4 * 2
    return x[:, y0:y0 + h, x0:x0 + w]


def _model(config: dict, device: torch.device):
    from imagingflows.models.backend import LoadedModel, load
    from imagingflows.models.registry import get_spec

    if config.get("weights"):
        lm = load(config["weights"], trust=bool(config.get("trust_checkpoint")), device=str(device))
        if lm.spec.name != "jdd":
            raise ValueError(f"{config['weights']}: a {lm.spec.name} checkpoint; train demosaic trains jdd")
        return lm
    spec = get_spec("jdd")
    cfg = {**spec.default_config, **(config.get("arch_config") or {})}
    return LoadedModel(spec.build(**cfg).to(device), spec, cfg, None, None, {}, device)


def _images(folder: Path) -> dict[str, Path]:
    from imagingflows.pipelines.restore_train import list_images

    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in list_images(folder)}


def train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    """Train; returns the :func:`fit.fit` summary (``best_cpsnr``, ``gain_db`` over Menon, ``result`` ...)."""
    from imagingflows.models.backend import select_device
    from imagingflows.pipelines import fit
    from imagingflows.pipelines.restore_train import load_rgb

    if data_dir is None:
        raise ValueError("give --data: a folder of clean RGB images")
    cfg = {"noise": parse_noise(config.get("noise", "0-0.06")), "noise_model": config.get("noise_model", "gaussian"),
           "patterns": parse_patterns(config.get("patterns", PATTERNS)),
           "linear_share": float(config.get("linear_share", 0.2))}
    patch, batch = int(config.get("patch", 64)), int(config.get("batch_size", 16))
    if patch % 4:
        raise ValueError(f"--patch must be a multiple of 4, got {patch}")
    paths = _images(Path(data_dir))
    val_paths = _images(Path(config["val_data"])) if config.get("val_data") else {}
    if len(paths) < (1 if val_paths else 2):
        raise ValueError(f"{data_dir}: need at least {1 if val_paths else 2} images to train, found {len(paths)}")
    device = select_device(config.get("device", "cpu"))
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)  # before the scratch model is built: its initial weights
    run_dir = Path(run_dir)
    lm = fit.open_run(run_dir, lambda: _model(config, device), device)
    settings = {"noise": list(cfg["noise"]), "noise_model": cfg["noise_model"], "patterns": list(cfg["patterns"]),
                "linear_share": cfg["linear_share"], "lr": float(config.get("lr", 1e-3)), "batch_size": batch,
                "patch": patch, "weights": config.get("weights"), "val_data": config.get("val_data"),
                "arch_config": None if config.get("weights") else lm.config}
    state = fit.resume_state(run_dir, lm, settings)
    if state:
        split = {**state["split"], "seed": seed}
    elif val_paths:
        split = {"train": sorted(paths), "val": sorted(val_paths), "seed": seed}
    else:
        split = fit.run_split(None, list(paths), float(config.get("val_fraction", 0.2)), seed)
    val_from = val_paths or paths
    pool = [load_rgb(paths[i]) for i in split["train"]]
    small = [p for p in pool if min(p.shape[1:]) < patch + 2]
    if small:
        raise ValueError(f"{len(small)} training image(s) are smaller than --patch {patch} + 2 pixels")
    crop = int(config.get("val_crop", 192))
    val = validation_set([_centre(load_rgb(val_from[i]), crop) for i in split["val"]], cfg["noise"], seed)

    def batches(start_epoch: int):
        gen = torch.Generator().manual_seed(seed * 1000 + start_epoch)
        return lambda: training_pairs(pool, batch, patch, cfg, gen)

    profile = {"noise": list(cfg["noise"]), "noise_model": cfg["noise_model"], "patterns": list(cfg["patterns"]),
               "linear_share": cfg["linear_share"], "clean_share": CLEAN_SHARE, "val_levels": val_levels(cfg["noise"]),
               "val_border": BORDER, "input": "mosaic in [0, 1] (black subtracted, white = 1) + noise std map"}
    return {**fit.fit(
        lm, run_dir, optimizer=fit.AdamW(settings["lr"], weight_decay=0.0, betas=(0.9, 0.99)), batches=batches,
        loss=lambda y, t: (y - t).abs().mean(), grad_clip=1.0,
        validate=lambda net: validate(net, val) if val else {},
        score=fit.Score("val_cpsnr", "best_cpsnr", "CPSNR", unit="dB", digits=3, shown=".2f",
                        gain=("gain_over_menon_db", "val_gain_db")),
        settings=settings, split=split, epochs=int(config.get("epochs", 10)),
        steps=int(config.get("steps_per_epoch") or 100), describe=_describe,
        meta={"profile": profile, "data": str(data_dir), "val_data": config.get("val_data")},
        curve={"loss_label": "train loss (L1)", "series": {"JDD": "val_cpsnr", "Menon 2007": "val_menon_cpsnr"},
               "ylabel": "validation CPSNR (dB)"}), "errors": []}
