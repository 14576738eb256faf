"""The classify pipeline: GeoTIFF scenes -> a class map that overlays the scene (COG), per-class areas.

In:  scenes as for ``embed`` (GeoTIFF files, Landsat band folders); ``--weights``: a head trained by
     ``run-flow train classify`` (linear probe or kNN on frozen Scale-MAE features), which records its
     level, classes, bands, tile, res, normalisation and encoder.
Out: ``<scene>_classes.tif``: a Cloud-Optimized GeoTIFF class map, uint8, nodata 255, the source CRS
     and transform (it overlays the source pixel for pixel), internal overviews (nearest);
     ``<scene>_probs.tif`` (``--probabilities``): class probabilities at patch resolution (transform
     scaled by the patch size); ``<scene>_areas.json``: km2 per class; ``previews/<scene>.png``: the
     map over an RGB rendering with a legend.

Levels (from the head): ``tile`` gives one label per tile (its pooled embedding; scene
classification), ``patch`` one label per patch token (16 x 16 pixels for the official encoders).
Predictions are accumulated on the patch grid of the whole scene (``classes x H/16 x W/16``
floats: 31 MB for a 20000 x 20000 scene with 5 classes); overlapping tiles are blended with a
tent weight that favours each tile's centre, invalid patches weigh nothing. The class map is then
written window by window, each label upsampled to its patch's pixels and nodata pixels set to 255.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from imagingflows.pipelines import classify_evaluate as scoring
from imagingflows.pipelines.base import Pipeline, part_of
from imagingflows.pipelines.classify_options import ClassifyRun
from imagingflows.pipelines.classify_patch_train import PatchTrain
from imagingflows.pipelines.engine_choice import choose_engine, engine_of
from imagingflows.pipelines.model_ref import model_of, resolve_model
from imagingflows.pipelines.remote_sensing import (
    ENCODERS, check_not_empty, default_batch, discover, open_scene, part_path, patch_validity, pool_tokens,
    scene_stats, scene_windows, split_scene, tile_batches,
)
from imagingflows.tasks.ingest import Item

NODATA = 255
BLOCK = 512  # side of the windows the class map is written in
PREVIEW_MAX = 1024  # longer side of the preview, pixels
DEMO_TRAINED_ON = "the bundled sample scenes with labels derived from the Landsat QA band, see models/weights/MODEL_CARD.md"


def expected_outputs(item_id: str, out_dir: Path) -> list[Path]:
    if part_of(item_id):
        return [part_path(out_dir, item_id, ".npz")]
    out = Path(out_dir)
    return [out / f"{item_id}_classes.tif", out / f"{item_id}_areas.json", out / "previews" / f"{item_id}.png"]


# ----------------------------------------------------------------------------- model

def _demo_head() -> str:
    from imagingflows.models.backend import demo_weights

    try:
        return str(demo_weights("scale_mae_demo_head"))
    except FileNotFoundError:
        raise ValueError("no bundled demo head yet: pass --weights PATH to a head trained by "
                         "`run-flow train classify`") from None


def _encoder_path(cfg: dict, meta: dict) -> str:
    if cfg["encoder"]:
        return str(cfg["encoder"])
    recorded = (meta.get("encoder") or {}).get("file")
    if not recorded:
        raise ValueError(f"{cfg['weights']} records no encoder: pass --encoder PATH")
    beside = Path(cfg["weights"]).parent / Path(recorded).name
    if beside.is_file():
        return str(beside)
    if Path(recorded).is_file():
        return recorded
    raise ValueError(f"the encoder {recorded} that {cfg['weights']} was trained on is neither beside it nor at that "
                     "path: pass --encoder PATH")


def prepare(config: dict) -> dict:
    """Run options (:class:`ClassifyRun`) -> resolved config: head and encoder loaded once and checked."""
    from imagingflows.models.encoder import METHOD as ENCODER_METHOD, measurement_inputs
    from imagingflows.models.engines import EngineTarget
    from imagingflows.models import cached_model
    from imagingflows.models.sliding_window import resolve_precision

    cfg = ClassifyRun.parse(config).to_config()
    head = resolve_model(cfg, pipeline="classify", demo=_demo_head, trained_on=DEMO_TRAINED_ON, spatial_dims=2)
    meta = head.meta or {}
    if meta.get("level") not in ("tile", "patch") or not meta.get("classes"):
        raise ValueError(f"{cfg['weights']} is not a classify head (no level and classes in its metadata): train "
                         "one with `run-flow train classify`")
    encoder_file = _encoder_path(cfg, meta)
    overrides = {"num_heads": cfg["num_heads"]} if cfg["num_heads"] else {}
    encoder = cached_model(encoder_file, None, trust=bool(cfg["trust_checkpoint"]), device=cfg["device"] or "cpu",
                           **overrides)
    if encoder.spec.name not in ENCODERS:
        raise ValueError(f"{encoder_file} is a {encoder.spec.name} model; classify needs a Scale-MAE encoder")
    want = (meta.get("encoder") or {}).get("sha256")
    if want and encoder.weights_sha256 != want:
        raise ValueError(f"{encoder_file} is not the encoder {cfg['weights']} was trained on (SHA-256 "
                         f"{encoder.weights_sha256[:12]} vs {want[:12]})")
    patch = int(encoder.spec.grid_of(encoder.config))
    tile = int(cfg["tile"] or meta.get("tile") or encoder.config.get("img_size") or 224)
    level = meta["level"]
    overlap = cfg["overlap"] if cfg["overlap"] is not None else ((tile // 4) // patch * patch if level == "patch" else 0)
    if tile % patch or overlap % patch:
        raise ValueError(f"--tile {tile} and --overlap {overlap} must be multiples of the patch size {patch}")
    if overlap >= tile:
        raise ValueError(f"--overlap {overlap} must be smaller than --tile {tile}")
    cfg.update(
        encoder=encoder_file, encoder_sha256=encoder.weights_sha256, encoder_overrides=overrides,
        level=level, classes={int(k): str(v) for k, v in meta["classes"].items()}, tile=tile, overlap=overlap,
        batch_size=cfg["batch_size"] or default_batch(tile),
        patch_size=patch, in_channels=int(encoder.spec.channels_of(encoder.config)),
        bands=cfg["bands"] or meta.get("bands"), res=float(cfg["res"] or meta.get("res") or 1.0),
        pool=meta.get("pool", "cls"), normalization=meta.get("normalization"),
        precision=resolve_precision(cfg["precision"], encoder.device),
    )
    inputs = measurement_inputs(cfg["in_channels"], tile, min(cfg["batch_size"], 8))
    choose_engine(cfg, EngineTarget.of(encoder, inputs, ENCODER_METHOD))
    return cfg


def _encoder(cfg: dict):
    from imagingflows.models import cached_model

    lm = cached_model(cfg["encoder"], None, trust=bool(cfg["trust_checkpoint"]), device=cfg["device"] or "cpu",
                      **cfg["encoder_overrides"])
    if lm.weights_sha256 != cfg["encoder_sha256"]:
        raise RuntimeError(f"encoder file {cfg['encoder']} changed during the run; rerun to use the new weights")
    return lm


def class_probabilities(head, features) -> np.ndarray:
    """``features (..., D)`` -> class probabilities ``(..., K)`` (the head's scores, normalised)."""
    import torch

    with torch.inference_mode():
        scores = head.module(features.to(head.device)).float().cpu()
    from imagingflows.models.heads import KnnProbe

    if isinstance(head.module, KnnProbe):  # vote weights (>= 0): each class's share of the vote
        return (scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)).numpy()
    return torch.softmax(scores, dim=-1).numpy()  # logits


