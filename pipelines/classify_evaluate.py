"""``run-flow evaluate classify``: class maps scored against label rasters (confusion matrix, accuracy, IoU).

In:  predictions: the output folder of a classify run (its ``run.json`` names each scene's class map
     ``<scene>_classes.tif`` and records the head's level, tile and classes); ``--reference``: a folder of
     label rasters, one per scene, looked up as ``<scene>_labels.tif``, then ``<scene>_classes.tif`` (what
     ``sample_data/scenes.py`` writes and ``train classify --level patch`` reads), then ``<scene>.tif``
     (``<scene>`` is the item id, subfolders included). Label values 0..254 are class ids; 255 and the
     file's nodata value mean "no label". Any grid: a reference on the class map's grid is read directly,
     one on another grid (coarser, another CRS) is resampled onto it by nearest neighbour, window by
     window (:func:`classify_patch_train.place_labels` / ``read_labels``); one that does not overlap the
     map, or cannot be placed for lack of a CRS, fails that scene with an error naming both files.
Out: per scene (``metrics.json`` ``per_item``): the confusion matrix (rows reference, columns predicted,
     in ``class_ids`` order), accuracy, per-class IoU and mIoU, per-class precision and recall, and how many
     pixels (tiles) were scored or left out; over all scenes (``overall``): the same from the summed
     matrices, ``confusion_matrix.png`` (row-normalised, counts annotated), ``confusion_matrix.csv`` and
     ``class_metrics.csv`` (per scene and class: IoU, precision, recall, reference and predicted counts).

Levels (the run's): ``patch``: every pixel of the class map's grid; ``tile``: the map's grid cut into
``tile`` x ``tile`` cells from its origin (the tiles of a run with overlap 0); a cell's predicted label is
the majority of its predicted pixels, its reference label the majority reference label over those pixels
(ties: the lower id). Excluded: pixels where the prediction is nodata (255) and, of the rest, those without
a reference label (tile level: cells without such pixels); both counts are reported. Both rasters are read
in windows of about ``BLOCK`` pixels a side, so memory does not grow with the map.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from imagingflows.pipelines.classify_patch_train import (LABEL_SUFFIXES, NO_LABEL, patch_labels, place_labels,
                                                         read_labels)
from imagingflows.tasks.ingest import InputError

NODATA = 255  # the class map's nodata (pipelines/classify.py writes it)
BLOCK = 1024  # side of the windows both rasters are read in (rounded up to whole tiles at tile level)
PICTURE = "confusion_matrix.png"


# ----------------------------------------------------------------------------- the hooks' lookups

def _run_record(pred_dir: Path) -> dict:
    path = Path(pred_dir) / "run.json"
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the run record ({e}); give the output folder of a classify run") from e
    if run.get("pipeline") != "classify" or not isinstance(run.get("config"), dict):
        raise ValueError(f"{path} is not the record of a classify run (pipeline {run.get('pipeline')!r})")
    return run


def evaluate_config(pred_dir: Path, options: dict) -> dict:
    """The recorded level, tile and classes of the classify run in ``pred_dir`` (``options`` are not used:
    the class maps say what they are)."""
    cfg = _run_record(pred_dir)["config"]
    if cfg.get("level") not in ("tile", "patch") or not cfg.get("classes"):
        raise ValueError(f"{Path(pred_dir) / 'run.json'} records no level and classes for its class maps")
    return {"level": cfg["level"], "tile": int(cfg.get("tile") or 0),
            "classes": {str(k): str(v) for k, v in cfg["classes"].items()}}


def find_prediction(pred_dir: Path, item_id: str) -> Path | None:
    """The class map the run recorded for ``item_id`` (else ``<item_id>_classes.tif``)."""
    entry = (_run_record(pred_dir).get("items") or {}).get(item_id) or {}
    rel = (entry.get("outputs") or {}).get("class_map") or f"{item_id}_classes.tif"
    path = Path(pred_dir) / rel
    return path if path.is_file() else None


def find_reference(ref_dir: Path, item_id: str) -> Path | None:
    """``<item_id>_labels.tif``, ``<item_id>_classes.tif`` or ``<item_id>.tif`` in ``ref_dir`` (first found)."""
    for suffix in (*LABEL_SUFFIXES, ""):
        path = Path(ref_dir) / f"{item_id}{suffix}.tif"
        if path.is_file():
            return path
    return None


def metric_conventions(config: dict | None) -> str:
    level = (config or {}).get("level")
    unit = f"tiles ({config.get('tile')} px cells, majority labels)" if level == "tile" else "pixels"
    return (f"counted in {unit}; confusion rows are the reference, columns the prediction; accuracy = "
            "correct / scored; IoU = tp / (tp + fp + fn) per class; mIoU averages the classes present in the "
            "reference or the prediction (classes absent from both are not averaged); precision = tp / predicted, "
            "recall = tp / reference; 'overall' sums the scenes' matrices, 'mean' averages the scenes; "
            "prediction nodata (255) and pixels without a reference label are excluded and counted")


# ----------------------------------------------------------------------------- counting

def _read_map(ds, row: int, col: int, size: int) -> np.ndarray:
    """``(size, size)`` uint8 of the class map from (row, col); 255 past its edges and on its nodata."""
    from rasterio.windows import Window

    h, w = min(size, ds.height - row), min(size, ds.width - col)
    out = np.full((size, size), NODATA, np.uint8)
    values = ds.read(1, window=Window(col, row, w, h))
    if ds.nodata is not None and not math.isnan(ds.nodata) and ds.nodata != NODATA:
        values = np.where(values == ds.nodata, NODATA, values)
    out[:h, :w] = values
    return out


def count_confusion(pred_path: str | Path, ref_path: str | Path, level: str, tile: int,
                    block: int = BLOCK) -> tuple[np.ndarray, dict]:
    """``(confusion (256, 256) int64 [reference, predicted], counts)`` of one class map against its reference.

    ``counts``: ``scored``, ``excluded_prediction_nodata``, ``excluded_reference_nodata`` (pixels at patch
    level, ``tile`` x ``tile`` cells at tile level). Read window by window (``block`` pixels a side).
    """
    import rasterio

    from imagingflows.tasks.raster_io import TileWindow, open_raster

    src = open_raster(pred_path)
    grid = place_labels(Path(ref_path), src)  # InputError naming both files when it cannot be placed
    step = block if level == "patch" else tile * max(1, -(-block // tile))
    conf = np.zeros(256 * 256, np.int64)
    no_pred = no_ref = 0
    with rasterio.open(pred_path) as pds, rasterio.open(grid.path) as rds:
        for r in range(0, src.height, step):
            for c in range(0, src.width, step):
                pred = _read_map(pds, r, c, step)
                ref = read_labels(rds, grid, src, TileWindow(r, c, step))
                if level == "tile":
                    inside = np.zeros((step, step), bool)
                    inside[:src.height - r:tile, :src.width - c:tile] = True  # cells that start inside the map
                    inside = inside[::tile, ::tile].ravel()
                    pred_cell = patch_labels(pred[None], tile)[0]
                    ref_cell = patch_labels(np.where(pred == NODATA, NO_LABEL, ref)[None], tile)[0]
                    pred, ref = pred_cell[inside], ref_cell[inside]
                else:
                    inside = np.zeros((step, step), bool)
                    inside[:src.height - r, :src.width - c] = True
                    pred, ref = pred[inside], ref[inside]
                has_pred = pred != NODATA
                scored = has_pred & (ref != NO_LABEL)
                no_pred += int((~has_pred).sum())
                no_ref += int((has_pred & ~scored).sum())
                conf += np.bincount(ref[scored].astype(np.int64) * 256 + pred[scored], minlength=256 * 256)
    conf = conf.reshape(256, 256)
    return conf, {"scored": int(conf.sum()), "excluded_prediction_nodata": no_pred,
                  "excluded_reference_nodata": no_ref}


# ----------------------------------------------------------------------------- scores

def reference_names(ref_path: str) -> dict[str, str]:
    """The reference raster's own class names (its ``CLASS_NAMES`` tag, JSON ``{"0": "land"}``), if any:
    they name the ids the run does not know."""
    import json

    import rasterio

    with rasterio.open(ref_path) as src:
        tag = src.tags().get("CLASS_NAMES")
    try:
        return {str(k): str(v) for k, v in json.loads(tag).items()} if tag else {}
    except (ValueError, AttributeError):
        return {}


def class_names(ids: list[int], classes: dict) -> list[str]:
    """Names of ``ids``: the run's recorded names, ``class_<id>`` for ids it does not know."""
    return [str(classes.get(str(i), classes.get(i, f"class_{i}"))) for i in ids]


