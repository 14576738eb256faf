"""JDD: our small joint demosaick-and-denoise network for Bayer mosaics, with a noise-level input.

Design (ours; the ideas are Gharbi et al. 2016's packing and noise input, and a U-Net's two scales):

* the mosaic, brought to the network's own **RGGB** phase by a one-pixel window shift (any of the four
  patterns; :func:`demosaic_jdd`), is packed into its four 2 x 2 sites, ``(B, 4, H/2, W/2)``, and a
  noise-level map (the noise standard deviation at each site, on the [0, 1] scale) is added as a
  fifth channel, so one network serves every level from clean to heavily noisy;
* a two-scale residual U-Net (``entry`` -> ``enc`` blocks at half resolution, ``down`` -> ``mid``
  blocks at quarter resolution -> ``up`` + skip -> ``dec`` blocks -> ``exit``) predicts 12 channels
  that a pixel shuffle turns into a full-resolution RGB residual;
* the residual is added to a bilinear demosaic of the (noisy) mosaic, computed inside the forward
  pass with fixed kernels: the network starts from a sensible image and learns what bilinear
  interpolation gets wrong (zipper, false colour) and the noise.

The convolutions are zero-padded; :func:`demosaic_jdd` reads every tile with :attr:`JDDNet.halo` pixels of
context (real pixels inside the image, the whole-sample CFA mirror beyond it,
:func:`imagingflows.models.demosaic_tiling.mirror_index`), which exceeds the receptive field, so tiles
agree with one whole-image pass to float rounding and memory is bounded by a tile.

Shapes: :meth:`JDDNet.forward` takes ``(B, 2, H, W)`` (channel 0: the RGGB-phase mosaic, channel 1:
the noise std per pixel), H and W multiples of 4, and returns ``(B, 3, H, W)``, not clipped.
:func:`demosaic_jdd` takes the classical methods' ``(B, 1, H, W)`` mosaic of any Bayer pattern.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagingflows.models.cfa import masks, pattern_of_crop
from imagingflows.models.demosaic_tiling import check_mosaic, mirror_index, tile_steps
from imagingflows.models.registry import Agreement, ModelSpec

NAME = "jdd"
NATIVE_PATTERN = "RGGB"
MULTIPLE = 4  # packing (2) times the one down-sampling (2)
DETECT_KEYS = ("entry.weight", "down.weight", "up.weight", "exit.weight")


class ResBlock(nn.Module):
    """``x + conv(relu(conv(x)))``, 3 x 3, ``channels`` wide."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def bilinear_rggb(masked: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaic of a masked RGGB mosaic ``(B, 3, H, W)`` (zeros where a colour is not sampled)
    with fixed 3 x 3 kernels and zero padding: ``(B, 3, H, W)``. Inside the network only (its border
    rows are context, cropped away)."""
    rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=masked.dtype,
                      device=masked.device) / 4
    g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]], dtype=masked.dtype,
                     device=masked.device) / 4
    kernels = torch.stack([rb, g, rb])[:, None]  # (3, 1, 3, 3), one per channel
    return F.conv2d(masked, kernels, padding=1, groups=3)


class JDDNet(nn.Module):
    """The network (see the module docstring).

    Args:
        width: channels at half resolution (twice this at quarter resolution).
        enc_blocks: residual blocks before the down-sampling and (as many) after the up-sampling.
        mid_blocks: residual blocks at quarter resolution.
    """

    def __init__(self, width: int = 32, enc_blocks: int = 2, mid_blocks: int = 4) -> None:
        super().__init__()
        self.width, self.enc_blocks, self.mid_blocks = width, enc_blocks, mid_blocks
        self.entry = nn.Conv2d(5, width, 3, padding=1)
        self.enc = nn.Sequential(*[ResBlock(width) for _ in range(enc_blocks)])
        self.down = nn.Conv2d(width, 2 * width, 2, stride=2)
        self.mid = nn.Sequential(*[ResBlock(2 * width) for _ in range(mid_blocks)])
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(*[ResBlock(width) for _ in range(enc_blocks)])
        self.exit = nn.Conv2d(width, 12, 3, padding=1)
        nn.init.zeros_(self.exit.weight)  # a fresh network is the bilinear demosaic: training starts there
        nn.init.zeros_(self.exit.bias)

    @property
    def receptive_radius(self) -> int:
        """Full-resolution pixels one output pixel reaches on each side (an upper bound)."""
        # half-resolution pixels: entry, down, up and exit 1 each, 2 per encoder/decoder block, 2 per middle
        # block (a quarter-resolution pixel is two); then x 2 to full resolution, + packing and bilinear
        half = 4 + 4 * self.enc_blocks + 4 * self.mid_blocks
        return 2 * half + 2

    @property
    def halo(self) -> int:
        """Context :func:`demosaic_jdd` reads on each side: above the receptive radius, a multiple of 4."""
        return _round_up(self.receptive_radius + 2, MULTIPLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H, W)``: RGGB-phase mosaic and noise std map (H, W multiples of 4) -> ``(B, 3, H, W)``."""
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise ValueError(f"{NAME}: expected (B, 2, H, W) with H and W multiples of {MULTIPLE}, "
                             f"got {tuple(x.shape)}")
        mosaic, noise = x[:, :1], x[:, 1:]
        base = bilinear_rggb(mosaic * masks(NATIVE_PATTERN, x.shape[-2], x.shape[-1], dtype=x.dtype,
                                            device=x.device))
        packed = F.pixel_unshuffle(mosaic, 2)  # (B, 4, H/2, W/2): R, G (red row), G (blue row), B
        level = F.avg_pool2d(noise, 2)
        skip = self.enc(F.relu(self.entry(torch.cat([packed, level], 1))))
        deep = self.mid(F.relu(self.down(skip)))
        y = self.dec(F.relu(self.up(deep)) + skip)
        return base + F.pixel_shuffle(self.exit(y), 2)


