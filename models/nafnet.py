"""NAFNet (Chen et al. 2022, "Simple Baselines for Image Restoration", arXiv:2204.04676).

Our own implementation with the official state-dict layout, so released checkpoints
(SIDD denoising, GoPro/REDS deblurring; ``{"params": ...}`` files) load strictly.

Upstream (MIT): megvii-research/NAFNet @ 2b4af71ebe098a92a75910c233a3965a3e93ede4,
``basicsr/models/archs/NAFNet_arch.py`` (``NAFBlock``, ``NAFNet``, ``NAFNetLocal``),
``basicsr/models/archs/arch_util.py`` (``LayerNorm2d``) and
``basicsr/models/archs/local_arch.py`` (``Local_Base``, ``AvgPool2d`` with ``fast_imp=False``).

Padding: the network zero-pads right/bottom to a multiple of ``2 ** len(enc_blk_nums)``
and crops its output back, as upstream does, so any input size works.

NAFNetLocal (the "TLSC" test-time variant the GoPro/REDS configs use) has the same keys as
NAFNet: only the simplified-channel-attention pool changes, from a global mean to a local
box mean whose size follows from the training crop. Here it is the option
``local_train_size=[H, W]`` (upstream's ``train_size=(1, C, H, W)``); ``None`` means the
global pool of plain NAFNet. The weights cannot tell the two apart, so the option is a
``variant_key``.

The global pool is :class:`~imagingflows.models.global_pool.GlobalAvgPool2d`: the plain mean in
a normal forward, and whole-image means measured tile by tile when
:func:`~imagingflows.models.tiling.predict_tiles` tiles the network.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagingflows.models.global_pool import GlobalAvgPool2d
from imagingflows.models.registry import Agreement, ModelSpec


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of ``(B, C, H, W)`` (biased variance, ``eps`` 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class LocalAvgPool2d(nn.Module):
    """NAFNetLocal's pool: a stride-1 ``kernel`` box mean, replicate-padded back to the input size.

    Where the kernel covers the whole ``(H, W)`` map it is the global mean ``(B, C, 1, 1)``;
    otherwise the output is ``(B, C, H, W)``. Computed from a 2D cumulative sum as upstream
    (``local_arch.AvgPool2d``, ``fast_imp=False``).
    """

    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.kernel = (int(kernel[0]), int(kernel[1]))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.kernel[0] >= h and self.kernel[1] >= w:
            return F.adaptive_avg_pool2d(x, 1)
        k1, k2 = min(h, self.kernel[0]), min(w, self.kernel[1])
        s = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))  # s[i, j] = sum of x[:i, :j]
        out = s[..., k1:, k2:] + s[..., :-k1, :-k2] - s[..., :-k1, k2:] - s[..., k1:, :-k2]
        out = out / (k1 * k2)
        dh, dw = h - out.shape[-2], w - out.shape[-1]
        return F.pad(out, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2), mode="replicate")


class SimpleGate(nn.Module):
    """``(B, 2C, H, W) -> (B, C, H, W)``: first half of the channels times the second half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class NAFBlock(nn.Module):
    """One NAFNet block on ``(B, c, H, W)``; shape preserving.

    ``y = x + beta * conv3(SCA(SG(dwconv(conv1(norm1(x))))))``, then
    ``y + gamma * conv5(SG(conv4(norm2(y))))``. SCA multiplies by ``conv(pool(.))`` (no sigmoid).
    """

    def __init__(self, c: int, pool: nn.Module | None = None) -> None:
        super().__init__()
        dw = 2 * c  # DW_Expand = FFN_Expand = 2 in every NAFNet
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sg = SimpleGate()
        self.sca = nn.Sequential(pool if pool is not None else GlobalAvgPool2d(), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    """U-Net of NAFBlocks with a global residual: ``(B, img_channel, H, W)`` -> same shape.

    Args:
        img_channel: image channels in and out.
        width: channels at full resolution (doubled at each of the ``len(enc_blk_nums)`` levels).
        middle_blk_num: blocks at the lowest resolution.
        enc_blk_nums / dec_blk_nums: blocks per encoder / decoder level (same length).
        local_train_size: ``(H, W)`` of the training crops for NAFNetLocal's local pooling,
            or ``None`` for global pooling (plain NAFNet).
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 32,
        middle_blk_num: int = 12,
        enc_blk_nums: Sequence[int] = (2, 2, 4, 8),
        dec_blk_nums: Sequence[int] = (2, 2, 2, 2),
        local_train_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f"enc_blk_nums {list(enc_blk_nums)} and dec_blk_nums {list(dec_blk_nums)} "
                             "differ in length")
        levels = len(enc_blk_nums)
        self.padder_size = 2 ** levels
        pools = _local_kernels(local_train_size, levels, self.padder_size)

        def blocks(chan: int, n: int, level: int) -> nn.Sequential:
            kernel = pools[level] if pools else None
            return nn.Sequential(*[NAFBlock(chan, LocalAvgPool2d(kernel) if kernel else None) for _ in range(n)])

        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        chan = width
        for level, n in enumerate(enc_blk_nums):
            self.encoders.append(blocks(chan, n, level))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = blocks(chan, middle_blk_num, levels)
        for i, n in enumerate(dec_blk_nums):
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(blocks(chan, n, levels - 1 - i))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``; zero-pads right/bottom to ``padder_size`` internally."""
        h, w = inp.shape[-2:]
        p = self.padder_size
        inp = F.pad(inp, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return x[:, :, :h, :w]


def _local_kernels(train_size: Sequence[int] | None, levels: int, padder: int) -> list[tuple[int, int]] | None:
    """Pool kernel per level (0 = full resolution, ``levels`` = middle) for NAFNetLocal.

    Upstream fixes each kernel on one forward pass over a ``train_size`` input (padded to
    ``padder``): ``kernel = feature_size * int(1.5 * train) // train``, per axis.
    """
    if train_size is None:
        return None
    if len(train_size) == 4:  # upstream's (N, C, H, W) form
        train_size = train_size[2:]
    if len(train_size) != 2 or min(int(s) for s in train_size) < 1:
        raise ValueError(f"local_train_size must be [H, W] of the training crops, got {list(train_size)}")
    th, tw = (int(s) for s in train_size)
    ph, pw = -(-th // padder) * padder, -(-tw // padder) * padder
    return [((ph >> lv) * int(th * 1.5) // th, (pw >> lv) * int(tw * 1.5) // tw) for lv in range(levels + 1)]


def build(
    img_channel: int = 3,
    width: int = 32,
    middle_blk_num: int = 12,
    enc_blk_nums: Sequence[int] = (2, 2, 4, 8),
    dec_blk_nums: Sequence[int] = (2, 2, 2, 2),
    local_train_size: Sequence[int] | None = None,
) -> NAFNet:
    """A :class:`NAFNet` (upstream ``NAFNet`` or, with ``local_train_size``, ``NAFNetLocal``)."""
    return NAFNet(img_channel, width, middle_blk_num, tuple(enc_blk_nums), tuple(dec_blk_nums),
                  None if local_train_size is None else tuple(local_train_size))


DETECT_KEYS = ("intro.weight", "ending.weight", "downs.0.weight", "ups.0.0.weight")


# Official releases whose test configs run NAFNetLocal (GoPro and REDS deblurring, width 64,
# trained on 256 x 256 crops): a foreign checkpoint with this layout gets that variant.
LOCAL_RELEASES = {((1, 1, 1, 28), 1, (1, 1, 1, 1)): [256, 256]}


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    """Number of distinct integers ``N`` in keys matching ``pattern`` (a regex with one group)."""
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def hparams_from_state_dict(sd: Mapping[str, Any]) -> dict:
    """Constructor arguments from key names and shapes.

    ``local_train_size`` is not in the weights: it is the official release's test setting
    for the GoPro/REDS layout (:data:`LOCAL_RELEASES`), else None (global pooling).
    """
    missing = [k for k in DETECT_KEYS if k not in sd]
    if missing:
        others = sorted(k for k in sd if not re.match(r"(intro|ending|encoders|downs|middle_blks|ups|decoders)\.", k))
        raise ValueError(
            f"weights do not fit nafnet: missing in checkpoint: {', '.join(missing)}; "
            f"unexpected in checkpoint ({len(others)}): {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}"
        )
    intro = sd["intro.weight"]  # (width, img_channel, 3, 3)
    levels = _count(sd, r"downs\.(\d+)\.weight")
    ups = _count(sd, r"ups\.(\d+)\.0\.weight")
    if levels != ups:
        raise ValueError(f"NAFNet state dict has {levels} 'downs.N.weight' keys but {ups} 'ups.N.0.weight' keys; "
                         "expected as many")
    enc = [_count(sd, rf"encoders\.{i}\.(\d+)\.conv1\.weight") for i in range(levels)]
    dec = [_count(sd, rf"decoders\.{i}\.(\d+)\.conv1\.weight") for i in range(levels)]
    middle = _count(sd, r"middle_blks\.(\d+)\.conv1\.weight")
    return {
        "img_channel": int(intro.shape[1]),
        "width": int(intro.shape[0]),
        "middle_blk_num": middle,
        "enc_blk_nums": enc,
        "dec_blk_nums": dec,
        "local_train_size": LOCAL_RELEASES.get((tuple(enc), middle, tuple(dec))),
    }


SPEC = ModelSpec(
    name="nafnet",
    build=build,
    default_config={"img_channel": 3, "width": 32, "middle_blk_num": 12, "enc_blk_nums": [2, 2, 4, 8],
                    "dec_blk_nums": [2, 2, 2, 2], "local_train_size": None},
    detect_keys=DETECT_KEYS,
    hparams_from_state_dict=hparams_from_state_dict,
    foreign_defaults={},  # local_train_size comes from the release layout (hparams_from_state_dict)
    variant_keys=("local_train_size",),
    spatial_dims=2,
    size_multiple=1,  # pads itself (zeros, right/bottom) to 2 ** levels and crops back
    in_channels=lambda c: c["img_channel"],
    tile_grid=lambda c: 2 ** len(c["enc_blk_nums"]),  # its padder_size
    whole_image_pooling=True,  # simplified channel attention pools over the whole image
    agreement=Agreement("psnr_db", 50.0),  # issue 13: engines within 50 dB of eager float32
    description="NAFNet, 2D denoising/deblurring; official SIDD/GoPro/REDS checkpoints load as-is "
                "(local_train_size=[256, 256] for the GoPro/REDS NAFNetLocal test setting)",
)
