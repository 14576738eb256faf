"""Inference engines x precisions for the 2D networks, on one host, in one run (issue 13).

    python benchmarks/engines.py                    # 512 x 512, every engine x precision available
    python benchmarks/engines.py --size 1024        # 1 MP
    python benchmarks/engines.py --quick            # smoke run: 64 x 64, one repeat
    python benchmarks/engines.py --profile          # also the top operators of NAFNet eager / compile fp32

Models (each through :func:`imagingflows.models.engines.engine_module`, the path ``run-flow restore
--engine`` takes, on one whole-image forward of a ``size`` x ``size`` input; HAT ``--hat-size``):

- NAFNet: the bundled demo ``models/weights/nafnet_denoise.pt`` (width 16, enc [1, 1, 2]).
- HAT x2: the bundled demo ``models/weights/hat_sr_x2.pt`` (embed 48, depths [2, 2], window 8).
- JDD (models/jdd.py, our demosaic net): ``models/weights/jdd_demo.pt`` when bundled, else its default
  config with **random weights** (seed 0; the zero-initialised exit layer redrawn N(0, 0.05) so the whole
  network counts): timing does not depend on the weights; agreement does a little. Input
  ``(1, 2, size, size)``: an RGGB mosaic plus a noise-level map.

Each row (model, engine, precision) runs in a fresh subprocess (peak RSS is that row's, imports
included; threads = the cores available): the first call (compilation included, inductor cache cold: a
fresh folder per benchmark run), then the best of ``--repeat`` steady calls, as seconds per megapixel of
input. Compile rows run a second subprocess on the now warm cache: ``warm first`` is what a later batch
pays for its first call. PSNR (dB, peak 1, clipped to [0, 1]) is against eager float32 of the same input
(the models' agreement rule is >= 50 dB). HAT runs on ``--hat-size`` (256) inputs. bf16 rows only on hosts with native bf16 (``--bf16`` forces them).
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

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "weights"
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

MODELS = ("nafnet", "hat", "jdd")
ENGINES = ("eager", "channels-last", "compile")


# ----------------------------------------------------------------------------- one row (subprocess)

def _model(name: str):
    """``(net, input channels, label, config)`` for one benchmarked model."""
    import torch

    from imagingflows.models.backend import load

    if name == "nafnet":
        lm = load(WEIGHTS / "nafnet_denoise.pt")
        return lm.module, 3, "NAFNet demo (nafnet_denoise.pt)", lm.config
    if name == "hat":
        lm = load(WEIGHTS / "hat_sr_x2.pt")
        return lm.module, 3, "HAT x2 demo (hat_sr_x2.pt)", lm.config
    if name == "jdd":
        demo = WEIGHTS / "jdd_demo.pt"
        if demo.is_file():
            lm = load(demo)
            return lm.module, 2, "JDD demo (jdd_demo.pt)", lm.config
        from imagingflows.models import jdd

        torch.manual_seed(0)
        net = jdd.build(**jdd.SPEC.default_config).eval()
        torch.nn.init.normal_(net.exit.weight, 0, 0.05)
        return net, 2, "JDD default config, random weights", dict(jdd.SPEC.default_config)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")


def run_row(model: str, engine: str, precision: str, size: int, repeat: int, out: Path, first_only: bool,
            profile: bool) -> dict:
    import torch

    from imagingflows.models.engines import engine_module, measure_input
    from peak_rss import PeakRSS

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net, channels, label, _ = _model(model)
    x = measure_input(channels, size)
    module = engine_module(net, engine)
    dtype = {"bf16": torch.bfloat16}.get(precision)

    def call():
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return module(x).float()

    with PeakRSS() as rss:
        t = time.perf_counter()
        y = call()
        first = time.perf_counter() - t
        steady = []
        for _ in range(0 if first_only else repeat):
            t = time.perf_counter()
            call()
            steady.append(time.perf_counter() - t)
    row = {"model": model, "label": label, "engine": engine, "used": module.used, "fallback": module.fallback,
           "precision": precision, "first_s": first, "steady_s": min(steady) if steady else None,
           "mp": size * size / 1e6, "peak_rss_mb": rss.peak / 1e6, "threads": torch.get_num_threads()}
    if not first_only:
        torch.save(y, out)
    if profile:
        row["profile"] = _profile(call)
    return row


def auto_row(model: str) -> dict:
    """What ``--engine auto`` picks for ``model`` on this host (fresh measurement cache) and what it cost."""
    import dataclasses

    import torch

    from imagingflows.models.engines import choose
    from imagingflows.models.registry import Agreement, get_spec
    from imagingflows.models.sliding_window import resolve_precision

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net, _, label, config = _model(model)
    spec = get_spec(model)
    note = ""
    if spec.agreement is None:  # JDD until models/jdd.py states its rule (issue 13: >= 50 dB)
        spec, note = dataclasses.replace(spec, agreement=Agreement("psnr_db", 50.0)), " (rule of issue 13 lent)"
    out = {}
    for precision in ("fp32", resolve_precision("auto", torch.device("cpu"))):
        t = time.perf_counter()
        choice = choose(net, spec, config, "auto", precision=precision)
        out[precision] = {"used": choice.used, "reason": choice.reason, "seconds": time.perf_counter() - t,
                          "per_engine": {k: (v["seconds"], v["agreement"]) for k, v in choice.measurements.items()}}
    return {"model": model, "label": label + note, "auto": out}


def _profile(call, top: int = 8) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:top]]


# ----------------------------------------------------------------------------- the run

def _subprocess(args: list[str], env: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"row {args} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def _psnr(a, b) -> float:
    from imagingflows.models.registry import Agreement

    return Agreement("psnr_db", 50.0).measure(a, b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="input side, pixels (NAFNet, JDD)")
    p.add_argument("--hat-size", type=int, default=256, help="HAT's input side (its attention is ~30x NAFNet's cost)")
    p.add_argument("--repeat", type=int, default=3, help="steady calls per row (best taken)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--bf16", action="store_true", help="bf16 rows even without native bf16")
    p.add_argument("--quick", action="store_true", help="64 x 64, one repeat (smoke run)")
    p.add_argument("--profile", action="store_true", help="top operators of NAFNet eager and compile, fp32")
    p.add_argument("--no-auto", action="store_true", help="skip what --engine auto picks per model")
    p.add_argument("--row", nargs=3, metavar=("MODEL", "ENGINE", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--auto-row", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--with-profile", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.hat_size, a.repeat = 64, 64, 1
    if a.auto_row:
        print(json.dumps(auto_row(a.auto_row)))
        return 0
    if a.row:
        print(json.dumps(run_row(*a.row, a.size, a.repeat, a.out, a.first_only, a.with_profile)))
        return 0

    import torch

    from host import host_line
    from imagingflows.models.engines import find_cxx
    from imagingflows.models.sliding_window import native_bf16

    precisions = ["fp32"] + (["bf16"] if a.bf16 or native_bf16(torch.device("cpu")) else [])
    cxx, why = find_cxx()
    print(host_line())
    print(f"C++ compiler: {cxx or why}; input {a.size} x {a.size} (HAT {a.hat_size} x {a.hat_size}); best of "
          f"{a.repeat}; precisions {precisions}; threads {len(os.sched_getaffinity(0))}")
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="engines-bench-") as tmp:
        env = {**os.environ, "IMAGINGFLOWS_CACHE": str(Path(tmp) / "cache"),
               "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        for model in a.models:
            reference = None
            size = a.hat_size if model == "hat" else a.size
            for precision in precisions:
                for engine in a.engines:
                    out = Path(tmp) / f"{model}-{engine}-{precision}.pt"
                    prof = a.profile and model == "nafnet" and precision == "fp32" and engine in ("eager", "compile")
                    args = ["--row", model, engine, precision, "--size", str(size), "--repeat", str(a.repeat),
                            "--out", str(out)] + (["--with-profile"] if prof else [])
                    row = _subprocess(args, env)
                    if engine == "compile" and row["used"] == "compile":
                        warm = _subprocess(["--row", model, engine, precision, "--size", str(size), "--first-only"],
                                           env)
                        row["warm_first_s"] = warm["first_s"]
                    y = torch.load(out)
                    if reference is None:  # eager fp32 comes first
                        reference = y
                    row["psnr"] = _psnr(reference, y)
                    if "profile" in row:
                        profiles[f"{model} {engine} {precision}"] = row.pop("profile")
                    rows.append(row)
                    print(f"  {model} {engine} {precision}: {row['steady_s'] / row['mp']:.3f} s/MP", flush=True)
        autos = [] if a.no_auto else [_subprocess(["--auto-row", m], env | {"IMAGINGFLOWS_CACHE": str(Path(tmp) / m)})
                                      for m in a.models]
    print(table(rows, profiles))
    for r in autos:
        print(f"\n--engine auto, {r['label']} (measured on a 256 x 256 input, fresh measurement cache):")
        for precision, got in r["auto"].items():
            per = ", ".join(f"{k} {s:.4f} s / {q} dB" for k, (s, q) in got["per_engine"].items())
            print(f"- {precision}: {got['used']} ({per}; measuring took {got['seconds']:.0f} s): {got['reason']}")
    return 0


def table(rows: list[dict], profiles: dict) -> str:
    base = {r["model"]: r["steady_s"] for r in rows if r["engine"] == "eager" and r["precision"] == "fp32"}
    lines = ["", "| model | engine | precision | ran | first call s | warm first s | s per MP | speed-up vs eager fp32 "
             "| peak RSS MB | PSNR vs eager fp32 dB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ran = r["used"] + (" (fallback)" if r["fallback"] else "")
        warm = f"{r['warm_first_s']:.2f}" if r.get("warm_first_s") is not None else "-"
        psnr = ">= 200 (equal)" if r["psnr"] >= 200 else f"{r['psnr']:.1f}"
        lines.append(f"| {r['label']} | {r['engine']} | {r['precision']} | {ran} | {r['first_s']:.2f} | {warm} | "
                     f"{r['steady_s'] / r['mp']:.3f} | {base[r['model']] / r['steady_s']:.2f}x | "
                     f"{r['peak_rss_mb']:.0f} | {psnr} |")
    fallbacks = {r["fallback"] for r in rows if r["fallback"]}
    lines += [f"fallback: {f}" for f in fallbacks]
    for name, ops in profiles.items():
        lines += ["", f"top operators by self CPU time, {name} (one call):", "| op | self ms | share | calls |",
                  "|---|---|---|---|"]
        lines += [f"| {o['op']} | {o['self_ms']:.1f} | {o['share']:.0%} | {o['calls']} |" for o in ops]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
