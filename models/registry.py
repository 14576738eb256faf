"""Model registry: one explicit list of architectures, looked up by name.

Each architecture file (``swin_unetr.py``, later ``nafnet.py`` ...) defines one
:class:`ModelSpec`; :data:`REGISTRY` lists them. Nothing is discovered by
scanning folders, and heavy imports stay inside each spec's ``build``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping


@dataclass(frozen=True)
class Agreement:
    """How close an engine's (or precision's) output must be to the eager float32 output of the same input.

    Kinds: ``psnr_db`` (PSNR in dB, peak 1, both outputs clipped to [0, 1] as the writers clip them; equal
    outputs read 200, not infinity, so the value stays JSON), ``cosine`` (cosine similarity of the
    flattened outputs), ``fraction_equal`` (share of equal labels after argmax over channels),
    ``labels_equal`` (share of voxels whose thresholded multi-label outputs, logit > 0 in every channel,
    are the same: sigmoid networks such as the BraTS regions). The value must be ``>= threshold``.
    """

    kind: Literal["psnr_db", "cosine", "fraction_equal", "labels_equal"]
    threshold: float

    def measure(self, reference: Any, candidate: Any) -> float:
        """The rule's value for two tensors of one shape (``(B, C, ...)``)."""
        import torch

        ref, got = reference.detach().float(), candidate.detach().float()
        if ref.shape != got.shape:
            raise ValueError(f"agreement: outputs of shapes {tuple(ref.shape)} and {tuple(got.shape)} differ")
        if self.kind == "psnr_db":
            mse = float((ref.clamp(0, 1) - got.clamp(0, 1)).double().pow(2).mean())
            return 200.0 if mse <= 1e-20 else min(200.0, -10.0 * math.log10(mse))
        if self.kind == "cosine":
            return float(torch.nn.functional.cosine_similarity(ref.flatten()[None].double(),
                                                               got.flatten()[None].double()))
        if self.kind == "fraction_equal":
            return float((ref.argmax(1) == got.argmax(1)).double().mean())
        if self.kind == "labels_equal":
            return float(((ref > 0) == (got > 0)).all(1).double().mean())
        raise ValueError(f"unknown agreement kind {self.kind!r}")

    def holds(self, value: float) -> bool:
        return value >= self.threshold

    def describe(self) -> str:
        return f"{self.kind} >= {self.threshold:g}"


