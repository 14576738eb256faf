"""The segment pipeline (3D brain-tumour segmentation, BraTS) with Swin UNETR.

In:  one case per folder (or per group of files sharing a case id) with one
     NIfTI file or DICOM series folder per MRI modality, matched by file suffix
     (never by sort order): BraTS 2021 ``_flair _t1ce _t1 _t2`` or BraTS 2023
     ``-t2f -t1c -t1n -t2w``. Single-channel models take one file per case.
Out: ``<case>/<case>_seg.nii.gz`` (uint8) on the input's exact grid and affine,
     ``<case>/statistics.json`` (volumes in mm3), ``<case>/preview_*.png``.

Conventions:
- Model channel order is :data:`MODEL_CHANNELS` (flair, t1ce, t1, t2: the BraTS21
  checkpoints' order).
- The network predicts regions [TC, WT, ET] (sigmoid, threshold 0.5). The label map
  follows BraTS 2021 (1 NCR, 2 ED, 4 ET) or 2023 (1 NETC, 2 SNFH, 3 ET):
  TC = NCR|ET, WT = NCR|ED|ET.
- Geometry: each case is brought into the model's frame (orientation ``axcodes``;
  resampled to ``spacing`` when the model states one) with MONAI's invertible
  transforms; region probabilities are mapped back by the exact inverse, so the
  output has the input's shape and affine and its labels are right in world space.
- Intensities: z-score over nonzero voxels, per channel (BraTS21 recipe).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from imagingflows.pipelines.base import Pipeline
from imagingflows.tasks.preprocess import ModelFrame, from_model_frame, normalize_nonzero, to_model_frame
from imagingflows.tasks.ingest import NIFTI_SUFFIXES, InputError, Item, Volume, read_volume, strip_nifti_suffix

MODEL_CHANNELS = ("flair", "t1ce", "t1", "t2")
MODALITY_SUFFIXES = {  # modality -> accepted file/folder suffixes (BraTS 2021, BraTS 2023)
    "flair": ("_flair", "-t2f"),
    "t1ce": ("_t1ce", "-t1c"),
    "t1": ("_t1", "-t1n"),
    "t2": ("_t2", "-t2w"),
}
SEG_SUFFIXES = ("_seg", "-seg")
LABEL_CONVENTIONS = {
    "2021": {"NCR": 1, "ED": 2, "ET": 4},
    "2023": {"NETC": 1, "SNFH": 2, "ET": 3},
}
REGIONS = ("TC", "WT", "ET")
REGION_COLORS = {1: (255, 60, 60), 2: (255, 220, 0), 3: (60, 140, 255), 4: (60, 140, 255)}

# What the published BraTS21 checkpoints expect (research-contributions SwinUNETR/BRATS21):
# native 1 mm BraTS grid as stored (LPS voxel axes), no resampling, ROI 128, overlap 0.5.
FOREIGN_PROFILE = {"axcodes": "LPS", "spacing": None, "roi": [128, 128, 128], "channels": list(MODEL_CHANNELS)}

OUTPUT_CONFIG_KEYS = (
    "axcodes", "spacing", "roi", "overlap", "blend", "threshold", "labels", "sw_batch_size",
    "model_overrides", "channels", "precision", "crop_foreground", "skip_empty", "save_probabilities",
)


# ----------------------------------------------------------------------------- discover

def _match_modality(stem: str) -> tuple[str, str] | None:
    """(modality, case id) for a file stem ending in a known suffix, else None."""
    for modality, suffixes in MODALITY_SUFFIXES.items():
        for suffix in suffixes:
            if stem.lower().endswith(suffix):
                return modality, stem[: -len(suffix)]
    return None


def _is_seg(stem: str) -> bool:
    return stem.lower().endswith(SEG_SUFFIXES)


def _candidates(folder: Path) -> list[tuple[str, Path]]:
    """(stem, path) of NIfTI files and DICOM series folders directly in ``folder``."""
    from imagingflows.tasks.dicom import is_dicom_series_dir

    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and (stem := strip_nifti_suffix(p.name)) is not None:
            out.append((stem, p))
        elif p.is_dir() and is_dicom_series_dir(p):
            out.append((p.name, p))
    return out


def _group_case(case_id: str, files: list[tuple[str, Path]], channels: tuple[str, ...]) -> Item:
    found: dict[str, list[Path]] = {}
    for stem, path in files:
        if _is_seg(stem):
            continue
        hit = _match_modality(stem)
        key = hit[0] if hit else (stem.lower() if stem.lower() in MODALITY_SUFFIXES else None)
        if key is None:
            raise InputError(
                f"case {case_id}: file {path.name} has no modality suffix; expected one of "
                + ", ".join(s for sfx in MODALITY_SUFFIXES.values() for s in sfx)
            )
        found.setdefault(key, []).append(path)
    dupes = {m: ps for m, ps in found.items() if len(ps) > 1}
    if dupes:
        m, ps = next(iter(dupes.items()))
        raise InputError(f"case {case_id}: {len(ps)} files for modality {m}: {', '.join(p.name for p in ps)}")
    missing = [m for m in channels if m not in found]
    if missing:
        raise InputError(
            f"expected {len(channels)} modalities ({', '.join(channels)}), found {len(channels) - len(missing)} "
            f"in case {case_id}: missing {', '.join(missing)}"
        )
    return Item(case_id, {m: str(found[m][0]) for m in channels})


def discover(input_dir: Path, config: dict) -> tuple[list[Item], list[tuple[str, str]]]:
    """Cases under ``input_dir``: each subfolder is a case; loose files are grouped by case id."""
    input_dir = Path(input_dir)
    channels = tuple(config.get("channels") or MODEL_CHANNELS)
    items: list[Item] = []
    errors: list[tuple[str, str]] = []
    loose: dict[str, list[tuple[str, Path]]] = {}
    from imagingflows.tasks.dicom import is_dicom_series_dir

    for entry in sorted(input_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not is_dicom_series_dir(entry):
            case_files = _candidates(entry)
            if not case_files:
                continue
            if len(channels) == 1:
                items.extend(Item(f"{entry.name}_{stem}" if len(case_files) > 1 else entry.name, {channels[0]: str(p)})
                             for stem, p in case_files if not _is_seg(stem))
                continue
            try:
                items.append(_group_case(entry.name, case_files, channels))
            except InputError as e:
                errors.append((entry.name, str(e)))
        elif entry.is_file() and strip_nifti_suffix(entry.name) is None:
            continue  # not an image file name (README, checksums ...)
        else:
            stem = strip_nifti_suffix(entry.name) or entry.name
            if len(channels) == 1:
                if not _is_seg(stem):
                    items.append(Item(stem, {channels[0]: str(entry)}))
                continue
            hit = _match_modality(stem)
            case_id = hit[1] if hit else re.sub(r"[_-]seg$", "", stem)
            loose.setdefault(case_id, []).append((stem, entry))
    for case_id, files in sorted(loose.items()):
        try:
            items.append(_group_case(case_id, files, channels))
        except InputError as e:
            errors.append((case_id, str(e)))
    return items, errors


# ----------------------------------------------------------------------------- model profile

def prepare(config: dict) -> dict:
    """Load the model once (fails early on a bad checkpoint) and resolve the model frame."""
    from imagingflows.models import cached_model
    from imagingflows.models.backend import demo_weights
    from imagingflows.models.sliding_window import resolve_precision

    cfg = dict(config)
    weights = cfg.get("weights") or str(demo_weights("swin_unetr_brats"))
    overrides = {k: v for k, v in (cfg.get("model_overrides") or {}).items() if v is not None}
    lm = cached_model(weights, cfg.get("arch"), trust=bool(cfg.get("trust_checkpoint")),
                      device=cfg.get("device", "cpu"), **overrides)
    if lm.spec.spatial_dims != 3:
        raise ValueError(f"{weights}: {lm.spec.name} is a {lm.spec.spatial_dims}D model; segment needs a 3D one")
    profile = {**FOREIGN_PROFILE, **(lm.meta.get("profile") or {})}
    for key in ("axcodes", "spacing", "roi"):
        if cfg.get(key) is not None:
            profile[key] = cfg[key]
    channels = profile["channels"]
    if len(channels) != lm.config.get("in_channels", len(channels)):
        raise ValueError(f"{weights}: model takes {lm.config['in_channels']} channels but profile lists {channels}")
    cfg.update(
        weights=weights,
        weights_sha256=lm.weights_sha256,
        model=lm.describe(),
        axcodes=profile["axcodes"],
        spacing=list(profile["spacing"]) if profile["spacing"] else None,
        roi=list(profile["roi"]),
        channels=list(channels),
        model_overrides=overrides,
    )
    cfg.setdefault("overlap", 0.5)
    cfg.setdefault("blend", "gaussian")
    cfg.setdefault("threshold", 0.5)
    cfg.setdefault("labels", "2021")
    cfg.setdefault("sw_batch_size", 1)
    # auto is resolved here, once, so run.json and the config hash name the path that ran
    cfg["precision"] = resolve_precision(cfg.get("precision") or "auto", lm.device)
    cfg.setdefault("crop_foreground", True)  # windows only over the brain's bounding box
    cfg.setdefault("skip_empty", True)  # an all-background window is not run
    multiple = lm.spec.size_multiple
    if any(int(r) % multiple or int(r) < lm.spec.min_size for r in cfg["roi"]):
        raise ValueError(f"roi {cfg['roi']} must be multiples of {multiple} and >= {lm.spec.min_size}")
    if not 0 <= float(cfg["overlap"]) < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, got {cfg['overlap']}")
    if int(cfg["sw_batch_size"]) < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {cfg['sw_batch_size']}")
    if cfg["labels"] not in LABEL_CONVENTIONS:
        raise ValueError(f"labels must be one of {sorted(LABEL_CONVENTIONS)}, got {cfg['labels']!r}")
    return cfg


def _model(cfg: dict):
    from imagingflows.models import cached_model

    return cached_model(cfg["weights"], cfg.get("arch"), trust=bool(cfg.get("trust_checkpoint")),
                        device=cfg.get("device", "cpu"), **(cfg.get("model_overrides") or {}))


# ----------------------------------------------------------------------------- read

def read_case(item: Item, channels: tuple[str, ...]) -> list[Volume]:
    """The case's volumes in model channel order, checked to share one grid."""
    vols = [read_volume(item.paths[m], role=m) for m in channels]
    ref = vols[0]
    for m, v in zip(channels[1:], vols[1:]):
        if v.array.shape != ref.array.shape:
            raise InputError(
                f"case {item.id}: modalities differ in shape: {channels[0]} {ref.array.shape} vs {m} {v.array.shape}"
            )
        if not np.allclose(v.affine, ref.affine, atol=1e-3):
            worst = float(np.abs(v.affine - ref.affine).max())
            raise InputError(
                f"case {item.id}: modalities differ in affine: {channels[0]} vs {m} (max difference {worst:.4g} mm); "
                "expected co-registered modalities on one grid"
            )
    return vols


