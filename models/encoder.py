"""Run a ViT encoder with a GSD scale (Scale-MAE) on a batch of tiles: tokens out, in float32."""

from __future__ import annotations

import torch

from imagingflows.models.sliding_window import _AUTOCAST

#: the encoder method the engines run (tokens, not the pooled class token of ``forward``)
METHOD = "forward_features"


def encode(lm, x: torch.Tensor, res: torch.Tensor, precision: str = "fp32", engine: str = "eager") -> torch.Tensor:
    """``x (B, C, H, W)`` normalised tiles, ``res (B,)`` -> tokens ``(B, 1 + N, D)`` float32 on the CPU
    (class token first, then the ``N = H/p * W/p`` patch tokens in row-major order, after the final norm).

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` autocast (``auto`` must be resolved before).
    ``engine``: one of :data:`imagingflows.models.engines.CONCRETE` (resolved before, e.g. by ``choose``).
    """
    from imagingflows.models.engines import engine_module

    dtype = _AUTOCAST.get(precision)
    device = lm.device
    run = engine_module(lm.module, engine, method=METHOD) if engine != "eager" else lm.module.forward_features
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
        tokens = run(x.to(device), res.to(device))
    return tokens.float().cpu()


def measurement_inputs(channels: int, tile: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What an engine is measured on: ``(batch, channels, tile, tile)`` standardised tiles (zero mean, unit
    std, as the pipelines feed them) and ``res (batch,)`` of 1.0."""
    from imagingflows.models.engines import measure_input

    tiles = torch.cat([measure_input(channels, tile, seed=i) for i in range(batch)])
    return (tiles - 0.5) / 0.25, torch.ones(batch)
