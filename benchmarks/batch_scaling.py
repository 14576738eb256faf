"""Batch scaling of the run flow: memory stays flat and orchestration costs little per item (issue 14 item 4).

    .venv/bin/python benchmarks/batch_scaling.py                      # 50 / 500 / 2000 items + 20 of 512^2
    .venv/bin/python benchmarks/batch_scaling.py --sizes 50,200 --realistic-items 5   # quick look

What runs. ``restore --task denoise`` with a tiny random NAFNet (width 8, one block per level, the
test suite's ``NAFNET_CFG``) on ``--image-side`` square 8-bit RGB PNGs (smooth gradient + noise, a
few distinct images hard-linked under many names) generated into a temp folder. For each size two
fresh subprocesses (so each peak is its own), each with its own ``PREFECT_HOME``:

- flow: ``imagingflows.flows.run.plan_run`` + ``execute`` (thread runner, 1 worker), the real Prefect
  flow with its ephemeral server. The home is primed first by another process (its database created
  once, as a user's home is), then the server is started before the batch and timed apart ("server
  start"); ``execute`` reuses it;
- loop: the same ``plan_run`` (same model load, same config), then a plain Python loop calling the
  pipeline's per-item function ``pipelines.restoration.process`` (read_image -> restore_array, i.e.
  ``predict_tiles`` -> write_image + preview) on each item: the per-item work without Prefect,
  run.json, the input hash or the progress artifacts.

Per size: the process's resident memory before the batch (after the model load), its peak during
the batch (sampled every 20 ms by :class:`peak_rss.PeakRSS`), at the end, and at the 50th / 500th /
last item landed (one process's growth along its batch); the ephemeral Prefect server's own RSS at
the end (a separate process, not counted in the peak). Times: the batch's wall time, overhead per
item = (flow wall - loop wall) / items (the flow run's set-up and report included, the server start
not), the same with the server start added, and the steady overhead per item = the same over the
items after the first landed (fixed costs excluded).

Realistic size: ``--realistic-items`` images of ``--realistic-side`` with the bundled demo NAFNet
(``models/weights/nafnet_denoise.pt``, width 16; the tiny model if it is missing), where overhead is
also given as % of the loop's compute. Goals: peak RSS grows < 10% from 500 to 2000 items;
overhead < 5% of compute at the realistic size and < 50 ms per item at any size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
TINY_NAFNET = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1],
               "local_train_size": None}
DEMO_NAFNET = ROOT / "models" / "weights" / "nafnet_denoise.pt"
VARIANTS = 8  # distinct images; the rest are hard links to them
ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
       "NO_ALBUMENTATIONS_UPDATE": "1"}


# ----------------------------------------------------------------------------- inputs (parent)

def image(side: int, seed: int) -> np.ndarray:
    """``(side, side, 3)`` uint8: colour gradients + Gaussian noise (sigma 0.05)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, side, dtype=np.float32)
    yy, xx = np.meshgrid(x, x, indexing="ij")
    planes = np.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * np.sin(6.0 * (xx + yy + seed))], -1)
    noisy = planes + rng.normal(0.0, 0.05, planes.shape).astype(np.float32)
    return np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_inputs(folder: Path, count: int, side: int) -> Path:
    """``count`` PNGs ``img_00000.png`` ... in ``folder`` (``VARIANTS`` distinct, hard-linked)."""
    from imagingflows.tasks.image_io import write_image

    folder.mkdir(parents=True)
    base = folder.parent / f"base_{side}"
    if not base.is_dir():
        base.mkdir()
        for v in range(VARIANTS):
            write_image(base / f"v{v}.png", image(side, v))
    for i in range(count):
        os.link(base / f"v{i % VARIANTS}.png", folder / f"img_{i:05d}.png")
    return folder


def tiny_weights(path: Path) -> Path:
    """The tiny NAFNet, seeded, with beta / gamma redrawn (zeros make every block the identity)."""
    import torch

    from imagingflows.models import nafnet
    from imagingflows.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    net = nafnet.build(**TINY_NAFNET).eval()
    for block in net.modules():
        if isinstance(block, nafnet.NAFBlock):
            torch.nn.init.normal_(block.beta, 0, 0.1)
            torch.nn.init.normal_(block.gamma, 0, 0.1)
    return save_checkpoint(path, net, arch="nafnet", config=TINY_NAFNET)


# ----------------------------------------------------------------------------- one batch (child)

