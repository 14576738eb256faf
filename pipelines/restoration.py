"""The restore pipeline (2D image restoration): NAFNet for denoise/deblur, HAT for super-resolution.

In:  every PNG, JPEG and TIFF file under the input folder, recursively (hidden files and folders,
     and folders holding a ``run.json``, i.e. our own output trees, are skipped). One item per file;
     its id is the path relative to the input folder, suffix included (``sub/photo.jpg``).
     Files with another image suffix (``.webp``, ``.bmp``, ``.gif``, RAW ...) fail as items with a
     clear error; other files (``README.md``, ``.json`` ...) are ignored.
Out: ``<relative path>``: the restored image, same name, format, bit depth (8/16), channels (gray,
     gray + alpha, RGB, RGBA) and ICC profile as the input, size times ``scale`` for SR. A JPEG input
     is written as a **lossless PNG** (``photo.jpg`` -> ``photo.png``): writing JPEG would add a new
     round of compression artefacts on top of the restored image. ``previews/<relative path>.png``:
     a before/after crop pair side by side (for SR, the input crop upscaled bicubic beside the output).

Conventions (each applied conversion is listed in the item's ``notes`` in run.json):
- Colour only goes through the network; alpha is split off first. Denoise/deblur pass alpha through
  unchanged; SR upscales it separately with bicubic interpolation (Pillow, a = -0.5, clipped and rounded).
- Gray image, 3-channel model: the gray plane is replicated to R = G = B, and the output is the mean of
  the three output channels (rounded once, at the end). RGB image, 1-channel model: each colour plane
  is restored on its own (one batch of three planes).
- Precision ``auto`` is bf16 where the device computes it natively, else fp32 (resolved once, in
  run.json); a 16-bit image always runs in fp32 under ``auto`` (bf16 keeps about 8 significant bits).
- Engine (``engine``, :mod:`imagingflows.models.engines`): eager, channels-last, compile or auto, resolved
  once per batch (``config.engine_used`` in run.json: asked for, used, why, the measurements against eager
  fp32); each item's ``inference.engine`` says what ran it (a compile failure falls back to eager, noted).
- NAFNet runs on the whole image when it fits a pixel budget (its channel attention pools over the
  whole image) and in overlapping tiles otherwise; the budget is about 2 GiB of activations
  (``whole_max_pixels``, from the model width unless given). In tiles, a first pass measures the
  whole-image channel means and the second uses them (``pool_passes``, default 1; 0 lets each tile
  pool over itself: half the time, measured 43 dB instead of 52 dB PSNR against the whole-image
  output). HAT always runs in tiles (its attention is local, so tiles with ``overlap`` pixels of
  context agree closely with a whole-image forward; keep tile and overlap multiples of its window
  size, as the defaults 512 and 32 are). ``inference`` in run.json says what ran.
- White level: a 16-bit file whose data use fewer bits (PNG ``sBIT``, TIFF ``MaxSampleValue`` /
  ``SMaxSampleValue``, or ``white_level`` / ``--white-level N``, which wins over the file) is divided by
  that level, not 65535, before the network, and written back on the same scale (values <= the level;
  the sBIT / MaxSampleValue is written too). ``inference.white_level`` and the notes say which level
  was used and why. 16-bit data that use 12 bits or fewer without any such hint get a note.
- A collapsed output (near-constant where the input has structure, or its mean or range far below
  the input's: a model that blanks the image) fails the item with the reason; nothing is written
  (:func:`check_collapse`; a flat input may give a flat output). ``collapse_check=False`` turns the
  check off (e.g. plumbing tests with random weights, whose outputs are near-constant).
- GeoTIFF inputs (GeoKeys, a transform, GCPs or a GDAL nodata tag; :func:`~imagingflows.tasks.image_io.read_geo`)
  keep their CRS, transform (SR: pixel size / scale, same origin; GCPs scaled), nodata and the GDAL metadata
  that still holds (band statistics and RPCs are dropped, noted). Nodata pixels (every band at the nodata value)
  are filled with the nearest valid pixel for the network, then written back as nodata (SR: the mask upscaled
  nearest); a valid pixel restored to the nodata value in every band is moved one count off it (noted).
- EXIF orientation is applied on reading (outputs are upright and carry no orientation tag); palette
  and CMYK images are converted to RGB (see :mod:`imagingflows.tasks.image_io`).
- Metrics (``evaluate``): PSNR/SSIM in the BasicSR recipe (:mod:`imagingflows.tasks.evaluate`), RGB
  (or gray) without crop for denoise/deblur, Y channel with ``crop_border = scale`` for SR; alpha is
  dropped. Predictions and references are matched by relative path without suffix.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np

from imagingflows.pipelines.base import Pipeline
from imagingflows.pipelines.engine_choice import choose_engine, engine_of
from imagingflows.pipelines.model_ref import model_of, resolve_model
from imagingflows.pipelines.restoration_options import RestoreRun, RestoreTrain
from imagingflows.tasks.collapse import check_collapse, collapse_reason  # noqa: F401 - collapse_reason: API
from imagingflows.tasks.ingest import InputError, Item

TASKS = ("denoise", "deblur", "sr")
TASK_ARCH = {"denoise": "nafnet", "deblur": "nafnet", "sr": "hat"}
#: task -> bundled demo weights name (``models/weights/<name>.pt``); ``{scale}`` is filled in for SR.
DEMO_WEIGHTS = {"denoise": "nafnet_denoise", "deblur": "nafnet_deblur", "sr": "hat_sr_x{scale}"}
DEFAULT_SR_SCALE = 2
DEMO_TRAINED_ON = ("14 small photographs bundled with scikit-image (public domain / CC0), degraded by our "
                   "train flow; a small demo model, not a tuned restorer: see models/weights/MODEL_CARD.md")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
#: image formats we recognise by name but do not read: such files fail as items (the others are ignored)
UNSUPPORTED_IMAGE_SUFFIXES = (
    ".bmp", ".gif", ".webp", ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".exr", ".hdr", ".pnm",
    ".ppm", ".pgm", ".pbm", ".psd", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw",
)
PREVIEW_DIR = "previews"
PREVIEW_CROP = 256  # side of the preview crop, output pixels
PREVIEW_MIN = 192  # smaller crops are enlarged (nearest) to at least this side

#: NAFNet runs whole when pixels <= budget / (bytes per pixel and width channel): ~32 bytes per
#: pixel and channel of width measured as the peak of a forward pass (fp32, inference mode).
WHOLE_BUDGET_BYTES = 2 * 1024 ** 3
NAFNET_BYTES_PER_PIXEL_AND_WIDTH = 32

#: keys prepare adds or resolves that change outputs (the option fields are hashed too): an explicit
#: bf16 also runs 16-bit images in bf16, where auto keeps them fp32
DERIVED_OUTPUT_KEYS = ("precision_requested", "model_overrides", "model_channels", "engine_outputs")
MODE_NAMES = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}


# ----------------------------------------------------------------------------- paths

def output_rel(item_id: str) -> str:
    """Output path (relative to the output folder) of the item ``item_id`` (its input's relative path).

    Same path and name; a JPEG becomes a PNG (``a/b.jpg`` -> ``a/b.png``): restored pixels are kept lossless.
    """
    p = PurePosixPath(item_id)
    if p.suffix.lower() in JPEG_SUFFIXES:
        p = p.with_suffix(".png")
    return p.as_posix()


def preview_rel(item_id: str) -> str:
    """``previews/<input relative path>.png`` (the input suffix is kept, so names never collide)."""
    return f"{PREVIEW_DIR}/{item_id}.png"


def expected_outputs(item_id: str, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [out_dir / output_rel(item_id), out_dir / preview_rel(item_id)]


def _is_preview_file(rel: PurePosixPath) -> bool:
    """A preview we wrote: ``previews/.../<name>.<image suffix>.png``."""
    return (rel.parts[0] == PREVIEW_DIR and rel.suffix.lower() == ".png"
            and PurePosixPath(rel.stem).suffix.lower() in IMAGE_SUFFIXES)


def _walk(folder: Path) -> list[Path]:
    """Files under ``folder``, recursively, sorted; hidden entries and our output trees (run.json) skipped.

    Folder symlinks are followed, each real folder once (a link back up the tree is not a loop).
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def visit(d: Path, top: bool) -> None:
        try:
            real = d.resolve()
            entries = sorted(d.iterdir())
        except OSError:
            return
        if real in seen:
            return
        seen.add(real)
        if not top and (d / "run.json").is_file():
            return  # an imagingflows output folder inside the input: never take outputs as inputs
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                visit(e, False)
            elif e.is_file():
                out.append(e)

    visit(Path(folder), True)
    return out


# ----------------------------------------------------------------------------- discover

def discover(input_dir: Path, config: dict) -> tuple[list[Item], list[tuple[str, str]]]:
    """One item per PNG/JPEG/TIFF file under ``input_dir`` (recursively); id = relative path."""
    input_dir = Path(input_dir)
    items: list[Item] = []
    errors: list[tuple[str, str]] = []
    claimed: dict[str, str] = {}  # output or preview path (case-folded) -> item id that writes it
    files = _walk(input_dir)
    if (input_dir / "run.json").is_file():  # an earlier output folder used as input: its previews are no inputs
        files = [p for p in files if not _is_preview_file(PurePosixPath(p.relative_to(input_dir).as_posix()))]
    # a file whose output keeps its own name claims that name before a JPEG mapped onto it
    files.sort(key=lambda p: (p.relative_to(input_dir).parts[0] == PREVIEW_DIR, p.suffix.lower() in JPEG_SUFFIXES,
                             p.as_posix()))
    for path in files:
        rel = path.relative_to(input_dir).as_posix()
        suffix = path.suffix.lower()
        if suffix in UNSUPPORTED_IMAGE_SUFFIXES:
            errors.append((rel, f"{path}: {suffix} images are not supported; expected PNG, JPEG or TIFF "
                                "(convert it, e.g. to a 16-bit PNG or TIFF, to keep its precision)"))
            continue
        if suffix not in IMAGE_SUFFIXES:
            continue
        out, preview = output_rel(rel), preview_rel(rel)
        clash = next(((kind, p) for kind, p in (("output", out), ("preview", preview)) if p.casefold() in claimed),
                     None)
        if clash is not None:
            errors.append((rel, f"{path}: its {clash[0]} {clash[1]} would overwrite the output of "
                                f"{claimed[clash[1].casefold()]}; rename one of the two files"))
            continue
        claimed[out.casefold()] = claimed[preview.casefold()] = rel
        items.append(Item(rel, {"image": str(path)}))
    items.sort(key=lambda i: i.id)
    return items, errors


# ----------------------------------------------------------------------------- model

def _demo_weights(task: str, scale: int) -> str:
    from imagingflows.models.backend import demo_weights

    name = DEMO_WEIGHTS[task].format(scale=scale)
    try:
        return str(demo_weights(name))
    except FileNotFoundError:
        raise ValueError(
            f"no bundled demo weights for --task {task}{f' --scale {scale}' if task == 'sr' else ''} "
            f"({name}.pt is not in imagingflows/models/weights); pass --weights PATH to a "
            f"{'HAT' if task == 'sr' else 'NAFNet'} checkpoint"
        ) from None


def _checkpoint_arch(weights: str, trust: bool) -> str:
    """Architecture name of a checkpoint, from our metadata or its keys (without building it)."""
    from imagingflows.models.checkpoints import read_checkpoint
    from imagingflows.models.registry import REGISTRY

    ckpt = read_checkpoint(weights, trust=trust)
    return ckpt.arch or REGISTRY.detect(ckpt.state_dict).name


def prepare(config: dict) -> dict:
    """Run options (:class:`RestoreRun`) -> resolved config: the model loaded once (fails early on a
    wrong checkpoint for the task), scale, channels, whole-image budget and precision resolved."""
    from imagingflows.models.engines import EngineTarget
    from imagingflows.models.sliding_window import resolve_precision

    cfg = RestoreRun.parse(config).to_config()
    task, scale = cfg["task"], cfg["scale"]
    demo = partial(_demo_weights, task, int(scale or DEFAULT_SR_SCALE))
    overrides = {}
    if cfg["nafnet_local"] is not None:
        local = [int(v) for v in cfg["nafnet_local"]]
        if not (min(local) >= 1 or local == [0, 0]):
            raise ValueError(f"--nafnet-local takes the training patch size H W (or 0 0 for plain NAFNet), "
                             f"got {local}")
        weights = cfg["weights"] or demo()
        arch = cfg["arch"] or _checkpoint_arch(weights, bool(cfg["trust_checkpoint"]))
        if arch != "nafnet":
            raise ValueError(f"--nafnet-local applies to NAFNet checkpoints; {weights} is a "
                             f"{ {'hat': 'HAT'}.get(arch, arch)} checkpoint")
        overrides["local_train_size"] = None if local == [0, 0] else local  # None: global pooling
    lm = resolve_model(cfg, pipeline="restore", demo=demo, trained_on=DEMO_TRAINED_ON, spatial_dims=2,
                       overrides=overrides)
    want = TASK_ARCH[task]
    if lm.spec.name != want:
        what = {"hat": f"a HAT super-resolution x{lm.config.get('upscale')} model",
                "nafnet": "a NAFNet (denoise/deblur) model"}.get(lm.spec.name, f"a {lm.spec.name} model")
        raise ValueError(f"{cfg['weights']} is {what}; --task {task} needs a {'HAT' if want == 'hat' else 'NAFNet'} "
                         "checkpoint")
    if task == "sr":
        upscale = lm.spec.scale_of(lm.config)
        if scale is not None and int(scale) != upscale:
            raise ValueError(f"{cfg['weights']} is a HAT x{upscale} model but --scale {scale} was given; "
                             f"pass --scale {upscale} or weights for x{scale}")
        scale = upscale
    else:
        scale = 1
    cfg.update(scale=scale, model_channels=lm.spec.channels_of(lm.config) or 3)
    if cfg["tile"] <= 2 * cfg["overlap"]:
        raise ValueError(f"--tile ({cfg['tile']}) must be larger than twice --overlap ({cfg['overlap']})")
    if lm.spec.whole_image_pooling:  # whole when it fits: tiles only approximate its whole-image pools
        if cfg["whole_max_pixels"] is None:  # what fits the budget for this width
            width = int(lm.config.get("width") or 32)
            cfg["whole_max_pixels"] = WHOLE_BUDGET_BYTES // (NAFNET_BYTES_PER_PIXEL_AND_WIDTH * width)
    else:
        cfg["whole_max_pixels"] = None  # local operators (HAT): always tiles, memory bounded by the tile
    # auto is resolved here, once, so run.json and the config hash name the path that ran
    cfg["precision_requested"] = cfg["precision"]
    cfg["precision"] = resolve_precision(cfg["precision"], lm.device)
    choose_engine(cfg, EngineTarget.of(lm))
    return cfg


def _channel_adapter(net, model_channels: int, image_channels: int):
    """``net`` made to take and return ``image_channels`` planes (see the module docstring)."""
    import torch

    if model_channels == image_channels:
        return net, None

    class GrayThroughColour(torch.nn.Module):  # (1, 1, h, w) -> R = G = B -> mean of the 3 outputs
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.expand(-1, 3, -1, -1)).float().mean(dim=1, keepdim=True)

    class ColourPlaneByPlane(torch.nn.Module):  # (1, 3, h, w) -> a batch of 3 gray planes -> (1, 3, ...)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            b, c, h, w = x.shape
            y = self.inner(x.reshape(b * c, 1, h, w))
            return y.reshape(b, c, *y.shape[-2:])

    if model_channels == 3 and image_channels == 1:
        return GrayThroughColour(net).eval(), ("gray image through a 3-channel model: replicated to R = G = B, "
                                               "output = mean of the 3 output channels")
    if model_channels == 1 and image_channels == 3:
        return ColourPlaneByPlane(net).eval(), "RGB image through a 1-channel model: each plane restored on its own"
    raise ValueError(f"a {model_channels}-channel model cannot restore a {image_channels}-channel image")


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """``(H, W)`` uint8/uint16 alpha -> ``(H*scale, W*scale)``, bicubic (Pillow, a = -0.5), clipped, rounded."""
    from PIL import Image

    h, w = alpha.shape
    up = Image.fromarray(alpha.astype(np.float32), mode="F").resize((w * scale, h * scale), Image.Resampling.BICUBIC)
    top = np.iinfo(alpha.dtype).max
    return np.rint(np.clip(np.asarray(up), 0, top)).astype(alpha.dtype)


