"""HAT, Hybrid Attention Transformer (Chen et al. 2023, "Activating More Pixels in Image
Super-Resolution Transformer", arXiv:2205.04437), classical SR with the pixel-shuffle upsampler.

Our own implementation with the official state-dict layout, so released checkpoints (HAT,
HAT-S, HAT-L; x2/x3/x4; ``{"params_ema": ...}`` files) load strictly.

Upstream (Apache-2.0): XPixelGroup/HAT @ 1638a9a822581657811867bf670717f8371fc3e5,
``hat/archs/hat_arch.py`` (``HAT``, ``RHAG``, ``AttenBlocks``, ``HAB``, ``OCAB``, ``CAB``,
``WindowAttention``); test-time padding from ``hat/models/hat_model.py``
(``HATModel.pre_process`` / ``post_process``).

Differences in form, not in numbers: features stay channels-last ``(B, H, W, C)`` between
blocks instead of token sequences ``(B, H*W, C)``; the shifted-window mask is built without a
Python loop. Padding: the upstream network needs H and W to be multiples of ``window_size`` and
its test wrapper reflect-pads right/bottom and crops the output; here :meth:`HAT.forward` does
both, so any input size works and the result equals the official test path.

Not supported (absent from every released model): ``ape`` (absolute position embedding),
upsamplers other than ``'pixelshuffle'``, ``patch_size`` other than 1. ``img_size`` is not a
parameter: upstream it only names the training patch size, which changes nothing as long as it
exceeds ``window_size`` (true for every release, ``img_size=64``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagingflows.models.registry import Agreement, ModelSpec

NUM_FEAT = 64  # reconstruction width, fixed in the upstream code
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, subtracted when in_chans == 3 (else 0)


# ----------------------------------------------------------------------------- helpers

def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * H/ws * W/ws, ws*ws, C)``, windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws*ws, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention with a relative-position bias (and optional per-window mask).

    Args:
        q: ``(Bw, heads, Nq, d)``; k, v: ``(Bw, heads, Nk, d)``, ``Bw = B * nW``.
        bias: ``(heads, Nq, Nk)``; mask: ``(nW, Nq, Nk)`` of 0 / -100, or None.

    Returns:
        ``(Bw, Nq, heads * d)``.
    """
    attn = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        bw, heads, nq, nk = attn.shape
        attn = (attn.view(-1, mask.shape[0], heads, nq, nk) + mask.unsqueeze(1).unsqueeze(0)).view(bw, heads, nq, nk)
    out = attn.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def relative_position_index_sa(ws: int) -> torch.Tensor:
    """``(ws*ws, ws*ws)`` int64: row into the ``(2ws-1)^2`` bias table for each query/key pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # 2, n
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # n, n, 2 (dy, dx) >= 0
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def relative_position_index_oca(ws: int, ows: int) -> torch.Tensor:
    """``(ws*ws, ows*ows)`` int64: bias-table row for each (query in a ws window, key in its ows window)."""
    def grid(n: int) -> torch.Tensor:
        return torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")).flatten(1)

    rel = (grid(ows)[:, None, :] - grid(ws)[:, :, None]).permute(1, 2, 0) + (ws - ows + 1)  # nq, nk, 2
    return rel[..., 0] * (ws + ows - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``(nW, ws*ws, ws*ws)``: -100 between pixels that the cyclic shift brought from different regions."""
    def region(n: int) -> torch.Tensor:  # 0 body, 1 last window minus shift, 2 wrapped-around strip
        i = torch.arange(n, device=device)
        return (i >= n - ws).long() + (i >= n - shift).long()

    labels = (region(h)[:, None] * 3 + region(w)[None, :])[None, :, :, None]  # 1, H, W, 1
    lw = window_partition(labels, ws).squeeze(-1)  # nW, ws*ws
    differ = lw[:, None, :] != lw[:, :, None]
    return torch.zeros(differ.shape, dtype=dtype, device=device).masked_fill(differ, -100.0)


