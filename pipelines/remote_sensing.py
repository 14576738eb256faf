"""The embed pipeline: GeoTIFF scenes of any size -> one Scale-MAE embedding per tile, as GeoParquet.

In:  every ``*.tif`` / ``*.tiff`` under the input folder is a scene (any band count; the model's
     bands are chosen with ``--bands``), and a folder of single-band files ``*_B2.tif ... *_B7.tif``
     (as Landsat ships them) is one scene stacked by band number.
Out: ``<scene>.parquet`` (GeoParquet, the scene's CRS): one row per tile that holds valid pixels,
     with the tile polygon, its window (row, col, size), ``res``, nodata fraction, model and
     weights hash, and the embedding (``--pool cls``: the class token after the final norm, the
     official ``forward_features``; ``mean``: the mean of the patch tokens over valid patches).
     ``--patch-features``: ``<scene>_patches.tif``, the patch tokens on the patch grid (half floats,
     ``pipelines/patch_features.py``). A scene of more than ``--block-tiles`` tiles runs in blocks of
     whole tile rows (separate tasks), merged into the same files.

Conventions:
- Tiles of ``--tile`` pixels (default the model's input size) at stride ``tile - overlap``; edge
  tiles are padded and their padding masked, never dropped; tiles without valid pixels (nodata
  value, mask band, alpha, or ``--nodata``) are skipped and counted.
- Normalisation per band: ``(x - mean) / std`` in the data's units with the model's own
  statistics (its checkpoint's ``meta.normalization``), else ``--mean/--std``, else measured on a
  sample of the scene's valid pixels and recorded; invalid pixels are 0 after normalisation.
- ``res`` (Scale-MAE's relative GSD scale): ``--res``, else pixel size / ``--reference-gsd``, else 1.0
  (the authors' evaluation recipe); recorded per tile.
- The raster is read window by window (``tasks/raster_io.py``): memory is bounded by a batch of tiles.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from imagingflows.pipelines.base import Pipeline, part_of, parts_folder
from imagingflows.pipelines.embed_train import EmbedTrain
from imagingflows.pipelines.engine_choice import choose_engine, engine_of
from imagingflows.pipelines.model_ref import model_of, resolve_model
from imagingflows.pipelines.remote_sensing_options import EmbedRun
from imagingflows.tasks.ingest import InputError, Item

SCENE_SUFFIXES = (".tif", ".tiff")
BAND_FILE = re.compile(r"_B\d+\.tiff?$", re.IGNORECASE)
ENCODERS = ("scale_mae",)  # architectures this pipeline serves: ViT encoders taking a GSD scale
DEMO_TRAINED_ON = "the bundled sample scenes (sample_data/remote_sensing), see models/weights/MODEL_CARD.md"


# ----------------------------------------------------------------------------- discover

def _is_band_folder(folder: Path) -> bool:
    return any(BAND_FILE.search(p.name) for p in folder.iterdir() if p.is_file())


def discover(input_dir: Path, config: dict) -> tuple[list[Item], list[tuple[str, str]]]:
    """Scenes under ``input_dir``: GeoTIFF files, and band folders (one scene each)."""
    input_dir = Path(input_dir)
    items: list[Item] = []
    band_folders = sorted(d for d in [input_dir, *input_dir.rglob("*")]
                          if d.is_dir() and not d.name.startswith(".") and _is_band_folder(d))
    for folder in band_folders:
        rel = folder.relative_to(input_dir).as_posix()
        items.append(Item(rel if rel != "." else folder.name, {"scene": str(folder)}))
    for path in sorted(input_dir.rglob("*")):
        if path.suffix.lower() not in SCENE_SUFFIXES or not path.is_file() or path.name.startswith("."):
            continue
        if any(folder == path.parent for folder in band_folders):
            continue  # a band of a stacked scene
        items.append(Item(path.relative_to(input_dir).with_suffix("").as_posix(), {"scene": str(path)}))
    return items, []


def expected_outputs(item_id: str, out_dir: Path) -> list[Path]:
    part = part_of(item_id)
    if part:
        return [part_path(out_dir, item_id, ".parquet")]
    return [Path(out_dir) / f"{item_id}.parquet"]


# ----------------------------------------------------------------------------- blocks of a huge scene

def part_path(out_dir: Path, part_id: str, suffix: str) -> Path:
    """Where the part ``<scene>#part<first>-<stop>`` keeps its result until the merge."""
    of, first, stop = part_of(part_id)
    return parts_folder(out_dir, of) / f"tiles{first:07d}-{stop:07d}{suffix}"