def restore_array(color: np.ndarray, cfg: dict, white_level: int | None = None) -> tuple[np.ndarray, dict, list[str]]:
    """Colour planes ``(H, W, 1 or 3)`` uint8/uint16 -> restored ``(H*s, W*s, same C)`` of the same dtype.

    ``white_level``: the data's largest value when below the dtype's (e.g. 1023 for 10-bit data in
    uint16): the network sees ``color / white_level`` and the output is on the same scale (<= it).
    """
    from imagingflows.models.tiling import predict_tiles

    from imagingflows.models.engines import engine_module

    lm = model_of(cfg)
    engine = engine_module(lm.module, engine_of(cfg))
    net, note = _channel_adapter(engine, int(cfg["model_channels"]), int(color.shape[2]))
    notes = [note] if note else []
    precision = cfg.get("precision", "fp32")
    if color.dtype == np.uint16 and precision in ("bf16", "fp16") and cfg.get("precision_requested") == "auto":
        precision = "fp32"  # bf16 keeps 8 significant bits: a 16-bit output would lose its extra precision
        notes.append(f"16-bit image run in fp32 (precision auto: {cfg['precision']} would keep about 8 bits)")
    top = np.iinfo(color.dtype).max
    scaled = white_level is not None and int(white_level) != top
    out, run = predict_tiles(
        net, color.astype(np.float32) / np.float32(white_level) if scaled else color, scale=int(cfg["scale"]),
        tile=int(cfg["tile"]), overlap=int(cfg["overlap"]), device=lm.device, precision=precision,
        whole_max_pixels=cfg.get("whole_max_pixels"), pool_passes=int(cfg.get("pool_passes", 1)),
        grid=lm.spec.grid_of(lm.config), out_dtype=np.float32 if scaled else None,
    )
    record = {**run.as_dict(), "engine": engine.used}
    if engine.fallback:
        record["engine_fallback"] = engine.fallback
    if scaled:  # back on the data's own scale: rint(clip(y, 0, 1) * level), as predict_tiles does for uint
        out = np.rint(np.clip(out, 0, 1) * np.float32(white_level)).astype(color.dtype)
    expected = (color.shape[0] * cfg["scale"], color.shape[1] * cfg["scale"], color.shape[2])
    if out.shape != expected or out.dtype != color.dtype:
        raise RuntimeError(f"model output {out.shape} {out.dtype}, expected {expected} {color.dtype}")
    return out, record, notes


