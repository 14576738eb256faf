"""Embed pipeline on a CPU: our windowed, skipping, batched path vs a naive per-tile loop, side by side.

    python benchmarks/remote_sensing.py                                  # 5000, 10000, 20000 px squares
    python benchmarks/remote_sensing.py --sizes 1024                     # self-check (well under a minute)
    python benchmarks/remote_sensing.py --weights my_scalemae.pth --num-heads 12 --threads 2

Scene. For each ``--sizes`` side, ``sample_data.scenes.make_scene`` writes a square 3-band uint8
GeoTIFF (tiled 512 x 512, deflate, nodata 0 outside a parallelogram footprint: a 30% nodata collar,
EPSG:32633, 10 m pixels, seed 0) window by window under ``--workdir`` (default
``/tmp/imagingflows-bench-rs``), with a JSON of its parameters beside it; a file already there with
the same parameters is reused.

Weights. ``--weights PATH``, else the bundled demo encoder
(``models.backend.demo_weights("scale_mae_demo")``) when it exists, else the tiny parity encoder
``tests/data/parity_scalemae/scalemae-tiny.pth`` (embed 64, depth 2, patch 16, input 224) with 4 heads.
Precision fp32 on both sides (the agreement check needs it).

Ours. A fresh subprocess runs the real pipeline through the Python API,
``run_pipeline("embed", ...)`` (Prefect flow, thread runner, its defaults: tile = the model's input
size, overlap 0, batch 8, pool cls, statistics measured on a sample of the scene since the
encoder carries none), writing GeoParquet. Two times: the whole ``run_pipeline`` call (Prefect
start, input hashing, manifest and report included) and the scene's own ``process`` seconds from
``run.json`` (open, statistics, tiles, model, parquet).

Naive. A fresh subprocess loads the same checkpoint with the same loader, opens the raster with
rasterio and, over the same tile grid (``tile_windows``), reads each window (clipped to the raster,
zero-padded), takes as valid the pixels where some band is not the nodata value, normalises with the
statistics ours recorded in its parquet (invalid pixels 0), and runs ``forward_features`` on one
tile at a time over every tile (no skipping), keeping the class token. Its time: model load to
the last tile. Its count of tiles without a valid pixel must equal ours' skipped count.

Peak RSS: each child's own ``VmHWM`` (``/proc/self/status``) at its end. Prefect's ephemeral server
runs as a separate process of ours and is not counted. ``--threads N`` pins both children to N
cores (``sched_setaffinity``; ours after Prefect's server has started, so only the pipeline's process),
which is how the pipeline picks its torch thread count; default:
every core this process may use. GDAL's block cache (``GDAL_CACHEMAX``, default 5% of RAM) holds
decoded blocks and counts in both peak RSS figures; ``--gdal-cachemax MB`` sets it for both children. ``--repeat N`` runs the two sides alternately N times per size and
keeps each side's best time and largest peak RSS (the machine may be shared: times are noisy).

Goals (issue 11, item 9), printed as met / not met; missing one is not an error (exit 0):
time ratio ours / naive <= 0.5; peak RSS of ours < 2 GB and flat (largest / smallest size <= 1.2);
max |diff| of the embeddings of the tiles both ran (matched by window) <= 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from host import host_line  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"
DEMO = "scale_mae_demo"
GOAL_RATIO, GOAL_RSS_GB, GOAL_FLAT, GOAL_DIFF = 0.5, 2.0, 1.2, 1e-5
SCENE = {"bands": 3, "dtype": "uint8", "collar": 0.3, "seed": 0, "tiled": True, "compress": "deflate",
         "block": 512, "crs": "EPSG:32633", "pixel_size": 10.0}


# ----------------------------------------------------------------------------- helpers (both sides)

def vm_hwm() -> int:
    """Peak resident set of this process in bytes (``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def pin_threads(threads: int | None) -> None:
    """Restrict this process to its first ``threads`` allowed cores (before torch starts its pool)."""
    if threads:
        allowed = sorted(os.sched_getaffinity(0))
        if threads > len(allowed):
            raise SystemExit(f"--threads {threads}: only {len(allowed)} cores are available to this process")
        os.sched_setaffinity(0, allowed[:threads])


def model_options(args) -> dict:
    return {"weights": args.weights, **({"num_heads": args.num_heads} if args.num_heads else {})}


# ----------------------------------------------------------------------------- child: ours

def child_ours(args) -> dict:
    import torch

    from imagingflows.flows import run_pipeline
    from imagingflows.flows.run import start_local_server

    opts = {**model_options(args), "device": "cpu", "precision": "fp32"}
    if args.tile:
        opts["tile"] = args.tile
    t0 = time.perf_counter()
    start_local_server()  # before pinning: Prefect's server process keeps every core, as in a plain run
    pin_threads(args.threads)  # the pipeline's torch threads follow the cores it may use
    result = run_pipeline("embed", args.input, args.output, **opts)
    seconds = time.perf_counter() - t0
    if result["counts"].get("done") != 1:
        raise SystemExit(f"embed did not finish the scene: {result.get('errors')}")
    entry = json.loads((Path(args.output) / "run.json").read_text())["items"]["scene"]
    return {"seconds": seconds, "process_seconds": entry["inference"]["seconds"], "summary": entry["summary"],
            "peak_rss": vm_hwm(), "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- child: naive

def child_naive(args) -> dict:
    pin_threads(args.threads)
    import rasterio
    import torch
    from rasterio.windows import Window

    from imagingflows.models import load
    from imagingflows.tasks.geo_write import read_geoparquet_metadata
    from imagingflows.tasks.raster_io import tile_windows

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    meta = read_geoparquet_metadata(args.parquet)
    mean = np.asarray(meta["normalization"]["mean"], np.float32)[:, None, None]
    std = np.asarray(meta["normalization"]["std"], np.float32)[:, None, None]
    tile, res = int(meta["tile"]), torch.tensor([float(meta["res"])])
    t0 = time.perf_counter()
    net = load(args.weights, **({"num_heads": args.num_heads} if args.num_heads else {})).module.eval()
    rows, cols, vectors, empty = [], [], [], 0
    with rasterio.open(args.scene) as ds, torch.inference_mode():
        nodata = ds.nodatavals
        windows = tile_windows(ds.height, ds.width, tile, int(meta["overlap"]))
        for w in windows:
            h, wd = min(tile, ds.height - w.row_off), min(tile, ds.width - w.col_off)
            raw = ds.read(window=Window(w.col_off, w.row_off, wd, h)).astype(np.float32)
            pixels = np.zeros((ds.count, tile, tile), np.float32)
            pixels[:, :h, :wd] = raw
            valid = np.zeros((tile, tile), bool)
            valid[:h, :wd] = np.any([raw[b] != nodata[b] if nodata[b] is not None else np.ones((h, wd), bool)
                                     for b in range(ds.count)], axis=0)
            empty += not valid.any()
            x = np.where(valid[None], (pixels - mean) / std, 0).astype(np.float32)
            tokens = net.forward_features(torch.from_numpy(x)[None], res)
            rows.append(w.row_off)
            cols.append(w.col_off)
            vectors.append(tokens[0, 0].numpy().copy())
    seconds = time.perf_counter() - t0
    np.savez(args.save, row=np.array(rows), col=np.array(cols), vectors=np.stack(vectors))
    return {"seconds": seconds, "tiles": len(windows), "empty": empty, "peak_rss": vm_hwm(), "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- parent

def gdal_cache_line(args) -> str:
    """Which GDAL block cache the children get: it holds decoded blocks, so it counts in their peak RSS."""
    if args.gdal_cachemax:
        return f"GDAL_CACHEMAX {args.gdal_cachemax} MB (--gdal-cachemax)"
    if os.environ.get("GDAL_CACHEMAX"):
        return f"GDAL_CACHEMAX {os.environ['GDAL_CACHEMAX']} (environment)"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"GDAL_CACHEMAX not set: GDAL's default, 5% of RAM = {0.05 * total / 1e9:.2f} GB"


def pick_weights(args) -> str:
    """Fill ``args.weights`` / ``args.num_heads``; returns a line saying which encoder runs."""
    if args.weights is None:
        from imagingflows.models.backend import demo_weights

        try:
            args.weights = str(demo_weights(DEMO))
            return f"encoder: bundled demo {args.weights}"
        except FileNotFoundError:
            args.weights, args.num_heads = str(TINY), args.num_heads or 4
            return f"encoder: tiny parity encoder {TINY} (num_heads {args.num_heads}; no bundled {DEMO} yet)"
    return f"encoder: {args.weights}" + (f" (num_heads {args.num_heads})" if args.num_heads else "")


def scene(workdir: Path, size: int) -> tuple[Path, dict, float | None]:
    """The benchmark scene of side ``size``: ``(path, facts, seconds to write it or None when reused)``."""
    sys.path.insert(0, str(ROOT))  # sample_data is not an installed package
    from sample_data.scenes import make_scene

    folder = workdir / f"scene_{size}"
    path, record = folder / "scene.tif", folder / "scene.json"
    params = {"height": size, "width": size, **SCENE}
    if path.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("params") == params:
            return path, saved["facts"], None
    t0 = time.perf_counter()
    facts = make_scene(path, **params)
    seconds = time.perf_counter() - t0
    facts = {k: v for k, v in facts.items() if k not in ("class_means", "class_stds")}
    record.write_text(json.dumps({"params": params, "facts": facts}, indent=1))
    return path, facts, seconds


def run_child(kind: str, args, extra: list[str], log: Path) -> dict:
    """Run this script as a ``kind`` child in a fresh interpreter; its JSON result, or exit with its log."""
    result = log.with_suffix(".json")
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--child={kind}", f"--result={result}",
           f"--weights={args.weights}", *extra]
    if args.num_heads:
        cmd.append(f"--num-heads={args.num_heads}")
    if args.threads:
        cmd.append(f"--threads={args.threads}")
    if args.tile:
        cmd.append(f"--tile={args.tile}")
    env = dict(os.environ, **({"GDAL_CACHEMAX": str(args.gdal_cachemax)} if args.gdal_cachemax else {}))
    home = tempfile.mkdtemp(prefix="bench-rs-prefect-")
    env.update(PREFECT_HOME=home, DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING")
    t0 = time.perf_counter()
    try:
        with open(log, "w") as out:
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if rc != 0 or not result.is_file():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{kind} child failed (exit {rc}); log {log}:\n{tail}")
    data = json.loads(result.read_text())
    data["wall"] = time.perf_counter() - t0
    return data


def compare(parquet: Path, naive_npz: Path) -> tuple[float, int]:
    """Max |diff| of the embeddings of the tiles both ran, matched by window; and how many matched."""
    import pyarrow.parquet as pq

    from imagingflows.tasks.geo_write import read_vectors

    table = pq.read_table(parquet, columns=["row", "col"])
    ours = dict(zip(zip(table["row"].to_pylist(), table["col"].to_pylist()), read_vectors(parquet)))
    with np.load(naive_npz) as z:  # each z[key] reads and inflates the whole array again: take them once
        naive = {k: z[k] for k in ("row", "col", "vectors")}
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(naive["row"], naive["col"]))}
    missing = [k for k in ours if k not in index]
    if missing:
        raise SystemExit(f"{parquet}: {len(missing)} embedded tiles are not in the naive grid, e.g. {missing[0]}")
    if not ours:
        return float("nan"), 0
    diff = max(float(np.abs(v - naive["vectors"][index[k]]).max()) for k, v in ours.items())
    return diff, len(ours)


def bench(args) -> int:
    print(host_line(), flush=True)
    print(pick_weights(args), flush=True)
    print(gdal_cache_line(args), flush=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        path, facts, made = scene(workdir, size)
        print(f"scene {size} x {size}: {path} ({path.stat().st_size / 1e6:.0f} MB, valid {facts['valid_fraction']:.3f}, "
              + (f"written in {made:.1f} s)" if made is not None else "reused)"), flush=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"run_{size}_", dir=workdir))
        (run_dir / "in").mkdir()
        (run_dir / "in" / "scene.tif").symlink_to(path)
        runs = []
        for rep in range(args.repeat):  # ours and naive alternate, so load from others hits both alike
            out, npz = run_dir / f"out{rep}", run_dir / f"naive{rep}.npz"
            ours = run_child("ours", args, [f"--input={run_dir / 'in'}", f"--output={out}"], run_dir / f"ours{rep}.log")
            naive = run_child("naive", args, [f"--scene={path}", f"--parquet={out / 'scene.parquet'}", f"--save={npz}"],
                              run_dir / f"naive{rep}.log")
            diff, matched = compare(out / "scene.parquet", npz)
            runs.append((ours, naive, diff, matched))
            print(f"  run {rep + 1}/{args.repeat}: ours {ours['seconds']:.1f} s (scene {ours['process_seconds']:.1f} s), "
                  f"naive {naive['seconds']:.1f} s, peak RSS {ours['peak_rss'] / 1e9:.2f} / "
                  f"{naive['peak_rss'] / 1e9:.2f} GB, max |diff| {diff:.2e}; {out}", flush=True)
        s = runs[0][0]["summary"]
        if any(r[1]["tiles"] != s["tiles"] or r[1]["empty"] != s["skipped_nodata"] or r[0]["summary"] != s
               for r in runs):
            raise SystemExit(f"tile grids or counts differ between runs / sides: ours {s}, naive "
                             f"{runs[0][1]['tiles']} tiles of which {runs[0][1]['empty']} without a valid pixel")
        best = {side: {**runs[0][i], "seconds": min(r[i]["seconds"] for r in runs),
                       "peak_rss": max(r[i]["peak_rss"] for r in runs)} for i, side in enumerate(("ours", "naive"))}
        best["ours"]["process_seconds"] = min(r[0]["process_seconds"] for r in runs)
        rows.append({"size": size, "repeat": args.repeat, "tiles": s["tiles"], "skipped": s["skipped_nodata"] / s["tiles"],
                     **best, "diff": max(r[2] for r in runs), "matched": runs[0][3]})
    report(rows)
    return 0


def report(rows: list[dict]) -> None:
    threads = sorted({r[k]["torch_threads"] for r in rows for k in ("ours", "naive")})
    print(f"\ntorch threads per child: {', '.join(map(str, threads))}; precision fp32; best time of "
          f"{rows[0]['repeat']} run(s) per side, largest peak RSS; ours = run_pipeline('embed') "
          "(whole call) and its scene process seconds; naive = per-tile rasterio read + one forward per tile\n")
    print("| size | tiles | skipped | ours s (scene s) | naive s | ratio (scene) | ours peak RSS GB | naive peak RSS GB "
          "| max abs diff (tiles) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, n = r["ours"], r["naive"]
        print(f"| {r['size']}^2 | {r['tiles']} | {r['skipped']:.1%} | {o['seconds']:.1f} ({o['process_seconds']:.1f}) "
              f"| {n['seconds']:.1f} | {o['seconds'] / n['seconds']:.2f} ({o['process_seconds'] / n['seconds']:.2f}) "
              f"| {o['peak_rss'] / 1e9:.2f} | {n['peak_rss'] / 1e9:.2f} | {r['diff']:.2e} ({r['matched']}) |")
    worst_ratio = max(r["ours"]["seconds"] / r["naive"]["seconds"] for r in rows)
    worst_scene = max(r["ours"]["process_seconds"] / r["naive"]["seconds"] for r in rows)
    peaks = [r["ours"]["peak_rss"] for r in rows]
    flat = max(peaks) / min(peaks) if len(peaks) > 1 else 1.0
    diff = max(r["diff"] for r in rows)

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\ngoal time ratio <= {GOAL_RATIO}: worst {worst_ratio:.2f} whole call, {worst_scene:.2f} scene only: "
          f"{met(worst_ratio <= GOAL_RATIO)} (whole call), {met(worst_scene <= GOAL_RATIO)} (scene only)")
    print(f"goal ours peak RSS < {GOAL_RSS_GB} GB and flat (largest / smallest <= {GOAL_FLAT}): "
          f"max {max(peaks) / 1e9:.2f} GB, largest / smallest {flat:.2f}: "
          f"{met(max(peaks) < GOAL_RSS_GB * 1e9 and flat <= GOAL_FLAT)}"
          + ("" if len(peaks) > 1 else " (one size: flatness not tested)"))
    print(f"goal max abs diff <= {GOAL_DIFF:g}: {diff:.2e}: {met(diff <= GOAL_DIFF)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5000,10000,20000", help="scene sides in pixels, comma-separated")
    ap.add_argument("--weights", help=f"Scale-MAE checkpoint (default: the demo {DEMO}, else the tiny parity one)")
    ap.add_argument("--num-heads", type=int, help="attention heads for a checkpoint of a non-official width")
    ap.add_argument("--precision", default="fp32", choices=["fp32"], help="fp32 only (the agreement check)")
    ap.add_argument("--threads", type=int, help="cores (torch threads) per child; default: all available")
    ap.add_argument("--tile", type=int, help="tile side (default: the model's input size, the pipeline default)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side per size: best time, largest RSS")
    ap.add_argument("--gdal-cachemax", type=int, help="GDAL block cache of both children in MB (default: GDAL's own)")
    ap.add_argument("--workdir", default="/tmp/imagingflows-bench-rs", help="scenes and run outputs (not the repo)")
    # internal: the fresh-process sides
    ap.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    for name in ("result", "input", "output", "scene", "parquet", "save"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        data = (child_ours if args.child == "ours" else child_naive)(args)
        Path(args.result).write_text(json.dumps(data))
        return 0
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    if args.repeat < 1:
        raise SystemExit(f"--repeat needs at least 1, got {args.repeat}")
    if not args.sizes or min(args.sizes) <= 0:
        raise SystemExit(f"--sizes needs positive integers, got {args.sizes}")
    return bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
