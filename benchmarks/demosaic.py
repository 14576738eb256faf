"""Classical demosaicking on a CPU: our torch methods vs colour-demosaicing, side by side.

For each method (bilinear, Malvar 2004, Menon 2007) and image size, two fresh subprocesses run the
same float32 RGGB mosaic (scikit-image's astronaut, mirrored to the size): ours
(``models/demosaic_methods.py``, tiles of ``--tile``) and colour-demosaicing 0.2.7's function. Printed:
seconds (best of ``--repeat``), the speed-up, each side's peak RSS (VmHWM: imports included), and the
max abs difference away from the reference's border band (8 px), where colour-demosaicing's padding
differs from ours by design. For context, on the same mosaics (``--context``): the learned methods
(DemosaicNet's released weights, our JDD demo weights) and LibRaw's AHD through rawpy (the mosaic written
as a 16-bit DNG and developed in its own scale: DNG writing and decoding included), seconds and s/MP.
Not a test: run it by hand, results go to benchmarks/RESULTS.md.

    python benchmarks/demosaic.py --megapixels 4,12 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from host import host_line  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("bilinear", "malvar", "menon")
CONTEXT = ("demosaicnet", "jdd", "rawpy-ahd")
BORDER = 8
REFERENCE = {"bilinear": "demosaicing_CFA_Bayer_bilinear", "malvar": "demosaicing_CFA_Bayer_Malvar2004",
             "menon": "demosaicing_CFA_Bayer_Menon2007"}


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_mosaic(megapixels: float) -> np.ndarray:
    """A float32 RGGB mosaic of about ``megapixels``, even sides, 3:2 like a camera frame."""
    from skimage import data

    rgb = data.astronaut().astype(np.float32) / 255.0
    h = int(round((megapixels * 1e6 / 1.5) ** 0.5 / 2)) * 2
    w = int(round(h * 1.5 / 2)) * 2
    reps = (-(-h // rgb.shape[0]), -(-w // rgb.shape[1]))
    tiled = np.concatenate([np.concatenate([rgb if (i + j) % 2 == 0 else rgb[::-1, ::-1] for j in range(reps[1])],
                                           axis=1) for i in range(reps[0])], axis=0)[:h, :w]
    out = np.zeros((h, w), np.float32)
    out[0::2, 0::2], out[0::2, 1::2] = tiled[0::2, 0::2, 0], tiled[0::2, 1::2, 1]
    out[1::2, 0::2], out[1::2, 1::2] = tiled[1::2, 0::2, 1], tiled[1::2, 1::2, 2]
    return out


def child(args) -> None:
    mosaic = np.load(args.mosaic)
    best = float("inf")
    if args.child == "ours" and args.method.startswith("rawpy-"):
        from imagingflows.tasks.libraw_develop import libraw_demosaic

        raw = np.round(mosaic * 65535).astype(np.uint16)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            rgb = libraw_demosaic(raw, "RGGB", args.method)
            best = min(best, time.perf_counter() - t0)
    elif args.child == "ours":
        import torch

        from imagingflows.models.demosaic_methods import get_method

        torch.set_num_threads(args.threads)
        method = get_method(args.method)
        x = torch.from_numpy(mosaic)[None, None]
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with torch.inference_mode():
                rgb = method(x, "RGGB", tile=args.tile, noise=0.0)[0].permute(1, 2, 0).numpy()
            best = min(best, time.perf_counter() - t0)
    else:
        import colour_demosaicing

        fn = getattr(colour_demosaicing, REFERENCE[args.method])
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            rgb = fn(mosaic, "RGGB").astype(np.float32)
            best = min(best, time.perf_counter() - t0)
    np.save(args.save, rgb)
    Path(args.result).write_text(json.dumps({"seconds": best, "peak_rss": vm_hwm()}))


def run_child(kind: str, method: str, mosaic: Path, work: Path, args) -> tuple[dict, Path]:
    save, result = work / f"{kind}_{method}.npy", work / f"{kind}_{method}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--child={kind}", f"--method={method}",
           f"--mosaic={mosaic}", f"--save={save}", f"--result={result}", f"--threads={args.threads}",
           f"--repeat={args.repeat}", f"--tile={args.tile}"]
    subprocess.run(cmd, check=True, env=env)
    return json.loads(result.read_text()), save


def bench(args) -> None:
    print(host_line(), flush=True)
    print(f"threads per side: {args.threads}; ours tiles of {args.tile}; best of {args.repeat}; float32 RGGB",
          flush=True)
    rows, context = [], []
    with tempfile.TemporaryDirectory(prefix="bench-demosaic-") as tmp:
        work = Path(tmp)
        for mp in args.megapixels:
            mosaic = test_mosaic(mp)
            path = work / f"mosaic_{mp}.npy"
            np.save(path, mosaic)
            for method in args.methods:
                ours, ours_out = run_child("ours", method, path, work, args)
                ref, ref_out = run_child("reference", method, path, work, args)
                a, b = np.load(ours_out), np.load(ref_out)
                diff = float(np.abs(a[BORDER:-BORDER, BORDER:-BORDER] - b[BORDER:-BORDER, BORDER:-BORDER]).max())
                rows.append((method, mosaic.size / 1e6, ours, ref, diff))
                print(f"  {method} {mosaic.size / 1e6:.1f} MP: ours {ours['seconds']:.2f} s, colour-demosaicing "
                      f"{ref['seconds']:.2f} s, max |diff| {diff:.1e}", flush=True)
            for method in args.context:
                result, _ = run_child("ours", method, path, work, args)
                context.append((method, mosaic.size / 1e6, result))
                print(f"  {method} {mosaic.size / 1e6:.1f} MP: {result['seconds']:.2f} s", flush=True)
    print("\n| method | MP | ours s | colour-demosaicing s | speed-up | ours peak RSS MB | reference peak RSS MB "
          "| max abs diff (8 px border cropped) |")
    print("|---|---|---|---|---|---|---|---|")
    for method, mp, ours, ref, diff in rows:
        print(f"| {method} | {mp:.1f} | {ours['seconds']:.2f} | {ref['seconds']:.2f} | "
              f"{ref['seconds'] / ours['seconds']:.1f}x | {ours['peak_rss'] / 2**20:.0f} | "
              f"{ref['peak_rss'] / 2**20:.0f} | {diff:.1e} |")
    if context:
        print("\n| context method | MP | s | s per MP | peak RSS MB |")
        print("|---|---|---|---|---|")
        for method, mp, result in context:
            print(f"| {method} | {mp:.1f} | {result['seconds']:.2f} | {result['seconds'] / mp:.2f} | "
                  f"{result['peak_rss'] / 2**20:.0f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=lambda s: [float(v) for v in s.split(",")], default=[4.0, 12.0])
    ap.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    ap.add_argument("--context", type=lambda s: [m for m in s.split(",") if m], default=list(CONTEXT),
                    help="methods timed on the same mosaics without a reference (empty: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--child", choices=("ours", "reference"))
    ap.add_argument("--method", choices=METHODS + CONTEXT)
    ap.add_argument("--mosaic")
    ap.add_argument("--save")
    ap.add_argument("--result")
    args = ap.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