# ----------------------------------------------------------------------------- preprocess / postprocess

def regions_to_labels(regions: np.ndarray, convention: str = "2021") -> np.ndarray:
    """(3, X, Y, Z) booleans [TC, WT, ET] -> uint8 label map in the BraTS convention."""
    lab = LABEL_CONVENTIONS[convention]
    tc, wt, et = regions[0], regions[1], regions[2]
    out = np.zeros(tc.shape, np.uint8)
    out[wt] = 2  # ED / SNFH
    out[tc] = 1  # NCR / NETC
    out[et & wt] = lab["ET"]
    return out


def labels_to_regions(labels: np.ndarray, convention: str | None = None) -> np.ndarray:
    """uint8 label map -> (3, X, Y, Z) booleans [TC, WT, ET]; convention detected if None."""
    convention = convention or detect_convention(labels)
    et = LABEL_CONVENTIONS[convention]["ET"]
    tc = (labels == 1) | (labels == et)
    wt = tc | (labels == 2)
    return np.stack([tc, wt, labels == et])


def detect_convention(labels: np.ndarray) -> str:
    values = set(np.unique(labels).tolist()) - {0}
    if 4 in values and 3 in values:
        raise InputError(f"label values {sorted(values)} mix BraTS 2021 (4 = ET) and 2023 (3 = ET)")
    if not values <= {1, 2, 3, 4}:
        raise InputError(f"label values {sorted(values)} are not BraTS labels (expected 1, 2, 4 or 1, 2, 3)")
    return "2023" if 3 in values else "2021"