# ----------------------------------------------------------------------------- the patch grid

def tent(size: int) -> np.ndarray:
    """``(size, size)`` blend weights, highest at the centre, > 0 at the edges."""
    ramp = 1.0 - np.abs((np.arange(size) + 0.5) / size * 2 - 1) + 1.0 / size
    return np.outer(ramp, ramp).astype(np.float32)


def patch_grid_shape(src, cfg: dict) -> tuple[int, int]:
    """``(rows, cols)`` of the scene's patch grid, padded edge tiles included."""
    from imagingflows.tasks.raster_io import tile_windows

    patch, g = cfg["patch_size"], cfg["tile"] // cfg["patch_size"]
    windows = tile_windows(src.height, src.width, cfg["tile"], cfg["overlap"])
    return max(w.row_off for w in windows) // patch + g, max(w.col_off for w in windows) // patch + g


def accumulate_scene(src, cfg: dict, stats: tuple, windows: list) -> tuple[np.ndarray, np.ndarray, dict]:
    """Weighted class probabilities of ``windows`` on the scene's patch grid:
    ``(sums (K, Gh, Gw), weight (Gh, Gw), counts)``; ``sums / weight`` is the blend."""
    import torch

    from imagingflows.models.encoder import encode

    enc, head = _encoder(cfg), model_of(cfg)
    patch, g = cfg["patch_size"], cfg["tile"] // cfg["patch_size"]
    rows, cols = patch_grid_shape(src, cfg)
    k = len(cfg["classes"])
    acc, weight = np.zeros((k, rows, cols), np.float32), np.zeros((rows, cols), np.float32)
    centre_weights = tent(g)
    predicted = 0
    for batch in tile_batches(src, windows, stats, cfg["batch_size"], cfg["min_valid"]):
        predicted += len(batch)
        x = torch.from_numpy(np.stack([b[1] for b in batch]))
        valid = patch_validity(np.stack([b[2] for b in batch]), patch)  # (B, G*G)
        tokens = encode(enc, x, torch.full((len(batch),), cfg["res"], dtype=torch.float32), cfg["precision"],
                        engine_of(cfg))
        if cfg["level"] == "tile":
            feats = torch.from_numpy(pool_tokens(tokens, valid, cfg["pool"]))
            probs = np.repeat(class_probabilities(head, feats)[:, None, :], g * g, axis=1)  # (B, G*G, K)
        else:
            probs = class_probabilities(head, tokens[:, 1:])  # (B, G*G, K)
        for (w, _, _), p, ok in zip(batch, probs, valid):
            r, c = w.row_off // patch, w.col_off // patch
            wt = centre_weights * ok.reshape(g, g)
            acc[:, r:r + g, c:c + g] += p.T.reshape(k, g, g) * wt
            weight[r:r + g, c:c + g] += wt
    return acc, weight, {"tiles": len(windows), "skipped_nodata": len(windows) - predicted}