def child(args) -> None:
    """One batch, flow or loop, in this fresh process; prints one JSON line of figures."""
    cores = sorted(os.sched_getaffinity(0))
    if args.threads < len(cores):  # execute sizes torch's threads from the cores it may use
        os.sched_setaffinity(0, cores[:args.threads])
    import torch

    from imagingflows.flows.run import execute, plan_run, start_local_server

    if args.child == "prime":  # a fresh PREFECT_HOME: its database is created and migrated once
        t0 = time.perf_counter()
        start_local_server()
        print(json.dumps({"seconds": time.perf_counter() - t0}))
        return
    from imagingflows.pipelines.base import get_pipeline
    from peak_rss import PeakRSS, release_memory

    out = Path(args.output)
    plan = plan_run("restore", args.input, out, {"task": "denoise", "weights": args.weights, "device": "cpu"})
    n = len(plan.items)
    landed_t: list[float] = []
    landed_rss: list[int] = []
    statuses: dict[str, int] = {}

    def landed(item_id: str, status: str) -> None:
        landed_t.append(time.perf_counter())
        landed_rss.append(PeakRSS.current())
        statuses[status] = statuses.get(status, 0) + 1

    server_start = 0.0
    if args.child == "flow":  # execute reuses this server: its start is timed apart from the batch
        t0 = time.perf_counter()
        start_local_server()
        server_start = time.perf_counter() - t0
    release_memory()
    with PeakRSS(interval=0.02) as mem:
        t0 = time.perf_counter()
        if args.child == "flow":
            result = execute(plan, runner="thread", workers=1, progress=landed)
            if result["counts"]["done"] != n:
                raise SystemExit(f"flow: {result['counts']} of {n} items: {result['errors']}")
        else:
            pipe = get_pipeline("restore")
            torch.set_num_threads(args.threads)
            for item in plan.items:
                pipe.process(item, out, plan.config)
                landed(item.id, "done")
        wall = time.perf_counter() - t0
    gc.collect()
    server = 0
    try:
        import psutil

        server = sum(c.memory_info().rss for c in psutil.Process().children(recursive=True))
    except Exception:  # noqa: BLE001 - the server's RSS is context, not the measurement
        pass
    at = {k: landed_rss[k - 1] for k in (50, 500, len(landed_rss)) if 0 < k <= len(landed_rss)}
    print(json.dumps({
        "mode": args.child, "items": n, "threads": torch.get_num_threads(), "wall": wall,
        "first": landed_t[0] - t0, "last": landed_t[-1] - t0, "start_rss": mem.start, "peak": mem.peak,
        "end_rss": PeakRSS.current(), "rss_at": at, "server_rss": server, "statuses": statuses, "server_start": server_start,
    }))