# ----------------------------------------------------------------------------- process one image

def process(item: Item, out_dir: Path, cfg: dict) -> dict:
    """Restore one image and write it (and its preview) atomically; returns the manifest entry.

    A failure leaves nothing under the item's output names (not even an earlier run's output of it).
    """
    try:
        return _process(item, Path(out_dir), cfg)
    except BaseException:
        for p in expected_outputs(item.id, out_dir):
            p.unlink(missing_ok=True)
        raise


def _process(item: Item, out_dir: Path, cfg: dict) -> dict:
    from imagingflows.tasks.image_io import (
        fewer_bits_hint, merge_alpha, put_nodata, read_image, split_alpha, upscale_mask, white_level, write_image,
    )

    t0 = time.perf_counter()
    lm = model_of(cfg)  # refuses weights replaced on disk since the batch started
    img = read_image(item.paths["image"], min_size=lm.spec.min_size)
    t_read = time.perf_counter()
    scale = int(cfg["scale"])
    work, invalid, nodata, geo_notes = _valid_pixels(img)  # work is img itself without nodata
    color, alpha = work.color, work.alpha
    level, level_why = white_level(work, cfg.get("white_level"))
    restored, inference, notes = restore_array(np.ascontiguousarray(color), cfg, white_level=level)
    inference = {**inference, "white_level": level, "white_level_source": level_why}
    if level != img.top:
        notes.insert(0, f"white level {level} ({level_why}): data normalised by {level}, not {img.top}, "
                        f"and written back in 0..{level}")
    hint = fewer_bits_hint(work, level)
    if hint:
        notes.insert(0, hint)
    if cfg.get("collapse_check", True):
        check_collapse(color, restored, level, scale, img.source, hint)
    else:
        notes.append("collapse check off (collapse_check False)")
    if alpha is not None:
        if scale == 1:
            notes.append("alpha passed through unchanged")
        else:
            a_level = level if int(alpha.max()) <= level else img.top
            alpha = np.minimum(upscale_alpha(alpha, scale), a_level).astype(alpha.dtype)
            notes.append(f"alpha upscaled x{scale} separately (bicubic, a = -0.5)")
    result = merge_alpha(restored, alpha)
    shown_in, shown_out = color, restored
    if invalid is not None:  # nodata pixels written back as nodata, the mask upscaled nearest for SR
        result, moved = put_nodata(result, upscale_mask(invalid, scale), nodata)
        shown_in, shown_out = img.color, split_alpha(result)[0]
        if moved:
            geo_notes.append(f"{moved} restored pixels came out as the nodata value {nodata} in every band and were "
                             "moved one count off it (they stay valid)")
    t_infer = time.perf_counter()

    out_rel, prev_rel = output_rel(item.id), preview_rel(item.id)
    if out_rel != item.id:
        notes.append(f"JPEG input written as lossless PNG ({out_rel})")
    geo = img.geo.scaled(scale) if img.geo is not None else None
    if geo is not None and geo.georeferenced:
        geo_notes.append(_georef_note(img.geo, geo, scale))
    notes.extend(geo_notes)
    write_image(out_dir / out_rel, result, like=img, white_level=level if level != img.top else None, geo=geo)
    save_preview(out_dir / prev_rel, shown_in, shown_out, scale, level)
    t_write = time.perf_counter()
    h, w = img.height, img.width
    return {
        "outputs": {"image": out_rel, "previews": [prev_rel]},
        "summary": {
            "size_in": f"{w}x{h}", "size_out": f"{w * scale}x{h * scale}", "bit_depth": img.bit_depth,
            "mode": MODE_NAMES[img.channels],
        },
        "timings": {
            "read": round(t_read - t0, 3), "infer": round(t_infer - t_read, 3), "write": round(t_write - t_infer, 3),
        },
        "input": img.info(),
        "inference": inference,
        "notes": list(img.notes) + notes,
    }


