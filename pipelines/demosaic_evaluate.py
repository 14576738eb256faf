"""The demosaic pipeline's reference mode and its scoring: ``run-flow evaluate demosaic --input rgb_gt/``.

In (``--simulate``; ``evaluate`` sets it): clean RGB images, PNG / TIFF / JPEG, 8 or 16 bit (divided by 255 or
     65535: the container's full scale), an alpha channel dropped, an odd height or width cropped to even (a
     warning says so); a grey image fails by name. Subfolders are kept in the ids.
Mosaic: each reference sampled on ``--pattern`` (default RGGB here; ``models/cfa.py``), Gaussian noise of std
     ``--noise`` added on [0, 1] (numpy's PCG64 seeded from a hash of the item id, so reruns and every method
     see the same noise), clipped to [0, 1] and quantised to 16 bit: ONE uint16 mosaic per image for all methods.
Methods (``--methods``, comma list; default every available one): the torch methods of
     ``models/demosaic_methods.py`` (each given ``noise=`` the simulated std where it takes it: the denoising
     ones use it) and LibRaw's ``rawpy-*`` (``tasks/libraw_develop.py``: the same mosaic written as a DNG with
     identity colour matrix and neutral white, developed in camera space, linear, 16-bit).
Out: ``<out>/<id>/<method>.tif`` (16-bit RGB, clipped to [0, 1]), ``<out>/<id>/mosaic.tif`` (the uint16
     mosaic), ``<out>/<id>/timing.json`` (per method: seconds and seconds per megapixel; pattern, noise, seed),
     ``previews/<id>.png`` (the reference and every method, x3 zooms of the most detailed square, with CPSNR).
Scores (``evaluate``): per image and method ``cpsnr_<m>`` (10 log10(1 / MSE) over R, G, B jointly, [0, 1],
     ``--border`` px cropped per side), ``psnr_r_<m>`` / ``psnr_g_<m>`` / ``psnr_b_<m>`` and ``s_per_mp_<m>``;
     the mean over images comes from the evaluate flow; :func:`summarize` writes ``cpsnr_table.md`` / ``.csv``
     (one row per method) and returns the table as text for the terminal. Times include, for torch methods,
     moving the mosaic to the device and back (a first call per process, on a crop of at most 128 x 128, is made
     untimed: weights loaded), and for LibRaw, writing and decoding the DNG.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from imagingflows.tasks.ingest import InputError, Item

REF_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
PREVIEW_DIR = "previews"
TIMING = "timing.json"
MOSAIC = "mosaic.tif"
TABLE = "cpsnr_table"
ZOOM = 64  # side of the compared square, reference pixels (shown x3)
DEFAULT_PATTERN = "RGGB"


# ----------------------------------------------------------------------------- methods

def _torch_names() -> list[str]:
    from imagingflows.models.demosaic_methods import list_methods

    return list_methods()


def all_methods() -> list[str]:
    """Every name ``--methods`` takes here: the registered torch methods, then LibRaw's."""
    from imagingflows.tasks.libraw_develop import ALGORITHMS, available

    return _torch_names() + available(ALGORITHMS)


def check_methods(text: str) -> list[str]:
    """``"bilinear, Menon"`` -> ``["bilinear", "menon"]``; ValueError naming an unknown one (did you mean)."""
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ValueError("give at least one method")
    known = all_methods()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown demosaic method {name!r}.{hint} Available: {', '.join(known)}")
    return list(dict.fromkeys(names))


def _get(name: str, cfg: dict):
    """``get_method(name)`` on the run's device, with ``--weights`` for the methods that run a checkpoint."""
    from imagingflows.models.demosaic_methods import LEARNED, get_method

    return get_method(name, weights=cfg.get("weights") if name in LEARNED else None, device=cfg["device"])


def _usable(name: str, cfg: dict) -> str | None:
    """None when ``name`` can run here, else why not."""
    from imagingflows.tasks.libraw_develop import is_libraw

    if is_libraw(name):
        return None
    try:
        method = _get(name, cfg)
        if method.name == "demosaicnet":
            from imagingflows.models.demosaicnet import package_weights

            package_weights()
    except Exception as e:  # noqa: BLE001 - a method that cannot load is named with its reason
        return f"{type(e).__name__}: {e}"
    return None


