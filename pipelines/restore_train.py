"""Train or fine-tune the restore models (NAFNet for denoise/deblur, HAT for SR).

Two kinds of data:

* ``--data clean/``: clean images only; degraded/clean pairs are made on the fly from
  random crops (flips and 90-degree rotations first): Gaussian noise of ``sigma`` (on
  the 0-255 scale, clipped and rounded to 8 bit like a saved noisy image), a random
  Gaussian or motion blur (kornia), or a bicubic downscale by ``scale`` (antialiased,
  rounded to 8 bit).

  ``sigma`` is one level (``25``) or a range ``A-B`` (a blind denoiser): each crop draws
  its own level, uniform in [A, B], except one crop in ``1 / CLEAN_SHARE`` that gets A
  itself (with A = 0: clean crops, so the network learns to leave clean images alone). Gray
  crops (R = G = B) get the same noise in the three channels, as a gray file reaches the network.
  ``photometric``: before degrading, each crop (with probability ``PHOTOMETRIC["p"]``)
  gets a random gamma, contrast and brightness gain and is rounded to 8 bit: the target
  is that darker/flatter image, so the network learns to keep exposure (dark photos).
* ``--input degraded/ --reference clean/``: paired folders matched by file stem; crops
  are taken at the same place (``scale`` times larger in the reference for SR).

A seeded share of the images is held out for validation: each is degraded once with a
fixed seed, restored whole, and scored with the BasicSR recipe (``tasks.evaluate``),
next to the score of the degraded input itself (noisy or bicubic), so the gain in dB is
measured every epoch. ``last.pt`` / ``best.pt`` are written atomically; a killed run
resumes from ``last.pt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("denoise", "deblur", "sr")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SCRATCH = {  # small demo architectures (the official ones are far larger)
    "nafnet": {"img_channel": 3, "width": 16, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 2],
               "dec_blk_nums": [1, 1, 1], "local_train_size": None},
    "hat": {"in_chans": 3, "embed_dim": 48, "depths": [2, 2], "num_heads": [3, 3], "window_size": 8,
            "mlp_ratio": 2.0, "upscale": 2},
}


# ----------------------------------------------------------------------------- data

def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]; gray replicated, alpha dropped."""
    from imagingflows.tasks.image_io import read_image, to_float

    img = read_image(path)
    x = torch.from_numpy(to_float(img.color))
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def quantize8(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to the 8-bit grid (what a saved degraded image holds)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


#: share of crops that get the lowest level of a sigma range (clean crops when it starts at 0)
CLEAN_SHARE = 0.2
#: random exposure per crop (``--photometric``): probability, gamma, contrast and gain ranges
PHOTOMETRIC = {"p": 0.6, "gamma": (0.6, 1.8), "contrast": (0.5, 1.2), "gain": (0.05, 1.2)}


def parse_sigma(value) -> float | tuple[float, float]:
    """``25`` or ``"25"`` -> 25.0; ``"0-50"`` -> (0.0, 50.0). Levels on the 0-255 scale."""
    if isinstance(value, (list, tuple)):
        lo, hi = (float(v) for v in value)
    else:
        text = str(value).strip()
        parts = text.split("-") if "-" in text[1:] else [text]
        try:
            nums = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"--sigma takes a level (25) or a range A-B (0-50), got {value!r}") from None
        if len(nums) != 2 and len(nums) != 1:
            raise ValueError(f"--sigma takes a level (25) or a range A-B (0-50), got {value!r}")
        lo, hi = nums[0], nums[-1]
    if not (0 <= lo <= hi <= 255):
        raise ValueError(f"--sigma must satisfy 0 <= A <= B <= 255 on the 0-255 scale, got {value!r}")
    return lo if lo == hi else (lo, hi)


