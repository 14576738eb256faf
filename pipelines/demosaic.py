"""The demosaic pipeline: single-channel CFA mosaics -> RGB images (classical and learned methods, torch).

In:  camera RAW / DNG files (``tasks/raw_io.py``, rawpy): the pattern from the file's ``raw_pattern`` +
     ``color_desc``, each site's black level, the camera white level, white balance (``--wb``) and
     LibRaw's camera -> sRGB matrix; and every PNG / TIFF as a mosaic: one channel, 8 or 16 bit, even
     height and width, a Bayer pattern stated with ``--pattern`` (named by the physical top-left 2 x 2
     block: ``models/cfa.py`` is the one place that converts to OpenCV / kornia / rawpy naming);
     ``--black`` is subtracted and ``--white`` maps to 1.0 (default: the level the file declares, PNG
     sBIT or TIFF MaxSampleValue, else the container's maximum); values are clipped to [0, 1].
Out: ``<name>.tif`` (16-bit RGB) or ``<name>.png`` (``--format png``, 8-bit), written atomically. A RAW
     file is developed to sRGB: white balance (gains with G = 1), the camera matrix, then the sRGB
     tone curve with the sRGB ICC profile embedded, or linear sRGB with ``--linear`` (with a linear-sRGB
     ICC profile, ``tasks/icc.py``), cut to the default crop the file states after demosaicking the whole
     visible area (``--no-crop``: no cut; the preview always shows the whole area).
     A mosaic file stays in its own colour space and scale (no white balance,
     matrix or tone curve: the file carries none), no ICC profile;
     ``previews/<name>.png``: the mosaic in its CFA colours, the result, and a zoom on the region
     with the most detail (display only: scaled to the 99.5th percentile, gamma 1/2.2).
Methods: ``models/demosaic_methods.py`` (bilinear, Malvar 2004, Menon 2007, DemosaicNet, our JDD network), by
     tiles with a halo (memory: a tile), borders mirrored by whole CFA samples so each colour keeps its parity.
     JDD also denoises: it is told the noise std (``--noise``, else estimated per image and recorded).
X-Trans: a RAW file with a 6 x 6 Fujifilm CFA goes to DemosaicNet's X-Trans model (``--method demosaicnet``;
     the classical methods refuse it by name).
Reference mode (``--simulate``; ``run-flow evaluate demosaic --input rgb_gt/ --methods ...`` sets it): clean RGB
     images are mosaicked (``--pattern``, default RGGB), optionally made noisy (``--noise``), demosaicked by every
     ``--methods`` (LibRaw's ``rawpy-*`` too) and scored (CPSNR table): ``pipelines/demosaic_evaluate.py``.
Training: ``run-flow train demosaic`` trains JDD (``pipelines/demosaic_train.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from imagingflows.pipelines import demosaic_evaluate as reference
from imagingflows.pipelines.base import Pipeline
from imagingflows.pipelines.demosaic_options import DemosaicRun
from imagingflows.pipelines.demosaic_train_options import DemosaicTrain
from imagingflows.pipelines.engine_choice import choose_engine, engine_of
from imagingflows.tasks.ingest import InputError, Item
from imagingflows.tasks.raw_io import RAW_SUFFIXES

SUFFIXES = RAW_SUFFIXES + (".png", ".tif", ".tiff")

MOSAIC_SUFFIXES = (".png", ".tif", ".tiff")
PREVIEW_DIR = "previews"
PREVIEW_SIDE = 512  # longest side of each full-image panel of the preview
ZOOM = 64  # side of the zoomed detail, source pixels (shown x4)


def discover(input_dir: Path, config: dict) -> tuple[list[Item], list[tuple[str, str]]]:
    """One item per RAW/PNG/TIFF under ``input_dir`` (recursively, not in ``previews/``); id = relative path
    without its suffix. Reference mode: :func:`demosaic_evaluate.discover_references`."""
    if config.get("simulate"):
        return reference.discover_references(input_dir, config)
    from imagingflows.tasks.ingest import files_by_stem

    found, errors = files_by_stem(input_dir, SUFFIXES, skip=PREVIEW_DIR)
    return [Item(item_id, {("raw" if path.suffix.lower() in RAW_SUFFIXES else "mosaic"): str(path)})
            for item_id, path in found], errors


def _outputs(item_id: str, out_dir: Path) -> list[Path]:
    out = Path(out_dir)
    return [out / f"{item_id}.tif", out / f"{item_id}.png", out / PREVIEW_DIR / f"{item_id}.png"]


def expected_outputs(item_id: str, out_dir: Path) -> list[Path]:
    """The preview (the image's name depends on ``--format``: resume also checks the recorded outputs)."""
    return [Path(out_dir) / PREVIEW_DIR / f"{item_id}.png"]


def cleanup(item_id: str, out_dir: Path) -> None:
    for path in _outputs(item_id, out_dir):
        path.unlink(missing_ok=True)
    reference.cleanup_reference(item_id, out_dir)  # the item folder of reference mode (its own files only)


def prepare(config: dict) -> dict:
    """Run options (:class:`DemosaicRun`) -> config: the method looked up, the device checked."""
    from imagingflows.models.backend import select_device
    from imagingflows.models.demosaic_methods import engine_target, get_method

    cfg = DemosaicRun.parse(config).to_config()
    if cfg["simulate"]:
        cfg["device"] = str(select_device(cfg["device"]))
        return reference.prepare_references(cfg)
    device = select_device(cfg["device"])
    if cfg["precision"] == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (CPUs lack fast fp16 kernels); use bf16 or fp32")
    try:
        method = get_method(cfg["method"], weights=cfg.get("weights"), device=str(device))
        target = engine_target(cfg["method"], weights=cfg.get("weights"), device=str(device))
    except FileNotFoundError as e:  # no demo weights and no --weights
        raise ValueError(str(e)) from e
    if method.name == "demosaicnet":  # its weights are the installed package's: missing is a set-up error
        from imagingflows.models.demosaicnet import DemosaicNetError, package_weights

        try:
            package_weights()
        except DemosaicNetError as e:
            raise ValueError(str(e)) from e
    if target is not None:  # a learned method: its engine, measured once per batch
        choose_engine(cfg, target)
    weights, digest = method.weights or (None, None)
    cfg.update(model={"method": method.name, "description": method.description, "reference": method.reference,
                      "weights": weights}, weights_sha256=digest, device=str(device))
    return cfg


# ----------------------------------------------------------------------------- reading

def read_mosaic(path: str, cfg: dict) -> tuple[np.ndarray, dict, list[str]]:
    """``(mosaic float32 (H, W) in [0, 1], levels, warnings)``; anything that is not a usable mosaic is an
    :class:`InputError` naming the file."""
    from imagingflows.tasks.image_io import read_image

    img = read_image(path)
    warnings: list[str] = []
    if img.orientation_applied not in (0, 1):
        raise InputError(f"{path}: its orientation tag rotates the image, which would move the CFA: strip the "
                         "tag (a mosaic's pattern is defined on the stored pixels)")
    channels = img.array.shape[2]
    if channels != 1:
        raise InputError(f"{path}: has {channels} channels ({img.source_mode or 'colour'}): a colour image, not a "
                         "single-channel CFA mosaic")
    raw = img.array[..., 0]
    h, w = raw.shape
    odd = [name for name, n in (("height", h), ("width", w)) if n % 2]
    if odd:
        sizes = " and ".join(f"{name} {h if name == 'height' else w}" for name in odd)
        if not cfg["crop_odd"]:
            raise InputError(f"{path}: odd {sizes}: a Bayer mosaic has whole 2 x 2 blocks; --crop-odd drops the "
                             "last row/column")
        raw = raw[: h - h % 2, : w - w % 2]
        warnings.append(f"odd {sizes}: the last row/column was cropped (--crop-odd)")
    if cfg["pattern"] is None:
        raise InputError(f"{path}: a mosaic file does not say its CFA pattern: give --pattern RGGB|BGGR|GRBG|GBRG "
                         "(named by the top-left 2 x 2 block)")
    full = 255 if img.bit_depth == 8 else 65535
    white, white_from = (float(cfg["white"]), "--white") if cfg["white"] is not None else \
        ((float(img.level_hint[0]), img.level_hint[1]) if img.level_hint else (float(full), "container maximum"))
    black = float(cfg["black"] or 0.0)
    if white <= black:
        raise InputError(f"{path}: white level {white:g} ({white_from}) is not above the black level {black:g}")
    clipped = int((raw > white).sum())
    if clipped:
        warnings.append(f"{clipped} pixels above the white level {white:g} ({white_from}) were clipped")
    x = np.clip((raw.astype(np.float32) - black) / (white - black), 0.0, 1.0)
    return x, {"black": black, "white": white, "white_from": white_from, "bit_depth": img.bit_depth,
               "clipped": clipped}, warnings


def read_camera_raw(path: str, cfg: dict) -> tuple[np.ndarray, str, dict, list[str]]:
    """``(mosaic float32 (H, W) in [0, 1], pattern, development facts, warnings)`` of a RAW/DNG file."""
    from imagingflows.tasks.raw_io import is_xtrans, normalise, read_raw

    data = read_raw(path)
    warnings = []
    if is_xtrans(data.pattern) and cfg["method"] != "demosaicnet":
        raise InputError(f"{path}: a 6 x 6 X-Trans CFA ({data.pattern}): {cfg['method']} takes 2 x 2 Bayer "
                         "mosaics; --method demosaicnet demosaicks it with DemosaicNet's X-Trans model")
    if cfg["pattern"] and cfg["pattern"] != data.pattern:
        warnings.append(f"the file's CFA is {data.pattern}: --pattern {cfg['pattern']} applies to mosaic files only")
    x = normalise(data)
    h, w = x.shape
    if not is_xtrans(data.pattern) and (h % 2 or w % 2):
        x = x[: h - h % 2, : w - w % 2]
        warnings.append(f"the visible sensor area is {h} x {w}: the last odd row/column was cropped")
    gains, wb_from = (1.0, 1.0, 1.0), "none"
    if cfg["wb"] != "none":
        wanted = data.camera_wb if cfg["wb"] == "camera" else data.daylight_wb
        fallback = data.daylight_wb if cfg["wb"] == "camera" else None
        if wanted is not None:
            gains, wb_from = wanted, cfg["wb"]
        elif fallback is not None:
            gains, wb_from = fallback, "daylight"
            warnings.append("the file has no as-shot white balance: LibRaw's daylight values were used")
        else:
            warnings.append(f"the file has no {cfg['wb']} white balance: none applied")
    warnings.extend(data.notes)
    facts = {"black": data.black.tolist(), "white": data.white, "white_from": data.white_from,
             "wb": [round(g, 6) for g in gains], "wb_from": wb_from, "cam_to_srgb": data.cam_to_srgb.tolist(),
             "clipped": int((data.mosaic >= data.white).sum()),
             "crop": list(data.crop) if cfg["crop"] and data.crop else None}
    return x, data.pattern, facts, warnings


def develop(rgb: np.ndarray, facts: dict, linear: bool) -> np.ndarray:
    """Camera RGB ``(H, W, 3)`` -> white-balanced linear sRGB, then the sRGB tone curve unless ``linear``."""
    out = np.einsum("ij,hwj->hwi", np.asarray(facts["cam_to_srgb"], np.float32),
                    rgb * np.asarray(facts["wb"], np.float32)).clip(0, 1)
    if linear:
        return out
    return np.where(out <= 0.0031308, 12.92 * out, 1.055 * np.power(out, 1 / 2.4) - 0.055).astype(np.float32)


# ----------------------------------------------------------------------------- preview

def _display(rgb: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(rgb / max(scale, 1e-6), 0, 1) ** (1 / 2.2)


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """Decimate ``(H, W, 3)`` so its longest side is at most ``side`` (every k-th pixel)."""
    k = max(1, -(-max(image.shape[:2]) // side))
    return image[::k, ::k]


def save_preview(path: Path, mosaic: np.ndarray, rgb: np.ndarray, pattern: str, caption: str,
                 encoded: bool = False) -> Path:
    """Mosaic in CFA colours | result, above the same two at x4 on the most detailed ``ZOOM`` square;
    ``encoded``: ``rgb`` is already sRGB-encoded (shown as is), else linear (scaled and gamma'd)."""
    from imagingflows.models.cfa import masks
    from imagingflows.models.demosaicnet_xtrans import xtrans_masks
    from imagingflows.tasks.preview import before_after, detail_box
    from imagingflows.tasks.raw_io import is_xtrans
    from imagingflows.tasks.write import write_png

    site_masks = xtrans_masks if is_xtrans(pattern) else masks
    m = site_masks(pattern, *mosaic.shape).numpy().transpose(1, 2, 0)  # (H, W, 3) one-hot per site
    scale = float(np.percentile(mosaic, 99.5))
    cfa = _display(mosaic[..., None] * m, scale)
    out = np.clip(rgb, 0, 1) if encoded else _display(rgb, float(np.percentile(rgb, 99.5)))
    r, c = detail_box(rgb.mean(-1), ZOOM)
    period = 6 if is_xtrans(pattern) else 2
    r, c = r - r % period, c - c % period  # keep the zoom on whole CFA cells
    zoom = [np.repeat(np.repeat(a[r:r + ZOOM, c:c + ZOOM], 4, 0), 4, 1) for a in (cfa, out)]
    name = "X-Trans" if is_xtrans(pattern) else pattern
    top = before_after(_fit(cfa, PREVIEW_SIDE), _fit(out, PREVIEW_SIDE), labels=(f"mosaic ({name})", caption))
    bottom = before_after(*zoom, labels=(f"zoom x4 at row {r}, col {c}", "zoom x4"))
    width = max(top.shape[1], bottom.shape[1])
    pad = [np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255) for a in (top, bottom)]
    return write_png(path, np.concatenate([pad[0], np.full((6, width, 3), 255, np.uint8), pad[1]]))


# ----------------------------------------------------------------------------- process

def _method_for(cfg: dict, pattern: str):
    """The method for a pattern: DemosaicNet's X-Trans model for a 6 x 6 X-Trans cell, else the run's."""
    from imagingflows.models.demosaic_methods import LEARNED, XTRANS, get_method
    from imagingflows.tasks.raw_io import is_xtrans

    if is_xtrans(pattern):
        return XTRANS
    name = cfg["method"]
    return get_method(name, weights=cfg.get("weights") if name in LEARNED else None, device=cfg["device"],
                      engine=engine_of(cfg), precision=cfg.get("precision") or "fp32")


def process(item: Item, out_dir: Path, cfg: dict) -> dict:
    """Demosaic one mosaic; returns the manifest entry (outputs, summary, warnings)."""
    import torch

    from imagingflows.tasks.icc import linear_srgb_profile, srgb_profile
    from imagingflows.tasks.image_io import write_image
    from imagingflows.tasks.raw_io import Crop, apply_crop

    if cfg.get("simulate"):
        return reference.process_reference(item, out_dir, cfg)
    t0 = time.perf_counter()
    is_raw = "raw" in item.paths
    path = item.paths["raw" if is_raw else "mosaic"]
    if is_raw:
        mosaic, pattern, levels, warnings = read_camera_raw(path, cfg)
    else:
        (mosaic, levels, warnings), pattern = read_mosaic(path, cfg), cfg["pattern"]
    method = _method_for(cfg, pattern)
    start = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(mosaic)[None, None].to(cfg["device"])
        noise, noise_from = cfg.get("noise"), "--noise"
        if method.denoises and noise is None:
            from imagingflows.models.jdd import estimate_noise

            noise, noise_from = round(float(estimate_noise(x)[0]), 5), "estimated"
        rgb = method(x, pattern, tile=cfg["tile"], noise=noise)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    seconds = time.perf_counter() - start
    camera_rgb = rgb
    icc = None
    if is_raw:
        rgb = develop(rgb, levels, cfg["linear"])
        icc = linear_srgb_profile() if cfg["linear"] else srgb_profile()
    out = Path(out_dir)
    crop = Crop(*levels["crop"]) if is_raw and levels["crop"] else None  # the preview keeps the whole area
    written = apply_crop(rgb, crop)
    if cfg["format"] == "png":
        image, array = out / f"{item.id}.png", np.round(written * 255).astype(np.uint8)
    else:
        image, array = out / f"{item.id}.tif", np.round(written * 65535).astype(np.uint16)
    image.parent.mkdir(parents=True, exist_ok=True)
    write_image(image, array, icc_profile=icc)
    shown = rgb if is_raw and not cfg["linear"] else camera_rgb
    preview = save_preview(out / PREVIEW_DIR / f"{item.id}.png", mosaic, shown, pattern, method.name,
                           encoded=is_raw and not cfg["linear"])
    h, w = mosaic.shape
    entry = {
        "outputs": {"image": image.relative_to(out).as_posix(), "previews": [preview.relative_to(out).as_posix()]},
        "summary": {"height": h, "width": w, "method": method.name, "pattern": pattern,
                    "black": levels["black"], "white": levels["white"], "clipped": levels["clipped"],
                    "crop": levels.get("crop"), "output_size": list(array.shape[:2]),
                    **({"noise": noise, "noise_from": noise_from} if method.denoises else {}),
                    "output": ("linear sRGB" if cfg["linear"] else "sRGB") if is_raw else "as the mosaic"},
        "inference": {"white_from": levels["white_from"], "bit_depth_in": levels.get("bit_depth", 16),
                      **({"wb": levels["wb"], "wb_from": levels["wb_from"]} if is_raw else {}),
                      "seconds_per_megapixel": round(seconds / (h * w / 1e6), 3),
                      "seconds": round(time.perf_counter() - t0, 3)},
    }
    if warnings:
        entry["warnings"] = warnings
    return entry


def pipeline() -> Pipeline:
    return Pipeline(
        name="demosaic",
        description="Demosaicking: camera RAW/DNG and CFA mosaics to RGB (bilinear, Malvar 2004, Menon 2007, "
                    "DemosaicNet, our joint demosaick-denoise JDD)",
        discover=discover,
        prepare=prepare,
        process=process,
        expected_outputs=expected_outputs,
        run_options=DemosaicRun,
        cleanup=cleanup,
        derived_output_keys=("engine_outputs",),
        packages=("pillow", "tifffile", "rawpy"),
        evaluate=reference.evaluate_item,  # every method's output in the item folder vs the clean reference
        evaluate_summary=reference.summarize,  # the CPSNR table (cpsnr_table.md / .csv), printed by the CLI
        evaluate_config=reference.evaluate_config,
        evaluate_run_options={"simulate": True},  # `evaluate --input` runs reference mode
        find_prediction=reference.find_prediction,
        find_reference=reference.find_reference,
        references_in_input=True,
        metric_conventions=reference.metric_conventions,
        train=_train,
        train_options=DemosaicTrain,
    )


def _train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    from imagingflows.pipelines.demosaic_train import train

    return train(data_dir, run_dir, config)