def reflect_pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Reflect-pad ``(B, C, H, W)`` right/bottom to multiples of ``m`` (``HATModel.pre_process``).

    Upstream fails when the pad is not smaller than the image; here such tiny inputs are
    reflected repeatedly (and replicated where a side is 1 pixel).
    """
    ph, pw = -x.shape[-2] % m, -x.shape[-1] % m
    while ph or pw:
        h, w = x.shape[-2:]
        sh, sw = min(ph, h - 1), min(pw, w - 1)
        if sh or sw:
            x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        else:
            sh, sw = ph, pw
            x = F.pad(x, (0, sw, 0, sh), mode="replicate")
        ph, pw = ph - sh, pw - sw
    return x


# ----------------------------------------------------------------------------- blocks

class Mlp(nn.Module):
    """``(..., C) -> (..., C)``: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ChannelAttention(nn.Module):
    """RCAN channel attention on ``(B, C, H, W)``: ``x * sigmoid(conv(relu(conv(mean(x)))))``."""

    def __init__(self, c: int, squeeze_factor: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // squeeze_factor, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c // squeeze_factor, c, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block on ``(B, C, H, W)``: conv 3x3 to C/compress_ratio, GELU, conv back, channel attention."""

    def __init__(self, c: int, compress_ratio: int, squeeze_factor: int) -> None:
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(c, c // compress_ratio, 3, 1, 1), nn.GELU(), nn.Conv2d(c // compress_ratio, c, 3, 1, 1),
            ChannelAttention(c, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class WindowAttention(nn.Module):
    """(Shifted-)window self-attention: ``(B*nW, ws*ws, C)`` -> same shape."""

    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool, qk_scale: float | None) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = qk_scale or (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[rpi.view(-1)].view(n, n, -1).permute(2, 0, 1)
        return self.proj(attention(q, k, v, self.scale, bias, mask))


class HAB(nn.Module):
    """Hybrid attention block on ``(B, H, W, C)``; H, W multiples of the window size.

    ``x + W-MSA(norm1 x) + conv_scale * CAB(norm1 x)``, then ``+ MLP(norm2 .)``; odd blocks
    shift the windows by ``ws // 2`` (with the shifted-window mask).
    """

    def __init__(self, dim: int, heads: int, ws: int, shift: int, compress_ratio: int, squeeze_factor: int,
                 conv_scale: float, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None) -> None:
        super().__init__()
        self.ws, self.shift, self.conv_scale = ws, shift, conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads, qkv_bias, qk_scale)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        shortcut = x
        x = self.norm1(x)
        conv_x = self.conv_block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(x, self.ws), rpi, mask if self.shift else None)
        y = window_reverse(y, self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + y + conv_x * self.conv_scale
        return x + self.mlp(self.norm2(x))


class OCAB(nn.Module):
    """Overlapping cross-attention block on ``(B, H, W, C)``.

    Queries from non-overlapping ``ws`` windows; keys/values from ``ows = ws + int(ws * overlap_ratio)``
    windows around them (``unfold`` with zero padding; the zero keys are not masked, as upstream).
    """

    def __init__(self, dim: int, heads: int, ws: int, overlap_ratio: float, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.ows = int(ws * overlap_ratio) + ws
        if (self.ows - ws) % 2:
            raise ValueError(f"window_size {ws} * overlap_ratio {overlap_ratio} must give an even overlap "
                             f"(overlap window {self.ows}); upstream HAT would tile the keys wrongly")
        self.scale = qk_scale or (dim // heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((ws + self.ows - 1) ** 2, heads))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rpi: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, ows, nh, d = self.ws, self.ows, self.heads, c // self.heads
        shortcut = x
        qkv = self.qkv(self.norm1(x))  # B, H, W, 3C
        q = window_partition(qkv[..., :c], ws)  # Bw, ws*ws, C
        kv = F.unfold(qkv[..., c:].permute(0, 3, 1, 2), ows, padding=(ows - ws) // 2, stride=ws)  # B, 2C*ows*ows, nW
        kv = kv.view(b, 2, c, ows * ows, -1).permute(1, 0, 4, 3, 2).reshape(2, -1, ows * ows, c)  # 2, Bw, ows^2, C
        q = q.reshape(q.shape[0], ws * ws, nh, d).transpose(1, 2)
        k, v = (t.reshape(t.shape[0], ows * ows, nh, d).transpose(1, 2) for t in kv)
        bias = self.relative_position_bias_table[rpi.view(-1)].view(ws * ws, ows * ows, -1).permute(2, 0, 1)
        y = window_reverse(attention(q, k, v, self.scale, bias), ws, h, w)
        x = self.proj(y) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """The HABs of one RHAG followed by its OCAB (named as upstream for the state-dict keys)."""

    def __init__(self, blocks: list[HAB], overlap_attn: OCAB) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.overlap_attn = overlap_attn

    def forward(self, x: torch.Tensor, rpi_sa: torch.Tensor, rpi_oca: torch.Tensor, mask: torch.Tensor):
        for blk in self.blocks:
            x = blk(x, rpi_sa, mask)
        return self.overlap_attn(x, rpi_oca)


class RHAG(nn.Module):
    """Residual hybrid attention group on ``(B, H, W, C)``: ``x + conv3x3(blocks(x))``."""

    def __init__(self, residual_group: AttenBlocks, dim: int, resi_connection: str) -> None:
        super().__init__()
        self.residual_group = residual_group
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()

    def forward(self, x, rpi_sa, rpi_oca, mask):
        y = self.residual_group(x, rpi_sa, rpi_oca, mask).permute(0, 3, 1, 2).contiguous()
        return self.conv(y).permute(0, 2, 3, 1) + x


class PatchNorm(nn.Module):
    """Upstream ``PatchEmbed`` with patch size 1: only a LayerNorm over channels of ``(B, H, W, C)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class Upsample(nn.Sequential):
    """``(B, F, H, W) -> (B, F, sH, sW)``: conv + PixelShuffle(2) per factor 2 (s = 2^n), or one PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        if scale >= 1 and scale & (scale - 1) == 0:
            layers = []
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers = [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported by HAT: use 2, 3, 4 or 8")
        super().__init__(*layers)


# ----------------------------------------------------------------------------- network

class HAT(nn.Module):
    """HAT for classical SR: ``(B, in_chans, H, W)`` in [0, 1] -> ``(B, in_chans, H*upscale, W*upscale)``.

    Any H, W: the input is reflect-padded right/bottom to a multiple of ``window_size`` and the
    output cropped (the official test path). Argument names and defaults follow upstream
    (``HAT_SRx4.yml``: embed_dim 180, six RHAGs of 6 HABs, 6 heads, window 16, mlp_ratio 2).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        window_size: int = 16,
        compress_ratio: int = 3,
        squeeze_factor: int = 30,
        conv_scale: float = 0.01,
        overlap_ratio: float = 0.5,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        upscale: int = 4,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
        patch_norm: bool = True,
    ) -> None:
        super().__init__()
        if upsampler != "pixelshuffle":
            raise ValueError(f"HAT upsampler {upsampler!r} is not supported; only 'pixelshuffle' (classical SR)")
        if resi_connection not in ("1conv", "identity"):
            raise ValueError(f"resi_connection must be '1conv' or 'identity', got {resi_connection!r}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        if any(embed_dim % h for h in num_heads):
            raise ValueError(f"embed_dim {embed_dim} must be divisible by every num_heads {list(num_heads)}")
        if embed_dim // compress_ratio < 1 or embed_dim // squeeze_factor < 1:
            raise ValueError(f"embed_dim {embed_dim} is smaller than compress_ratio {compress_ratio} "
                             f"or squeeze_factor {squeeze_factor}")
        self.window_size, self.upscale, self.img_range = window_size, upscale, img_range
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)  # a plain attribute upstream: never in the weights
        ows = int(window_size * overlap_ratio) + window_size
        self.register_buffer("relative_position_index_SA", relative_position_index_sa(window_size))
        self.register_buffer("relative_position_index_OCA", relative_position_index_oca(window_size, ows))

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchNorm(embed_dim) if patch_norm else nn.Identity()
        common = dict(qkv_bias=qkv_bias, qk_scale=qk_scale, mlp_ratio=mlp_ratio)
        self.layers = nn.ModuleList(
            RHAG(
                AttenBlocks(
                    [HAB(embed_dim, heads, window_size, 0 if i % 2 == 0 else window_size // 2, compress_ratio,
                         squeeze_factor, conv_scale, **common) for i in range(depth)],
                    OCAB(embed_dim, heads, window_size, overlap_ratio, **common),
                ),
                embed_dim, resi_connection,
            )
            for depth, heads in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, NUM_FEAT)
        self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Upstream init: Linear weights and bias tables ~ N(0, 0.02) truncated at +-2, Linear biases 0."""
        for name, p in self.named_parameters():
            if name.endswith("relative_position_bias_table"):
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> same shape; H, W multiples of ``window_size``."""
        h, w = x.shape[-2:]
        mask = shifted_window_mask(h, w, self.window_size, self.window_size // 2, x.dtype, x.device)
        y = self.patch_embed(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            y = layer(y, self.relative_position_index_SA, self.relative_position_index_OCA, mask)
        return self.norm(y).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = reflect_pad_to_multiple(x, self.window_size)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + mean
        return x[:, :, : h * self.upscale, : w * self.upscale]


def build(**config: Any) -> HAT:
    """A :class:`HAT` from upstream constructor arguments (lists accepted for sequences)."""
    return HAT(**config)


# ----------------------------------------------------------------------------- hparams

DETECT_KEYS = (
    "conv_first.weight",
    "layers.0.residual_group.blocks.0.conv_block.cab.0.weight",
    "layers.0.residual_group.overlap_attn.relative_position_bias_table",
)


def _ratio(num: int, den: int) -> float:
    """``r`` with ``int(den * r) == num`` (as upstream computes hidden sizes), preferring ``num / den``."""
    r = num / den
    while int(den * r) < num:
        r = math.nextafter(r, math.inf)
    return int(r) if r == int(r) else r


def _divisor(dim: int, hidden: int, what: str) -> int:
    """``f`` with ``dim // f == hidden`` (compress_ratio / squeeze_factor)."""
    if hidden < 1 or dim // (dim // hidden) != hidden:
        raise ValueError(f"cannot recover {what}: hidden width {hidden} is not dim {dim} // an integer")
    return dim // hidden


def _need(sd: Mapping[str, Any], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"cannot recover HAT {what}: key {key!r} is missing from the state dict")
    return sd[key]


def hparams_from_state_dict(sd: Mapping[str, Any]) -> dict:
    """Constructor arguments from key names and shapes.

    Not in the weights, so the upstream value of every released model is used: ``conv_scale``
    0.01, ``img_range`` 1.0, ``qk_scale`` None (head_dim ** -0.5).
    """
    missing = [k for k in DETECT_KEYS if k not in sd]
    if missing:
        others = sorted(k for k in sd if not re.match(r"(conv_first|patch_embed|layers|norm|conv_after_body|"
                                                        r"conv_before_upsample|upsample|conv_last)\.|relative_pos", k))
        raise ValueError(
            f"weights do not fit hat: missing in checkpoint: {', '.join(missing)}; "
            f"unexpected in checkpoint ({len(others)}): {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}"
        )
    if "absolute_pos_embed" in sd:
        raise ValueError("HAT with an absolute position embedding (ape=True) is not supported")
    first = _need(sd, "conv_first.weight", "embed_dim/in_chans")  # (embed_dim, in_chans, 3, 3)
    dim = int(first.shape[0])
    n_layers = len({m.group(1) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))})
    if n_layers == 0:
        raise ValueError("cannot recover HAT depths: no 'layers.N.residual_group.*' keys")
    depths, heads = [], []
    for i in range(n_layers):
        rg = f"layers.{i}.residual_group"
        depths.append(len({m.group(1) for k in sd if (m := re.match(rf"{re.escape(rg)}\.blocks\.(\d+)\.", k))}))
        heads.append(int(_need(sd, f"{rg}.overlap_attn.relative_position_bias_table", "num_heads").shape[1]))
    blk = "layers.0.residual_group.blocks.0"
    ws = (math.isqrt(int(_need(sd, f"{blk}.attn.relative_position_bias_table", "window_size").shape[0])) + 1) // 2
    ows = math.isqrt(int(sd["layers.0.residual_group.overlap_attn.relative_position_bias_table"].shape[0])) - ws + 1
    if "relative_position_index_SA" in sd and tuple(sd["relative_position_index_SA"].shape) != (ws * ws, ws * ws):
        raise ValueError(f"relative_position_index_SA shape {tuple(sd['relative_position_index_SA'].shape)} "
                         f"does not fit window_size {ws} read from the bias table")
    cab_hidden = int(_need(sd, f"{blk}.conv_block.cab.0.weight", "compress_ratio").shape[0])
    ca_hidden = int(_need(sd, f"{blk}.conv_block.cab.3.attention.1.weight", "squeeze_factor").shape[0])
    mlp_hidden = int(_need(sd, f"{blk}.mlp.fc1.weight", "mlp_ratio").shape[0])
    if "conv_before_upsample.0.weight" not in sd:
        raise ValueError("HAT checkpoint without 'conv_before_upsample.0.weight': only the 'pixelshuffle' "
                         "upsampler (classical SR) is supported")
    ups = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"upsample\.(\d+)\.weight", k)))
    out = int(_need(sd, "upsample.0.weight", "upscale").shape[0])
    num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
    if out == 9 * num_feat and len(ups) == 1:
        upscale = 3
    elif out == 4 * num_feat:
        upscale = 2 ** len(ups)
    else:
        raise ValueError(f"cannot recover HAT upscale from upsample.0.weight {tuple(sd['upsample.0.weight'].shape)}")
    return {
        "in_chans": int(first.shape[1]),
        "embed_dim": dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": ws,
        "compress_ratio": _divisor(dim, cab_hidden, "compress_ratio"),
        "squeeze_factor": _divisor(dim, ca_hidden, "squeeze_factor"),
        "overlap_ratio": _ratio(ows - ws, ws),
        "mlp_ratio": _ratio(mlp_hidden, dim),
        "qkv_bias": f"{blk}.attn.qkv.bias" in sd,
        "upscale": upscale,
        "upsampler": "pixelshuffle",
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
        "patch_norm": "patch_embed.norm.weight" in sd,
        # not stored in the weights: upstream defaults, used by every released model
        "conv_scale": 0.01,
        "img_range": 1.0,
        "qk_scale": None,
    }


SPEC = ModelSpec(
    name="hat",
    build=build,
    default_config={
        "in_chans": 3, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
        "compress_ratio": 3, "squeeze_factor": 30, "conv_scale": 0.01, "overlap_ratio": 0.5, "mlp_ratio": 2,
        "upscale": 4, "img_range": 1.0, "upsampler": "pixelshuffle", "resi_connection": "1conv",
    },
    detect_keys=DETECT_KEYS,
    hparams_from_state_dict=hparams_from_state_dict,
    spatial_dims=2,
    size_multiple=1,  # reflect-pads right/bottom to window_size itself and crops the output
    in_channels=lambda c: c["in_chans"],
    tile_grid=lambda c: c["window_size"],  # shifted windows: equivariant to window multiples only
    upscale=lambda c: c["upscale"],
    description="HAT, 2D super-resolution x2/x3/x4 (HAT, HAT-S, HAT-L); official checkpoints load as-is",
    derived_buffers=("relative_position_index_SA", "relative_position_index_OCA"),
    agreement=Agreement("psnr_db", 50.0),  # issue 13: engines within 50 dB of eager float32
)