# ----------------------------------------------------------------------------- process one case

def predict_regions(vols: list[Volume], cfg: dict) -> tuple[np.ndarray, dict]:
    """Region probabilities (3, X, Y, Z) float32 on the input grid, and what the windows did."""
    import torch

    from imagingflows.models.backend import predict_volume

    stack = np.stack([v.array for v in vols])
    frame = ModelFrame(cfg["axcodes"], tuple(cfg["spacing"]) if cfg.get("spacing") else None)
    img, geo = to_model_frame(stack, vols[0].affine, frame)
    x = normalize_nonzero(img)
    probs, run = predict_volume(
        _model(cfg), x.as_tensor()[None].float(), cfg["roi"], overlap=cfg["overlap"],
        sw_batch_size=cfg["sw_batch_size"], blend=cfg["blend"], postprocess=torch.sigmoid,
        precision=cfg.get("precision", "fp32"), crop_foreground=bool(cfg.get("crop_foreground")),
        skip_empty=bool(cfg.get("skip_empty")),
    )
    back = from_model_frame(probs[0], img, geo)
    if back.shape[1:] != stack.shape[1:]:
        raise RuntimeError(f"inverse transform gave shape {back.shape[1:]}, input is {stack.shape[1:]}")
    return back.astype(np.float32), run.as_dict()