def _valid_pixels(img) -> tuple:
    """For a GeoTIFF with a nodata value: ``(img with its nodata pixels filled by the nearest valid pixel,
    invalid (H, W) bool, the nodata sample, notes)``, so the network sees no false edges at a nodata collar;
    else ``(img, None, None, [])``. A pixel is nodata when every band holds the value (GDAL's dataset mask)."""
    from dataclasses import replace

    from imagingflows.tasks.image_io import fill_nodata, nodata_mask, nodata_sample

    if img.geo is None or img.geo.nodata is None:
        return img, None, None, []
    value = nodata_sample(img.geo.nodata, img.array.dtype)
    if value is None:
        return img, None, None, [f"nodata {img.geo.nodata} cannot occur in {img.bit_depth}-bit samples: no pixel "
                                 "is nodata (the value is kept in the output)"]
    invalid = nodata_mask(img.array, value)
    n = int(invalid.sum())
    notes = [f"nodata {value}: {n} of {invalid.size} pixels ({100.0 * n / invalid.size:.1f}%) are nodata; "
             "restored from the valid pixels (nodata filled with the nearest valid pixel for the network) and "
             "written back as nodata"]
    return replace(img, array=fill_nodata(img.array, invalid)), invalid, value, notes


def _georef_note(before, after, scale: int) -> str:
    """What georeferencing the output carries, in words."""
    where = f"{after.crs_name or 'no CRS'}" + (f", {len(after.gcps)} ground control points" if after.gcps else "")
    if scale == 1:
        return f"georeferencing kept ({where}, same transform)"
    a0, a1 = before.transform[0], after.transform[0]
    return (f"georeferencing kept ({where}): pixel size / {scale} ({abs(a0):g} -> {abs(a1):g} map units), "
            "same origin")


