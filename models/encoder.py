"""Run a ViT encoder with a GSD scale (Scale-MAE) on a batch of tiles: tokens out, in float32."""

from __future__ import annotations

import torch

from imagingflows.models.sliding_window import _AUTOCAST


def encode(lm, x: torch.Tensor, res: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``x (B, C, H, W)`` normalised tiles, ``res (B,)`` -> tokens ``(B, 1 + N, D)`` float32 on the CPU
    (class token first, then the ``N = H/p * W/p`` patch tokens in row-major order, after the final norm).

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` autocast (``auto`` must be resolved before).
    """
    dtype = _AUTOCAST.get(precision)
    device = lm.device
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
        tokens = lm.module.forward_features(x.to(device), res.to(device))
    return tokens.float().cpu()