@dataclass(frozen=True)
class ModelSpec:
    """What the backend needs to know about one architecture.

    Attributes:
        name: registry name (``"swin_unetr"``).
        build: ``build(**config) -> nn.Module``.
        default_config: constructor arguments used when neither the checkpoint nor the user says.
        detect_keys: state-dict keys that only this architecture has (used for detection).
        hparams_from_state_dict: ``sd -> config`` for everything keys and shapes can tell.
        foreign_defaults: config for a checkpoint we did not write (the variant its
            official release used), e.g. ``{"patch_merging": "legacy"}``.
        variant_keys: config keys that select a behaviour the weights alone cannot reveal;
            recorded in checkpoints we write and in ``run.json``.
        spatial_dims: 2 or 3.
        size_multiple: every spatial input size must be a multiple of this.
        min_size: smallest spatial size the network accepts.
        description: one line for ``run-flow models``.
        derived_buffers: buffers (e.g. relative position indices) that need not be stored.
        foreign_keys: ``sd -> sd`` applied to a checkpoint we did not write before the strict
            load, for release files holding more than the network (Scale-MAE's pretraining
            decoder); None keeps every key.
        in_channels: ``config -> channels`` the network takes (None: unknown).
        tile_grid: ``config -> n``: the network is translation-equivariant only for shifts that
            are multiples of ``n`` and pads its input to multiples of ``n`` itself (NAFNet
            ``2 ** levels``, HAT's window); tiles start on this grid. None: 1.
        upscale: ``config -> factor`` of output over input size (HAT's ``upscale``). None: 1.
        whole_image_pooling: the network has operators that pool over the whole input
            (NAFNet's channel attention), so tiles need the measuring passes of
            :mod:`imagingflows.models.global_pool` to agree with a whole-image forward.
        half_precision_safe: bf16/fp16 autocast keeps the outputs usable (checked by its tests).
        value_range: the input range the network was trained on.
        agreement: how close another inference engine's output must be to the eager float32 output
            (:mod:`imagingflows.models.engines` measures it; ``auto`` only picks an engine that holds it).
            None: no rule, so ``auto`` keeps eager.
        engine_candidates: the engines ``auto`` measures (None: every one); an explicitly requested
            engine runs anyway.
    """

    name: str
    build: Callable[..., Any]
    default_config: Mapping[str, Any]
    detect_keys: tuple[str, ...]
    hparams_from_state_dict: Callable[[Mapping[str, Any]], dict]
    foreign_defaults: Mapping[str, Any] = field(default_factory=dict)
    variant_keys: tuple[str, ...] = ()
    spatial_dims: int = 2
    size_multiple: int = 1
    min_size: int = 1
    description: str = ""
    derived_buffers: tuple[str, ...] = ()  # name suffixes of buffers the constructor rebuilds exactly
    foreign_keys: Callable[[Mapping[str, Any]], dict] | None = None
    in_channels: Callable[[Mapping[str, Any]], int] | None = None
    tile_grid: Callable[[Mapping[str, Any]], int] | None = None
    upscale: Callable[[Mapping[str, Any]], int] | None = None
    whole_image_pooling: bool = False
    half_precision_safe: bool = True
    value_range: tuple[float, float] = (0.0, 1.0)
    agreement: Agreement | None = None
    engine_candidates: tuple[str, ...] | None = None

    def channels_of(self, config: Mapping[str, Any]) -> int | None:
        return int(self.in_channels(config)) if self.in_channels else None

    def grid_of(self, config: Mapping[str, Any]) -> int:
        return int(self.tile_grid(config)) if self.tile_grid else 1

    def scale_of(self, config: Mapping[str, Any]) -> int:
        return int(self.upscale(config)) if self.upscale else 1

    def is_derived_buffer(self, key: str) -> bool:
        return any(key.endswith(suffix) for suffix in self.derived_buffers)

    def detect(self, state_dict: Mapping[str, Any]) -> bool:
        return all(k in state_dict for k in self.detect_keys)


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class Registry:
    """Name -> :class:`ModelSpec`, with "did you mean" errors and strict detection."""

    def __init__(self, specs: list[ModelSpec] | None = None) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs or []:
            self.add(spec)

    def add(self, spec: ModelSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"model {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str) -> ModelSpec:
        if name in self._specs:
            return self._specs[name]
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Available: {', '.join(self.names())}")

    def detect(self, state_dict: Mapping[str, Any]) -> ModelSpec:
        """The one spec whose ``detect_keys`` are all present; errors on zero or several."""
        hits = [s for s in self._specs.values() if s.detect(state_dict)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UnknownModelError(
                "checkpoint matches several architectures: "
                + ", ".join(s.name for s in hits) + "; pass arch= (--arch) to choose"
            )
        lines = []
        for spec in self._specs.values():
            missing = [k for k in spec.detect_keys if k not in state_dict]
            lines.append(f"  {spec.name}: missing {', '.join(missing[:4])}")
        sample = ", ".join(list(state_dict)[:5])
        raise UnknownModelError(
            "checkpoint matches no known architecture (keys start: " + sample + ")\n" + "\n".join(lines)
        )


def _default_specs() -> list[ModelSpec]:
    from imagingflows.models import hat, heads, jdd, nafnet, scale_mae, swin_unetr

    return [swin_unetr.SPEC, nafnet.SPEC, hat.SPEC, scale_mae.SPEC, heads.LINEAR_SPEC, heads.KNN_SPEC, jdd.SPEC]


REGISTRY = Registry(_default_specs())


def get_spec(name: str) -> ModelSpec:
    return REGISTRY.get(name)


def list_models() -> list[str]:
    return REGISTRY.names()
