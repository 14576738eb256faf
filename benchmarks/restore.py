"""Restore inference on a CPU: memory of tiled denoising, tiled vs untiled outputs, time per megapixel.

    python benchmarks/restore.py                        # 1k / 4k / 8k memory, agreement, timing
    python benchmarks/restore.py --sizes 1024 4096      # other memory sizes
    python benchmarks/restore.py --quick                # smoke run: 256 / 512, small images

Weights. NAFNet: ``--weights PATH``, else the bundled demo ``models/weights/nafnet_denoise.pt``
if it exists, else a random NAFNet with the official SIDD width-32 layout (img_channel 3,
width 32, middle 12, enc [2, 2, 4, 8], dec [2, 2, 2, 2]) whose zero-initialised ``beta`` /
``gamma`` are redrawn N(0, 0.1) (with zeros every block is the identity and the tests
below would compare the input with itself). HAT x2: ``--hat-weights PATH``, else the demo
``models/weights/hat_sr_x2.pt``, else a random small HAT-S-like network (:data:`SMALL_HAT`,
upstream init). Time and memory do not depend on the weights; agreement does a little.

(a) Memory. Square 16-bit RGB TIFFs (smooth gradient + Gaussian noise) of each ``--sizes``
are written with ``tasks.image_io.write_image`` into a temp folder. For each, after a
``gc`` + ``malloc_trim`` the resident set is read (baseline), then the real path runs:
``read_image`` -> ``predict_tiles`` (tile 512, overlap 32, the pipeline defaults, and
``whole_max_pixels=None`` so it tiles; precision ``auto``) -> ``write_image`` (TIFF), while
a thread samples ``/proc/self/statm`` every 5 ms. Overhead = peak - baseline - bytes of the
decoded input array - bytes of the output array: what the path needs beyond the two images
it must hold. Goal: flat in the image size and under 1 GB. Overhead is also given per
phase: peak during read / tiles / write minus the baseline and the arrays alive then. The
phases are not trimmed apart, so heap kept from the tiles counts again in the write phase;
the output array is touched as tiles land, so near the first tiles it is not all resident.

(b) Agreement, tiled vs one whole-image forward (float32 in and out, no rounding), on
``skimage.data.astronaut`` (512 x 512; for NAFNet upscaled to 1024 x 1024, so that the default
tile 512 really tiles it; 256 x 256 with ``--quick``). HAT x2 at tile 192,
overlap 32 (the default overlap; the default tile 512 would be a single tile): max |diff|,
goal <= 1e-3 (HAT's windows are local, but its CAB channel attention pools over the
whole input too, damped by conv_scale 0.01, so tiles are close, not exact). NAFNet, on the
image plus Gaussian noise sigma 25/255, at tile 512 and 256, overlap 32: PSNR of tiled
against whole (peak 1), goal >= 45 dB. Its channel attention pools over the whole input:
with ``pool_passes=1`` (the default) a first pass over the tiles measures the whole-image
means and the second uses them; ``pool_passes=0`` (each tile pools over itself) is shown
for comparison. Both for the benchmarked NAFNet and for a random NAFNet of the official
SIDD width-32 layout (36 blocks: does the one measuring pass hold for a deep network?);
``--quick``: tile 128 and the benchmarked NAFNet only.

(c) Time per megapixel of ours (``predict_tiles`` on a uint8 image: its defaults, tile 512,
overlap 32, fp32, pool_passes 1, conversion and rounding included) vs a plain whole-image
forward (``torch.inference_mode``, float32, forward only, input tensor ready): NAFNet on
1024 x 1024, HAT on 256 x 256 (its window attention is memory hungry); 256 / 128 with
``--quick``. Extra rows: NAFNet with ``pool_passes=0``, NAFNet with the restore pipeline's
``whole_max_pixels`` budget (one forward when the image fits), HAT at tile 192 (tiled). A
second single-forward row is not rerun. One warm-up call each, then the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / "models" / "weights"
MB, GB = 1e6, 1e9

SIDD_WIDTH32 = {"img_channel": 3, "width": 32, "middle_blk_num": 12, "enc_blk_nums": [2, 2, 4, 8],
                "dec_blk_nums": [2, 2, 2, 2]}
#: HAT-S (embed 144, 6 x 6 blocks, compress/squeeze 24) shrunk to run on a CPU in seconds
SMALL_HAT = {"in_chans": 3, "embed_dim": 48, "depths": [2, 2], "num_heads": [3, 3], "window_size": 16,
             "compress_ratio": 24, "squeeze_factor": 24, "conv_scale": 0.01, "overlap_ratio": 0.5,
             "mlp_ratio": 2.0, "upscale": 2}
#: image sides per part; nafnet_tiles: the tiles (overlap 32) compared with the whole-image forward in (b)
FULL = {"sizes": [1024, 4096, 8192], "hat_b": 512, "nafnet_b": 1024, "nafnet_tiles": (512, 256), "nafnet_c": 1024,
        "hat_c": 256}
QUICK = {"sizes": [256, 512], "hat_b": 256, "nafnet_b": 256, "nafnet_tiles": (128,), "nafnet_c": 256, "hat_c": 128}


from peak_rss import PeakRSS  # noqa: E402 (benchmarks/ is on sys.path when run as a script)



# ----------------------------------------------------------------------------- models

def _load(path: Path, arch: str):
    from imagingflows.models import load

    lm = load(path, None)
    if lm.spec.name != arch:
        raise SystemExit(f"{path} is a {lm.spec.name} checkpoint, expected {arch}")
    return lm.module.eval(), f"{path} ({arch}, {lm.config})"


def nafnet_model(weights: str | None) -> tuple[torch.nn.Module, str]:
    """The NAFNet to benchmark and a line saying which weights it has."""
    demo = WEIGHTS_DIR / "nafnet_denoise.pt"
    if weights or demo.is_file():
        return _load(Path(weights or demo), "nafnet")
    return random_sidd_nafnet(), "random NAFNet, SIDD width-32 layout, beta/gamma ~ N(0, 0.1) (no demo weights found)"


def random_sidd_nafnet() -> torch.nn.Module:
    """A NAFNet of the official SIDD width-32 layout, random, with ``beta`` / ``gamma`` redrawn."""
    from imagingflows.models.nafnet import build

    torch.manual_seed(0)
    net = build(**SIDD_WIDTH32).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith((".beta", ".gamma")):
                p.normal_(0.0, 0.1)
    return net


def hat_model(weights: str | None) -> tuple[torch.nn.Module, str]:
    """The HAT x2 to benchmark and a line saying which weights it has."""
    from imagingflows.models.hat import build

    demo = WEIGHTS_DIR / "hat_sr_x2.pt"
    if weights or demo.is_file():
        return _load(Path(weights or demo), "hat")
    torch.manual_seed(0)
    return build(**SMALL_HAT).eval(), f"random small HAT (upstream init), {SMALL_HAT}"


def params(net: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params"


# ----------------------------------------------------------------------------- images

def gradient_noise_image(size: int, seed: int = 0, rows: int = 256) -> np.ndarray:
    """``(size, size, 3)`` uint16: smooth colour gradients + Gaussian noise (sigma 0.05), built in row chunks."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, size, 3), np.uint16)
    x = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :]
    for r0 in range(0, size, rows):
        n = min(rows, size - r0)
        y = (np.arange(r0, r0 + n, dtype=np.float32) / size)[:, None]
        planes = [0.2 + 0.6 * x, 0.2 + 0.6 * y, 0.5 + 0.3 * np.sin(6.0 * (x + y))]  # R: left-right, G: top-down
        chunk = np.stack([np.broadcast_to(p, (n, size)) for p in planes], -1)
        chunk = chunk + rng.normal(0.0, 0.05, (n, size, 3)).astype(np.float32)
        out[r0:r0 + n] = np.rint(np.clip(chunk, 0.0, 1.0) * 65535.0)
    return out