def split_scene(item: Item, cfg: dict) -> list[tuple[int, int]]:
    """Ranges of the scene's tile grid (row-major) in blocks of whole tile rows holding at most
    ``--block-tiles`` tiles (one row at least), or [] when the scene fits in one block."""
    from imagingflows.tasks.raster_io import tile_windows

    block = int(cfg.get("block_tiles") or 0)
    if block <= 0:
        return []
    src, _ = open_scene(item.paths["scene"], cfg)
    windows = tile_windows(src.height, src.width, cfg["tile"], cfg["overlap"])
    if len(windows) <= block:
        return []
    per_row = sum(w.row_off == 0 for w in windows)
    step = max(1, block // per_row) * per_row
    return [(first, min(first + step, len(windows))) for first in range(0, len(windows), step)]


def scene_windows(src, item: Item, cfg: dict) -> list:
    """The tiles this item runs: the whole grid, or its part's range of it."""
    from imagingflows.tasks.raster_io import tile_windows

    windows = tile_windows(src.height, src.width, cfg["tile"], cfg["overlap"])
    part = (item.meta or {}).get("part")
    return windows[part["first"]:part["stop"]] if part else windows


# ----------------------------------------------------------------------------- model

def _demo_encoder() -> str:
    from imagingflows.models.backend import demo_weights

    try:
        return str(demo_weights("scale_mae_demo"))
    except FileNotFoundError:
        raise ValueError("no bundled demo encoder yet: pass --weights PATH to a Scale-MAE checkpoint (the official "
                         "pretraining file, TorchGeo's encoder-only file with --arch scale_mae, or ours)") from None


def prepare(config: dict) -> dict:
    """Run options (:class:`EmbedRun`) -> resolved config: the encoder loaded once, tile, statistics checked."""
    from imagingflows.models.encoder import METHOD as ENCODER_METHOD, measurement_inputs
    from imagingflows.models.engines import EngineTarget
    from imagingflows.models.sliding_window import resolve_precision

    cfg = EmbedRun.parse(config).to_config()
    overrides = {"num_heads": cfg["num_heads"]} if cfg["num_heads"] else {}
    lm = resolve_model(cfg, pipeline="embed", demo=_demo_encoder, trained_on=DEMO_TRAINED_ON, spatial_dims=2,
                       overrides=overrides)
    if lm.spec.name not in ENCODERS:
        raise ValueError(f"{cfg['weights']} is a {lm.spec.name} model; embed needs a Scale-MAE encoder")
    patch = int(lm.spec.grid_of(lm.config))
    tile = int(cfg["tile"] or lm.config.get("img_size") or 224)
    if tile % patch:
        raise ValueError(f"--tile {tile} is not a multiple of the model's patch size {patch}")
    if cfg["overlap"] >= tile:
        raise ValueError(f"--overlap {cfg['overlap']} must be smaller than --tile {tile}")
    if cfg["patch_features"] and cfg["overlap"] % patch:
        raise ValueError(f"--patch-features needs --overlap ({cfg['overlap']}) to be a multiple of the model's "
                         f"patch size {patch}")
    channels = int(lm.spec.channels_of(lm.config))
    stats = (lm.meta or {}).get("normalization")
    for key in ("mean", "std"):
        given = cfg[key]
        if given is not None and len(given) != channels:
            raise ValueError(f"--{key} has {len(given)} values; the model takes {channels} bands")
    if (cfg["mean"] is None) != (cfg["std"] is None):
        raise ValueError("give --mean and --std together (or neither)")
    if cfg["std"] is not None and min(cfg["std"]) <= 0:
        raise ValueError(f"--std values must be > 0, got {cfg['std']}")
    cfg.update(tile=tile, patch_size=patch, in_channels=channels, embed_dim=int(lm.config["embed_dim"]),
               model_stats=stats, bands=cfg["bands"] or (lm.meta or {}).get("bands"),  # default: the model's own
               batch_size=cfg["batch_size"] or default_batch(tile))
    cfg["precision"] = resolve_precision(cfg["precision"], lm.device)
    choose_engine(cfg, EngineTarget.of(lm, measurement_inputs(channels, tile, min(cfg["batch_size"], 8)), ENCODER_METHOD))
    return cfg


# ----------------------------------------------------------------------------- process

def scene_stats(src, cfg: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-band ``(mean (C,), std (C,), source)`` in the data's units."""
    if cfg["mean"] is not None:
        return np.asarray(cfg["mean"], np.float32), np.asarray(cfg["std"], np.float32), "given"
    if cfg.get("model_stats"):
        s = cfg["model_stats"]
        return np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32), "model"
    mean, std, n = _measured(json.dumps(src.to_dict(), sort_keys=True), _stamps(src))
    if n == 0:
        raise InputError(f"{src.paths[0]}: no valid pixel (every pixel is nodata)")
    return np.asarray(mean, np.float32), np.maximum(np.asarray(std, np.float32), 1e-6), f"measured on {n} pixels"


def _stamps(src) -> tuple:
    """The files' (size, mtime): a changed file is measured again."""
    return tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in src.paths)


