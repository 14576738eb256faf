"""Segment inference on a CPU: plain MONAI sliding window vs our backend, side by side.

    python benchmarks/segment.py            # timing (published config, real-size brain) + agreement (demo weights)
    python benchmarks/segment.py --quick    # small smoke version (2 mm case, feature_size 12, ROI 64)
    python benchmarks/segment.py --brain phantom   # the generator's default brain (as before 2026-12-02)

Timing: one BraTS-size generated case (240 x 240 x 155 voxels, 1 mm, LPS). With
``--brain real`` (the default) the brain has real adult extent (the generator's
``brain_extent_mm=(140, 170, 140)``, L-R x A-P x S-I), so the foreground crop saves what it
would on a real scan; ``--brain phantom`` is the generator's random default size (about
140 x 168 x 128 mm scaled by 0.9-1.08). Swin UNETR with the published configuration
(feature_size 48, random weights: time does not depend on them), overlap 0.5, gaussian
blending on both sides. MONAI's path is ``sliding_window_inference`` over the whole volume
at ROI 128, float32; ours is ``predict_volume`` with the foreground crop and empty-window
skipping, each precision forced (``--precisions``), at ROI 128 and at a larger ROI that
covers the brain box in fewer windows (``--large-roi``; ``auto`` = the box rounded up to
multiples of 32). The brain's bounding box (mm) and the windows each path runs are printed;
peak RSS is sampled from /proc during each path. ``--profile`` adds a torch.profiler
summary (operators by self CPU time) of one ROI-128 window at the precisions it names;
our path uses MONAI's ``use_flash_attention`` (window attention through
``scaled_dot_product_attention``), as ``models/swin_unetr.py`` builds it since 2026-12-02
(``--no-flash-attention``: off); MONAI's plain path has it off (MONAI's default).

Agreement: the bundled demo weights on the bundled sample cases, the full segment
pipeline preprocessing: voxel agreement of the label maps inside the brain and the Dice
change per region between pairs of configurations: plain float32 whole volume vs ours
(crop, skip) for each precision, and ROI levers: the training ROI 64 (2 x 2 x 2 windows on
the 2 mm brain box) vs the model's ROI 96 (one window), and ROI 96 vs 128 (``--agree-configs``
picks a subset).
The issue 13 goal: >= 99.5 % voxel agreement inside the brain, |Dice change| <= 0.005 per
region.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # sample_data is not an installed package

from host import host_line  # noqa: E402 (benchmarks/ is on sys.path when run as a script)
from peak_rss import PeakRSS  # noqa: E402

#: full brain axes (L-R, A-P, S-I) in mm of an adult brain, for ``--brain real``
REAL_BRAIN_MM = (140.0, 170.0, 140.0)
FOV_MM = (240.0, 240.0, 155.0)  # BraTS grid: 240 x 240 x 155 at 1 mm
AGREE_MIN, DICE_TOL = 0.995, 0.005  # issue 13's segment agreement rule


# ----------------------------------------------------------------------------- the case


def bench_case(tmp: Path, quick: bool, brain: str) -> tuple[torch.Tensor, tuple[float, ...]]:
    """A generated BraTS-size case normalised as the BraTS21 recipe: ``(1, 4, X, Y, Z)``, and its spacing (mm)."""
    from imagingflows.pipelines import medical as seg
    from imagingflows.tasks.ingest import Item
    from imagingflows.tasks.preprocess import normalize_nonzero
    from sample_data import brats

    spacing = (2.0, 2.0, 2.0) if quick else (1.0, 1.0, 1.0)
    extent = REAL_BRAIN_MM if brain == "real" else None
    case = brats.make_case(tmp, "bench", 4242, spacing=spacing, axcodes="LPS", fov_mm=FOV_MM,
                           brain_extent_mm=extent)
    paths = {m: str(next(case.glob(f"*_{m}.nii.gz"))) for m in seg.MODEL_CHANNELS}
    vols = seg.read_case(Item(id="bench", paths=paths), seg.MODEL_CHANNELS)
    x = normalize_nonzero(torch.as_tensor(np.stack([v.array for v in vols]).astype(np.float32)))
    return torch.as_tensor(x)[None].float(), spacing


def large_roi(box_shape, multiple: int, arg: str, roi: tuple[int, ...]) -> tuple[int, ...] | None:
    """The ROI for the "fewer, larger windows" lever: ``auto`` = the box rounded up to ``multiple``."""
    if arg == "none":
        return None
    if arg == "auto":
        big = tuple(max(r, multiple * math.ceil(s / multiple)) for s, r in zip(box_shape, roi))
    else:
        big = tuple(int(v) for v in arg.replace("x", ",").split(","))
        big = big * 3 if len(big) == 1 else big
    return None if big == tuple(roi) else big


# ----------------------------------------------------------------------------- timing


def timing(args) -> list[dict]:
    from monai.inferers import sliding_window_inference

    from imagingflows.models.backend import LoadedModel, build_model, configure_threads, predict_volume, select_device
    from imagingflows.models.sliding_window import foreground_box, window_count

    configure_threads(1)
    feature_size, roi = (12, (64, 64, 64)) if args.quick else (48, (128, 128, 128))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        x, spacing = bench_case(Path(tmp), args.quick, args.brain)
        gen_s = time.perf_counter() - t0
    torch.manual_seed(0)
    net, spec, cfg = build_model(None, "swin_unetr", feature_size=feature_size, patch_merging="legacy")
    lm = LoadedModel(net, spec, cfg, None, None, {}, select_device("cpu"))
    box = foreground_box(x)
    box_vox = tuple(s.stop - s.start for s in box)
    box_mm = tuple(n * sp for n, sp in zip(box_vox, spacing))
    big = large_roi(box_vox, spec.size_multiple, args.large_roi, roi)
    print(f"case {tuple(x.shape[2:])} voxels at {spacing[0]:g} mm (LPS; generated in {gen_s:.0f} s), "
          f"brain '{args.brain}': bounding box {' x '.join(f'{v:g}' for v in box_mm)} mm (L-R x A-P x S-I)", flush=True)
    print(f"Swin UNETR feature_size {feature_size} ({sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params, "
          f"random weights), overlap 0.5, gaussian, {torch.get_num_threads()} threads; ROI {roi}"
          + (f", larger ROI {big}" if big else ""), flush=True)
    print(f"windows: MONAI whole volume {window_count(x.shape[2:], roi, 0.5)} at ROI {roi[0]}; ours after the crop "
          f"{window_count(box_vox, roi, 0.5)} at ROI {roi[0]}"
          + (f", {window_count(box_vox, big, 0.5)} at ROI {'x'.join(map(str, big))}" if big else ""), flush=True)

    rows = []
    tmp_ref = tempfile.NamedTemporaryFile(suffix=".npy", delete=False)  # the reference waits on disk, not in RSS
    _flash_attention(net, False)  # MONAI's plain path: its default
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = sliding_window_inference(x, roi, 1, net, overlap=0.5, mode="gaussian")
        seconds = time.perf_counter() - t0
    np.save(tmp_ref.name, ref.numpy())
    del ref
    rows.append({"path": f"MONAI sliding_window_inference, whole volume, ROI {roi[0]}", "precision": "fp32",
                 "seconds": seconds, "peak_rss": mem.peak, "windows": window_count(x.shape[2:], roi, 0.5)})
    print(f"  {rows[-1]['path']}: {seconds:.1f} s, peak RSS {mem.peak / 2**30:.2f} GB", flush=True)
    brain = (x != 0).any(1)[0].numpy()  # (X, Y, Z)
    _flash_attention(net, args.flash_attention)  # ours: on unless --no-flash-attention
    sdpa = ", SDPA attention" if args.flash_attention else ""
    variants = [(roi, p) for p in args.precisions] + ([(big, p) for p in args.precisions] if big else [])
    for r, precision in variants:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out, run = predict_volume(lm, x, r, overlap=0.5, precision=precision, crop_foreground=True,
                                      skip_empty=True)
            seconds = time.perf_counter() - t0
        ref = np.load(tmp_ref.name, mmap_mode="r")[0]
        diff = max(float(np.abs(np.asarray(ref[c])[brain] - out[0, c].numpy()[brain]).max())
                   for c in range(ref.shape[0]))
        del out, ref
        rows.append({"path": f"ours predict_volume, crop + skip{sdpa}, ROI {'x'.join(map(str, r))}",
                     "precision": run.precision, "seconds": seconds, "peak_rss": mem.peak,
                     "windows": run.windows - run.skipped_windows, "max_diff_in_brain": diff})
        print(f"  {rows[-1]['path']} [{run.precision}]: {seconds:.1f} s, peak RSS {mem.peak / 2**30:.2f} GB, "
              f"{run.windows} windows ({run.skipped_windows} skipped), box {run.box}", flush=True)
    Path(tmp_ref.name).unlink()
    base = rows[0]
    print("\n| path | precision | windows run | seconds | peak RSS GB | time ratio | RSS ratio "
          "| max abs diff in brain |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = f"{r['max_diff_in_brain']:.3g}" if "max_diff_in_brain" in r else "-"
        print(f"| {r['path']} | {r['precision']} | {r['windows']} | {r['seconds']:.1f} | {r['peak_rss'] / 2**30:.2f} | "
              f"{r['seconds'] / base['seconds']:.3f} | {r['peak_rss'] / base['peak_rss']:.2f} | {diff} |")
    print("(random weights: the differences show window placement and precision, not accuracy; see the agreement part)")
    goals(rows)
    if args.profile:
        profile(net, x, box, roi, args.profile)
    return rows


def goals(rows: list[dict]) -> None:
    """Issue 13's segment goals: <= 0.25x MONAI's time (fp32, the AVX2 path), <= 0.15x with bf16, RSS <= MONAI's."""
    from imagingflows.models.sliding_window import native_bf16

    base, native = rows[0], native_bf16(torch.device("cpu"))
    print(f"goals (this host {'has' if native else 'lacks'} native bf16): fp32 <= 0.25x (the AVX2-host goal; "
          f"{'here only a proxy' if native else 'this host'}), bf16 <= 0.15x (native-bf16 goal), RSS <= MONAI's")
    for r in rows[1:]:
        limit = 0.15 if r["precision"] == "bf16" else 0.25
        t, m = r["seconds"] / base["seconds"], r["peak_rss"] / base["peak_rss"]
        verdict = "meets" if t <= limit and m <= 1.0 else "misses"
        print(f"  {r['path']} [{r['precision']}]: time {t:.3f}x (goal {limit}), RSS {m:.2f}x -> {verdict}")


