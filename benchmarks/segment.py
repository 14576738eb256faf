"""Segment inference on a CPU: plain MONAI sliding window vs our backend, side by side.

    python benchmarks/segment.py            # timing (published config) + agreement (demo weights)
    python benchmarks/segment.py --quick    # small smoke version (2 mm case, feature_size 12)

Timing: one BraTS-size generated case (240 x 240 x 155, 1 mm), Swin UNETR with the
published configuration (feature_size 48, random weights: time does not depend on them),
ROI 128, overlap 0.5, gaussian blending on both sides. MONAI's path is
``sliding_window_inference`` over the whole volume; ours is ``predict_volume`` with its
defaults (foreground crop, empty windows skipped, precision ``auto``). Peak RSS is
sampled from /proc during each path.

Agreement: the bundled demo weights on the bundled sample cases, the full segment
pipeline preprocessing, our default path vs the plain float32 whole-volume path: voxel
agreement of the label maps inside the brain, and each path's Dice against the
reference labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # sample_data is not an installed package


from peak_rss import PeakRSS  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def bench_case(tmp: Path, quick: bool) -> torch.Tensor:
    """A generated BraTS-size case, normalised as the BraTS21 recipe: (1, 4, X, Y, Z)."""
    from imagingflows.pipelines import medical as seg
    from imagingflows.tasks.ingest import Item
    from imagingflows.tasks.preprocess import normalize_nonzero
    from sample_data import brats

    spacing = (2.0, 2.0, 2.0) if quick else (1.0, 1.0, 1.0)
    case = brats.make_case(tmp, "bench", 4242, spacing=spacing, axcodes="LPS", fov_mm=(240.0, 240.0, 155.0))
    paths = {m: str(next(case.glob(f"*_{m}.nii.gz"))) for m in seg.MODEL_CHANNELS}
    vols = seg.read_case(Item(id="bench", paths=paths), seg.MODEL_CHANNELS)
    x = normalize_nonzero(torch.as_tensor(np.stack([v.array for v in vols]).astype(np.float32)))
    return torch.as_tensor(x)[None].float()


def timing(args) -> list[dict]:
    from monai.inferers import sliding_window_inference

    from imagingflows.models.backend import build_model, configure_threads, predict_volume, select_device
    from imagingflows.models.backend import LoadedModel

    configure_threads(1)
    feature_size, roi = (12, (64, 64, 64)) if args.quick else (48, (128, 128, 128))
    with tempfile.TemporaryDirectory() as tmp:
        x = bench_case(Path(tmp), args.quick)
    torch.manual_seed(0)
    net, spec, cfg = build_model(None, "swin_unetr", feature_size=feature_size, patch_merging="legacy")
    lm = LoadedModel(net, spec, cfg, None, None, {}, select_device("cpu"))
    print(f"case {tuple(x.shape[2:])} voxels, Swin UNETR feature_size {feature_size} "
          f"({sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params), ROI {roi}, overlap 0.5, "
          f"{torch.get_num_threads()} threads", flush=True)

    rows = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = sliding_window_inference(x, roi, 1, net, overlap=0.5, mode="gaussian")
        seconds = time.perf_counter() - t0
    n_monai = _window_count(x.shape[2:], roi, 0.5)
    rows.append({"path": "MONAI sliding_window_inference (fp32, whole volume)", "seconds": seconds,
                 "peak_rss": mem.peak, "windows": n_monai, "out": ref})
    variants = [("ours, default (precision auto, crop, skip)", {"precision": "auto"})]
    if args.all:
        variants += [
            ("ours, fp32, no crop, no skip", {"precision": "fp32", "crop_foreground": False, "skip_empty": False}),
            ("ours, bf16 forced", {"precision": "bf16"}),
        ]
    for name, opts in variants:
        opts = {"crop_foreground": True, "skip_empty": True, **opts}
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out, run = predict_volume(lm, x, roi, overlap=0.5, **opts)
            seconds = time.perf_counter() - t0
        brain = (x != 0).any(1, keepdim=True).expand_as(out)
        if run.box:
            print(f"{name}: foreground box {' x '.join(str(b - a) for a, b in run.box)} voxels", flush=True)
        rows.append({"path": f"{name} [{run.precision}]", "seconds": seconds, "peak_rss": mem.peak,
                     "windows": run.windows - run.skipped_windows,
                     "max_diff_in_brain": float((out - ref)[brain].abs().max())})
    base = rows[0]
    print("\n| path | windows run | seconds | peak RSS GB | time ratio | RSS ratio | max |diff| in brain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        diff = f"{r['max_diff_in_brain']:.3g}" if "max_diff_in_brain" in r else "-"
        print(f"| {r['path']} | {r['windows']} | {r['seconds']:.1f} | {r['peak_rss'] / 2**30:.2f} | "
              f"{r['seconds'] / base['seconds']:.2f} | {r['peak_rss'] / base['peak_rss']:.2f} | {diff} |")
    print("(random weights: the differences show window placement, not accuracy; see the agreement table)")
    return rows


def _window_count(shape, roi, overlap) -> int:
    n = 1
    for s, r in zip(shape, roi):
        step = max(1, int(r * (1 - overlap)))
        n *= 1 if s <= r else int(np.ceil((s - r) / step)) + 1
    return n


def agreement(args) -> None:
    from imagingflows.pipelines import medical as seg
    from imagingflows.tasks.ingest import Item

    cases = sorted(p for p in Path(args.cases).iterdir() if p.is_dir())
    print(f"\nagreement on {len(cases)} cases from {args.cases} (demo weights, segment pipeline preprocessing)")
    print("| case | voxel agreement in brain | Dice TC/WT/ET plain fp32 | Dice TC/WT/ET ours | seconds plain | seconds ours |")
    print("|---|---|---|---|---|---|")
    fast_cfg = seg.prepare({"device": "cpu"})
    plain_cfg = seg.prepare({"device": "cpu", "precision": "fp32", "crop_foreground": False, "skip_empty": False})
    agree, dice_plain, dice_fast = [], [], []
    for case in cases:
        paths = {m: str(next(case.glob(f"*_{m}.nii.gz"))) for m in seg.MODEL_CHANNELS}
        vols = seg.read_case(Item(id=case.name, paths=paths), seg.MODEL_CHANNELS)
        ref = seg.labels_to_regions(seg.read_labels(str(next(case.glob("*_seg.nii.gz")))).array.astype(np.uint8))
        brain = np.any(np.stack([v.array != 0 for v in vols]), axis=0)
        spacing = tuple(float(s) for s in np.linalg.norm(vols[0].affine[:3, :3], axis=0))
        out = {}
        for name, cfg in (("plain", plain_cfg), ("fast", fast_cfg)):
            t0 = time.perf_counter()
            probs, _ = seg.predict_regions(vols, cfg)
            regions = (probs > 0.5) & brain[None]
            out[name] = (regions, seg.region_metrics(regions, ref, spacing), time.perf_counter() - t0)
        a = float((seg.regions_to_labels(out["plain"][0]) == seg.regions_to_labels(out["fast"][0]))[brain].mean())
        agree.append(a)
        dp = [out["plain"][1][f"dice_{r}"] for r in seg.REGIONS]
        df = [out["fast"][1][f"dice_{r}"] for r in seg.REGIONS]
        dice_plain.append(dp)
        dice_fast.append(df)
        print(f"| {case.name} | {a:.4%} | {'/'.join(f'{d:.3f}' for d in dp)} | {'/'.join(f'{d:.3f}' for d in df)} "
              f"| {out['plain'][2]:.1f} | {out['fast'][2]:.1f} |", flush=True)
    mp, mf = np.mean(dice_plain, 0), np.mean(dice_fast, 0)
    print(f"| mean | {np.mean(agree):.4%} (min {np.min(agree):.4%}) | {'/'.join(f'{d:.3f}' for d in mp)} "
          f"| {'/'.join(f'{d:.3f}' for d in mf)} | | |")
    print(f"Dice change (ours - plain) per region: {', '.join(f'{r} {d:+.4f}' for r, d in zip(seg.REGIONS, mf - mp))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small case and model (a smoke run, not the goal)")
    ap.add_argument("--all", action="store_true", help="also time each lever alone (fp32 whole volume, bf16)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--cases", default=str(ROOT / "sample_data" / "brats"), help="cases with references")
    args = ap.parse_args()
    from imagingflows.models.sliding_window import native_bf16

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {native_bf16(torch.device('cpu'))}, cores {os.cpu_count()}")
    if not args.skip_timing:
        timing(args)
    if not args.skip_agreement:
        agreement(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