def astronaut(size: int) -> np.ndarray:
    """``skimage.data.astronaut`` (512 x 512 RGB uint8), resized to ``size`` if needed."""
    from PIL import Image
    from skimage import data

    img = data.astronaut()
    if size != img.shape[0]:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(img)


# ----------------------------------------------------------------------------- (a) memory

def grid_of(net) -> int:
    """The tile grid of this benchmark's two networks, as their ModelSpecs state it."""
    from imagingflows.models import hat, nafnet

    if hasattr(net, "padder_size"):
        return nafnet.SPEC.grid_of({"enc_blk_nums": [0] * len(net.encoders)})
    return hat.SPEC.grid_of({"window_size": net.window_size})


def memory_one(net, path: Path, out_path: Path, precision: str) -> dict:
    """Peak RSS of read -> predict_tiles -> write for one file (bytes and seconds)."""
    from imagingflows.models.tiling import predict_tiles
    from imagingflows.tasks.image_io import read_image, write_image

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        mem.mark("read")
        img = read_image(path)
        t1 = time.perf_counter()
        mem.mark("tiles")
        out, run = predict_tiles(net, img.array, grid=grid_of(net), tile=512, overlap=32, precision=precision,
                                 whole_max_pixels=None)
        t2 = time.perf_counter()
        mem.mark("write")
        write_image(out_path, out, like=img)
        t3 = time.perf_counter()
    in_b, out_b = img.array.nbytes, out.nbytes
    base = mem.start
    del img, out
    return {
        "in": in_b, "out": out_b, "peak": mem.peak, "overhead": mem.peak - base - in_b - out_b,
        "read": mem.phases["read"] - base - in_b,  # input array alive at the end
        "tiles": mem.phases["tiles"] - base - in_b - out_b,
        "write": mem.phases["write"] - base - in_b - out_b,
        "seconds": t3 - t0, "t_read": t1 - t0, "t_tiles": t2 - t1, "t_write": t3 - t2, "tiles_n": run.tiles,
    }


