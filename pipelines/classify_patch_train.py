"""Train a classify head at patch level: one label per 16 x 16 patch token of scenes with label rasters.

In:  ``--data``: scenes as for ``embed`` (GeoTIFF files, Landsat band folders), each with a label raster:
     ``--labels`` (a file, for a single scene; or a folder holding ``<scene>_labels.tif``), else
     ``<scene>_labels.tif`` or ``<scene>_classes.tif`` beside the scene (``sample_data/scenes.py`` writes
     the latter). Label values 0..254 are class ids; 255 and the file's nodata value are "no label".
Out: ``best.pt`` / ``last.pt`` as at tile level, with ``level: patch`` and the held-out mIoU and
     per-class IoU in the meta.

Recipe:
- A label raster on the scene grid (same CRS and transform) is read window by window; one on another
  grid is resampled onto the scene grid by nearest neighbour, window by window (rasterio ``reproject``);
  one that does not overlap the scene, or that lacks the CRS needed to place it, is an
  :class:`InputError` naming both files.
- Each scene is cut into tiles of ``--tile`` pixels without overlap (edge tiles padded, all-nodata
  tiles skipped). A patch's label is the majority class of its labelled pixels (ties: the lower id);
  patches without a label or without a valid image pixel are left out.
- Split (spatial): the east ``val_fraction`` of each scene's tile columns (the south rows for a scene
  taller than wide) is held out, whole tiles, so no held-out pixel is ever trained on; a scene one
  tile across has no held-out part.
- Normalisation: per-band statistics of the valid pixels of the training scenes (pooled), recorded.
- Metric: mIoU over the classes present in the held-out labels or predictions (``tp / (tp + fp + fn)``),
  with per-class IoU and patch accuracy. Features are kept in memory (``4 D`` bytes per patch).
- ``--finetune`` (linear head): the encoder trains with the head (:func:`classify_train.finetune_fit`). The
  scenes are indexed once: each kept tile's window and its patch targets (``N`` bytes a tile: the label of
  each valid labelled patch, else 255), training strip and held-out strip apart, the same tiles and patches
  as above; nothing else is cached: each step reads ``batch_size`` random training tiles from the scenes
  again, and each epoch re-embeds the held-out strip with the current encoder (same mIoU as above).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from imagingflows.pipelines.classify_train import ClassifyTrain
from imagingflows.pipelines.options import option
from imagingflows.tasks.ingest import InputError

log = logging.getLogger("imagingflows.train")

LABEL_SUFFIXES = ("_labels", "_classes")  # label rasters beside a scene, in this order
NO_LABEL = 255
STATS_PIXELS = 200_000  # pixels sampled in all for the training statistics


class PatchTrain(ClassifyTrain):
    """``ClassifyTrain`` with the two fields patch level adds (to be merged into ``ClassifyTrain``)."""

    level: Literal["tile", "patch"] = option(
        "tile", "tile: one label per chip (--data <class>/<chip>.tif); patch: one label per 16 x 16 patch token "
                "(--data scenes with label rasters).", output=True)
    labels: Path | None = option(
        None, "Patch level: the label raster of the only scene, or a folder of <scene>_labels.tif. Default: "
              "<scene>_labels.tif (or _classes.tif) beside each scene.", output=True)


def train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    """The ``train`` hook for both levels: patch level here, tile level by :func:`classify_train.train`."""
    from imagingflows.models.backend import select_device
    from imagingflows.pipelines import classify_train

    opts = PatchTrain.parse({**config, "data": str(data_dir) if data_dir else config.get("data"),
                             "output": str(run_dir)})
    if opts.level == "tile":
        if opts.labels is not None:
            raise ValueError("--labels applies to --level patch; tile-level classes are the chips' folder names")
        return classify_train.train(data_dir, run_dir, {k: v for k, v in config.items() if k not in ("level", "labels")})
    if opts.data is None:
        raise ValueError("--data is required: scenes with label rasters (<scene>_labels.tif beside each)")
    if opts.weights is not None:
        raise ValueError("--weights is not used by train classify: the encoder is --encoder and heads train from "
                         "scratch")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return train_patch(opts, Path(run_dir), select_device(opts.device))


# ----------------------------------------------------------------------------- scenes and their labels

def find_scenes(data_dir: Path, labels: Path | None) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str]]]:
    """``([(scene id, scene path, label path)], [(scene id, error)])`` under ``data_dir``.

    ``labels``: None (beside each scene), a file (the only scene's), or a folder of ``<scene>_labels.tif``.
    Label rasters found beside their scene are not scenes themselves.
    """
    from imagingflows.pipelines.remote_sensing import discover

    items, _ = discover(Path(data_dir), {})
    ids = {it.id for it in items}
    given = Path(labels) if labels else None
    if given is not None and not given.exists():
        raise ValueError(f"--labels {given}: no such file or folder")
    one_file = given is not None and given.is_file()
    scenes = [it for it in items
              if not any(it.id.endswith(s) and it.id[:-len(s)] in ids for s in LABEL_SUFFIXES)
              and not (one_file and Path(it.paths["scene"]).resolve() == given.resolve())]
    if one_file:
        if len(scenes) != 1:
            raise ValueError(f"--labels {given} is one label raster, but {data_dir} holds {len(scenes)} scenes: give "
                             "a folder of <scene>_labels.tif")
        return [(scenes[0].id, scenes[0].paths["scene"], given)], []
    found, errors = [], []
    for it in scenes:
        scene = Path(it.paths["scene"])
        folder, stem = (given, Path(it.id).name) if given is not None else \
            (scene.parent, scene.stem if scene.is_file() else scene.name)
        tried = [folder / f"{stem}{s}.tif" for s in LABEL_SUFFIXES]
        hit = next((t for t in tried if t.is_file()), None)
        if hit is None:
            errors.append((it.id, f"scene {it.id}: no label raster {tried[0]} (or {tried[1].name})"))
        else:
            found.append((it.id, str(scene), hit))
    return found, errors


@dataclass(frozen=True)
class LabelGrid:
    """A label raster placed on a scene: read directly (the scene's grid) or resampled (nearest)."""

    path: Path
    aligned: bool
    nodata: float | None


def _bounds(src) -> tuple[float, float, float, float]:
    a = src.affine
    xs, ys = zip(a * (0, 0), a * (src.width, src.height))
    return min(xs), min(ys), max(xs), max(ys)


def place_labels(path: Path, src) -> LabelGrid:
    """Check that the label raster ``path`` can be placed on the scene ``src``; InputError naming both if not."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    scene = Path(src.paths[0])
    with rasterio.open(path) as ds:
        scene_crs = CRS.from_wkt(src.crs) if src.crs else None
        same_grid = np.allclose(tuple(ds.transform)[:6], src.transform, rtol=0, atol=1e-6 * max(src.pixel_size))
        if ds.crs is None or scene_crs is None:
            if ds.crs is None and scene_crs is None and same_grid:
                return LabelGrid(Path(path), True, ds.nodata)
            lacking = path if ds.crs is None else scene
            raise InputError(f"{lacking}: no CRS, so the label raster {Path(path).name} cannot be placed on the "
                             f"scene {scene.name} (give both a CRS, or labels on the scene's own pixel grid)")
        if ds.crs == scene_crs and same_grid:
            return LabelGrid(Path(path), True, ds.nodata)
        lb, sb = transform_bounds(ds.crs, scene_crs, *ds.bounds), _bounds(src)
        if min(lb[2], sb[2]) <= max(lb[0], sb[0]) or min(lb[3], sb[3]) <= max(lb[1], sb[1]):
            raise InputError(f"{path}: the label raster does not overlap the scene {scene} (label bounds "
                             f"{tuple(round(v, 1) for v in lb)}, scene {tuple(round(v, 1) for v in sb)}, in the "
                             "scene's CRS)")
        return LabelGrid(Path(path), False, ds.nodata)


def read_labels(ds, grid: LabelGrid, src, window) -> np.ndarray:
    """Labels of one scene tile: ``(S, S)`` uint8, 255 = no label; from the open label dataset ``ds``."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    from imagingflows.tasks.raster_io import window_transform

    if grid.aligned:
        fill = grid.nodata if grid.nodata is not None else NO_LABEL
        values = ds.read(1, window=window.to_rasterio(), boundless=True, fill_value=fill).astype(np.float64)
        none = values == fill
    else:
        values = np.full((window.size, window.size), -1.0, np.float64)
        reproject(rasterio.band(ds, 1), values, src_nodata=grid.nodata, dst_nodata=-1.0, init_dest_nodata=True,
                  dst_transform=window_transform(src, window), dst_crs=CRS.from_wkt(src.crs),
                  resampling=Resampling.nearest)
        none = values == -1.0
    if grid.nodata is not None and not math.isnan(grid.nodata):
        none |= values == grid.nodata
    none |= values == NO_LABEL
    bad = ~none & ((values < 0) | (values >= NO_LABEL) | (values != np.round(values)))
    if bad.any():
        raise InputError(f"{grid.path}: label values must be whole numbers 0..254 (255: no label), found "
                         f"{values[bad].flat[0]:g}")
    return np.where(none, NO_LABEL, values).astype(np.uint8)


def patch_labels(labels: np.ndarray, patch: int) -> np.ndarray:
    """``labels (B, S, S)`` uint8 -> ``(B, N)`` uint8, row-major like the encoder's tokens: each patch's majority
    class among its labelled pixels (ties: the lower id), 255 where it has none."""
    b, s, _ = labels.shape
    g = s // patch
    blocks = labels.reshape(b, g, patch, g, patch).transpose(0, 1, 3, 2, 4).reshape(b, g * g, patch * patch)
    present = np.unique(blocks)
    present = present[present != NO_LABEL]
    if not present.size:
        return np.full((b, g * g), NO_LABEL, np.uint8)
    counts = np.stack([(blocks == c).sum(-1) for c in present], axis=-1)  # (B, N, classes present)
    return np.where(counts.max(-1) > 0, present[counts.argmax(-1)], NO_LABEL).astype(np.uint8)


def held_out(windows: list, height: int, width: int, val_fraction: float) -> set:
    """The spatial validation strip: the windows in the east ``val_fraction`` of the tile columns (south rows
    when the scene is taller than wide), at least one line and never all of them; none for one line."""
    axis = "col_off" if width >= height else "row_off"
    lines = sorted({getattr(w, axis) for w in windows})
    if val_fraction <= 0 or len(lines) < 2:
        return set()
    strip = set(lines[-min(len(lines) - 1, max(1, round(len(lines) * val_fraction))):])
    return {w for w in windows if getattr(w, axis) in strip}


# ----------------------------------------------------------------------------- features

def pooled_stats(sources: list) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-band ``(mean (C,), std (C,), n)`` over the valid pixels sampled from every scene, pooled."""
    from imagingflows.tasks.raster_io import sample_band_stats

    n_all, total, squares = 0, 0.0, 0.0
    for src in sources:
        mean, std, n = sample_band_stats(src, max_pixels=max(4096, STATS_PIXELS // len(sources)))
        if n:
            n_all, total, squares = n_all + n, total + n * mean, squares + n * (std ** 2 + mean ** 2)
    if n_all == 0:
        raise InputError(f"{sources[0].paths[0]}: no valid pixel in the training scenes")
    mean = total / n_all
    std = np.sqrt(np.maximum(squares / n_all - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32), n_all


def labelled_tiles(src, grid: LabelGrid, windows: list):
    """``(window, labels (T, T) uint8, pixels (C, T, T), valid (T, T))`` of every tile with a valid pixel and
    a label (others skipped)."""
    import rasterio

    from imagingflows.tasks.raster_io import read_valid_tile

    with rasterio.open(grid.path) as ds:
        for w in windows:
            tile = read_valid_tile(src, w)
            if tile is None:
                continue
            labels = read_labels(ds, grid, src, w)
            if (labels != NO_LABEL).any():
                yield w, labels, *tile


def embed_patches(enc, src, grid: LabelGrid, cfg: dict) -> dict:
    """One scene's labelled patch tokens: ``{"x" (M, D), "y" (M,), "val" (M,) bool, "tiles", "val_tiles"}``."""
    import torch

    from imagingflows.models.encoder import encode
    from imagingflows.pipelines.remote_sensing import patch_validity
    from imagingflows.tasks.raster_io import tile_windows

    patch, (mean, std) = cfg["patch_size"], cfg["_stats"]
    windows = tile_windows(src.height, src.width, cfg["tile"], 0)
    strip = held_out(windows, src.height, src.width, cfg["val_fraction"])
    xs, ys, vs, batch = [], [], [], []

    def flush() -> None:
        x = np.stack([np.where(v[None], (p - mean[:, None, None]) / std[:, None, None], 0) for _, p, v, _ in batch])
        res = torch.full((len(batch),), cfg["res"], dtype=torch.float32)
        tokens = encode(enc, torch.from_numpy(x.astype(np.float32)), res, cfg["precision"])[:, 1:].numpy()
        ok = patch_validity(np.stack([v for _, _, v, _ in batch]), patch)
        lab = patch_labels(np.stack([lb for *_, lb in batch]), patch)
        for (w, *_), t, keep, lb in zip(batch, tokens, ok & (lab != NO_LABEL), lab):
            xs.append(t[keep])
            ys.append(lb[keep].astype(np.int64))
            vs.append(np.full(int(keep.sum()), w in strip))
        batch.clear()

    for w, labels, pixels, valid in labelled_tiles(src, grid, windows):
        batch.append((w, pixels, valid, labels))
        if len(batch) == cfg["batch_size"]:
            flush()
    if batch:
        flush()
    dim = int(enc.config["embed_dim"])
    return {"x": np.concatenate(xs) if xs else np.zeros((0, dim), np.float32),
            "y": np.concatenate(ys) if ys else np.zeros(0, np.int64),
            "val": np.concatenate(vs) if vs else np.zeros(0, bool), "tiles": len(windows), "val_tiles": len(strip)}


def class_names(label_paths: list[Path], count: int) -> dict[int, str]:
    """Ids ``0 .. count - 1`` named by the label rasters' ``CLASS_NAMES`` tag (JSON ``{"0": "land"}``, as
    ``landsat_qa`` and ``sample_data/scenes.py`` write it), else by their numbers."""
    import json

    import rasterio

    names: dict[int, str] = {}
    for path in label_paths:
        with rasterio.open(path) as src:
            tag = src.tags().get("CLASS_NAMES")
        if tag:
            for k, v in json.loads(tag).items():
                names.setdefault(int(k), str(v))
    return {i: names.get(i, str(i)) for i in range(count)}


def _open_scenes(data_dir: Path, cfg: dict, labels: Path | None) -> tuple[list, list, list]:
    """``(scenes, errors, [(scene id, RasterSource, LabelGrid)])``: the labelled scenes, opened and checked."""
    from imagingflows.tasks.raster_io import open_raster

    scenes, errors = find_scenes(Path(data_dir), labels)
    if not scenes:
        raise ValueError(f"{data_dir}: no scene with a label raster (<scene>_labels.tif beside it, or --labels)"
                         + "".join(f"\n  {e}" for _, e in errors))
    opened = []
    for sid, path, lab in scenes:
        src = open_raster(path, bands=cfg["bands"], nodata=cfg["nodata"])
        if src.count != cfg["channels"]:
            raise InputError(f"{path}: {src.count} bands ({', '.join(src.band_names)}) but the encoder takes "
                             f"{cfg['channels']}; choose them with --bands")
        opened.append((sid, src, place_labels(lab, src)))
    return scenes, errors, opened


def _split(opened: list, parts: list[dict], val_fraction: float, patches: tuple[int, int]) -> dict:
    """The split record: tiles per scene on each side, the rule, ``patches`` (train, val) counted."""
    return {"train": [f"{sid}: {p['tiles'] - p['val_tiles']} tiles" for (sid, _, _), p in zip(opened, parts)],
            "val": [f"{sid}: {p['val_tiles']} tiles" for (sid, _, _), p in zip(opened, parts)],
            "rule": f"spatial: the east {val_fraction:g} of each scene's tile columns (the south rows of a scene "
                    "taller than wide), whole tiles",
            "patches": {"train": int(patches[0]), "val": int(patches[1])}}


def patch_data(data_dir: Path, enc, cfg: dict, labels: Path | None, val_fraction: float) -> dict:
    """Every labelled scene's patch features, split spatially: train/val features, labels, classes, stats."""
    scenes, errors, opened = _open_scenes(data_dir, cfg, labels)
    stats = pooled_stats([src for _, src, _ in opened])
    run = {**cfg, "_stats": stats[:2], "val_fraction": val_fraction}
    t0 = time.perf_counter()
    parts = [embed_patches(enc, src, grid, run) for _, src, grid in opened]
    log.info("embedded the patches of %d scene(s) in %.1fs", len(parts), time.perf_counter() - t0)
    x, y, val = (np.concatenate([p[k] for p in parts]) for k in ("x", "y", "val"))
    if not (~val).any():
        raise ValueError(f"{data_dir}: no labelled patch with valid pixels to train on in {len(scenes)} scene(s)")
    split = _split(opened, parts, val_fraction, (int((~val).sum()), int(val.sum())))
    return {"x": x[~val], "y": y[~val], "x_val": x[val], "y_val": y[val], "split": split, "stats": stats,
            "classes": class_names([lab for _, _, lab in scenes], max(int(y.max()) + 1, 2)), "errors": errors,
            "labels": {sid: str(lab) for sid, _, lab in scenes}}


# ----------------------------------------------------------------------------- metrics and training

def iou_scores(pred: np.ndarray, y: np.ndarray, classes: int) -> tuple[float, dict[int, float]]:
    """``(mIoU, {class: IoU})`` over the classes present in ``y`` or ``pred``: ``tp / (tp + fp + fn)``."""
    conf = np.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    per = {c: float(tp[c] / union[c]) for c in range(classes) if union[c] > 0}
    return (float(np.mean(list(per.values()))) if per else math.nan), per


def predict(net, x: np.ndarray, device, chunk: int = 65536) -> np.ndarray:
    """``x (M, D)`` -> the top-scoring class ``(M,)``, in chunks."""
    import torch

    net.eval()
    with torch.inference_mode():
        return torch.cat([net(torch.from_numpy(x[i:i + chunk]).to(device)).argmax(-1).cpu()
                          for i in range(0, len(x), chunk)]).numpy() if len(x) else np.zeros(0, np.int64)


def held_out_scores(net, x: np.ndarray, y: np.ndarray, names: dict[int, str], device) -> dict:
    """``{"miou", "accuracy", "held_out": {...per-class IoU, patches}}``; {} without held-out patches."""
    if not len(y):
        return {}
    pred = predict(net, x, device)
    miou, per = iou_scores(pred, y, len(names))
    acc = float((pred == y).mean())
    return {"miou": miou, "accuracy": acc, "held_out": {
        "miou": round(miou, 4), "accuracy": round(acc, 4), "patches": int(len(y)),
        "per_class_iou": {names[c]: round(v, 4) for c, v in per.items()}}}


def _score():
    from imagingflows.pipelines import fit

    return fit.Score("val_miou", "best_miou", "mIoU", digits=4, shown=".3f")


def _meta(opts, enc, cfg: dict, data: dict) -> dict:
    mean, std, n = data["stats"]
    return {"level": "patch", "classes": data["classes"],
            "encoder": {"file": str(Path(opts.encoder).resolve()), "sha256": enc.weights_sha256},
            "bands": cfg["bands"], "tile": cfg["tile"], "res": cfg["res"], "pool": None,
            "patch_size": cfg["patch_size"], "scores": "logits" if opts.head == "linear" else "votes",
            "normalization": {"mean": mean.tolist(), "std": std.tolist(),
                              "from": f"training scenes ({n} valid pixels)"},
            "num_heads": opts.num_heads, "data": str(opts.data), "labels": data["labels"]}


def train_patch(opts, run_dir: Path, device) -> dict:
    """Patch-level training for :func:`classify_train.train` (``opts``: the parsed ``ClassifyTrain``)."""
    import torch

    from imagingflows.pipelines import classify_train as tiles
    from imagingflows.pipelines import fit

    enc = tiles._encoder(opts, device)
    cfg = tiles._resolve(opts, enc)
    if opts.finetune:
        return finetune_patch(opts, run_dir, enc, cfg, device)
    data = patch_data(Path(opts.data), enc, cfg, opts.labels, opts.val_fraction)
    settings = {**tiles._settings(opts, enc, cfg, data["classes"]), "level": "patch", "labels": str(opts.labels)}
    meta = _meta(opts, enc, cfg, data)
    xt, yt = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    names, split = data["classes"], data["split"]
    if opts.head == "knn":
        return {**_knn(run_dir, xt, yt, data, opts, meta, settings, device), "errors": data["errors"]}
    torch.manual_seed(opts.seed)
    lm = tiles._open(run_dir, "linear", xt.shape[1], len(names), device)
    tiles._guard(run_dir, lm, settings)
    batches = tiles.feature_batches(xt, yt, min(opts.batch_size, len(yt)), opts.seed)

    out = fit.fit(
        lm, run_dir, optimizer=fit.AdamW(opts.lr), batches=batches, loss=torch.nn.functional.cross_entropy,
        validate=lambda net: held_out_scores(net, data["x_val"], data["y_val"], names, device), score=_score(),
        settings=settings, meta=meta, split=split, epochs=opts.epochs, steps=opts.steps_per_epoch,
        curve={"loss_label": "train loss (cross-entropy)", "series": {"held-out mIoU": "val_miou"},
               "ylabel": "held-out mIoU", "ylim": (0.0, 1.0)},
        describe=lambda v: f"held-out mIoU {v.get('miou', math.nan):.3f}")
    return {**out, "errors": data["errors"]}


def _knn(run_dir: Path, xt, yt, data: dict, opts, meta: dict, settings: dict, device) -> dict:
    """The bank is the training patches; scored on the held-out strip; best.pt = last.pt (no epochs)."""
    from imagingflows.models.backend import LoadedModel
    from imagingflows.models.checkpoints import save_checkpoint
    from imagingflows.models.heads import KNN_SPEC, KnnProbe, knn_config
    from imagingflows.pipelines import classify_train as tiles
    from imagingflows.pipelines import fit

    tiles._guard(run_dir, None, settings)
    probe = KnnProbe(xt, yt, len(data["classes"]), k=opts.k, temperature=opts.temperature).to(device)
    val = held_out_scores(probe, data["x_val"], data["y_val"], data["classes"], device)
    ck_meta = {**meta, **({"held_out": val["held_out"]} if val else {}), "history": [], "split": data["split"]}
    best_path, last_path = Path(run_dir) / "best.pt", Path(run_dir) / "last.pt"
    for path, extra in ((best_path, {}), (last_path, {"train_state": {"epoch": 0, "history": [],
                                                                       "split": data["split"], "settings": settings}})):
        save_checkpoint(path, probe, arch=KNN_SPEC.name, config=knn_config(probe), meta={**ck_meta, **extra})
    lm = LoadedModel(probe, KNN_SPEC, knn_config(probe), str(best_path), None, ck_meta, device)
    return fit.summary(lm, [], val.get("miou", -math.inf), _score(), data["split"], best_path, last_path)


# ----------------------------------------------------------------------------- --finetune

def scene_tiles(src, grid: LabelGrid, cfg: dict) -> dict:
    """One scene's kept tiles without embedding them: ``{"train": [(window, target (N,) uint8)], "val": [...],
    "tiles", "val_tiles"}``; ``target``: each patch's label where it has a valid pixel, else :data:`NO_LABEL`.
    The tiles and patches :func:`embed_patches` keeps (skipped: empty or unlabelled tiles, and tiles left
    without a target)."""
    from imagingflows.pipelines.remote_sensing import patch_validity
    from imagingflows.tasks.raster_io import tile_windows

    windows = tile_windows(src.height, src.width, cfg["tile"], 0)
    strip = held_out(windows, src.height, src.width, cfg["val_fraction"])
    out: dict = {"train": [], "val": [], "tiles": len(windows), "val_tiles": len(strip)}
    for w, labels, _, valid in labelled_tiles(src, grid, windows):
        ok = patch_validity(valid[None], cfg["patch_size"])[0]
        target = np.where(ok, patch_labels(labels[None], cfg["patch_size"])[0], NO_LABEL).astype(np.uint8)
        if (target != NO_LABEL).any():
            out["val" if w in strip else "train"].append((w, target))
    return out


def patch_tiles(data_dir: Path, cfg: dict, labels: Path | None, val_fraction: float) -> dict:
    """:func:`patch_data` for fine-tuning: the same scenes, statistics, split and classes, with the kept tiles
    indexed (``"train"`` / ``"val"``: ``[(scene index, window, target (N,))]``, ``"sources"``) instead of
    embedded."""
    scenes, errors, opened = _open_scenes(data_dir, cfg, labels)
    stats = pooled_stats([src for _, src, _ in opened])
    parts = [scene_tiles(src, grid, {**cfg, "val_fraction": val_fraction}) for _, src, grid in opened]
    side = {k: [(i, w, t) for i, p in enumerate(parts) for w, t in p[k]] for k in ("train", "val")}
    counts = {k: sum(int((t != NO_LABEL).sum()) for *_, t in side[k]) for k in side}
    if not counts["train"]:
        raise ValueError(f"{data_dir}: no labelled patch with valid pixels to train on in {len(scenes)} scene(s)")
    top = max(int(t[t != NO_LABEL].max()) for *_, t in side["train"] + side["val"])
    return {**side, "sources": [src for _, src, _ in opened], "stats": stats, "errors": errors,
            "split": _split(opened, parts, val_fraction, (counts["train"], counts["val"])),
            "classes": class_names([lab for _, _, lab in scenes], max(top + 1, 2)),
            "labels": {sid: str(lab) for sid, _, lab in scenes}}


def _read_tiles(data: dict, tiles: list) -> tuple[np.ndarray, np.ndarray]:
    """``[(scene index, window, target)]`` -> ``(x (B, C, T, T) float32 normalised, targets (B, N) uint8)``."""
    from imagingflows.pipelines.classify_train import normalise
    from imagingflows.tasks.raster_io import read_tile

    read = [read_tile(data["sources"][s], w) for s, w, _ in tiles]
    return normalise(read, *data["stats"][:2]), np.stack([t for *_, t in tiles])


def tile_batches(data: dict, batch: int, seed: int):
    """The fine-tune batch factory: ``start_epoch -> draw() -> (x (B, C, T, T), keep (B, N) bool, y (B, N))``,
    random training tiles read from their scenes again, ``y`` their patch targets."""
    import torch

    def batches(start_epoch: int):
        gen = torch.Generator().manual_seed(seed * 1000 + start_epoch)

        def draw():
            idx = torch.randint(len(data["train"]), (batch,), generator=gen).tolist()
            x, targets = _read_tiles(data, [data["train"][i] for i in idx])
            y = torch.from_numpy(targets.astype(np.int64))
            return torch.from_numpy(x), y != NO_LABEL, y
        return draw
    return batches


def strip_features(enc, data: dict, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """The held-out strip through the encoder as it is now: ``(x (M, D) float32, y (M,) int64)``, the kept
    patches in the order :func:`embed_patches` gives them."""
    import torch

    from imagingflows.models.encoder import encode

    xs, ys = [], []
    for start in range(0, len(data["val"]), cfg["batch_size"]):
        x, targets = _read_tiles(data, data["val"][start:start + cfg["batch_size"]])
        res = torch.full((len(x),), cfg["res"], dtype=torch.float32)
        tokens = encode(enc, torch.from_numpy(x), res, cfg["precision"])[:, 1:].numpy()
        keep = targets != NO_LABEL
        xs.append(tokens[keep])
        ys.append(targets[keep].astype(np.int64))
    dim = int(enc.config["embed_dim"])
    return (np.concatenate(xs) if xs else np.zeros((0, dim), np.float32),
            np.concatenate(ys) if ys else np.zeros(0, np.int64))


def finetune_patch(opts, run_dir: Path, enc, cfg: dict, device) -> dict:
    """Patch-level ``--finetune``: the encoder and a linear head on the training strip's tiles, scored by mIoU
    on the held-out strip re-embedded each epoch."""
    import torch

    from imagingflows.pipelines import classify_train as tiles

    data = patch_tiles(Path(opts.data), cfg, opts.labels, opts.val_fraction)
    names = data["classes"]
    settings = tiles.finetune_settings(opts, {**tiles._settings(opts, enc, cfg, names), "level": "patch",
                                              "labels": str(opts.labels)})
    torch.manual_seed(opts.seed)
    head = tiles._open(run_dir, "linear", int(enc.config["embed_dim"]), len(names), device)
    state = tiles._guard(run_dir, head, settings)
    out = tiles.finetune_fit(
        enc, head, run_dir, state=state, opts=opts, cfg=cfg,
        batches=tile_batches(data, min(opts.batch_size, len(data["train"])), opts.seed),
        validate=lambda net: held_out_scores(net, *strip_features(enc, data, cfg), names, device), score=_score(),
        settings=settings, meta=_meta(opts, enc, cfg, data), split=data["split"],
        curve={"loss_label": "train loss (cross-entropy)", "series": {"held-out mIoU": "val_miou"},
               "ylabel": "held-out mIoU", "ylim": (0.0, 1.0)},
        describe=lambda v: f"held-out mIoU {v.get('miou', math.nan):.3f}")
    return {**out, "errors": data["errors"]}
