"""The shared model backend: build/load once per process, pick device and threads, predict.

Tasks never receive a model: they call :func:`cached_model` with a weights path and
small options, and get the process-wide instance (loaded once per worker process,
shared by threads).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from imagingflows.models.checkpoints import Checkpoint, CheckpointError, load_strict, read_checkpoint
from imagingflows.models.registry import REGISTRY, ModelSpec
from imagingflows.models.sliding_window import WindowRun, resolve_precision, run_windows


@dataclass(frozen=True)
class LoadedModel:
    """An eval-mode network with what it was built from (recorded in run.json)."""

    module: torch.nn.Module
    spec: ModelSpec
    config: dict
    weights: str | None
    weights_sha256: str | None
    meta: dict
    device: torch.device

    def describe(self) -> dict:
        variant = {k: self.config.get(k) for k in self.spec.variant_keys}
        return {
            "arch": self.spec.name,
            "config": _jsonable(self.config),
            "variant": variant,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "parameters": sum(p.numel() for p in self.module.parameters()),
        }


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


WEIGHTS_DIR = Path(__file__).parent / "weights"


def demo_weights(name: str) -> Path:
    """Path of a bundled demo checkpoint (trained by our own ``train`` flow; see weights/MODEL_CARD.md)."""
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no bundled demo weights {name!r} at {path}; pass --weights PATH")
    return path


def select_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu or auto)")
    return dev


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks / container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(workers: int = 1, cores: int | None = None) -> int:
    """Cap torch threads so that workers x threads <= cores; returns threads per worker."""
    cores = cores or available_cores()
    threads = max(1, cores // max(1, workers))
    torch.set_num_threads(threads)
    return threads


def build_model(
    ckpt: Checkpoint | None, arch: str | None = None, **overrides: Any
) -> tuple[torch.nn.Module, ModelSpec, dict]:
    """Build the network a checkpoint describes and load it strictly (or a fresh one if ``ckpt`` is None)."""
    if ckpt is None:
        if arch is None:
            raise ValueError("arch is required when no weights are given")
        spec = REGISTRY.get(arch)
        config = {**spec.default_config, **overrides}
        return spec.build(**config).eval(), spec, config
    spec = REGISTRY.get(arch or ckpt.arch) if (arch or ckpt.arch) else REGISTRY.detect(ckpt.state_dict)
    if ckpt.ours:
        config = {**ckpt.config, **overrides}
    else:
        try:
            derived = spec.hparams_from_state_dict(ckpt.state_dict)
        except (ValueError, KeyError, IndexError) as e:
            raise CheckpointError(f"{ckpt.path}: not a {spec.name} checkpoint as far as its keys tell: {e}") from e
        config = {**derived, **spec.foreign_defaults, **overrides}
    try:
        net = spec.build(**config)
    except ValueError as e:  # e.g. a hyper-parameter the weights cannot tell and nobody gave
        raise CheckpointError(f"{ckpt.path}: {e}") from e
    state = ckpt.state_dict
    if not ckpt.ours and spec.foreign_keys is not None:
        state = spec.foreign_keys(state)
    omitted = ckpt.meta.get("omitted_buffers") or [] if ckpt.ours else []
    if omitted:
        bad = [k for k in omitted if not spec.is_derived_buffer(k)]
        if bad:
            raise CheckpointError(f"{ckpt.path}: omits buffers {bad[:3]} that {spec.name} cannot rebuild")
        rebuilt = net.state_dict()
        state = {**state, **{k: rebuilt[k] for k in omitted if k in rebuilt}}
    load_strict(net, state, source=str(ckpt.path))
    return net.eval(), spec, config


def load_model(
    weights: str | os.PathLike | None, arch: str | None = None, *, trust: bool = False,
    device: str = "cpu", **overrides: Any,
) -> torch.nn.Module:
    """Public API: an eval-mode ``nn.Module`` from a checkpoint file.

    The architecture and its hyper-parameters come from the checkpoint (our metadata,
    or the keys and shapes of a foreign file) unless ``arch`` / ``overrides`` say
    otherwise, e.g. ``load_model("model.pt", patch_merging="current")`` for a
    Swin UNETR trained with MONAI >= 1.5.
    """
    return load(weights, arch, trust=trust, device=device, **overrides).module


def load(
    weights: str | os.PathLike | None, arch: str | None = None, *, trust: bool = False,
    device: str = "cpu", **overrides: Any,
) -> LoadedModel:
    """Like :func:`load_model` but returns the :class:`LoadedModel` record."""
    ckpt = read_checkpoint(weights, trust=trust) if weights is not None else None
    net, spec, config = build_model(ckpt, arch, **overrides)
    dev = select_device(device)
    return LoadedModel(
        module=net.to(dev),
        spec=spec,
        config=config,
        weights=str(weights) if weights is not None else None,
        weights_sha256=ckpt.sha256 if ckpt else None,
        meta=ckpt.meta if ckpt else {},
        device=dev,
    )


_CACHE: dict[tuple, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(
    weights: str | os.PathLike | None, arch: str | None = None, *, trust: bool = False,
    device: str = "cpu", **overrides: Any,
) -> LoadedModel:
    """The process-wide instance for these arguments, loaded on first use."""
    stamp = None
    if weights is not None and os.path.isfile(weights):
        st = os.stat(weights)
        stamp = (st.st_size, st.st_mtime_ns)  # a file replaced in place is reloaded
    key = (str(weights), stamp, arch, trust, device, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load(weights, arch, trust=trust, device=device, **overrides)
        return _CACHE[key]


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def predict_volume(
    model: LoadedModel,
    image: torch.Tensor,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    blend: str = "gaussian",
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    precision: str = "fp32",
    crop_foreground: bool = False,
    skip_empty: bool = False,
    fill: float = 0.0,
    progress: bool = False,
    engine: str = "eager",
) -> tuple[torch.Tensor, WindowRun]:
    """3D sliding-window inference with blended windows (MONAI ``sliding_window_inference``).

    Args:
        image: ``(B, C, D, H, W)`` float32 on the CPU; any spatial size (padded as needed).
        roi_size: window size, each a multiple of the spec's ``size_multiple``.
        postprocess: applied to each window's output before blending (e.g. ``torch.sigmoid``).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :mod:`.sliding_window`).
        crop_foreground / skip_empty / fill: run only where the input is nonzero; the
            output is ``fill`` elsewhere.
        engine: what runs each window batch (:data:`imagingflows.models.engines.CONCRETE`, resolved
            before, e.g. by :func:`~imagingflows.models.engines.choose`).

    Returns:
        ``(B, C_out, D, H, W)`` float32 on the CPU, same spatial size as ``image``, and a
        :class:`WindowRun` saying what ran (precision, windows, skipped windows, box).
    """
    spec = model.spec
    bad = [r for r in roi_size if r % spec.size_multiple or r < spec.min_size]
    if bad:
        raise ValueError(
            f"roi_size {tuple(roi_size)} must be multiples of {spec.size_multiple} and >= {spec.min_size} "
            f"for {spec.name}"
        )
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    out_channels = int(model.config.get("out_channels") or 0)
    if skip_empty and not out_channels:
        raise ValueError(f"skip_empty needs the output channel count, which {spec.name}'s config lacks")
    from imagingflows.models.engines import engine_module

    net = model.module if engine == "eager" else engine_module(model.module, engine, spatial_dims=3)
    return run_windows(
        net, image, roi_size, out_channels, device=model.device, overlap=overlap,
        sw_batch_size=sw_batch_size, blend=blend, postprocess=postprocess,
        precision=resolve_precision(precision, model.device), crop_foreground=crop_foreground,
        skip_empty=skip_empty, fill=fill, progress=progress,
    )


def sliding_window_predict(model: LoadedModel, image: torch.Tensor, roi_size: Sequence[int], **options: Any):
    """:func:`predict_volume` without the run record: ``(B, C_out, D, H, W)`` float32."""
    return predict_volume(model, image, roi_size, **options)[0]


__all__ = [
    "LoadedModel", "CheckpointError", "select_device", "configure_threads", "build_model",
    "load_model", "load", "cached_model", "clear_cache", "sliding_window_predict", "predict_volume",
    "demo_weights",
]