def scores(conf: np.ndarray, names: list[str]) -> dict:
    """Accuracy, per-class IoU / precision / recall and mIoU from a square confusion matrix (rows reference)."""
    tp = np.diag(conf).astype(np.float64)
    ref_n, pred_n = conf.sum(1).astype(np.float64), conf.sum(0).astype(np.float64)
    union = ref_n + pred_n - tp
    total = float(conf.sum())
    iou = {n: round(float(tp[i] / union[i]), 5) for i, n in enumerate(names) if union[i] > 0}
    out = {"accuracy": round(float(tp.sum() / total), 5) if total else None,
           "miou": round(float(np.mean(list(iou.values()))), 5) if iou else None}
    out.update({f"iou_{n}": v for n, v in iou.items()})
    out["precision"] = {n: round(float(tp[i] / pred_n[i]), 5) for i, n in enumerate(names) if pred_n[i] > 0}
    out["recall"] = {n: round(float(tp[i] / ref_n[i]), 5) for i, n in enumerate(names) if ref_n[i] > 0}
    return out


def _squeeze(conf: np.ndarray, classes: dict) -> tuple[list[int], np.ndarray]:
    """The recorded class ids plus any other id that occurs, and the matrix on those ids."""
    seen = set(np.flatnonzero(conf.sum(0) + conf.sum(1)).tolist())
    ids = sorted({int(k) for k in classes} | seen)
    return ids, conf[np.ix_(ids, ids)]