def draw_sigmas(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """``(n,)`` noise levels: uniform in [lo, hi], and ``lo`` for a ``CLEAN_SHARE`` of them."""
    s = lo + (hi - lo) * torch.rand(n, generator=gen)
    return torch.where(torch.rand(n, generator=gen) < CLEAN_SHARE, torch.full_like(s, lo), s)


def photometric(clean: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random exposure for some crops of ``(B, 3, H, W)`` on [0, 1]: gamma, contrast about the
    crop mean, brightness gain (log-uniform), clipped and rounded to 8 bit; others unchanged."""
    b = clean.shape[0]

    def uniform(lo, hi, log=False):
        u = torch.rand(b, 1, 1, 1, generator=gen)
        if log:
            return torch.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * u)
        return lo + (hi - lo) * u

    gamma = uniform(*PHOTOMETRIC["gamma"], log=True)
    contrast = uniform(*PHOTOMETRIC["contrast"])
    gain = uniform(*PHOTOMETRIC["gain"], log=True)
    apply = torch.rand(b, 1, 1, 1, generator=gen) < PHOTOMETRIC["p"]
    x = clean.clamp(0, 1) ** gamma
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = quantize8(((x - m) * contrast + m) * gain)
    return torch.where(apply, x, clean)


def degrade(clean: torch.Tensor, task: str, *, sigma, scale: int, gen: torch.Generator) -> torch.Tensor:
    """Degraded input for a clean batch ``(B, 3, H, W)``; SR returns ``(B, 3, H/scale, W/scale)``.

    ``sigma``: one level, or ``(lo, hi)``: a level per crop (:func:`draw_sigmas`).
    """
    if task == "denoise":
        if isinstance(sigma, (tuple, list)):
            levels = draw_sigmas(clean.shape[0], float(sigma[0]), float(sigma[1]), gen)
            noise = torch.randn(clean.shape, generator=gen) * (levels / 255.0).view(-1, 1, 1, 1)
            # a gray crop (R = G = B) gets one noise plane for all three, as a gray file reaches the
            # network (the pipeline replicates the noisy gray plane), so the blind level estimate holds there
            gray = (clean == clean[:, :1]).flatten(1).all(dim=1).view(-1, 1, 1, 1)
            noise = torch.where(gray, noise[:, :1].expand_as(noise), noise)
        else:
            noise = torch.randn(clean.shape, generator=gen) * (sigma / 255.0)
        return quantize8(clean + noise)
    if task == "sr":
        return quantize8(F.interpolate(clean, scale_factor=1 / scale, mode="bicubic", antialias=True,
                                       align_corners=False))
    if task == "deblur":
        from kornia.filters import gaussian_blur2d, motion_blur

        out = []
        for img in clean:
            if float(torch.rand((), generator=gen)) < 0.5:
                s = 0.8 + 2.2 * float(torch.rand((), generator=gen))
                out.append(gaussian_blur2d(img[None], (15, 15), (s, s), border_type="reflect"))
            else:
                length = 2 * int(torch.randint(2, 8, (), generator=gen)) + 1
                angle = torch.rand(1, generator=gen) * 360
                out.append(motion_blur(img[None], length, angle, torch.zeros(1), border_type="reflect"))
        return quantize8(torch.cat(out))
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def random_pairs(pool: list[tuple[torch.Tensor, torch.Tensor | None]], batch: int, patch: int, task: str,
                 cfg: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded (B,3,p',p'), clean (B,3,P,P)) crops; P = patch in output pixels."""
    scale = cfg["scale"] if task == "sr" else 1
    cleans, inputs = [], []
    for _ in range(batch):
        clean, degraded = pool[int(torch.randint(len(pool), (), generator=gen))]
        h, w = clean.shape[1:]
        p = min(patch, h - h % scale, w - w % scale)
        y = int(torch.randint(0, (h - p) // scale + 1, (), generator=gen)) * scale
        x = int(torch.randint(0, (w - p) // scale + 1, (), generator=gen)) * scale
        c = clean[:, y:y + p, x:x + p]
        d = degraded[:, y // scale:(y + p) // scale, x // scale:(x + p) // scale] if degraded is not None else None
        k, flip = int(torch.randint(4, (), generator=gen)), bool(torch.randint(2, (), generator=gen))
        c = orient(c, k, flip)
        d = orient(d, k, flip) if d is not None else None
        cleans.append(c)
        inputs.append(d)
    clean_b = torch.stack(cleans)
    if inputs[0] is None:
        if cfg.get("photometric"):
            clean_b = photometric(clean_b, gen)
        return degrade(clean_b, task, sigma=cfg["sigma"], scale=scale, gen=gen), clean_b
    return torch.stack(inputs), clean_b


def _centre_crop(x: torch.Tensor, size: int, multiple: int) -> torch.Tensor:
    """Centre crop of ``(C, H, W)`` to at most ``size``; sides and offsets multiples of ``multiple``.

    Aligned offsets keep an SR pair registered: the low-res crop of ``size / scale`` (multiple 1)
    maps exactly onto the high-res crop of ``size`` (multiple ``scale``).
    """
    h, w = (min(size, n) // multiple * multiple for n in x.shape[1:])
    y0, x0 = ((x.shape[1] - h) // 2 // multiple * multiple, (x.shape[2] - w) // 2 // multiple * multiple)
    return x[:, y0:y0 + h, x0:x0 + w]


def orient(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``(C, H, W)`` rotated ``k`` quarter turns, then flipped left-right when ``flip`` (training augmentation)."""
    x = torch.rot90(x, k, dims=(1, 2))
    return torch.flip(x, dims=(2,)) if flip else x


# ----------------------------------------------------------------------------- loss / validation

def loss_fn(name: str):
    if name == "psnr":  # NAFNet's PSNRLoss: -10 log10(MSE), per image, averaged
        return lambda y, t: 10 * torch.log10(((y - t) ** 2).mean(dim=(1, 2, 3)) + 1e-8).mean()
    if name == "charbonnier":
        return lambda y, t: torch.sqrt((y - t) ** 2 + 1e-6).mean()
    if name == "l1":
        return lambda y, t: (y - t).abs().mean()
    raise ValueError(f"loss must be psnr, charbonnier or l1, got {name!r}")


def baseline(degraded: torch.Tensor, task: str, scale: int, size: tuple[int, int]) -> torch.Tensor:
    """What the input alone gives: itself, or bicubic upsampling for SR."""
    if task != "sr":
        return degraded
    return F.interpolate(degraded, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def validate(net: torch.nn.Module, val: list[tuple[torch.Tensor, torch.Tensor]], task: str, scale: int) -> dict:
    """Mean PSNR/SSIM (BasicSR recipe) of the network and of the degraded baseline."""
    from imagingflows.tasks.evaluate import restore_metrics

    net.eval()
    rows = []
    with torch.inference_mode():
        for clean, degraded in val:
            pred = net(degraded[None]).clamp(0, 1)[0]
            base = baseline(degraded[None], task, scale, tuple(clean.shape[1:]))[0]
            ref = clean.permute(1, 2, 0).numpy()
            m = restore_metrics(pred.permute(1, 2, 0).numpy(), ref, task, scale)
            b = restore_metrics(base.permute(1, 2, 0).numpy(), ref, task, scale)
            rows.append((m["psnr"], m["ssim"], b["psnr"], b["ssim"]))
    net.train()
    psnr, ssim, bpsnr, bssim = np.mean(rows, axis=0)
    return {"psnr": float(psnr), "ssim": float(ssim), "input_psnr": float(bpsnr), "input_ssim": float(bssim),
            "gain_db": float(psnr - bpsnr), "recipe": m["recipe"]}


# ----------------------------------------------------------------------------- training

def val_levels(sigma) -> list[float]:
    """Validation noise levels: the level itself, or 10%, 50% and 100% of a range (not its clean end:
    the input's PSNR would be infinite)."""
    if not isinstance(sigma, (tuple, list)):
        return [sigma]
    lo, hi = sigma
    return sorted({round(lo + (hi - lo) * f, 3) for f in (0.1, 0.5, 1.0)})


def _profile(task: str, scale: int, cfg: dict) -> dict:
    """What the checkpoint was trained for (read back by people and the model card).

    A single sigma without photometric augmentation gives the same profile as before either existed.
    """
    sigma = cfg["sigma"] if task == "denoise" else None
    profile = {"task": task, "scale": scale, "sigma": list(sigma) if isinstance(sigma, tuple) else sigma}
    if isinstance(sigma, tuple):
        profile.update(blind=True, sigma_clean_share=CLEAN_SHARE, val_sigmas=val_levels(sigma))
    if cfg.get("photometric"):
        profile["photometric"] = {k: list(v) if isinstance(v, tuple) else v for k, v in PHOTOMETRIC.items()}
    return profile


def _data(config: dict, data_dir: Path | None) -> tuple[dict[str, Path], dict[str, Path]]:
    """{stem: clean path} and {stem: degraded path} (empty unless paired folders)."""
    if config.get("input") and config.get("reference"):
        ins = {p.stem: p for p in list_images(Path(config["input"]))}
        refs = {p.stem: p for p in list_images(Path(config["reference"]))}
        both = sorted(set(ins) & set(refs))
        return {s: refs[s] for s in both}, {s: ins[s] for s in both}
    found = list_images(Path(data_dir))
    return {p.relative_to(data_dir).with_suffix("").as_posix(): p for p in found}, {}


def _scratch_config(config: dict, task: str) -> dict | None:
    """The architecture config a run from scratch builds (None with ``--weights``)."""
    if config.get("weights"):
        return None
    arch = "hat" if task == "sr" else "nafnet"
    cfg = {**SCRATCH[arch], **(config.get("arch_config") or {})}
    if arch == "hat":
        cfg["upscale"] = int(config.get("scale", 2))
    return cfg


def _model(config: dict, task: str, device: torch.device):
    from imagingflows.models.backend import LoadedModel, load
    from imagingflows.models.registry import get_spec

    arch = "hat" if task == "sr" else "nafnet"
    if config.get("weights"):
        lm = load(config["weights"], trust=bool(config.get("trust_checkpoint")), device=str(device))
        if lm.spec.name != arch:
            raise ValueError(f"{config['weights']}: a {lm.spec.name} checkpoint; task {task} trains {arch}")
        return lm
    spec, cfg = get_spec(arch), _scratch_config(config, task)
    return LoadedModel(spec.build(**cfg).to(device), spec, cfg, None, None, {}, device)


def _val_pairs(clean_paths: dict, degraded_paths: dict, ids: list[str], task: str, cfg: dict, crop: int,
               seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(clean (3, H, W), degraded) per held-out image (per noise level for a sigma range), degraded once
    with a fixed seed; centred crops (whole forward passes of big images would dominate the epoch)."""
    scale, gen, val = cfg["scale"], torch.Generator().manual_seed(10_000 + seed), []
    for i in ids:
        clean = _centre_crop(load_rgb(clean_paths[i]), crop, scale)  # sides divisible by the scale
        if degraded_paths:
            val.append((clean, _centre_crop(load_rgb(degraded_paths[i]), crop // scale, 1)))
            continue
        for level in val_levels(cfg["sigma"]) if task == "denoise" else [cfg["sigma"]]:
            val.append((clean, degrade(clean[None], task, sigma=level, scale=scale, gen=gen)[0]))
    return val


def _describe(v: dict) -> str:
    return "val PSNR %.2f dB (input %.2f dB, gain %+.2f dB)" % (
        v.get("psnr", np.nan), v.get("input_psnr", np.nan), v.get("gain_db", np.nan))


def train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    """Train; returns the :func:`fit.fit` summary (``best_psnr``, ``gain_db``, ``result``, ``headline`` ...)."""
    from imagingflows.models.backend import select_device
    from imagingflows.pipelines import fit

    task = config.get("task", "denoise")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    scale = int(config.get("scale", 2)) if task == "sr" else 1
    cfg = {"sigma": parse_sigma(config.get("sigma", 25.0)), "scale": scale,
           "photometric": bool(config.get("photometric"))}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_paths, degraded_paths = _data(config, data_dir)
    if cfg["photometric"] and degraded_paths:
        raise ValueError("--photometric changes the clean crop before degrading it: it needs --data clean/ "
                         "(pairs made on the fly), not --input/--reference pairs")
    if len(clean_paths) < 2:
        raise ValueError(f"{data_dir or config.get('reference')}: need at least 2 images to train, "
                         f"found {len(clean_paths)}")
    device = select_device(config.get("device", "cpu"))
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)  # before the scratch model is built: its initial weights
    lm = fit.open_run(run_dir, lambda: _model(config, task, device), device)
    if task == "sr" and lm.config.get("upscale") != scale:
        raise ValueError(f"the model upscales x{lm.config.get('upscale')}, --scale is {scale}")
    batch, patch = int(config.get("batch_size", 8)), int(config.get("patch", 64))
    loss = config.get("loss", "psnr")
    settings = {"task": task, "scale": scale, "sigma": cfg["sigma"], "photometric": cfg["photometric"],
                "loss": loss, "lr": float(config.get("lr", 1e-3)), "batch_size": batch, "patch": patch,
                "weights": config.get("weights"), "arch_config": _scratch_config(config, task)}
    split = fit.run_split(fit.resume_state(run_dir, lm, settings), list(clean_paths),
                          float(config.get("val_fraction", 0.2)), seed)
    pool = [(load_rgb(clean_paths[i]), load_rgb(degraded_paths[i]) if degraded_paths else None)
            for i in split["train"]]
    val = _val_pairs(clean_paths, degraded_paths, split["val"], task, cfg, int(config.get("val_crop", 256)), seed)

    def batches(start_epoch: int):
        """Random (degraded, clean) crops: a stream seeded from the epoch the run starts at."""
        gen = torch.Generator().manual_seed(seed * 1000 + start_epoch)
        return lambda: random_pairs(pool, batch, patch, task, cfg, gen)

    return {**fit.fit(
        lm, run_dir, optimizer=fit.AdamW(settings["lr"], weight_decay=0.0, betas=(0.9, 0.9)), batches=batches,
        loss=loss_fn(loss), grad_clip=0.5, validate=lambda net: validate(net, val, task, scale) if val else {},
        score=fit.Score("val_psnr", "best_psnr", "PSNR", unit="dB", digits=3, shown=".2f",
                        gain=("gain_db", "val_gain_db")),
        settings=settings, split=split, epochs=int(config.get("epochs", 10)),
        steps=int(config.get("steps_per_epoch") or 100), describe=_describe,
        meta={"profile": _profile(task, scale, cfg), "data": str(data_dir or config.get("reference"))},
        curve={"loss_label": f"train loss ({loss})", "series": {"PSNR": "val_psnr", "input PSNR": "val_input_psnr"},
               "ylabel": "validation PSNR (dB)"}), "errors": []}
