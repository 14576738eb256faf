"""3D sliding-window inference with the levers that make it cheap on a CPU.

The plain path is MONAI's ``sliding_window_inference`` over the whole volume. The
levers, each recorded in the returned :class:`WindowRun` (and so in ``run.json``):

- ``crop_foreground``: run the windows only over the bounding box of the nonzero
  input (plus ``margin`` voxels). Outside it the output is ``fill``: a skull-stripped
  MRI has no signal there, and the segment pipeline masks labels to the brain anyway.
- ``skip_empty``: a window whose input is all zero is not run; its output is ``fill``.
- ``precision``: ``fp32``, ``bf16`` or ``fp16`` autocast, or ``auto``: bf16 only where
  the hardware multiplies bf16 natively (CUDA with bf16 support; a CPU with
  AVX512-BF16 or AMX, as oneDNN reports it), float32 everywhere else. Emulated bf16
  on an AVX2 CPU is several times slower than float32.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from imagingflows.models.progress import report as report_progress

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


#: set to 1 or 0 to override the hardware probe (tests force each branch of ``auto`` on any host)
NATIVE_BF16_ENV = "IMAGINGFLOWS_NATIVE_BF16"


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bf16 matrix products in hardware (or ``$IMAGINGFLOWS_NATIVE_BF16``)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where native, else ``fp32``; fp16 only on CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (CPUs lack fast fp16 kernels); use bf16 or fp32")
    return precision


@dataclass
class WindowRun:
    """What one sliding-window call did (kept small and JSON-friendly for run.json)."""

    precision: str = "fp32"
    windows: int = 0
    skipped_windows: int = 0
    box: list[list[int]] | None = None  # [[start, stop] per spatial dim] of the foreground crop
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def foreground_box(image: torch.Tensor, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box (one slice per spatial dim) of voxels nonzero in any channel/batch item.

    Args:
        image: ``(B, C, *spatial)``.
    Returns:
        slices into the spatial dims, widened by ``margin`` and clipped; None if all zero.
    """
    nonzero = (image != 0).flatten(0, 1).any(0)
    if not bool(nonzero.any()):
        return None
    box = []
    for dim in range(nonzero.dim()):
        other = tuple(d for d in range(nonzero.dim()) if d != dim)
        idx = torch.nonzero(nonzero.any(dim=other) if other else nonzero).flatten()
        lo = max(0, int(idx[0]) - margin)
        hi = min(nonzero.shape[dim], int(idx[-1]) + 1 + margin)
        box.append(slice(lo, hi))
    return tuple(box)


def window_count(shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding window runs over ``shape`` (its scan: interval ``roi * (1 - overlap)``)."""
    count = 1
    for size, roi in zip(shape, roi_size):
        interval = max(int(roi * (1 - overlap)), 1)
        count *= 1 if size <= roi else -(-(size - roi) // interval) + 1
    return count


def run_windows(
    net: torch.nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    out_channels: int,
    *,
    device: torch.device,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    blend: str = "gaussian",
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    precision: str = "fp32",
    crop_foreground: bool = False,
    margin: int = 0,
    skip_empty: bool = False,
    fill: float = 0.0,
    progress: bool = False,
) -> tuple[torch.Tensor, WindowRun]:
    """Blended sliding-window prediction of ``net`` over ``image``.

    Args:
        image: ``(B, C, D, H, W)`` float32 on the CPU, any spatial size.
        out_channels: channels of ``net``'s output (needed to fill skipped windows).
        precision: an already resolved precision (``fp32``, ``bf16``, ``fp16``).
    Returns:
        ``(B, out_channels, D, H, W)`` float32 on the CPU, and what ran.
    """
    import time

    from monai.inferers import sliding_window_inference

    t0 = time.perf_counter()
    info = WindowRun(precision=precision)
    out_shape = (image.shape[0], out_channels, *image.shape[2:])
    look = crop_foreground or skip_empty
    box = foreground_box(image, margin) if look else None
    if look and box is None:  # foreground_box found no nonzero voxel
        info.seconds = round(time.perf_counter() - t0, 3)
        return torch.full(out_shape, fill, dtype=torch.float32), info  # nothing but background
    region = image[(slice(None), slice(None), *box)] if crop_foreground and box else image
    if crop_foreground and box:
        info.box = [[s.start, s.stop] for s in box]

    dtype = _AUTOCAST.get(precision)

    total = window_count(region.shape[2:], roi_size, overlap)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        y = predict_batch(x)
        report_progress("window", min(info.windows, total), total)
        return y

    def predict_batch(x: torch.Tensor) -> torch.Tensor:
        info.windows += x.shape[0]
        if skip_empty:
            empty = ~(x != 0).flatten(1).any(1)
            if bool(empty.all()):
                info.skipped_windows += x.shape[0]
                return torch.full((x.shape[0], out_channels, *x.shape[2:]), fill, dtype=torch.float32,
                                  device=x.device)
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype is not None):
            y = net(x)
        y = y.float()
        y = postprocess(y) if postprocess else y
        if skip_empty and bool(empty.any()):
            info.skipped_windows += int(empty.sum())  # computed anyway with the batch; answer replaced
            y[empty] = fill
        return y

    with torch.inference_mode():
        pred = sliding_window_inference(
            region, roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, predictor=predictor,
            overlap=overlap, mode=blend, sw_device=device, device=torch.device("cpu"), progress=progress,
        )
    if region is not image:
        full = torch.full(out_shape, fill, dtype=pred.dtype)
        full[(slice(None), slice(None), *box)] = pred
        pred = full
    info.seconds = round(time.perf_counter() - t0, 3)
    return pred, info