def blend(acc: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``sums (K, Gh, Gw) / weight (Gh, Gw)``; 0 where no tile predicted."""
    return np.divide(acc, weight[None], out=np.zeros_like(acc), where=weight[None] > 0)


# ----------------------------------------------------------------------------- write

def write_class_map(path: Path, src, labels_grid: np.ndarray, patch: int, names: dict[int, str]) -> None:
    """The COG class map on the source grid, by windows: patch labels upsampled, nodata pixels 255."""
    from imagingflows.tasks.geo_write import CogWriter
    from imagingflows.tasks.raster_io import TileWindow, valid_mask

    with CogWriter(path, height=src.height, width=src.width, count=1, dtype="uint8", crs=src.crs,
                   transform=src.transform, nodata=NODATA, descriptions=["class"]) as out:
        for r in range(0, src.height, BLOCK):
            for c in range(0, src.width, BLOCK):
                h, w = min(BLOCK, src.height - r), min(BLOCK, src.width - c)
                grid = labels_grid[r // patch:(r + h - 1) // patch + 1, c // patch:(c + w - 1) // patch + 1]
                up = np.repeat(np.repeat(grid, patch, 0), patch, 1)
                up = up[r % patch:r % patch + h, c % patch:c % patch + w]
                valid = valid_mask(src, TileWindow(r, c, BLOCK))[:h, :w]
                out.write(np.where(valid, up, NODATA).astype(np.uint8)[None], r, c)


def write_probabilities(path: Path, src, probs: np.ndarray, weight: np.ndarray, patch: int) -> None:
    from affine import Affine

    from imagingflows.tasks.geo_write import CogWriter

    a = src.affine
    transform = tuple(a @ Affine.scale(patch))[:6]
    data = np.where(weight[None] > 0, probs, -1.0).astype(np.float32)
    with CogWriter(path, height=probs.shape[1], width=probs.shape[2], count=probs.shape[0], dtype="float32",
                   crs=src.crs, transform=transform, nodata=-1.0, resampling="average") as out:
        out.write(data, 0, 0)


def save_preview(path: Path, src, labels_grid: np.ndarray, patch: int, names: dict[int, str]) -> Path:
    """The class map over the scene's RGB rendering, read decimated to at most PREVIEW_MAX pixels."""
    from imagingflows.tasks.map_preview import save_map_preview, stretch
    from imagingflows.tasks.raster_io import read_overview

    bands, valid = read_overview(src, PREVIEW_MAX)
    h, w = valid.shape
    # each preview pixel takes the label of the patch holding the source pixel at its centre (the grid
    # extends past the raster by the edge tiles' padding, so it is indexed, not resized)
    rows = ((np.arange(h) + 0.5) * src.height / h).astype(int) // patch
    cols = ((np.arange(w) + 0.5) * src.width / w).astype(int) // patch
    labels = np.where(valid, labels_grid[rows[:, None], cols[None, :]], NODATA).astype(np.uint8)
    return save_map_preview(path, stretch(bands, valid), labels, names)


def _scene_stats(src, cfg: dict) -> tuple:
    norm = cfg.get("normalization")
    if norm:
        return np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32), "head"
    return scene_stats(src, {**cfg, "mean": None, "std": None, "model_stats": None})


