"""Data for the remote-sensing demo weights, from the bundled scenes, with a west/east split.

``python -m sample_data.remote_sensing_demo prepare --out DIR`` writes
- ``DIR/encoder/``: what ``run-flow train embed`` sees: ``RGB.byte.tif`` and the west part of the
  Landsat 8 scene (band folder, columns ``[0, WEST_COLUMNS)``), so the held-out east strip is never
  trained on, not even without labels;
- ``DIR/classify/``: the whole Landsat 8 scene with ``<scene>_classes.tif`` beside it: labels decoded
  from its quality band (``pipelines/landsat_qa.py``: the USGS algorithm's output, not hand
  annotation). ``run-flow train classify --level patch --val-fraction 0.3 --tile 64`` holds out the
  east three tile columns, pixels ``[WEST_COLUMNS, 627)``.

``python -m sample_data.remote_sensing_demo east-reference --data DIR/classify --out REF`` writes the QA
labels with the west columns set to 255 (no label), so ``run-flow evaluate classify --reference REF``
scores the held-out strip only. ``... scenes --out DIR`` copies the scenes the demo encoder takes
(``RGB.byte.tif`` and the Landsat 8 band folder; ``make demo`` runs embed and classify on them).

``python -m sample_data.remote_sensing_demo baseline --data DIR/classify`` fits the per-pixel spectral
baseline (multinomial logistic regression on the band values, standardised) on the west pixels and
scores it on the east strip: pixel accuracy, per-class IoU, mIoU (the model card's comparison).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent / "remote_sensing"
LANDSAT = "landsat8_LC80200392015216LGN00"
TILE = 64
WEST_COLUMNS = 448  # 7 of the 10 tile columns of 64: --val-fraction 0.3 holds out the other 3
RGB_BANDS = ("l8_B4.tif", "l8_B3.tif", "l8_B2.tif")  # red, green, blue


def _copy_columns(src_path: Path, dst_path: Path, columns: int) -> None:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        window = Window(0, 0, min(columns, src.width), src.height)
        profile = dict(src.profile, width=window.width, transform=src.window_transform(window))
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=window))
            for i, d in enumerate(src.descriptions, 1):
                if d:
                    dst.set_band_description(i, d)


def prepare(out: Path) -> dict:
    from imagingflows.pipelines.landsat_qa import write_qa_classes

    out = Path(out)
    enc, cls = out / "encoder", out / "classify"
    for d in (enc, cls):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    shutil.copy(ROOT / "RGB.byte.tif", enc / "RGB.byte.tif")
    (enc / f"{LANDSAT}_west").mkdir()
    for band in sorted((ROOT / LANDSAT).glob("l8_B[2-7].tif")):
        _copy_columns(band, enc / f"{LANDSAT}_west" / band.name, WEST_COLUMNS)
    shutil.copytree(ROOT / LANDSAT, cls / LANDSAT, ignore=shutil.ignore_patterns("*BQA*", "*MTL*"))
    facts = write_qa_classes(ROOT / LANDSAT / "l8_BQA.tif", cls / f"{LANDSAT}_classes.tif")
    return {"encoder": str(enc), "classify": str(cls), "label_shares": facts["shares"]}


def scenes(out: Path) -> list[str]:
    """The bundled scenes the demo encoder takes (3 bands, RGB): ``RGB.byte.tif`` and the Landsat 8 folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "RGB.byte.tif", out / "RGB.byte.tif")
    shutil.rmtree(out / LANDSAT, ignore_errors=True)
    shutil.copytree(ROOT / LANDSAT, out / LANDSAT, ignore=shutil.ignore_patterns("*BQA*", "*MTL*"))
    return sorted(p.name for p in out.iterdir())


def east_reference(data: Path, out: Path) -> str:
    """The QA labels of ``data`` with every column west of WEST_COLUMNS set to 255 (no label)."""
    import rasterio

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{LANDSAT}_classes.tif"
    with rasterio.open(Path(data) / name) as src:
        labels, profile, tags = src.read(1), src.profile, src.tags()
    labels[:, :WEST_COLUMNS] = 255
    with rasterio.open(out / name, "w", **profile) as dst:
        dst.write(labels, 1)
        dst.update_tags(**tags)
    return str(out / name)