def run_child(mode: str, inp: Path, out: Path, weights: str | None, threads: int, tmp: Path) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"prefect-{mode}-", dir=tmp))
    env = {**os.environ, **ENV, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)  # the ephemeral server of this home, as a plain `run-flow` has

    def call(which: str) -> dict:
        cmd = [sys.executable, __file__, "--child", which, "--input", str(inp), "--output", str(out),
               "--threads", str(threads)] + (["--weights", weights] if weights else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{which} batch of {inp} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    try:
        first_start = call("prime")["seconds"] if mode == "flow" else 0.0
        return {**call(mode), "first_start": first_start}
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


# ----------------------------------------------------------------------------- report (parent)

def pair(inp: Path, tmp: Path, weights: str | None, threads: int) -> tuple[dict, dict]:
    """Loop, then flow, on the same inputs (each in a fresh process)."""
    loop = run_child("loop", inp, tmp / "out-loop", weights, threads, tmp)
    flow = run_child("flow", inp, tmp / "out-flow", weights, threads, tmp)
    return loop, flow


def overheads(loop: dict, flow: dict) -> tuple[float, float, float]:
    """Orchestration overhead per item in seconds: (flow - loop wall, the same with the server's start
    added to the flow, steady: the same over the items after the first landed)."""
    n = flow["items"]
    overall = (flow["wall"] - loop["wall"]) / n
    steady = ((flow["last"] - flow["first"]) - (loop["last"] - loop["first"])) / max(n - 1, 1)
    return overall, overall + flow["server_start"] / n, steady


def scaling_table(rows: list[tuple[int, dict, dict]], side: int) -> None:
    print(f"\n## restore denoise, tiny NAFNet, {side} x {side} RGB PNGs, thread runner, 1 worker")
    print("| items | loop wall s | flow wall s | server start s (fresh home) | overhead ms/item | with server start "
          "| steady | flow RSS before / peak / end MB | flow RSS at item 50 / 500 / last MB | loop peak MB "
          "| server RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, loop, flow in rows:
        overall, started, steady = overheads(loop, flow)
        at = flow["rss_at"]
        at_s = " / ".join(f"{at[k] / MB:.0f}" if k in at else "-" for k in ("50", "500", str(flow["items"])))
        print(f"| {n} | {loop['wall']:.1f} | {flow['wall']:.1f} | {flow['server_start']:.1f} "
              f"({flow['first_start']:.1f}) | {overall * 1e3:.1f} | {started * 1e3:.1f} | {steady * 1e3:.1f} | "
              f"{flow['start_rss'] / MB:.0f} / {flow['peak'] / MB:.0f} / {flow['end_rss'] / MB:.0f} | {at_s} | "
              f"{loop['peak'] / MB:.0f} | {flow['server_rss'] / MB:.0f} |", flush=True)
    by = {n: flow for n, _, flow in rows}
    if 500 in by and 2000 in by:
        growth = by[2000]["peak"] / by[500]["peak"] - 1
        verdict = "met" if growth < 0.1 else "NOT met"
        print(f"flow peak RSS 500 -> 2000 items: {100 * growth:+.1f}% (goal < 10%: {verdict})")
        at = by[2000]["rss_at"]
        print(f"within the 2000-item run, RSS at item 500 -> 2000: {100 * (at['2000'] / at['500'] - 1):+.1f}%")
    worst = max(overheads(loop, flow)[0] for _, loop, flow in rows)
    print(f"largest overhead per item (server start apart): {worst * 1e3:.1f} ms "
          f"(goal < 50 ms: {'met' if worst < 0.05 else 'NOT met'})")


def realistic_row(loop: dict, flow: dict, side: int, label: str) -> None:
    overall, started, steady = overheads(loop, flow)
    n = flow["items"]
    per = loop["wall"] / n
    print(f"\n## realistic size: {n} items of {side} x {side} RGB PNGs, {label}, thread runner, 1 worker")
    print("| items | compute s/item (loop) | loop wall s | flow wall s | server start s | overhead ms/item "
          "| % of compute | with server start: ms/item, % | steady ms/item, % | flow peak MB | loop peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {n} | {per:.2f} | {loop['wall']:.1f} | {flow['wall']:.1f} | {flow['server_start']:.1f} | "
          f"{overall * 1e3:.1f} | {100 * overall / per:.1f}% | {started * 1e3:.0f}, {100 * started / per:.0f}% | "
          f"{steady * 1e3:.1f}, {100 * steady / per:.1f}% | {flow['peak'] / MB:.0f} | {loop['peak'] / MB:.0f} |")
    print(f"overhead {100 * overall / per:.1f}% of compute, server start apart (goal < 5%: "
          f"{'met' if overall / per < 0.05 else 'NOT met'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="50,500,2000", help="batch sizes, comma-separated (default 50,500,2000)")
    ap.add_argument("--image-side", type=int, default=64, help="side of the scaling runs' images (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="cores (torch threads) per batch (default 2)")
    ap.add_argument("--realistic-side", type=int, default=512, help="side of the realistic images (default 512)")
    ap.add_argument("--realistic-items", type=int, default=20, help="items at the realistic size (0: skip)")
    ap.add_argument("--tmp", help="folder for inputs, outputs and Prefect homes (default: the system temp)")
    ap.add_argument("--child", choices=["flow", "loop", "prime"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    from host import host_line

    print(host_line())
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="batch-scaling-", dir=args.tmp) as tmp_s:
        tmp = Path(tmp_s)
        weights = str(tiny_weights(tmp / "nafnet_tiny.pt"))
        print(f"tiny NAFNet {TINY_NAFNET}; {args.threads} threads; each batch in a fresh process", flush=True)
        rows = []
        for n in sizes:
            inp = make_inputs(tmp / f"in_{n}", n, args.image_side)
            loop, flow = pair(inp, tmp, weights, args.threads)
            shutil.rmtree(inp)
            rows.append((n, loop, flow))
            print(f"  {n} items: loop {loop['wall']:.1f} s, flow {flow['wall']:.1f} s", flush=True)
        if rows:
            scaling_table(rows, args.image_side)
        if args.realistic_items > 0:
            inp = make_inputs(tmp / "in_realistic", args.realistic_items, args.realistic_side)
            demo = DEMO_NAFNET.is_file()
            loop, flow = pair(inp, tmp, str(DEMO_NAFNET) if demo else weights, args.threads)
            label = "demo NAFNet (width 16)" if demo else "tiny NAFNet (no demo weights found)"
            realistic_row(loop, flow, args.realistic_side, label)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