# ----------------------------------------------------------------------------- noise level

def estimate_noise(mosaic: torch.Tensor, flat_share: float = 0.3) -> torch.Tensor:
    """``(B,)`` noise standard deviation of ``(B, 1, H, W)`` mosaics (any Bayer pattern), on their scale.

    Donoho's robust estimator, made texture-robust: each of the four CFA sites' planes gets a one-level
    Haar transform; the diagonal detail ``HH`` is kept where the local horizontal + vertical detail
    (``|LH| + |HL|``, 3 x 3 mean; independent of ``HH``'s noise) is in its lowest ``flat_share``, and
    ``median |HH| / 0.6745`` there (the MAD of a Gaussian) is the site's level; the median of the four
    sites is returned. On scikit-image photographs it reads 0-0.006 when clean and within 7% of the
    true level from 0.02 to 0.06. Pass the level when it is known.
    """
    b, _, h, w = mosaic.shape
    planes = F.pixel_unshuffle(mosaic[..., : h - h % 4, : w - w % 4].float(), 2)  # (B, 4, H/2, W/2)
    a, c = planes[..., 0::2, 0::2], planes[..., 0::2, 1::2]
    d, e = planes[..., 1::2, 0::2], planes[..., 1::2, 1::2]
    diagonal = ((a - c - d + e) / 2).abs().flatten(2)
    activity = F.avg_pool2d(((a + c - d - e) / 2).abs() + ((a - c + d - e) / 2).abs(), 3, 1, 1,
                            count_include_pad=False).flatten(2)
    stride = max(1, diagonal.shape[-1] // 4_000_000)  # a strided sample is as good on big frames
    diagonal, activity = diagonal[..., ::stride], activity[..., ::stride]
    levels = torch.zeros(b, 4)
    for i in range(b):
        for k in range(4):
            flat = activity[i, k] <= activity[i, k].quantile(flat_share)
            levels[i, k] = diagonal[i, k][flat].median() / 0.6745
    return levels.median(dim=-1).values.to(device=mosaic.device, dtype=mosaic.dtype)


def noise_map(mosaic: torch.Tensor, noise) -> torch.Tensor:
    """``(B, 1, H, W)`` noise std per pixel for the network.

    ``noise``: None (estimated, :func:`estimate_noise`), a level (float, or ``(B,)`` tensor: Gaussian),
    or ``(a, b)`` Poisson-Gaussian parameters, variance ``a * x + b`` at signal ``x`` (read from the
    mosaic itself, clipped at 0).
    """
    b = mosaic.shape[0]
    if noise is None:
        noise = estimate_noise(mosaic)
    if isinstance(noise, (tuple, list)):
        shot, read = (float(v) for v in noise)
        return torch.sqrt((shot * mosaic.clamp(min=0) + read).clamp(min=0))
    level = torch.as_tensor(noise, dtype=mosaic.dtype, device=mosaic.device).reshape(-1)
    if level.numel() not in (1, b):
        raise ValueError(f"{NAME}: noise must be one level or one per image ({b}), got {level.numel()}")
    if (level < 0).any():
        raise ValueError(f"{NAME}: a noise level cannot be negative, got {level.tolist()}")
    return level.expand(b).view(b, 1, 1, 1).expand_as(mosaic)


# ----------------------------------------------------------------------------- any pattern, any size

def native_shift(pattern: str) -> tuple[int, int]:
    """``(dy, dx)``: the one-pixel offset at which ``pattern`` reads as the network's RGGB."""
    return next((dy, dx) for dy in range(2) for dx in range(2) if pattern_of_crop(pattern, dy, dx) == NATIVE_PATTERN)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def demosaic_jdd(mosaic: torch.Tensor, pattern: str, *, net: JDDNet, tile: int | None = 1024,
                 noise=None, run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Demosaick and denoise ``(B, 1, H, W)`` (any Bayer pattern, H and W even) -> ``(B, 3, H, W)``.

    Each tile's core (``tile - 2 halo`` pixels rounded down to a multiple of 4, ``halo = net.halo``: 60
    at the default depth; the whole image when ``tile`` is None) is read with ``halo + dy`` rows of
    context above and the rest below, so the window starts on an RGGB block, its sides rounded up to
    multiples of 4; mirrored beyond the image (CFA parity kept). ``noise``: see :func:`noise_map`
    (estimated once per image, not per tile). Runs in the network's dtype on the
    mosaic's device, without gradients; returns the mosaic's dtype. ``run``: what runs ``net`` on each
    window (an inference engine, :func:`imagingflows.models.engines.engine_module`); default ``net``.
    """
    pattern = check_mosaic(mosaic, pattern, NAME)
    b, _, h, w = mosaic.shape
    halo = net.halo
    # cores on a grid of 4: the network (packing, then one stride-2 level) is shift-equivariant only by 4
    step_h, step_w = tile_steps(tile, halo, (h, w), NAME, grid=MULTIPLE)
    levels = noise_map(mosaic, estimate_noise(mosaic) if noise is None else noise)
    dy, dx = native_shift(pattern)
    param = next(net.parameters())
    out = mosaic.new_empty(b, 3, h, w)
    with torch.no_grad():
        for r0 in range(0, h, step_h):
            r1 = min(h, r0 + step_h)
            rows = mirror_index(r0 - halo - dy, r0 - halo - dy + _round_up(r1 - r0 + 2 * halo, MULTIPLE), h,
                                mosaic.device)
            for c0 in range(0, w, step_w):
                c1 = min(w, c0 + step_w)
                cols = mirror_index(c0 - halo - dx, c0 - halo - dx + _round_up(c1 - c0 + 2 * halo, MULTIPLE), w,
                                    mosaic.device)
                window = torch.cat([t.index_select(-2, rows).index_select(-1, cols) for t in (mosaic, levels)], 1)
                y = (run or net)(window.to(param.dtype))
                top, left = halo + dy, halo + dx
                out[:, :, r0:r1, c0:c1] = y[..., top:top + r1 - r0, left:left + c1 - c0].to(mosaic.dtype)
    return out


# ----------------------------------------------------------------------------- registry

def build(width: int = 32, enc_blocks: int = 2, mid_blocks: int = 4) -> JDDNet:
    return JDDNet(width=width, enc_blocks=enc_blocks, mid_blocks=mid_blocks)


def _count(sd: Mapping, pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def hparams_from_state_dict(sd: Mapping) -> dict:
    missing = [k for k in DETECT_KEYS if k not in sd]
    if missing:
        raise ValueError(f"weights do not fit {NAME}: missing {', '.join(missing)}")
    return {"width": int(sd["entry.weight"].shape[0]),
            "enc_blocks": _count(sd, r"enc\.(\d+)\.conv1\.weight"),
            "mid_blocks": _count(sd, r"mid\.(\d+)\.conv1\.weight")}


SPEC = ModelSpec(
    name=NAME,
    build=build,
    default_config={"width": 32, "enc_blocks": 2, "mid_blocks": 4},
    detect_keys=DETECT_KEYS,
    hparams_from_state_dict=hparams_from_state_dict,
    spatial_dims=2,
    size_multiple=MULTIPLE,
    in_channels=lambda c: 2,
    tile_grid=lambda c: MULTIPLE,
    description="JDD, our joint demosaick-denoise net for Bayer mosaics (any pattern) with a noise-level input",
    agreement=Agreement("psnr_db", 50.0),  # issue 13: demosaicking engines within 50 dB of eager float32
)

