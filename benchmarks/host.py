"""The host's CPU capability line every benchmark prints (results depend on AVX2 / AVX512-BF16 / AMX)."""

from __future__ import annotations

import os


def host_line() -> str:
    import torch

    from imagingflows.models.sliding_window import native_bf16

    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX512F"), ("avx512_bf16", "AVX512-BF16"),
                                   ("amx_bf16", "AMX-BF16"), ("amx_tile", "AMX-TILE")) if flag in flags]
    return (f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"CPU flags {'/'.join(isa) or 'none of AVX2/AVX512/AMX'}, native bf16: {native_bf16(torch.device('cpu'))}, "
            f"cores available {len(os.sched_getaffinity(0))} (of {os.cpu_count()})" + _caps())


def _caps() -> str:
    """The ISA caps in force (``--emulate-avx2`` or the user's), which the flags above do not show."""
    caps = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
            if os.environ.get(k)]
    return f"; capped: {', '.join(caps)}" if caps else ""