def profile(net, x, box, roi, precisions, top: int = 12) -> None:
    """Operators by self CPU time in one window (the crop's centre window) at each precision."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    centre = [(s.start + s.stop) // 2 for s in box]
    sl = tuple(slice(max(0, min(c - r // 2, n - r)), max(0, min(c - r // 2, n - r)) + r)
               for c, r, n in zip(centre, roi, x.shape[2:]))
    win = x[(slice(None), slice(None), *sl)].contiguous()
    for precision in precisions:
        dtype = {"bf16": torch.bfloat16}.get(precision)
        with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                t0 = time.perf_counter()
                net(win)
                seconds = time.perf_counter() - t0
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\nprofile: one window {tuple(win.shape[2:])}, {precision}, {seconds:.1f} s (profiled), "
              f"top operators by self CPU time")
        print("| operator | self CPU s | share | calls |")
        print("|---|---|---|---|")
        for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
            print(f"| {e.key} | {e.self_cpu_time_total / 1e6:.2f} | {e.self_cpu_time_total / total:.1%} | {e.count} |")


# ----------------------------------------------------------------------------- agreement

#: (name, overrides of the segment run options); ROI None = the model's (96 for the demo weights)
AGREE_CONFIGS = {
    "plain fp32 ROI 96": {"precision": "fp32", "crop_foreground": False, "skip_empty": False},
    "ours fp32 ROI 64": {"precision": "fp32", "roi": [64, 64, 64]},
    "ours fp32 ROI 96": {"precision": "fp32"},
    "ours fp32 ROI 128": {"precision": "fp32", "roi": [128, 128, 128]},
    "ours bf16 ROI 96": {"precision": "bf16"},
    "ours bf16 ROI 128": {"precision": "bf16", "roi": [128, 128, 128]},
    "ours fp32 ROI 96 SDPA": {"precision": "fp32"},  # names ending in SDPA: MONAI's use_flash_attention on
    "ours bf16 ROI 96 SDPA": {"precision": "bf16"},
}
#: (a, b, what changes from a to b)
AGREE_PAIRS = (
    ("plain fp32 ROI 96", "ours fp32 ROI 96", "crop + skip"),
    ("ours fp32 ROI 96", "ours bf16 ROI 96", "bf16"),
    ("plain fp32 ROI 96", "ours bf16 ROI 96", "crop + skip + bf16"),
    ("ours fp32 ROI 64", "ours fp32 ROI 96", "ROI 64 (the training crop, several windows) -> 96 (one window)"),
    ("ours fp32 ROI 96", "ours fp32 ROI 128", "ROI 96 -> 128 (1 window, more padding)"),
    ("plain fp32 ROI 96", "ours bf16 ROI 128", "crop + skip + bf16 + ROI 128"),
    ("ours fp32 ROI 96", "ours fp32 ROI 96 SDPA", "SDPA attention"),
    ("ours fp32 ROI 96", "ours bf16 ROI 96 SDPA", "bf16 + SDPA attention"),
)


def _flash_attention(net: torch.nn.Module, on: bool) -> None:
    """MONAI's own switch: Swin UNETR's window attention through scaled_dot_product_attention at inference."""
    from monai.networks.nets.swin_unetr import WindowAttention

    for m in net.modules():
        if isinstance(m, WindowAttention):
            m.use_flash_attention = on


def agreement(args) -> None:
    from imagingflows.models.backend import configure_threads
    from imagingflows.pipelines.model_ref import model_of
    from imagingflows.pipelines import medical as seg
    from imagingflows.tasks.ingest import Item

    configure_threads(1)
    cases = sorted(p for p in Path(args.cases).iterdir() if p.is_dir())
    if args.quick:
        cases = cases[:1]
    names = args.agree_configs
    pairs = [p for p in AGREE_PAIRS if p[0] in names and p[1] in names]
    print(f"\nagreement on {len(cases)} cases from {args.cases} (demo weights: 2 mm RAS frame, trained on 64^3 crops, "
          f"ROI 96 by default; segment pipeline preprocessing; {torch.get_num_threads()} threads)")
    cfgs = {n: seg.prepare({"device": "cpu", **AGREE_CONFIGS[n]}) for n in names}
    per: dict[str, list] = {n: [] for n in names}  # per config: (labels, dice list, seconds, windows) per case
    agree: dict[tuple, list] = {p[:2]: [] for p in pairs}
    for case in cases:
        paths = {m: str(next(case.glob(f"*_{m}.nii.gz"))) for m in seg.MODEL_CHANNELS}
        vols = seg.read_case(Item(id=case.name, paths=paths), seg.MODEL_CHANNELS)
        ref = seg.labels_to_regions(seg.read_labels(str(next(case.glob("*_seg.nii.gz")))).array.astype(np.uint8))
        brain = np.any(np.stack([v.array != 0 for v in vols]), axis=0)
        spacing = tuple(float(s) for s in np.linalg.norm(vols[0].affine[:3, :3], axis=0))
        labels = {}
        for n in names:
            _flash_attention(model_of(cfgs[n]).module, n.endswith("SDPA"))  # the model is shared between configs
            t0 = time.perf_counter()
            probs, run = seg.predict_regions(vols, cfgs[n])
            seconds = time.perf_counter() - t0
            regions = (probs > 0.5) & brain[None]
            metrics = seg.region_metrics(regions, ref, spacing)
            labels[n] = seg.regions_to_labels(regions)
            per[n].append(([metrics[f"dice_{r}"] for r in seg.REGIONS], seconds,
                           run["windows"] - run["skipped_windows"], run["precision"]))
        line = []
        for a, b, _ in pairs:
            agree[(a, b)].append(float((labels[a] == labels[b])[brain].mean()))
            line.append(f"{agree[(a, b)][-1]:.4%}")
        print(f"  {case.name}: agreement per pair {', '.join(line)}", flush=True)

    print("\n| configuration | precision | windows run (per case) | Dice TC/WT/ET (mean) | seconds per case |")
    print("|---|---|---|---|---|")
    for n in names:
        dice = np.mean([d for d, *_ in per[n]], 0)
        wins = "/".join(str(w) for _, _, w, _ in per[n])
        print(f"| {n} | {per[n][0][3]} | {wins} | {'/'.join(f'{d:.3f}' for d in dice)} | "
              f"{np.mean([s for _, s, _, _ in per[n]]):.1f} |")
    print(f"\n| a -> b | change | voxel agreement in brain, mean (min) | Dice change b - a TC/WT/ET | goal (>= "
          f"{AGREE_MIN:.1%}, abs Dice change <= {DICE_TOL}) |")
    print("|---|---|---|---|---|")
    for a, b, what in pairs:
        change = np.mean([db for db, *_ in per[b]], 0) - np.mean([da for da, *_ in per[a]], 0)
        ok = min(agree[(a, b)]) >= AGREE_MIN and bool(np.all(np.abs(change) <= DICE_TOL))
        print(f"| {a} -> {b} | {what} | {np.mean(agree[(a, b)]):.4%} ({min(agree[(a, b)]):.4%}) | "
              f"{'/'.join(f'{d:+.4f}' for d in change)} | {'meets' if ok else 'misses'} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small case and model (a smoke run, not the goal)")
    ap.add_argument("--brain", choices=("real", "phantom"), default="real",
                    help="timing case: real adult extent (140 x 170 x 140 mm) or the generator's default size")
    ap.add_argument("--precisions", default="fp32,bf16", help="our path's precisions, each forced (comma list)")
    ap.add_argument("--large-roi", default="auto",
                    help="ROI of the fewer-windows lever: auto (box rounded up to 32), X,Y,Z, or none")
    ap.add_argument("--profile", default="", help="torch.profiler summary of one ROI window at these precisions "
                    "(comma list, e.g. bf16 or fp32,bf16; default none)")
    ap.add_argument("--agree-configs", default="all", help=f"agreement configurations (comma list of "
                    f"{', '.join(AGREE_CONFIGS)}; default all)")
    ap.add_argument("--flash-attention", action=argparse.BooleanOptionalAction, default=True,
                    help="our path with MONAI's use_flash_attention (scaled_dot_product_attention), as the "
                         "segment pipeline builds it (default on); MONAI's plain path keeps its default (off)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--cases", default=str(ROOT / "sample_data" / "brats"), help="cases with references")
    args = ap.parse_args()
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.profile = [p.strip() for p in args.profile.split(",") if p.strip()]
    names = list(AGREE_CONFIGS) if args.agree_configs == "all" else [n.strip() for n in args.agree_configs.split(",")]
    unknown = [n for n in names if n not in AGREE_CONFIGS]
    if unknown:
        ap.error(f"--agree-configs: unknown {unknown}; choose from {', '.join(AGREE_CONFIGS)}")
    args.agree_configs = names
    print(host_line(), flush=True)
    if not args.skip_timing:
        timing(args)
    if not args.skip_agreement:
        agreement(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