def process(item: Item, out_dir: Path, cfg: dict) -> dict:
    """Classify one scene (or one block of its tiles); returns the manifest entry."""
    t0 = time.perf_counter()
    src, warnings = open_scene(item.paths["scene"], cfg, takes="the encoder")
    stats = _scene_stats(src, cfg)
    acc, weight, counts = accumulate_scene(src, cfg, stats, scene_windows(src, item, cfg))
    if part_of(item.id):
        return _save_part(item, out_dir, acc, weight, counts, stats, warnings, t0)
    check_not_empty(item.paths["scene"], counts["tiles"] - counts["skipped_nodata"])
    return finish_scene(item, Path(out_dir), cfg, src, stats, acc, weight, counts, warnings, t0)


def _save_part(item: Item, out_dir: Path, acc, weight, counts: dict, stats: tuple, warnings: list,
               t0: float) -> dict:
    """A block's sums, cut to the patch rows its tiles touched (the merge adds them up)."""
    from imagingflows.tasks.write import atomic_path

    touched = np.flatnonzero(weight.any(1))
    r0, r1 = (int(touched[0]), int(touched[-1]) + 1) if touched.size else (0, 0)
    path = expected_outputs(item.id, out_dir)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, acc=acc[:, r0:r1], weight=weight[r0:r1], row=np.int64(r0))
    entry = {"outputs": {"part": path.relative_to(out_dir).as_posix()}, "summary": counts,
             "inference": {"normalization": stats[2], "seconds": round(time.perf_counter() - t0, 3)}}
    if warnings:
        entry["warnings"] = warnings
    return entry