def evaluate_scene(pred_path: str, ref_path: str, cfg: dict | None) -> dict:
    """The ``evaluate`` hook: one class map against its reference (see the module docstring)."""
    cfg = cfg or {}
    level, tile, classes = cfg.get("level", "patch"), int(cfg.get("tile") or 0), cfg.get("classes") or {}
    if level == "tile" and tile < 1:
        raise ValueError("tile-level scoring needs the run's tile size (evaluate_config records it)")
    if Path(pred_path).resolve() == Path(ref_path).resolve():
        raise InputError(f"{ref_path}: the reference is the class map itself; give --reference a folder of labels")
    conf, counts = count_confusion(pred_path, ref_path, level, tile)
    unit = "tiles" if level == "tile" else "pixels"
    if not counts["scored"]:
        raise InputError(f"{pred_path}: no {unit[:-1]} has both a prediction and a reference label in {ref_path} "
                         f"({counts['excluded_prediction_nodata']} {unit} without prediction, "
                         f"{counts['excluded_reference_nodata']} without label)")
    ids, small = _squeeze(conf, classes)
    names = class_names(ids, {**reference_names(ref_path), **{str(k): v for k, v in classes.items()}})
    return {**scores(small, names), **counts, "level": level, "unit": unit, "class_ids": ids, "class_names": names,
            "confusion": small.tolist()}


# ----------------------------------------------------------------------------- over all scenes

def pooled(per_item: dict[str, dict], classes: dict) -> dict:
    """The scenes' matrices summed (on the union of their class ids) and scored."""
    full = np.zeros((256, 256), np.int64)
    counts = {"scored": 0, "excluded_prediction_nodata": 0, "excluded_reference_nodata": 0}
    for m in per_item.values():
        ids = m["class_ids"]
        full[np.ix_(ids, ids)] += np.asarray(m["confusion"], np.int64)
        for k in counts:
            counts[k] += int(m.get(k, 0))
    ids, small = _squeeze(full, classes)
    seen = {str(i): n for m in per_item.values() for i, n in zip(m["class_ids"], m.get("class_names", []))}
    names = class_names(ids, {**seen, **{str(k): v for k, v in classes.items()}})
    level = next(iter(per_item.values())).get("level") if per_item else None
    return {**scores(small, names), **counts, "level": level, "class_ids": ids, "class_names": names,
            "confusion": small.tolist()}


def summarize(per_item: dict[str, dict], out_dir: Path, cfg: dict | None) -> dict:
    """Run-level results for the evaluate flow: pooled metrics, the picture and the CSV tables."""
    from imagingflows.tasks.write import write_bytes

    if not per_item:
        return {}
    out_dir = Path(out_dir)
    overall = pooled(per_item, (cfg or {}).get("classes") or {})
    unit = "tiles" if overall["level"] == "tile" else "pixels"
    title = (f"{len(per_item)} scene{'s' if len(per_item) != 1 else ''}, {overall['scored']:,} {unit}: accuracy "
             f"{overall['accuracy']:.3f}, mIoU {overall['miou']:.3f}")
    plot_confusion(np.asarray(overall["confusion"]), overall["class_names"], out_dir / PICTURE, title=title)
    write_bytes(out_dir / "confusion_matrix.csv", _matrix_csv(overall).encode())
    write_bytes(out_dir / "class_metrics.csv", _class_csv({**per_item, "(all)": overall}).encode())
    return {"metrics": overall, "figures": [PICTURE], "files": ["confusion_matrix.csv", "class_metrics.csv"]}


def _matrix_csv(m: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["reference \\ predicted", *m["class_names"]])
    for name, row in zip(m["class_names"], m["confusion"]):
        w.writerow([name, *row])
    return buf.getvalue()


def _class_csv(results: dict[str, dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scene", "class_id", "class", "iou", "precision", "recall", "reference", "predicted"])
    for scene, m in results.items():
        conf = np.asarray(m["confusion"])
        for i, (cid, name) in enumerate(zip(m["class_ids"], m["class_names"])):
            w.writerow([scene, cid, name, m.get(f"iou_{name}", ""), m["precision"].get(name, ""),
                        m["recall"].get(name, ""), int(conf[i].sum()), int(conf[:, i].sum())])
    return buf.getvalue()


def plot_confusion(conf: np.ndarray, names: list[str], path: Path, *, title: str = "") -> Path:
    """``conf (K, K)`` counts (rows reference) as a PNG: colour = share of the reference row, counts written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from imagingflows.tasks.write import atomic_path

    k = len(names)
    rows = conf.sum(1, keepdims=True)
    share = np.divide(conf, rows, out=np.zeros(conf.shape, np.float64), where=rows > 0)
    side = min(16.0, 2.5 + 0.7 * k)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the reference class")
    size = max(5, min(10, 90 // max(k, 1)))
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(conf[i, j]):,}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=size,
                    color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="reference", title=title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)