def process(item: Item, out_dir: Path, cfg: dict) -> dict:
    """Segment one case and write its outputs; returns the manifest entry."""
    from imagingflows.tasks.preview import save_overlay_previews
    from imagingflows.tasks.write import write_json, write_nifti

    t0 = time.perf_counter()
    channels = tuple(cfg["channels"])
    vols = read_case(item, channels)
    t_read = time.perf_counter()
    if _model(cfg).weights_sha256 != cfg.get("weights_sha256"):
        raise RuntimeError(f"weights file {cfg['weights']} changed during the run; rerun to use the new weights")
    probs, inference = predict_regions(vols, cfg)
    t_infer = time.perf_counter()
    brain = np.any(np.stack([v.array != 0 for v in vols]), axis=0)
    regions = (probs > cfg["threshold"]) & brain[None]
    labels = regions_to_labels(regions, cfg["labels"])

    case_dir = Path(out_dir) / item.id
    ref = vols[0]
    seg_path = case_dir / f"{item.id}_seg.nii.gz"
    write_nifti(seg_path, labels, ref.affine, header=ref.header)
    stats = statistics(labels, ref.affine, cfg["labels"])
    stats["case"] = item.id
    write_json(case_dir / "statistics.json", stats)
    outputs = {}
    if cfg.get("save_probabilities"):
        prob_path = case_dir / f"{item.id}_probs.nii.gz"  # (X, Y, Z, 3): TC, WT, ET sigmoid
        write_nifti(prob_path, np.moveaxis(probs, 0, -1).astype(np.float32), ref.affine, header=None)
        outputs["probabilities"] = str(prob_path.relative_to(out_dir))
    ras_img, ras_lab, ras_spacing = _as_ras(ref.array, labels, ref.affine)
    previews = save_overlay_previews(ras_img, ras_lab, case_dir, item.id, REGION_COLORS, spacing=ras_spacing)
    t_write = time.perf_counter()
    return {
        "outputs": {
            "seg": str(seg_path.relative_to(out_dir)),
            "statistics": str((case_dir / "statistics.json").relative_to(out_dir)),
            "previews": [str(Path(p).relative_to(out_dir)) for p in previews],
            **outputs,
        },
        "summary": {f"{r}_mm3": stats["regions_mm3"][r] for r in REGIONS},
        "timings": {
            "read": round(t_read - t0, 3), "infer": round(t_infer - t_read, 3), "write": round(t_write - t_infer, 3),
        },
        "input_shape": list(ref.array.shape),
        "inference": inference,
    }


def statistics(labels: np.ndarray, affine: np.ndarray, convention: str) -> dict:
    """Volumes (mm3) of each region and label, with the voxel volume they rest on."""
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    regions = labels_to_regions(labels, convention)
    names = LABEL_CONVENTIONS[convention]
    out: dict[str, Any] = {
        "label_convention": f"BraTS {convention}: " + ", ".join(f"{v} {k}" for k, v in names.items()),
        "voxel_volume_mm3": voxel_mm3,
        "shape": list(labels.shape),
        "regions_mm3": {r: round(float(regions[i].sum()) * voxel_mm3, 3) for i, r in enumerate(REGIONS)},
        "labels_mm3": {k: round(float((labels == v).sum()) * voxel_mm3, 3) for k, v in names.items()},
        "voxels": {r: int(regions[i].sum()) for i, r in enumerate(REGIONS)},
    }
    if regions[1].any():
        idx = np.argwhere(regions[1]).mean(axis=0)
        out["WT_centroid_mm"] = [round(float(v), 2) for v in (affine @ np.append(idx, 1.0))[:3]]
    return out