def prepare_references(cfg: dict) -> dict:
    """Reference-mode config: the methods resolved (default: all that can run here), the pattern defaulted."""
    from imagingflows.tasks.libraw_develop import DEFAULT, available, is_libraw

    notes = []
    if cfg["methods"]:
        names = cfg["methods"].split(",")
        for name in names:
            why = _usable(name, cfg)
            if why:
                raise ValueError(f"--methods {name}: cannot run here ({why})")
    else:
        names = []
        for name in _torch_names() + available(DEFAULT):
            why = _usable(name, cfg)
            names.append(name) if why is None else notes.append(f"{name} left out: {why}")
    if cfg["pattern"] is None:
        notes.append(f"references are mosaicked with {DEFAULT_PATTERN} (no --pattern given)")
    weights = {n: w[1] for n in names if not is_libraw(n) and (w := getattr(_get(n, cfg), "weights", None))}
    digest = hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest() if weights else None
    cfg.update(methods=",".join(names), pattern=cfg["pattern"] or DEFAULT_PATTERN, notes=notes,
               noise=cfg["noise"] or 0.0,
               model={"method": "compare", "methods": names, "weights_sha256": weights}, weights_sha256=digest)
    return cfg


# ----------------------------------------------------------------------------- references and mosaics

def discover_references(input_dir: Path, config: dict) -> tuple[list[Item], list[tuple[str, str]]]:
    """One item per PNG/TIFF/JPEG under ``input_dir`` (recursively, not in ``previews/``)."""
    from imagingflows.tasks.ingest import files_by_stem

    found, errors = files_by_stem(input_dir, REF_SUFFIXES, skip=PREVIEW_DIR)
    return [Item(item_id, {"reference": str(path)}) for item_id, path in found], errors