def merge(item: Item, parts: list[dict], out_dir: Path, cfg: dict) -> dict:
    """The blocks' sums added on the scene's patch grid, then written as an unsplit run writes them."""
    t0 = time.perf_counter()
    src, warnings = open_scene(item.paths["scene"], cfg, takes="the encoder")
    rows, cols = patch_grid_shape(src, cfg)
    acc = np.zeros((len(cfg["classes"]), rows, cols), np.float32)
    weight = np.zeros((rows, cols), np.float32)
    for e in parts:
        with np.load(Path(out_dir) / e["outputs"]["part"]) as z:
            r0 = int(z["row"])
            acc[:, r0:r0 + z["weight"].shape[0]] += z["acc"]
            weight[r0:r0 + z["weight"].shape[0]] += z["weight"]
    counts = {k: sum(e["summary"][k] for e in parts) for k in ("tiles", "skipped_nodata")}
    check_not_empty(item.paths["scene"], counts["tiles"] - counts["skipped_nodata"])
    stats = (None, None, parts[0]["inference"]["normalization"])
    entry = finish_scene(item, Path(out_dir), cfg, src, stats, acc, weight, counts, warnings, t0)
    entry["inference"]["seconds"] = round(entry["inference"]["seconds"] + sum(e["inference"]["seconds"]
                                                                               for e in parts), 3)
    return entry


def finish_scene(item: Item, out: Path, cfg: dict, src, stats: tuple, acc, weight, counts: dict, warnings: list,
                 t0: float) -> dict:
    """The class map, probabilities, areas and preview of a scene from its blended sums."""
    from imagingflows.tasks.geo_write import class_areas_km2
    from imagingflows.tasks.write import write_json

    probs = blend(acc, weight)
    labels_grid = np.where(weight > 0, probs.argmax(0), NODATA).astype(np.uint8)
    names = cfg["classes"]
    class_map = out / f"{item.id}_classes.tif"
    write_class_map(class_map, src, labels_grid, cfg["patch_size"], names)
    outputs = {"class_map": class_map.relative_to(out).as_posix()}
    if cfg["probabilities"]:
        prob_path = out / f"{item.id}_probs.tif"
        write_probabilities(prob_path, src, probs, weight, cfg["patch_size"])
        outputs["probabilities"] = prob_path.relative_to(out).as_posix()
    areas = class_areas_km2(class_map, {v: n for v, n in names.items()}) if src.has_crs else {}
    write_json(out / f"{item.id}_areas.json", {"scene": item.id, "areas_km2": areas, "classes": names})
    outputs["areas"] = f"{item.id}_areas.json"
    preview = save_preview(out / "previews" / f"{item.id}.png", src, labels_grid, cfg["patch_size"], names)
    outputs["previews"] = [preview.relative_to(out).as_posix()]
    entry = {
        "outputs": outputs,
        "summary": {**{f"{n}_km2": round(a, 3) for n, a in areas.items()}, "tiles": counts["tiles"],
                    "skipped_nodata": counts["skipped_nodata"]},
        "inference": {"level": cfg["level"], "res": cfg["res"], "normalization": stats[2], "tile": cfg["tile"],
                      "overlap": cfg["overlap"], "seconds": round(time.perf_counter() - t0, 3)},
    }
    if warnings:
        entry["warnings"] = warnings
    return entry


def _train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    from imagingflows.pipelines.classify_patch_train import train

    return train(data_dir, run_dir, config)


def pipeline() -> Pipeline:
    return Pipeline(
        name="classify",
        description="Remote sensing: class maps of GeoTIFF scenes (COG) from a head on Scale-MAE features",
        discover=discover,
        prepare=prepare,
        process=process,
        expected_outputs=expected_outputs,
        run_options=ClassifyRun,
        train=_train,
        train_options=PatchTrain,  # tile level: chips per class folder; patch level: scenes + label rasters
        derived_output_keys=("encoder_sha256", "level", "classes", "tile", "overlap", "bands", "res", "normalization",
                             "encoder_overrides", "engine_outputs"),
        packages=("rasterio", "rio-cogeo", "shapely"),
        evaluate=scoring.evaluate_scene,  # class maps vs label rasters: confusion, accuracy, IoU
        evaluate_summary=scoring.summarize,  # matrices summed over scenes, the confusion-matrix picture
        evaluate_config=scoring.evaluate_config,
        find_prediction=scoring.find_prediction,
        find_reference=scoring.find_reference,
        metric_conventions=scoring.metric_conventions,
        split=split_scene,
        merge=merge,
    )
