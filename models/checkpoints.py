"""Read official and our own checkpoint files safely, and load them strictly.

Formats recognised: a bare state dict, or one wrapped under ``state_dict``,
``params_ema`` (preferred over ``params``), ``params``, ``model``, ``net``; a
``module.`` prefix on every key is stripped; ``.safetensors`` files. Pickles are
read with ``weights_only=True`` plus a minimal allow-list (the numpy scalar that
BraTS21 files carry in ``best_acc``); anything else needs ``trust=True``.

Checkpoints we write (:func:`save_checkpoint`) carry ``format: imagingflows``,
the architecture, its full config (variants included) and free-form metadata.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

OUR_FORMAT = "imagingflows"
CONTAINER_KEYS = ("state_dict", "params_ema", "params", "model", "net")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


@dataclass
class Checkpoint:
    """A state dict plus where it came from.

    Attributes:
        state_dict: parameter name -> tensor, container and prefix removed.
        path: the file.
        sha256: hex digest of the file (recorded in run.json).
        container: the key the weights were found under (``None`` for a bare dict).
        stripped_prefix: whether ``module.`` was removed.
        arch / config / meta: present only for checkpoints we wrote.
    """

    state_dict: dict[str, torch.Tensor]
    path: Path
    sha256: str
    container: str | None = None
    stripped_prefix: bool = False
    arch: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.arch is not None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _safe_globals() -> list:
    """The few non-tensor globals official checkpoints pickle, and nothing else.

    numpy scalars and dtypes (MONAI's BraTS weights); ``argparse.Namespace`` and
    ``pathlib.PosixPath`` (the training arguments that Scale-MAE's release file carries):
    plain value containers whose reconstruction runs no code of the file's choosing. The list
    applies to every architecture. Paths are also listed under their ``pathlib`` names, which
    files pickled before Python 3.13 use (3.13 moved the classes to ``pathlib._local``).
    """
    import argparse
    import pathlib

    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list = [(scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [dtypes.Float64DType, dtypes.Float32DType, dtypes.Int64DType]
    return allowed + [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath,
                      (pathlib.PosixPath, "pathlib.PosixPath"), (pathlib.PurePosixPath, "pathlib.PurePosixPath")]


def _load_raw(path: Path, trust: bool) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike: unreadable weights
            raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle an object that is not plain weights ({e.args[0].splitlines()[0]}). "
            "If you trust this file, pass --trust-checkpoint (trust=True)."
        ) from e
    except Exception as e:  # noqa: BLE001 - junk bytes raise anything from the unpickler (IndexError, KeyError...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from e


def _unwrap(raw: Any, path: Path) -> tuple[dict, str | None]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(raw).__name__}")
    for key in CONTAINER_KEYS:
        inner = raw.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner), key
    if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return dict(raw), None
    raise CheckpointError(
        f"{path}: found no weights: top-level keys {sorted(map(str, raw))[:8]}, "
        f"expected tensors directly or under one of {CONTAINER_KEYS}"
    )


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Checkpoint:
    """Read ``path`` into a :class:`Checkpoint` (CPU tensors, float16 storage kept)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    raw = _load_raw(path, trust)
    sd, container = _unwrap(raw, path)
    stripped = bool(sd) and all(k.startswith("module.") for k in sd)
    if stripped:
        sd = {k[len("module."):]: v for k, v in sd.items()}
    ckpt = Checkpoint(sd, path, sha256_file(path), container, stripped)
    if isinstance(raw, Mapping) and raw.get("format") == OUR_FORMAT:
        ckpt.arch = str(raw["arch"])
        ckpt.config = dict(raw.get("config", {}))
        ckpt.meta = dict(raw.get("meta", {}))
    return ckpt


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    arch: str,
    config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    half: bool = False,
    extra: Mapping[str, Any] | None = None,
    omit: tuple[str, ...] = (),
) -> Path:
    """Write our format atomically: weights (optionally float16), arch, full config, metadata.

    ``omit``: buffers the architecture rebuilds identically (listed in ``meta["omitted_buffers"]``
    and restored from a freshly built network on load), to keep shipped files small.
    """
    from imagingflows.models.atomic import atomic_path

    sd = {k: _compact(v.detach().cpu(), half) for k, v in model.state_dict().items() if k not in omit}
    meta = dict(meta or {})
    if omit:
        meta["omitted_buffers"] = sorted(omit)
    obj = {"format": OUR_FORMAT, "arch": arch, "config": dict(config), "meta": meta, "state_dict": sd}
    obj.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _compact(t: torch.Tensor, half: bool) -> torch.Tensor:
    """float16 for weights, int16 for index buffers whose values fit (``load_state_dict`` upcasts)."""
    if not half:
        return t
    if t.is_floating_point():
        return t.half()
    if t.dtype == torch.int64 and t.numel() and -32768 <= int(t.min()) and int(t.max()) <= 32767:
        return t.to(torch.int16)
    return t


def key_diff(model_sd: Mapping[str, torch.Tensor], ckpt_sd: Mapping[str, torch.Tensor]) -> str:
    """A readable diff of missing, unexpected and shape-mismatched keys ('' if they fit)."""
    missing = sorted(set(model_sd) - set(ckpt_sd))
    unexpected = sorted(set(ckpt_sd) - set(model_sd))
    shapes = sorted(
        k for k in set(model_sd) & set(ckpt_sd) if tuple(model_sd[k].shape) != tuple(ckpt_sd[k].shape)
    )
    lines: list[str] = []

    def block(title: str, keys: list[str], fmt) -> None:
        if keys:
            lines.append(f"{title} ({len(keys)}):")
            lines.extend(f"  {fmt(k)}" for k in keys[:15])
            if len(keys) > 15:
                lines.append(f"  ... and {len(keys) - 15} more")

    block("missing in checkpoint", missing, lambda k: f"{k} {tuple(model_sd[k].shape)}")
    block("unexpected in checkpoint", unexpected, lambda k: f"{k} {tuple(ckpt_sd[k].shape)}")
    block(
        "shape mismatch (model vs checkpoint)",
        shapes,
        lambda k: f"{k}: {tuple(model_sd[k].shape)} vs {tuple(ckpt_sd[k].shape)}",
    )
    return "\n".join(lines)


def load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``sd`` into ``model`` only if every key and shape fits; else raise with the diff."""
    diff = key_diff(model.state_dict(), sd)
    if diff:
        raise CheckpointError(f"{source}: weights do not fit the model\n{diff}")
    model.load_state_dict(sd, strict=True)  # copies (and upcasts float16 storage) in place


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, half: bool = True,
                      drop_meta: tuple[str, ...] = ("train_state",)) -> Path:
    """Copy one of our checkpoints without training state (optimizer...), optionally as float16."""
    from imagingflows.models.backend import build_model

    ckpt = read_checkpoint(src)
    if not ckpt.ours:
        raise CheckpointError(f"{src}: only checkpoints written by imagingflows can be exported")
    net, spec, config = build_model(ckpt)
    meta = {k: v for k, v in ckpt.meta.items() if k not in drop_meta}
    meta["exported_from_sha256"] = ckpt.sha256
    omit = tuple(k for k, _ in net.named_buffers() if spec.is_derived_buffer(k)) if half else ()
    return save_checkpoint(dst, net, arch=spec.name, config=config, meta=meta, half=half, omit=omit)