@functools.lru_cache(maxsize=64)
def _measured(source_json: str, stamps: tuple) -> tuple:
    """Sampled statistics of a source, once per process: the blocks of a split scene share them."""
    from imagingflows.tasks.raster_io import RasterSource, sample_band_stats

    return sample_band_stats(RasterSource.from_dict(json.loads(source_json)))


def tile_res(src, cfg: dict) -> float:
    if cfg["res"] is not None:
        return float(cfg["res"])
    if cfg["reference_gsd"] is not None:
        if src.ground_pixel_size_m is None:
            raise InputError(f"{src.paths[0]}: --reference-gsd needs the pixel size in metres, and the scene has "
                             "no CRS; give --res")
        return float(src.ground_pixel_size_m) / float(cfg["reference_gsd"])  # true ground size (not 3857's)
    return 1.0


def patch_validity(valid: np.ndarray, patch: int) -> np.ndarray:
    """``valid (B, H, W)`` -> ``(B, N)``: a patch counts when any of its pixels is valid (row-major)."""
    b, h, w = valid.shape
    return valid.reshape(b, h // patch, patch, w // patch, patch).any(axis=(2, 4)).reshape(b, -1)


def pool_tokens(tokens, patches_valid: np.ndarray, how: str) -> np.ndarray:
    """``tokens (B, 1 + N, D)`` -> ``(B, D)``: the class token, or the mean over valid patches."""
    if how == "cls":
        return tokens[:, 0].numpy()
    weights = patches_valid.astype(np.float32)
    patch_tokens = tokens[:, 1:].numpy()
    return (patch_tokens * weights[..., None]).sum(1) / np.maximum(weights.sum(1, keepdims=True), 1)


def default_batch(tile: int) -> int:
    """Tiles per forward pass: 8 of 224 px (the official input), as many pixels in smaller tiles, at most
    128 (small tiles in small batches leave the encoder's matrix products too short to be efficient)."""
    return int(min(128, max(8, round(8 * (224 / tile) ** 2))))


def tile_batches(src, windows: list, stats: tuple, batch_size: int, min_valid: float):
    """The tiles holding valid pixels, normalised, in batches: lists of ``(window, x (C, T, T) float32,
    valid (T, T) bool)``; invalid pixels are 0 after normalisation. Empty tiles are decided from the
    masks alone where the file has them (mask band, alpha), from the one pixel read where a nodata
    value is the mask, and are left out (their count is ``len(windows)`` minus the tiles yielded).
    Reports progress per tile."""
    from imagingflows.models.progress import report
    from imagingflows.tasks.raster_io import read_valid_tile

    mean, std = stats[0][:, None, None], stats[1][:, None, None]
    batch: list = []
    for done, window in enumerate(windows, 1):
        tile = read_valid_tile(src, window, min_valid)
        if tile is not None:
            pixels, valid = tile
            batch.append((window, np.where(valid[None], (pixels - mean) / std, 0).astype(np.float32), valid))
            if len(batch) == batch_size:
                yield batch
                batch = []
        report("tiles", done, len(windows))
    if batch:
        yield batch


def resolve_bands(path: str, spec) -> list[str] | None:
    """``spec`` with each ``a|b`` position replaced by the first alternative the scene has (``red|B4``
    takes a file's band named red, or a band folder's B4), so one spec serves differently named scenes."""
    from imagingflows.tasks.raster_io import open_raster

    if spec is None or not any("|" in str(b) for b in spec):
        return list(spec) if spec else None
    chosen = []
    for position in spec:
        for alt in str(position).split("|"):
            try:
                open_raster(path, bands=[alt.strip()])
            except InputError:
                continue
            chosen.append(alt.strip())
            break
        else:
            raise InputError(f"{path}: has none of the bands {position!r}")
    return chosen


def open_scene(path: str, cfg: dict, takes: str = "the model") -> tuple:
    """The scene with the run's bands and nodata -> ``(RasterSource, warnings)``; a band count the
    model does not take, or no CRS under ``require_crs``, is an InputError."""
    from imagingflows.tasks.raster_io import open_raster

    src = open_raster(path, bands=resolve_bands(path, cfg["bands"]), nodata=cfg["nodata"], crs=cfg.get("crs"),
                      res=cfg.get("crs_res"))
    if src.count != cfg["in_channels"]:
        raise InputError(f"{path}: {src.count} bands ({', '.join(src.band_names)}) but {takes} takes "
                         f"{cfg['in_channels']}; choose them with --bands")
    warnings = []
    if src.height < cfg["tile"] or src.width < cfg["tile"]:
        warnings.append(f"the scene ({src.height} x {src.width} pixels) is smaller than one tile ({cfg['tile']}): "
                        "it runs as one padded tile, the padding masked")
    if src.has_crs:
        return src, warnings
    if cfg["require_crs"]:
        raise InputError(f"{path}: no CRS (--require-crs)")
    return src, warnings + ["the scene has no CRS: its outputs are in pixel-grid units, not georeferenced"]


def check_not_empty(path: str, tiles_run: int) -> None:
    """A scene none of whose tiles holds a valid pixel fails (rather than give an empty output)."""
    if tiles_run == 0:
        raise InputError(f"{path}: no valid pixel (every pixel is nodata, or --min-valid skips every tile)")


def embed_scene(src, cfg: dict, stats: tuple, windows: list, features=None):
    """Every tile of ``windows`` with valid pixels -> ``(rows, polygons, vectors (T, D), counts)``;
    ``features`` (a :class:`~imagingflows.pipelines.patch_features.PatchFeatureWriter`) gets the patch tokens."""
    import torch
    from shapely.geometry import box

    from imagingflows.models.encoder import encode
    from imagingflows.tasks.raster_io import window_bounds

    lm = model_of(cfg)
    res = tile_res(src, cfg)
    rows, polygons, vectors = [], [], []
    for batch in tile_batches(src, windows, stats, cfg["batch_size"], cfg["min_valid"]):
        x = torch.from_numpy(np.stack([b[1] for b in batch]))
        valid = np.stack([b[2] for b in batch])
        tokens = encode(lm, x, torch.full((len(batch),), res, dtype=torch.float32), cfg["precision"], engine_of(cfg))
        patches_valid = patch_validity(valid, cfg["patch_size"])
        pooled = pool_tokens(tokens, patches_valid, cfg["pool"])
        if features is not None:
            for (window, _, _), patch_tokens, ok in zip(batch, tokens[:, 1:].numpy(), patches_valid):
                features.add(window, patch_tokens, ok)
        for (window, _, ok), vector in zip(batch, pooled):
            rows.append({"row": window.row_off, "col": window.col_off, "size": window.size, "res": res,
                         "nodata_fraction": round(1.0 - float(ok.mean()), 6), "model": lm.spec.name,
                         "weights_sha256": cfg["weights_sha256"]})
            polygons.append(box(*window_bounds(src, window)))
            vectors.append(vector.astype(np.float32))
    dim = cfg["embed_dim"]
    return rows, polygons, np.stack(vectors) if vectors else np.zeros((0, dim), np.float32), \
        {"tiles": len(windows), "embedded": len(rows), "skipped_nodata": len(windows) - len(rows), "res": res}


def process(item: Item, out_dir: Path, cfg: dict) -> dict:
    """Embed one scene; returns the manifest entry (outputs, summary, warnings)."""
    from imagingflows.tasks.geo_write import write_geoparquet

    t0 = time.perf_counter()
    src, warnings = open_scene(item.paths["scene"], cfg)
    mean, std, stats_from = scene_stats(src, cfg)
    windows = scene_windows(src, item, cfg)
    path = expected_outputs(item.id, out_dir)[0]
    features_path = path.with_name(path.stem + "_patches.tif") if cfg.get("patch_features") else None
    with contextlib.ExitStack() as stack:
        features = stack.enter_context(_feature_writer(features_path, src, item, cfg, windows)) \
            if features_path else None
        rows, polygons, vectors, counts = embed_scene(src, cfg, (mean, std), windows, features)
        if not part_of(item.id):
            check_not_empty(item.paths["scene"], counts["embedded"])
    meta = {"bands": list(src.band_names), "normalization": {"mean": mean.tolist(), "std": std.tolist(),
                                                             "from": stats_from},
            "tile": cfg["tile"], "overlap": cfg["overlap"], "pool": cfg["pool"], "res": counts["res"],
            "weights_sha256": cfg["weights_sha256"], "source": item.paths["scene"],
            "reprojected": _warp_record(src)}
    try:
        write_geoparquet(path, rows, polygons, src.crs, vectors=vectors, metadata=meta)
    except BaseException:
        if features_path:
            features_path.unlink(missing_ok=True)
        raise
    outputs = {"part" if part_of(item.id) else "embeddings": path.relative_to(out_dir).as_posix()}
    if features_path:
        outputs["patch_features"] = features_path.relative_to(out_dir).as_posix()
    entry = {
        "outputs": outputs,
        "summary": {"tiles": counts["tiles"], "embedded": counts["embedded"], "skipped_nodata": counts["skipped_nodata"],
                    "dim": int(vectors.shape[1])},
        "inference": {"res": counts["res"], "normalization": stats_from, "bands": list(src.band_names),
                      "seconds": round(time.perf_counter() - t0, 3)},
    }
    if warnings:
        entry["warnings"] = warnings
    return entry


def _warp_record(src) -> dict | None:
    """How the scene was reprojected (``--crs``), for the file's provenance; None when it was not."""
    w = src.warp
    if w is None:
        return None
    return {"from_crs": w.source_crs, "from_transform": list(w.source_transform), "to_crs": w.crs,
            "resampling": w.resampling}


def _feature_writer(path: Path, src, item: Item, cfg: dict, windows: list):
    from imagingflows.pipelines.patch_features import PatchFeatureWriter, core_rows, grid_shape

    rows = None
    if part_of(item.id):
        total = grid_shape(src.height, src.width, cfg["patch_size"])[0]
        rows = core_rows(windows, cfg["patch_size"], cfg["tile"], cfg["overlap"], total)
    return PatchFeatureWriter(path, src, patch=cfg["patch_size"], tile=cfg["tile"], overlap=cfg["overlap"],
                              dim=cfg["embed_dim"], rows=rows)


def merge(item: Item, parts: list[dict], out_dir: Path, cfg: dict) -> dict:
    """The parts' GeoParquet files, in tile order, as the scene's one file (what an unsplit run writes),
    streamed part by part; the patch features likewise."""
    from imagingflows.tasks.geo_write import concat_geoparquet

    summary = {k: sum(e["summary"][k] for e in parts) for k in ("tiles", "embedded", "skipped_nodata")}
    check_not_empty(item.paths["scene"], summary["embedded"])
    path = Path(out_dir) / f"{item.id}.parquet"
    outputs = {"embeddings": path.relative_to(out_dir).as_posix()}
    if cfg.get("patch_features"):
        from imagingflows.pipelines.patch_features import merge_features

        src, _ = open_scene(item.paths["scene"], cfg)
        features = path.with_name(path.stem + "_patches.tif")
        merge_features(features, [Path(out_dir) / e["outputs"]["patch_features"] for e in parts], src,
                       patch=cfg["patch_size"], dim=cfg["embed_dim"])
        outputs["patch_features"] = features.relative_to(out_dir).as_posix()
    concat_geoparquet(path, [Path(out_dir) / e["outputs"]["part"] for e in parts])
    entry = {"outputs": outputs,
             "summary": {**summary, "dim": parts[0]["summary"]["dim"]},
             "inference": {**parts[0]["inference"], "seconds": round(sum(e["inference"]["seconds"] for e in parts), 3)}}
    warnings = sorted({w for e in parts for w in e.get("warnings", [])})
    if warnings:
        entry["warnings"] = warnings
    return entry


def _train(data_dir: Path | None, run_dir: Path, config: dict) -> dict:
    from imagingflows.pipelines.embed_train import train

    return train(data_dir, run_dir, config)


def pipeline() -> Pipeline:
    return Pipeline(
        name="embed",
        description="Remote sensing: per-tile Scale-MAE embeddings of GeoTIFF scenes as GeoParquet",
        discover=discover,
        prepare=prepare,
        process=process,
        expected_outputs=expected_outputs,
        run_options=EmbedRun,
        train=_train,
        train_options=EmbedTrain,
        derived_output_keys=("tile", "model_stats", "model_overrides", "engine_outputs"),
        packages=("rasterio", "geopandas", "pyarrow", "shapely"),
        split=split_scene,
        merge=merge,
    )