def save_preview(path: Path, before: np.ndarray, after: np.ndarray, scale: int,
                 white_level: int | None = None) -> Path:
    """Before/after crop pair (the most detailed ``PREVIEW_CROP`` square of the output) as one PNG.

    ``before`` is the input colour ``(H, W, C)``; ``after`` the output ``(H*scale, W*scale, C)``. For SR
    the input crop is upscaled bicubic to the output's size, so the pair compares like with like.
    ``white_level``: the data's largest value (shown as white); default the dtype's.
    """
    from PIL import Image

    from imagingflows.tasks.preview import before_after, detail_box
    from imagingflows.tasks.write import write_png

    b8, a8 = _to_u8_rgb(before, white_level), _to_u8_rgb(after, white_level)
    side = max(scale, min(PREVIEW_CROP, a8.shape[0], a8.shape[1]) // scale * scale)  # output pixels
    r_in, c_in = detail_box(b8.mean(axis=2), side // scale)
    crop_in = b8[r_in:r_in + side // scale, c_in:c_in + side // scale]
    crop_out = a8[r_in * scale:r_in * scale + side, c_in * scale:c_in * scale + side]
    if scale > 1:
        crop_in = np.asarray(Image.fromarray(crop_in).resize((crop_out.shape[1], crop_out.shape[0]),
                                                             Image.Resampling.BICUBIC))
    k = max(1, -(-PREVIEW_MIN // max(1, min(crop_out.shape[:2]))))
    if k > 1:  # a tiny image: enlarge the pair (pixels stay visible)
        crop_in, crop_out = (np.repeat(np.repeat(a, k, axis=0), k, axis=1) for a in (crop_in, crop_out))
    labels = ("input", "output") if scale == 1 else (f"input (bicubic x{scale})", f"output x{scale}")
    return write_png(path, before_after(crop_in, crop_out, labels=labels))


def _to_u8_rgb(a: np.ndarray, white_level: int | None = None) -> np.ndarray:
    top = np.iinfo(a.dtype).max
    if white_level is not None and white_level != top:
        a = np.rint(np.clip(a.astype(np.float32) * (255.0 / white_level), 0, 255)).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = np.rint(a.astype(np.float32) / 257.0).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- evaluate

def metric_conventions(config: dict | None) -> str:
    from imagingflows.tasks.evaluate import recipe_label

    task = (config or {}).get("task")
    base = ("PSNR (dB) and SSIM with scikit-image in the BasicSR recipe: outputs rounded to the reference's "
            "bit depth, SSIM with an 11x11 Gaussian window (sigma 1.5), alpha dropped; ")
    if (config or {}).get("inputs"):
        base += ("psnr_input / ssim_input: the degraded input itself (sr: its bicubic upscaling) against the "
                 "reference, the baseline; gain_db = psnr - psnr_input; ")
    if task in TASKS:
        scale = int((config or {}).get("scale") or 1)
        return base + f"--task {task}: {recipe_label(task, scale)} (gray images: gray, same crop)."
    return base + "RGB, crop 0 for denoise/deblur; Y (BT.601, 16-235), crop = scale for sr."


def evaluate_config(predictions: Path, options: dict) -> dict:
    """Task and scale for scoring: the options, else the ``run.json`` of a restore run in ``predictions``.

    Where that run.json lists each output's input (a run made by ``evaluate --input``, or any restore
    run into ``predictions``), ``inputs`` maps each output (resolved path) to its input and the white
    level used, so :func:`evaluate_image` scores the degraded input too (the baseline).
    """
    cfg = dict(options or {})
    run_json = Path(predictions) / "run.json"
    recorded: dict = {}
    data: dict = {}
    if run_json.is_file():
        try:
            data = json.loads(run_json.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
        if data.get("pipeline") == "restore" and isinstance(data.get("config"), dict):
            recorded = {k: data["config"].get(k) for k in ("task", "scale")}
        else:
            data = {}
    for key in ("task", "scale"):
        if recorded.get(key) is None:
            continue
        if cfg.get(key) is None:
            cfg[key] = recorded[key]
        elif cfg[key] != recorded[key] and not (key == "scale" and recorded.get("task") != "sr"):
            raise ValueError(f"the predictions in {predictions} were made with --{key} {recorded[key]} "
                             f"(run.json) but --{key} {cfg[key]} was given")
    if cfg.get("task") not in TASKS:
        raise ValueError(f"give --task ({', '.join(TASKS)}): it picks the metric recipe "
                         f"({predictions} holds no restore run.json that says)")
    inputs = _recorded_inputs(Path(predictions), data)
    if cfg["task"] == "sr":
        if cfg.get("scale") is None:
            raise ValueError("give --scale for --task sr: the border crop of the metric is the scale")
        return {"task": "sr", "scale": int(cfg["scale"]), **({"inputs": inputs} if inputs else {})}
    return {"task": cfg["task"], "scale": 1, **({"inputs": inputs} if inputs else {})}


def _recorded_inputs(predictions: Path, run: dict) -> dict[str, dict]:
    """``{resolved output path: {"input": path, "white_level": int or None}}`` of a restore run.json's
    done items whose input file still exists."""
    found: dict[str, dict] = {}
    items = run.get("items") if isinstance(run.get("items"), dict) else {}
    for entry in items.values():
        if not isinstance(entry, dict) or entry.get("status") != "done":
            continue
        image = (entry.get("outputs") or {}).get("image")
        source = (entry.get("inputs") or {}).get("image")
        if isinstance(image, str) and isinstance(source, str) and Path(source).is_file():
            level = (entry.get("inference") or {}).get("white_level")
            found[str((predictions / image).resolve())] = {"input": source, "white_level": level}
    return found


def list_predictions(pred_dir: Path) -> list[str]:
    """Ids of the images in a predictions folder: the item ids of our run.json where it lists the file,
    else the file's relative path. Previews and hidden files are left out."""
    pred_dir = Path(pred_dir)
    by_output: dict[str, str] = {}
    run_json = pred_dir / "run.json"
    if run_json.is_file():
        try:
            items = json.loads(run_json.read_text()).get("items") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            items = {}
        for item_id, entry in items.items():
            image = ((entry or {}).get("outputs") or {}).get("image") if isinstance(entry, dict) else None
            if isinstance(image, str):
                by_output[image] = item_id
    ids = []
    for p in _walk_all(pred_dir):
        rel = PurePosixPath(p.relative_to(pred_dir).as_posix())
        if p.suffix.lower() in IMAGE_SUFFIXES and not _is_preview_file(rel):
            ids.append(by_output.get(rel.as_posix(), rel.as_posix()))
    return sorted(ids)


def _walk_all(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def find_prediction(pred_dir: Path, item_id: str) -> Path | None:
    for rel in (item_id, output_rel(item_id)):
        if (p := Path(pred_dir) / rel).is_file():
            return p
    return None


def find_reference(ref_dir: Path, item_id: str) -> Path | None:
    """The reference image with the same relative path, whatever its image suffix; None if none."""
    rel = PurePosixPath(item_id)
    folder = Path(ref_dir) / rel.parent
    stem = rel.stem if rel.suffix.lower() in IMAGE_SUFFIXES else rel.name
    if not folder.is_dir():
        return None
    hits = sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.stem == stem)
    if len(hits) > 1:
        same = [p for p in hits if p.suffix.lower() == rel.suffix.lower()]
        if len(same) == 1:
            return same[0]
        raise InputError(f"{item_id}: several references match in {folder}: {', '.join(p.name for p in hits)}; "
                         "expected one image per name")
    return hits[0] if hits else None


def evaluate_image(pred_path: str, ref_path: str, cfg: dict | None) -> dict:
    """PSNR/SSIM of one restored image against its reference, in the recipe of the task."""
    from imagingflows.tasks.evaluate import restore_metrics
    from imagingflows.tasks.image_io import read_image, white_level

    cfg = cfg or {}
    task, scale = cfg.get("task"), int(cfg.get("scale") or 1)
    if task not in TASKS:
        raise ValueError(f"restore metrics need the task ({', '.join(TASKS)}), got {task!r}")
    pred, ref = read_image(pred_path), read_image(ref_path)
    source = (cfg.get("inputs") or {}).get(str(Path(pred_path).resolve()))
    p, r = pred.color, ref.color
    if p.shape[2] != r.shape[2]:
        raise InputError(f"{pred_path}: {MODE_NAMES[p.shape[2]]} prediction but the reference {ref_path} is "
                         f"{MODE_NAMES[r.shape[2]]}; expected the same colour channels")
    if pred.bit_depth != ref.bit_depth:
        raise InputError(f"{pred_path}: {pred.bit_depth}-bit prediction but the reference {ref_path} is "
                         f"{ref.bit_depth}-bit; expected one bit depth")
    note = ""
    if p.shape != r.shape:
        dh, dw = r.shape[0] - p.shape[0], r.shape[1] - p.shape[1]
        if task == "sr" and 0 <= dh < scale and 0 <= dw < scale:
            r = r[: p.shape[0], : p.shape[1]]  # BasicSR: gt cropped to lq size x scale
            note = f"; reference cropped to {p.shape[1]}x{p.shape[0]} (size not a multiple of {scale})"
        else:
            raise InputError(f"{pred_path}: prediction is {p.shape[1]}x{p.shape[0]} but the reference {ref_path} is "
                             f"{r.shape[1]}x{r.shape[0]} (width x height); expected the same size")
    p_level = (source or {}).get("white_level") or white_level(pred)[0]
    r_level = white_level(ref)[0]
    if r_level == ref.top and p_level != pred.top and int(r.max()) <= p_level:
        r_level = p_level  # a reference without a declared level, on the prediction's scale
    if p_level != pred.top or r_level != ref.top:
        p, r = _full_scale(p, p_level), _full_scale(r, r_level)
        note += f"; white levels {p_level} (prediction) and {r_level} (reference) scaled to 0-65535"
    m = restore_metrics(p, r, task, scale)
    out = {"psnr": round(m["psnr"], 4), "ssim": round(m["ssim"], 5), "recipe": m["recipe"] + note}
    if source:
        base = _baseline(source["input"], task, scale, r.shape, source.get("white_level"))
        b = restore_metrics(base, r, task, scale)
        out.update(psnr_input=round(b["psnr"], 4), ssim_input=round(b["ssim"], 5),
                   gain_db=round(m["psnr"] - b["psnr"], 4))
    return out


def _full_scale(a: np.ndarray, level: int) -> np.ndarray:
    """``(H, W, C)`` uint data on 0..level -> uint16 on 0..65535 (for scoring images of other white levels)."""
    return np.rint(np.clip(a.astype(np.float64) / level, 0, 1) * 65535).astype(np.uint16)


def _baseline(input_path: str, task: str, scale: int, shape: tuple, level: int | None) -> np.ndarray:
    """The degraded input as a float ``(H, W, C)`` image on [0, 1] of the reference's ``shape``: itself
    (denoise, deblur) or its bicubic upscaling (sr; PyTorch bicubic, align_corners False, clipped)."""
    import torch
    import torch.nn.functional as F

    from imagingflows.tasks.image_io import read_image, white_level

    img = read_image(input_path)
    level = level or white_level(img)[0]
    x = img.color.astype(np.float32) / np.float32(level)
    if task == "sr":
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
        up = F.interpolate(t, size=(x.shape[0] * scale, x.shape[1] * scale), mode="bicubic", align_corners=False)
        x = up[0].clamp(0, 1).numpy().transpose(1, 2, 0)
    if x.shape[:2] != tuple(shape[:2]):
        if x.shape[0] < shape[0] or x.shape[1] < shape[1]:
            raise InputError(f"{input_path}: input is {x.shape[1]}x{x.shape[0]} ({'x' + str(scale) if scale > 1 else ''}"
                             f" upscaled), smaller than the reference {shape[1]}x{shape[0]}")
        x = x[: shape[0], : shape[1]]
    return np.ascontiguousarray(np.clip(x, 0, 1))


# ----------------------------------------------------------------------------- record

def _train(data_dir: Path, run_dir: Path, config: dict) -> dict:
    from imagingflows.pipelines.restore_train import train

    return train(data_dir, run_dir, config)


def pipeline() -> Pipeline:
    return Pipeline(
        name="restore",
        description="2D image restoration: NAFNet (denoise, deblur), HAT (super-resolution)",
        discover=discover,
        prepare=prepare,
        process=process,
        expected_outputs=expected_outputs,
        run_options=RestoreRun,
        derived_output_keys=DERIVED_OUTPUT_KEYS,
        evaluate=evaluate_image,
        find_prediction=find_prediction,
        find_reference=find_reference,
        metric_conventions=metric_conventions,
        train=_train,
        train_options=RestoreTrain,
        list_predictions=list_predictions,
        evaluate_config=evaluate_config,
        packages=("pillow", "tifffile", "scikit-image", "kornia", "rasterio"),
    )