def _as_ras(image: np.ndarray, labels: np.ndarray, affine: np.ndarray):
    """Reorient image and labels to RAS voxel order for display (pure flips/transposes)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    img = nib.orientations.apply_orientation(image, ornt)
    lab = nib.orientations.apply_orientation(labels, ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = tuple(float(zooms[int(ax)]) for ax in ornt[:, 0].argsort())
    return np.ascontiguousarray(img), np.ascontiguousarray(lab), spacing


def expected_outputs(item_id: str, out_dir: Path) -> list[Path]:
    case_dir = Path(out_dir) / item_id
    return [case_dir / f"{item_id}_seg.nii.gz", case_dir / "statistics.json"] + [
        case_dir / f"preview_{view}.png" for view in ("axial", "coronal", "sagittal")
    ]


# ----------------------------------------------------------------------------- evaluate

METRIC_CONVENTIONS = (
    "Dice and HD95 (mm, MONAI HausdorffDistanceMetric percentile 95, voxel spacing of the reference) "
    "per BraTS region: TC = NCR|ET, WT = NCR|ED|ET, ET. Empty regions follow the BraTS rule: Dice 1 and "
    "HD95 0 when prediction and reference are both empty; Dice 0 and HD95 373.13 mm when only one is."
)
HD95_EMPTY_PENALTY = 373.13


def find_seg(folder: Path, case_id: str) -> Path | None:
    for name in [f"{case_id}/{case_id}{s}{x}" for s in SEG_SUFFIXES for x in NIFTI_SUFFIXES] + [
        f"{case_id}{s}{x}" for s in SEG_SUFFIXES for x in NIFTI_SUFFIXES
    ] + [f"{case_id}{x}" for x in NIFTI_SUFFIXES]:
        if (p := Path(folder) / name).is_file():
            return p
    return None


def evaluate_case(pred_path: str, ref_path: str, cfg: dict | None = None) -> dict:
    """Dice and HD95 (mm) per region of one predicted label map against its reference."""
    pred = read_labels(pred_path)
    ref = read_labels(ref_path)
    if pred.array.shape != ref.array.shape or not np.allclose(pred.affine, ref.affine, atol=1e-3):
        raise InputError(
            f"{pred_path}: prediction grid {pred.array.shape} does not match reference {ref_path} "
            f"{ref.array.shape} (shape and affine must be equal)"
        )
    p = labels_to_regions(pred.array.astype(np.uint8))
    r = labels_to_regions(ref.array.astype(np.uint8))
    return region_metrics(p, r, ref.spacing)


def read_labels(path: str) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(path)
        arr = np.asarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input
        raise InputError(f"{path}: cannot read label map: {e}") from e
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a 3D label map, found shape {arr.shape}")
    return Volume(np.rint(arr).astype(np.int16), img.affine, img.header, str(path))


def region_metrics(pred: np.ndarray, ref: np.ndarray, spacing) -> dict:
    """pred/ref (3, X, Y, Z) booleans [TC, WT, ET] -> {dice_TC, hd95_TC, ...}."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    out: dict[str, float] = {}
    for i, name in enumerate(REGIONS):
        p, r = pred[i], ref[i]
        if not p.any() and not r.any():
            dice, hd = 1.0, 0.0
        elif not p.any() or not r.any():
            dice, hd = 0.0, HD95_EMPTY_PENALTY
        else:
            pt = torch.from_numpy(p[None, None].astype(np.float32))
            rt = torch.from_numpy(r[None, None].astype(np.float32))
            dice = float(compute_dice(pt, rt, include_background=True)[0, 0])
            hd = float(compute_hausdorff_distance(pt, rt, include_background=True, percentile=95,
                                                  spacing=list(spacing))[0, 0])
        out[f"dice_{name}"] = round(dice, 5)
        out[f"hd95_{name}"] = round(hd, 4)
    return out


# ----------------------------------------------------------------------------- record

def _train(data_dir: Path, run_dir: Path, config: dict) -> dict:
    from imagingflows.pipelines.medical_train import train

    return train(data_dir, run_dir, config)


def pipeline() -> Pipeline:
    return Pipeline(
        name="segment",
        description="3D brain-tumour segmentation (BraTS regions TC/WT/ET) with Swin UNETR",
        discover=discover,
        prepare=prepare,
        process=process,
        expected_outputs=expected_outputs,
        output_config_keys=OUTPUT_CONFIG_KEYS,
        evaluate=evaluate_case,
        find_prediction=lambda folder, case_id: find_seg(folder, case_id),
        find_reference=lambda folder, case_id: find_seg(folder, case_id),
        metric_conventions=METRIC_CONVENTIONS,
        train=_train,
    )