def read_reference(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """``(rgb float32 (H, W, 3) in [0, 1], warnings)``: the reference as scored (even size, full scale)."""
    from imagingflows.tasks.image_io import read_image

    img = read_image(path)
    a = img.array
    warnings = []
    channels = a.shape[2] if a.ndim == 3 else 1
    if channels in (1, 2):
        raise InputError(f"{path}: has {channels} channel{'s' if channels == 2 else ''} "
                         f"({img.source_mode or 'grey'}): a reference must be an RGB image")
    if channels == 4:
        warnings.append("the alpha channel was dropped")
    elif channels != 3:
        raise InputError(f"{path}: has {channels} channels: a reference must be an RGB image")
    h, w = a.shape[:2]
    if h < 2 or w < 2:
        raise InputError(f"{path}: {h} x {w} pixels is too small to mosaic")
    if h % 2 or w % 2:
        warnings.append(f"odd size {h} x {w}: cropped to {h - h % 2} x {w - w % 2} (the last row/column) "
                        "for whole 2 x 2 CFA blocks")
    full = 255.0 if img.bit_depth == 8 else 65535.0
    rgb = a[: h - h % 2, : w - w % 2, :3].astype(np.float32) / np.float32(full)
    return np.clip(rgb, 0, 1), warnings


def item_seed(item_id: str) -> int:
    """The noise seed of an item: the first 8 bytes of sha256(id), so every run draws the same noise."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "little")


def simulate_mosaic(rgb: np.ndarray, pattern: str, noise: float, seed: int) -> np.ndarray:
    """``(H, W, 3)`` in [0, 1] -> the ``(H, W)`` uint16 mosaic: sampled on ``pattern``, ``noise`` std of
    Gaussian noise added (PCG64 ``seed``), clipped to [0, 1], quantised to 16 bit."""
    import torch

    from imagingflows.models.cfa import mosaic

    m = mosaic(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None], pattern)[0, 0].numpy()
    m = m.astype(np.float64)
    if noise > 0:
        m = m + noise * np.random.default_rng(seed).standard_normal(m.shape)
    return np.round(np.clip(m, 0, 1) * 65535).astype(np.uint16)


# ----------------------------------------------------------------------------- running the methods

_WARM: set[tuple[str, str]] = set()


def run_method(name: str, mosaic: np.ndarray, pattern: str, cfg: dict) -> tuple[np.ndarray, float]:
    """``(rgb uint16 (H, W, 3), seconds)`` of one method on the uint16 ``mosaic``."""
    import torch

    from imagingflows.tasks.libraw_develop import is_libraw, libraw_demosaic

    if is_libraw(name):
        start = time.perf_counter()
        rgb = libraw_demosaic(mosaic, pattern, name)
        seconds = time.perf_counter() - start
    else:
        method = _get(name, cfg)
        kwargs = {"noise": float(cfg["noise"])}  # the simulated level: the denoising methods are told it
        with torch.inference_mode():
            if (name, cfg["device"]) not in _WARM:  # weights loaded, kernels built: not part of the time
                crop = mosaic[:128, :128].astype(np.float32) / 65535  # even sides: the pattern holds
                method(torch.from_numpy(crop)[None, None].to(cfg["device"]), pattern, tile=cfg["tile"], **kwargs)
                _WARM.add((name, cfg["device"]))
            start = time.perf_counter()
            x = torch.from_numpy(mosaic.astype(np.float32) / 65535)[None, None].to(cfg["device"])
            rgb = method(x, pattern, tile=cfg["tile"], **kwargs)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            seconds = time.perf_counter() - start
    return np.round(np.clip(rgb, 0, 1) * 65535).astype(np.uint16), seconds


def process_reference(item: Item, out_dir: Path, cfg: dict) -> dict:
    """Mosaic one reference, demosaic it with every method, write the outputs (see the module docstring)."""
    from imagingflows.tasks.image_io import write_image
    from imagingflows.tasks.write import write_json

    t0 = time.perf_counter()
    ref, warnings = read_reference(item.paths["reference"])
    seed, pattern, noise = item_seed(item.id), cfg["pattern"], float(cfg["noise"])
    mosaic = simulate_mosaic(ref, pattern, noise, seed)
    folder = Path(out_dir) / item.id
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / MOSAIC, mosaic)
    h, w = mosaic.shape
    outputs, timing, shown = [], {}, []
    for name in cfg["methods"].split(","):
        rgb, seconds = run_method(name, mosaic, pattern, cfg)
        write_image(folder / f"{name}.tif", rgb)
        outputs.append((folder / f"{name}.tif").relative_to(out_dir).as_posix())
        timing[name] = {"seconds": round(seconds, 4), "s_per_mp": round(seconds / (h * w / 1e6), 4)}
        shown.append((name, rgb))
    record = {"pattern": pattern, "noise": noise, "seed": seed, "quantisation": "16-bit", "height": h, "width": w,
              "device": cfg["device"], "methods": timing}
    write_json(folder / TIMING, record)
    preview = save_comparison(Path(out_dir) / PREVIEW_DIR / f"{item.id}.png", ref, shown, int(cfg["border"]))
    entry = {
        "outputs": {"images": outputs, "mosaic": (folder / MOSAIC).relative_to(out_dir).as_posix(),
                    "timing": (folder / TIMING).relative_to(out_dir).as_posix(),
                    "previews": [preview.relative_to(out_dir).as_posix()]},
        "summary": {"height": h, "width": w, "pattern": pattern, "noise": noise, "methods": list(timing)},
        "inference": {"seed": seed, "seconds": round(time.perf_counter() - t0, 3)},
    }
    if warnings:
        entry["warnings"] = warnings
    return entry


def cleanup_reference(item_id: str, out_dir: Path) -> None:
    """Remove what :func:`process_reference` wrote for ``item_id`` (only its own files; the mosaic, written
    first, marks a reference-mode item folder)."""
    folder = Path(out_dir) / item_id
    (Path(out_dir) / PREVIEW_DIR / f"{item_id}.png").unlink(missing_ok=True)
    if not (folder / MOSAIC).is_file():
        return
    for name in all_methods() + ["mosaic"]:
        (folder / f"{name}.tif").unlink(missing_ok=True)
    (folder / TIMING).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else lives there (another item's subfolder)
        pass


def save_comparison(path: Path, ref: np.ndarray, shown: list[tuple[str, np.ndarray]], border: int) -> Path:
    """Reference | each method, x3 zooms of the reference's most detailed ``ZOOM`` square, labelled with CPSNR."""
    from imagingflows.tasks.preview import before_after, detail_box
    from imagingflows.tasks.write import write_png

    r, c = detail_box(ref.mean(-1), ZOOM)
    r, c = r - r % 2, c - c % 2

    def zoom(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a[r:r + ZOOM, c:c + ZOOM], 3, 0), 3, 1)

    panels = [(f"reference r{r} c{c}", zoom(ref))]
    for name, rgb in shown:
        x = rgb.astype(np.float32) / 65535
        panels.append((f"{name} {cpsnr(x, ref, border):.2f} dB", zoom(x)))
    if len(panels) % 2:
        panels.append(("", np.ones_like(panels[0][1])))
    pairs = [before_after(a, b, labels=(la, lb)) for (la, a), (lb, b) in zip(panels[::2], panels[1::2])]
    gap = np.full((pairs[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([x for p in pairs for x in (p, gap)][:-1], axis=1)
    return write_png(path, row)


# ----------------------------------------------------------------------------- scoring

def _psnr(mse: float) -> float:
    return round(float(10 * np.log10(1.0 / max(mse, 1e-20))), 4)


def cpsnr(img: np.ndarray, ref: np.ndarray, border: int) -> float:
    """10 log10(1 / MSE) over R, G, B jointly of ``(H, W, 3)`` images in [0, 1], ``border`` px cropped per side."""
    return channel_psnr(img, ref, border)[0]


def channel_psnr(img: np.ndarray, ref: np.ndarray, border: int) -> tuple[float, float, float, float]:
    """``(CPSNR, PSNR R, PSNR G, PSNR B)`` (see :func:`cpsnr`)."""
    b = int(border)
    h, w = ref.shape[:2]
    if 2 * b >= min(h, w):
        raise InputError(f"--border {b} leaves nothing of a {h} x {w} image to score")
    d = (np.asarray(img, np.float64) - np.asarray(ref, np.float64))[b:h - b, b:w - b] ** 2
    return (_psnr(d.mean()), *(_psnr(d[..., k].mean()) for k in range(3)))


def find_prediction(pred_dir: Path, item_id: str) -> Path | None:
    """The item's folder (``<pred_dir>/<id>/`` holding ``timing.json``)."""
    folder = Path(pred_dir) / item_id
    return folder if (folder / TIMING).is_file() else None


def find_reference(ref_dir: Path, item_id: str) -> Path | None:
    """``<ref_dir>/<id>.<png|tif|tiff|jpg|jpeg>`` (any case; the first in that order)."""
    parent, stem = (Path(ref_dir) / item_id).parent, Path(item_id).name
    if not parent.is_dir():
        return None
    found = {p.suffix.lower(): p for p in parent.iterdir() if p.stem == stem and p.is_file()}
    return next((found[s] for s in REF_SUFFIXES if s in found), None)


def evaluate_config(pred_dir: Path, options: dict) -> dict:
    """The reference-mode run's recorded pattern, noise and methods; ``--border`` as typed, else the run's."""
    path = Path(pred_dir) / "run.json"
    try:
        cfg = json.loads(path.read_text()).get("config") or {}
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the run record ({e}); give the output folder of a demosaic run") from e
    if not cfg.get("simulate"):
        raise ValueError(f"{path}: not a reference-mode demosaic run: `run-flow evaluate demosaic --input <clean RGB "
                         "images>` mosaics references and scores every --methods")
    border = options.get("border", cfg.get("border", 4))
    return {"border": int(border), "pattern": cfg.get("pattern"), "noise": float(cfg.get("noise") or 0.0),
            "methods": str(cfg.get("methods") or "").split(","), "device": cfg.get("device"),
            "notes": list(cfg.get("notes") or [])}


def evaluate_item(prediction: str, reference: str, cfg: dict | None) -> dict:
    """The ``evaluate`` hook: every method's output in the item folder against the reference."""
    from imagingflows.tasks.image_io import read_image

    cfg = cfg or {}
    folder = Path(prediction)
    timing = json.loads((folder / TIMING).read_text())
    ref, _ = read_reference(reference)
    out = {}
    for name, t in timing["methods"].items():
        img = read_image(folder / f"{name}.tif").array
        if img.shape != ref.shape or img.dtype != np.uint16:
            raise InputError(f"{folder / (name + '.tif')}: {img.dtype} {img.shape}, expected uint16 {ref.shape}")
        c, r, g, b = channel_psnr(img.astype(np.float64) / 65535, ref, int(cfg.get("border", 4)))
        out.update({f"cpsnr_{name}": c, f"psnr_r_{name}": r, f"psnr_g_{name}": g, f"psnr_b_{name}": b,
                    f"s_per_mp_{name}": t["s_per_mp"]})
    return out


def metric_conventions(cfg: dict | None) -> str:
    cfg = cfg or {}
    return (f"CPSNR = 10 log10(1 / MSE) over R, G, B jointly on [0, 1] after cropping {cfg.get('border', 4)} px per "
            f"side; PSNR R/G/B the same per channel; references mosaicked with {cfg.get('pattern')}, Gaussian noise "
            f"std {cfg.get('noise', 0.0):g} (of full scale, seeded per image), clipped, quantised to 16 bit: the same "
            f"mosaic for all methods; s_per_mp = seconds per megapixel on {cfg.get('device')} (torch: after a warm-up "
            "call; rawpy: writing and decoding the DNG included); outputs scored as written (16-bit)")


def _rows(per_item: dict[str, dict], methods: list[str]) -> tuple[list[str], list[list]]:
    ids = sorted(per_item)
    head = ["method", "CPSNR", "PSNR R", "PSNR G", "PSNR B", "s/MP", *ids]
    rows = []
    for m in methods:
        if not all(f"cpsnr_{m}" in v for v in per_item.values()):
            continue
        mean = [round(float(np.mean([v[f"{k}_{m}"] for v in per_item.values()])), 2)
                for k in ("cpsnr", "psnr_r", "psnr_g", "psnr_b")]
        s_mp = round(float(np.mean([v[f"s_per_mp_{m}"] for v in per_item.values()])), 3)
        rows.append([m, *mean, s_mp, *(round(per_item[i][f"cpsnr_{m}"], 2) for i in ids)])
    return head, rows


def _markdown(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def summarize(per_item: dict[str, dict], out_dir: Path, cfg: dict | None) -> dict:
    """``cpsnr_table.md`` / ``.csv``: one row per method (means over images, then each image's CPSNR);
    returns them as ``files`` and the table as ``text`` (printed by the CLI)."""
    from imagingflows.tasks.write import write_bytes

    cfg = cfg or {}
    methods = [m for m in cfg.get("methods") or [] if m] or sorted(
        {k.removeprefix("cpsnr_") for v in per_item.values() for k in v if k.startswith("cpsnr_")})
    head, rows = _rows(per_item, methods)
    title = (f"CPSNR / PSNR in dB over {len(per_item)} image{'s' if len(per_item) != 1 else ''} (mean; then each "
             f"image's CPSNR), border {cfg.get('border', 4)} px, {cfg.get('pattern')}, noise std "
             f"{cfg.get('noise', 0.0):g}, 16-bit mosaic shared by all methods; s/MP: seconds per megapixel on "
             f"{cfg.get('device')}\n" + "".join(f"note: {n}\n" for n in cfg.get("notes") or []) + "\n")
    text = title + _markdown(head, rows)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([head, *rows])
    write_bytes(Path(out_dir) / f"{TABLE}.md", text.encode())
    write_bytes(Path(out_dir) / f"{TABLE}.csv", buf.getvalue().encode())
    return {"files": [f"{TABLE}.md", f"{TABLE}.csv"], "text": text}
