"""Inference engines x precisions for every registered network, on one host, in one run (issue 13).

    python benchmarks/engines.py                    # every model, every engine x precision available
    python benchmarks/engines.py --models nafnet jdd --size 1024
    python benchmarks/engines.py --quick            # smoke run: small inputs, one repeat
    python benchmarks/engines.py --profile          # also the top operators of NAFNet eager / compile fp32
    python benchmarks/engines.py --emulate-avx2     # an AVX2-only host, approximately, on a newer CPU

Models (each through :func:`imagingflows.models.engines.engine_module`, the path the pipelines' ``--engine``
takes), on the input one call of the pipeline feeds it:

- ``nafnet``: the bundled demo ``models/weights/nafnet_denoise.pt`` (width 16, enc [1, 1, 2]); one whole
  ``size`` x ``size`` image.
- ``hat``: the bundled demo ``models/weights/hat_sr_x2.pt`` (embed 48, depths [2, 2], window 8); ``--hat-size``.
- ``jdd`` (our demosaic net): ``models/weights/jdd_demo.pt``; ``(1, 2, size, size)``: an RGGB mosaic plus a
  noise-level map.
- ``demosaicnet``: the demosaicnet package's released Bayer weights, ``forward_valid`` on one masked
  ``(1, 3, size + 62, size + 62)`` window (the crop of its 15 unpadded layers).
- ``scale_mae``: the published Scale-MAE encoder configuration (ViT-Large/16: embed 1024, depth 24, 16 heads;
  **random weights**, seed 0: the release file is not bundled; timing does not depend on the weights),
  ``forward_features`` on a batch of ``--tiles`` 224 x 224 tiles (embed's default batch), as tiles per second.
- ``swin_unetr``: the bundled demo ``models/weights/swin_unetr_brats.pt`` (feature size 48), one 96^3 window
  of 4 channels (segment's sliding window); per window. ``compile`` is left out unless ``--swin-compile``
  (its first call took 222 s here; ``auto`` never measures it).

Each row (model, engine, precision) runs in a fresh subprocess (peak RSS is that row's, imports
included; threads = the cores available): the first call (compilation included, inductor cache cold: a
fresh folder per benchmark run), then the best of ``--repeat`` steady calls. Compile rows run a second
subprocess on the now warm cache: ``warm first`` is what a later batch pays for its first call (openvino
rows too: its IR is cached on disk). ``openvino`` rows need the ``imagingflows[openvino]`` extra (else
they fall back to eager and say so).
Agreement is each model's own rule against eager float32 of the same input (PSNR >= 50 dB for the 2D
image networks, cosine >= 0.9999 for Scale-MAE's tokens, >= 99.5% equal thresholded voxels for Swin UNETR).
bf16 rows only on hosts with native bf16 (``--bf16`` forces them).
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

MODELS = ("nafnet", "hat", "jdd", "demosaicnet", "scale_mae", "swin_unetr")
#: the published Scale-MAE encoder (ViT-Large/16, the official pretraining file's)
SCALE_MAE_PUBLISHED = {"img_size": 224, "patch_size": 16, "in_chans": 3, "embed_dim": 1024, "depth": 24,
                       "num_heads": 16, "mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": 1e-6}
ENGINES = ("eager", "channels-last", "compile", "openvino")
#: what --emulate-avx2 sets: ATen's kernels, oneDNN's JIT and inductor's generated code stop at AVX2
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "IMAGINGFLOWS_NATIVE_BF16": "0"}


# ----------------------------------------------------------------------------- one row (subprocess)

def _model(name: str):
    """``(net, label, config, spec-or-rule, method)`` for one benchmarked model."""
    import torch

    from imagingflows.models.backend import load

    if name in ("nafnet", "hat", "swin_unetr"):
        file = {"nafnet": "nafnet_denoise.pt", "hat": "hat_sr_x2.pt", "swin_unetr": "swin_unetr_brats.pt"}[name]
        lm = load(WEIGHTS / file)
        label = {"nafnet": "NAFNet demo", "hat": "HAT x2 demo", "swin_unetr": "Swin UNETR demo"}[name]
        return lm.module, f"{label} ({file})", lm.config, lm.spec, "forward"
    if name == "jdd":
        lm = load(WEIGHTS / "jdd_demo.pt")
        return lm.module, "JDD demo (jdd_demo.pt)", lm.config, lm.spec, "forward"
    if name == "demosaicnet":
        from imagingflows.models import demosaicnet
        from imagingflows.models.engines import EngineRule

        return (demosaicnet.load_demosaicnet(), "DemosaicNet (package bayer.pth)", {},
                EngineRule(demosaicnet.AGREEMENT), "forward_valid")
    if name == "scale_mae":
        from imagingflows.models import scale_mae

        torch.manual_seed(0)
        net = scale_mae.build(**SCALE_MAE_PUBLISHED).eval()
        return net, "Scale-MAE ViT-L/16 (published config, random weights)", dict(SCALE_MAE_PUBLISHED), \
            scale_mae.SPEC, "forward_features"
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")


def _inputs(name: str, size: int, tiles: int) -> tuple[tuple, float, str]:
    """``(inputs, units, unit name)``: what one call is fed and how much work it is (rows report s per unit)."""
    from imagingflows.models.engines import measure_input

    if name in ("nafnet", "hat"):
        return (measure_input(3, size),), size * size / 1e6, "MP"
    if name == "jdd":
        import torch

        return (torch.cat([measure_input(1, size), torch.full((1, 1, size, size), 0.02)], 1),), size * size / 1e6, "MP"
    if name == "demosaicnet":
        from imagingflows.models.demosaicnet import engine_inputs

        return engine_inputs(size), size * size / 1e6, "MP"
    if name == "scale_mae":
        from imagingflows.models.encoder import measurement_inputs

        return measurement_inputs(3, 224, tiles), tiles, "tile"
    if name == "swin_unetr":
        from imagingflows.pipelines.medical import measurement_windows

        return (measurement_windows(4, (96, 96, 96), 1),), 1, "window"
    raise ValueError(name)


def run_row(model: str, engine: str, precision: str, size: int, tiles: int, repeat: int, out: Path,
            first_only: bool, profile: bool) -> dict:
    import torch

    from imagingflows.models.engines import autocast_for, engine_module
    from peak_rss import PeakRSS

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net, label, _, spec, method = _model(model)
    inputs, units, unit = _inputs(model, size, tiles)
    module = engine_module(net, engine, method=method, spatial_dims=int(getattr(spec, "spatial_dims", 2)))

    def call():
        with torch.inference_mode(), autocast_for(precision, "cpu"):
            return module(*inputs).float()

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
           "units": units, "unit": unit, "peak_rss_mb": rss.peak / 1e6, "threads": torch.get_num_threads()}
    if not first_only:
        torch.save(y, out)
    if profile:
        row["profile"] = _profile(call)
    return row


def auto_row(model: str, size: int, tiles: int) -> dict:
    """What ``--engine auto`` picks for ``model`` on this host (fresh measurement cache) and what it cost."""
    import torch

    from imagingflows.models.engines import choose
    from imagingflows.models.sliding_window import resolve_precision

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net, label, config, spec, method = _model(model)
    inputs = None if model in ("nafnet", "hat") else _inputs(model, size, tiles)[0]  # restore: its own 256 px
    out = {}
    for precision in dict.fromkeys(("fp32", resolve_precision("auto", torch.device("cpu")))):
        t = time.perf_counter()
        choice = choose(net, spec, config, "auto", precision=precision, inputs=inputs, method=method)
        out[precision] = {"used": choice.used, "reason": choice.reason, "seconds": time.perf_counter() - t,
                          "per_engine": {k: (v["seconds"], v["agreement"]) for k, v in choice.measurements.items()}}
    return {"model": model, "label": label, "rule": spec.agreement.describe(), "auto": out}


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


def _agreement(model: str, reference, y) -> float:
    return _model_rule(model).measure(reference, y)


def _model_rule(model: str):
    from imagingflows.models import demosaicnet
    from imagingflows.models.registry import get_spec

    return demosaicnet.AGREEMENT if model == "demosaicnet" else get_spec(model).agreement


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="input side, pixels (NAFNet, JDD, DemosaicNet)")
    p.add_argument("--hat-size", type=int, default=256, help="HAT's input side (its attention is ~30x NAFNet's cost)")
    p.add_argument("--tiles", type=int, default=8, help="Scale-MAE: 224 x 224 tiles per call")
    p.add_argument("--repeat", type=int, default=3, help="steady calls per row (best taken)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--bf16", action="store_true", help="bf16 rows even without native bf16")
    p.add_argument("--swin-compile", action="store_true", help="also compile Swin UNETR (minutes)")
    p.add_argument("--quick", action="store_true", help="small inputs, one repeat (smoke run)")
    p.add_argument("--profile", action="store_true", help="top operators of NAFNet eager and compile, fp32")
    p.add_argument("--no-auto", action="store_true", help="skip what --engine auto picks per model")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="cap torch, oneDNN and inductor at AVX2 and say bf16 is not native (an AVX2-only host, "
                        "approximately; openvino rows are left out: its CPU plugin cannot be capped)")
    p.add_argument("--row", nargs=3, metavar=("MODEL", "ENGINE", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--auto-row", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--with-profile", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.hat_size, a.tiles, a.repeat = 64, 64, 2, 1
    if a.auto_row:
        print(json.dumps(auto_row(a.auto_row, a.size, a.tiles)))
        return 0
    if a.row:
        print(json.dumps(run_row(*a.row, a.size, a.tiles, a.repeat, a.out, a.first_only, a.with_profile)))
        return 0

    if a.emulate_avx2:  # before torch loads here; the rows' subprocesses inherit it
        os.environ.update(AVX2_CAPS)
        a.engines = [e for e in a.engines if e != "openvino"]
    import torch

    from host import host_line
    from imagingflows.models.engines import find_cxx
    from imagingflows.models.sliding_window import native_bf16

    precisions = ["fp32"] + (["bf16"] if a.bf16 or native_bf16(torch.device("cpu")) else [])
    cxx, why = find_cxx()
    print(host_line())
    print(f"C++ compiler: {cxx or why}; input {a.size} x {a.size} (HAT {a.hat_size} x {a.hat_size}, Scale-MAE "
          f"{a.tiles} tiles of 224, Swin UNETR one 96^3 window); best of {a.repeat}; precisions {precisions}; "
          f"threads {len(os.sched_getaffinity(0))}")
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="engines-bench-") as tmp:
        env = {**os.environ, "IMAGINGFLOWS_CACHE": str(Path(tmp) / "cache"),
               "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        for model in a.models:
            reference = None
            size = a.hat_size if model == "hat" else a.size
            for precision in precisions:
                for engine in a.engines:
                    if model == "swin_unetr" and engine == "compile" and not a.swin_compile:
                        continue
                    out = Path(tmp) / f"{model}-{engine}-{precision}.pt"
                    prof = a.profile and model == "nafnet" and precision == "fp32" and engine in ("eager", "compile")
                    args = ["--row", model, engine, precision, "--size", str(size), "--tiles", str(a.tiles),
                            "--repeat", str(a.repeat), "--out", str(out)] + (["--with-profile"] if prof else [])
                    row = _subprocess(args, env)
                    if engine in ("compile", "openvino") and row["used"] == engine:
                        warm = _subprocess(["--row", model, engine, precision, "--size", str(size), "--tiles",
                                            str(a.tiles), "--first-only"], env)
                        row["warm_first_s"] = warm["first_s"]
                    y = torch.load(out)
                    if reference is None:  # eager fp32 comes first
                        reference = y
                    row["agreement"] = _agreement(model, reference, y)
                    row["rule"] = _model_rule(model).describe()
                    if "profile" in row:
                        profiles[f"{model} {engine} {precision}"] = row.pop("profile")
                    rows.append(row)
                    print(f"  {model} {engine} {precision}: {row['steady_s'] / row['units']:.4g} s per {row['unit']}",
                          flush=True)
        autos = [] if a.no_auto else [
            _subprocess(["--auto-row", m, "--size", str(a.hat_size if m == "hat" else a.size), "--tiles", str(a.tiles)],
                        env | {"IMAGINGFLOWS_CACHE": str(Path(tmp) / m)}) for m in a.models]
    print(table(rows, profiles))
    for r in autos:
        print(f"\n--engine auto, {r['label']} ({r['rule']}; the pipeline's measurement input, fresh cache):")
        for precision, got in r["auto"].items():
            per = ", ".join(f"{k} {s:.4f} s / {q}" for k, (s, q) in got["per_engine"].items())
            print(f"- {precision}: {got['used']} ({per}; measuring took {got['seconds']:.0f} s): {got['reason']}")
    return 0


def _agreement_text(r: dict) -> str:
    v = r["agreement"]
    if r["rule"].startswith("psnr_db"):
        return ">= 200 (equal)" if v >= 200 else f"{v:.1f} dB"
    return f"{v:.6f}"


def table(rows: list[dict], profiles: dict) -> str:
    base = {r["model"]: r["steady_s"] for r in rows if r["engine"] == "eager" and r["precision"] == "fp32"}
    lines = ["", "| model | engine | precision | ran | first call s | warm first s | s per unit | speed-up vs eager "
             "fp32 | peak RSS MB | agreement vs eager fp32 (rule) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ran = r["used"] + (" (fallback)" if r["fallback"] else "")
        warm = f"{r['warm_first_s']:.2f}" if r.get("warm_first_s") is not None else "-"
        ok = "" if _model_rule(r["model"]).holds(r["agreement"]) else " **fails**"
        lines.append(f"| {r['label']} | {r['engine']} | {r['precision']} | {ran} | {r['first_s']:.2f} | {warm} | "
                     f"{r['steady_s'] / r['units']:.4g} s/{r['unit']} | {base[r['model']] / r['steady_s']:.2f}x | "
                     f"{r['peak_rss_mb']:.0f} | {_agreement_text(r)} ({r['rule']}){ok} |")
    fallbacks = {r["fallback"] for r in rows if r["fallback"]}
    lines += [f"fallback: {f}" for f in fallbacks]
    for name, ops in profiles.items():
        lines += ["", f"top operators by self CPU time, {name} (one call):", "| op | self ms | share | calls |",
                  "|---|---|---|---|"]
        lines += [f"| {o['op']} | {o['self_ms']:.1f} | {o['share']:.0%} | {o['calls']} |" for o in ops]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