def memory(net, args, sizes: list[int]) -> None:
    from imagingflows.models.sliding_window import resolve_precision
    from imagingflows.tasks.image_io import write_image

    precision = resolve_precision("auto", torch.device("cpu"))
    with torch.inference_mode():  # first-call set-up (oneDNN, allocator) belongs in the baseline, not the overhead
        net(torch.rand(1, 3, 64, 64))
    print(f"\n## (a) peak RSS of read -> predict_tiles (tile 512, overlap 32, tiled, {precision}) -> write, "
          "16-bit RGB TIFF")
    print("| size | tiles | input MB | output MB | peak RSS GB | overhead MB | overhead read / tiles / write MB "
          "| seconds | read / tiles / write s | s per MP |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in sizes:
            path, out_path = Path(tmp) / f"in_{size}.tif", Path(tmp) / f"out_{size}.tif"
            write_image(path, gradient_noise_image(size, seed=size))
            r = memory_one(net, path, out_path, precision)
            path.unlink()
            out_path.unlink()
            rows.append(r)
            mp = size * size / 1e6
            print(f"| {size} x {size} | {r['tiles_n']} | {r['in'] / MB:.0f} | {r['out'] / MB:.0f} | "
                  f"{r['peak'] / GB:.2f} | {r['overhead'] / MB:.0f} | {r['read'] / MB:.0f} / {r['tiles'] / MB:.0f} / "
                  f"{r['write'] / MB:.0f} | {r['seconds']:.1f} | {r['t_read']:.1f} / {r['t_tiles']:.1f} / "
                  f"{r['t_write']:.1f} | {r['seconds'] / mp:.2f} |", flush=True)
    over = [r["overhead"] for r in rows]
    verdict = "met" if max(over) < GB else "NOT met"
    print(f"overhead {min(over) / MB:.0f} .. {max(over) / MB:.0f} MB (largest / smallest "
          f"{max(over) / max(min(over), 1):.2f}); goal flat and < 1 GB: {verdict}")


# ----------------------------------------------------------------------------- (b) agreement

def whole_forward(net, image: np.ndarray) -> np.ndarray:
    """Plain float32 forward of the whole image: ``(H, W, C)`` float in [0, 1] -> ``(H*s, W*s, C)`` float32."""
    with torch.inference_mode():
        y = net(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float())
    return y[0].permute(1, 2, 0).numpy()


def tiled_forward(net, image: np.ndarray, scale: int, tile: int, overlap: int, **opts):
    """``predict_tiles`` with float32 output: ``(output, TileRun)``."""
    from imagingflows.models.tiling import predict_tiles

    return predict_tiles(net, image, scale=scale, grid=grid_of(net), tile=tile, overlap=overlap, out_dtype=np.float32,
                         **opts)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def agreement(nafnet, hat, args, sizes: dict) -> None:
    print("\n## (b) tiled vs one whole-image forward (float32 outputs, no rounding)")
    print("| model | image | tile / overlap | pool passes | tiles | max abs diff | PSNR dB | goal | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    x = astronaut(sizes["hat_b"]).astype(np.float32) / 255.0
    ref = whole_forward(hat, x)
    out, run = tiled_forward(hat, x, 2, args.hat_tile, 32)
    diff = float(np.abs(out - ref).max())
    print(f"| HAT x2 | astronaut {x.shape[0]}^2 | {args.hat_tile} / 32 | - | {run.tiles} | {diff:.2e} | "
          f"{psnr(out, ref):.1f} | max diff <= 1e-3 | {'yes' if diff <= 1e-3 else 'NO'} |", flush=True)

    rng = np.random.default_rng(0)
    x = astronaut(sizes["nafnet_b"]).astype(np.float32) / 255.0
    x = np.clip(x + rng.normal(0.0, 25.0 / 255.0, x.shape).astype(np.float32), 0.0, 1.0)
    nets = [("NAFNet", nafnet)]
    if not args.quick:
        nets.append(("NAFNet SIDD-32 layout, random", random_sidd_nafnet()))
    for name, net in nets:
        ref = whole_forward(net, x)
        for tile in sizes["nafnet_tiles"]:
            for passes in (1, 0):  # 1: the default (whole-image means measured first); 0: each tile alone
                out, run = tiled_forward(net, x, 1, tile, 32, pool_passes=passes)
                p = psnr(out, ref)
                label = f"{passes} (default)" if passes == 1 else f"{passes}"
                met = ("yes" if p >= 45 else "NO") if passes == 1 else "-"
                print(f"| {name} | astronaut {x.shape[0]}^2 + noise 25 | {tile} / 32 | {label} | {run.tiles} | "
                      f"{float(np.abs(out - ref).max()):.2e} | {p:.1f} | PSNR >= 45 dB | {met} |", flush=True)
        print(f"({name} whole-image output range {ref.min():.3f} .. {ref.max():.3f}, "
              f"PSNR of output vs noisy input {psnr(ref, x):.1f} dB)")


# ----------------------------------------------------------------------------- (c) time per megapixel

def best_time(fn, repeat: int):
    """``(best seconds of repeat calls, result of the warm-up call)``."""
    result = fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def timing_rows(name: str, net, image: np.ndarray, scale: int, variants: list, repeat: int) -> list[tuple]:
    """``(model, path, tiles, seconds, s/MP, ratio)`` rows: plain forward first, then ours per variant."""
    from imagingflows.models.tiling import predict_tiles
    from imagingflows.tasks.image_io import to_float

    mp = image.shape[0] * image.shape[1] / 1e6
    x = torch.from_numpy(to_float(image))[None]

    def plain():
        with torch.inference_mode():
            net(x)

    base, _ = best_time(plain, repeat)
    rows = [(name, "plain whole-image forward (fp32, forward only)", 1, base, base / mp, 1.0)]
    for label, opts in variants:
        if count_tiles(net, image.shape, opts) == 1 and rows[-1][2] == 1 and len(rows) > 1:
            rows.append((name, f"ours, predict_tiles {label}: one forward, as the row above (not rerun)",
                         1, *rows[-1][3:]))
            continue
        s, (_, run) = best_time(lambda: predict_tiles(net, image, scale=scale, grid=grid_of(net), **opts), repeat)
        rows.append((name, f"ours, predict_tiles {label}", run.tiles, s, s / mp, s / base))
    return rows


def count_tiles(net, shape: tuple, opts: dict) -> int:
    """How many tiles ``predict_tiles(net, image of shape, **opts)`` runs."""
    from imagingflows.models.tiling import tile_spans

    h, w = shape[:2]
    whole = opts.get("whole_max_pixels")
    if whole is not None and h * w <= whole:
        return 1
    tile, overlap, align = opts.get("tile", 512), opts.get("overlap", 32), grid_of(net)
    return len(tile_spans(h, tile, overlap, align)) * len(tile_spans(w, tile, overlap, align))


def timing(nafnet, hat, args, sizes: dict) -> None:
    from imagingflows.pipelines.restoration import NAFNET_BYTES_PER_PIXEL_AND_WIDTH, WHOLE_BUDGET_BYTES

    budget = WHOLE_BUDGET_BYTES // (NAFNET_BYTES_PER_PIXEL_AND_WIDTH * nafnet.intro.out_channels)  # width
    n, h = sizes["nafnet_c"], sizes["hat_c"]
    rows = timing_rows("NAFNet", nafnet, astronaut(n), 1, [
        ("defaults (tile 512, overlap 32, fp32, pool_passes 1: 2 forwards per tile)", {}),
        ("pool_passes 0 (1 forward per tile, each tile pools over itself)", {"pool_passes": 0}),
        (f"whole_max_pixels={budget} (the restore pipeline's NAFNet default)", {"whole_max_pixels": budget}),
    ], args.repeat)
    rows += timing_rows("HAT x2", hat, astronaut(h), 2, [
        ("defaults (tile 512, overlap 32, fp32)", {}),
        (f"tile {args.hat_tile}, overlap 32", {"tile": args.hat_tile}),
    ], args.repeat)
    print(f"\n## (c) time per megapixel of input (NAFNet on {n} x {n}, HAT x2 on {h} x {h}; "
          f"best of {args.repeat} after a warm-up)")
    print("| model | path | tiles | seconds | s per MP | ratio to plain |")
    print("|---|---|---|---|---|---|")
    for model, path, tiles, s, smp, ratio in rows:
        print(f"| {model} | {path} | {tiles} | {s:.2f} | {smp:.2f} | {ratio:.2f} |")


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", help="square sizes for the memory table (default 1024 4096 8192)")
    ap.add_argument("--quick", action="store_true", help="smoke run: sizes 256 512 and small images")
    ap.add_argument("--weights", help="NAFNet checkpoint (default: bundled demo, else random SIDD width-32)")
    ap.add_argument("--hat-weights", help="HAT x2 checkpoint (default: bundled demo, else a random small HAT)")
    ap.add_argument("--hat-tile", type=int, default=192, help="HAT tile for (b) and (c), overlap 32 (default 192)")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores this process may use)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per path in (c), best kept (default 1)")
    ap.add_argument("--tmp", help="folder for the generated TIFFs (default: the system temp folder)")
    ap.add_argument("--skip", nargs="+", default=[], choices=["memory", "agreement", "timing"])
    args = ap.parse_args()
    from imagingflows.models.backend import available_cores
    from imagingflows.models.sliding_window import native_bf16

    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads or available_cores())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (of {available_cores()} cores), "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16(torch.device('cpu'))}")
    nafnet, nafnet_label = nafnet_model(args.weights)
    hat, hat_label = hat_model(args.hat_weights)
    print(f"NAFNet weights: {nafnet_label}; {params(nafnet)}")
    print(f"HAT weights: {hat_label}; {params(hat)}")
    if "memory" not in args.skip:
        memory(nafnet, args, args.sizes or sizes["sizes"])
    if "agreement" not in args.skip:
        agreement(nafnet, hat, args, sizes)
    if "timing" not in args.skip:
        timing(nafnet, hat, args, sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