def _pixels(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x (N, 3) float, y (N,), column (N,))`` of every labelled, valid pixel."""
    import rasterio

    bands = [rasterio.open(data / LANDSAT / b).read(1).astype(np.float64) for b in RGB_BANDS]
    with rasterio.open(data / f"{LANDSAT}_classes.tif") as lab:
        labels = lab.read(1)
    x = np.stack(bands, -1)
    valid = (labels != 255) & (x > 0).all(-1)
    cols = np.broadcast_to(np.arange(labels.shape[1])[None], labels.shape)
    return x[valid], labels[valid].astype(np.int64), cols[valid]


def baseline(data: Path, iterations: int = 200, seed: int = 0) -> dict:
    """Per-pixel multinomial logistic regression (full-batch L-BFGS), fitted west, scored on the east strip."""
    import torch

    x, y, cols = _pixels(Path(data))
    train, test = cols < WEST_COLUMNS, cols >= WEST_COLUMNS
    mean, std = x[train].mean(0), x[train].std(0)
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y)
    k = int(y.max()) + 1
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")
    tr = torch.from_numpy(train)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt[tr]), yt[tr])
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = model(xt[torch.from_numpy(test)]).argmax(1).numpy()
    truth = y[test]
    rows, cols = np.nonzero(_labelled(Path(data)))
    patch = (rows[test] // 16) * 1000 + cols[test] // 16  # the 16 x 16 patch of each east pixel
    patch_pred, patch_truth = _majority(patch, pred), _majority(patch, truth)
    return {"pixels_train": int(train.sum()), "pixels_test": int(test.sum()),
            "pixel_level": _scores(pred, truth),
            "patch_level": {**_scores(patch_pred, patch_truth), "patches": int(len(patch_truth))},
            "pixel_level_of_the_true_patch_majority": _scores(_majority(patch, truth, spread=True), truth),
            "majority_class_accuracy": float(np.mean(truth == np.bincount(y[train]).argmax()))}


def _labelled(data: Path) -> np.ndarray:
    """The mask :func:`_pixels` selects, as an image."""
    import rasterio

    bands = [rasterio.open(data / LANDSAT / b).read(1) for b in RGB_BANDS]
    with rasterio.open(data / f"{LANDSAT}_classes.tif") as lab:
        labels = lab.read(1)
    return (labels != 255) & np.all([b > 0 for b in bands], axis=0)


def _majority(groups: np.ndarray, values: np.ndarray, spread: bool = False) -> np.ndarray:
    """Per group, the most frequent value (ties: the lower); ``spread``: given back to each member."""
    ids, inverse = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(ids), int(values.max()) + 1), np.int64)
    np.add.at(counts, (inverse, values), 1)
    winner = counts.argmax(1)
    return winner[inverse] if spread else winner


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy, per-class IoU and mIoU over the classes present in either (as evaluate classify)."""
    from imagingflows.pipelines.landsat_qa import CLASS_NAMES

    iou = {}
    for c in sorted(set(truth.tolist()) | set(pred.tolist())):
        tp = np.sum((pred == c) & (truth == c))
        iou[CLASS_NAMES.get(c, str(c))] = round(float(tp / np.sum((pred == c) | (truth == c))), 4)
    return {"accuracy": round(float(np.mean(pred == truth)), 4), "miou": round(float(np.mean(list(iou.values()))), 4),
            "iou": iou}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("baseline")
    b.add_argument("--data", type=Path, required=True)
    e = sub.add_parser("east-reference")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    sc = sub.add_parser("scenes")
    sc.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.command == "prepare":
        result = prepare(args.out)
    elif args.command == "baseline":
        result = baseline(args.data)
    elif args.command == "east-reference":
        result = east_reference(args.data, args.out)
    else:
        result = scenes(args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
