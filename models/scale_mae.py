"""Scale-MAE ViT encoder (Reed et al. 2023, "Scale-MAE: A Scale-Aware Masked Autoencoder for
Multiscale Geospatial Representation Learning", arXiv:2212.14532).

Our own implementation with the official state-dict layout, so the released pretraining file
(``{"model": MaskedAutoencoderViT.state_dict(), ...}``) loads: its encoder keys strictly, its
MAE-only keys (decoder, FPN/bandpass heads, mask tokens) checked against the known set and
dropped (:func:`select_encoder_keys`).

Upstream (CC BY-NC 4.0 code and weights): bair-climate-initiative/scale-mae @ 89280d8,
``mae/models_vit.py`` (``VisionTransformer.forward_features``, a timm 0.6 ViT with
``PatchEmbedUnSafe``) and ``mae/util/pos_embed.py`` (``get_2d_sincos_pos_embed_with_resolution``).

What the encoder does (shapes for an input ``(B, C, H, W)``, patch ``p``, grid ``Gh x Gw``):
``patch_embed`` (conv k = s = p) -> ``(B, N, D)`` tokens in row-major order, the class token
prepended, plus the **GSD position embedding** recomputed for every call from the input's grid and
``res`` (the stored ``pos_embed`` table is never used: it is kept only so that files round-trip),
pre-norm blocks (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, exact GELU), final ``norm``.
``forward`` returns the class token ``(B, D)``; :meth:`ScaleMAEEncoder.forward_features` the
whole sequence ``(B, 1 + N, D)``.

``res`` is a *relative* scale multiplying the grid positions (the authors evaluate with 1.0;
in pretraining it is the crop's GSD ratio times 2.5), not metres: one value per sample.
Upstream only takes square inputs (the grid side is ``sqrt(N)``); here a rectangular grid uses
the same formula per axis, which equals upstream for every square input.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagingflows.models.registry import Agreement, ModelSpec

#: Official ViT sizes (embed dim -> heads): the head count is not in the weights.
OFFICIAL_HEADS = {768: 12, 1024: 16, 1280: 16}

#: Key prefixes of the MAE pretraining model that the encoder does not use.
MAE_ONLY_PREFIXES = ("decoder_blocks.", "decoder_embed.", "decoder_norm.", "decoder_pos_embed", "decoder_pred.",
                     "fcn_high.", "fcn_low.", "fcn.", "fpn.", "pos_emb_projection.", "mask_token", "mask_token_decoder")


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``(..., )`` positions -> ``(..., dim)``: all sines then all cosines, ``omega_k = 10000^(-k / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32, device=pos.device) / (dim / 2.0))
    angles = pos.float()[..., None] * omega
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def gsd_pos_embed(dim: int, grid: tuple[int, int], res: torch.Tensor) -> torch.Tensor:
    """Scale-MAE's position embedding ``(B, 1 + Gh * Gw, dim)`` for ``res`` of shape ``(B,)``.

    The first ``dim / 2`` channels encode the column (x) times ``res``, the second half the row
    (y) times ``res``; tokens in row-major order; an all-zero row for the class token.
    """
    if dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for the 2-D sin-cos embedding, got {dim}")
    gh, gw = grid
    rows = torch.arange(gh, dtype=torch.float32, device=res.device)[:, None].expand(gh, gw).reshape(-1)
    cols = torch.arange(gw, dtype=torch.float32, device=res.device)[None, :].expand(gh, gw).reshape(-1)
    res = res.float()[:, None]  # (B, 1)
    emb = torch.cat([sincos_1d(dim // 2, cols[None] * res), sincos_1d(dim // 2, rows[None] * res)], dim=-1)
    return torch.cat([emb.new_zeros(emb.shape[0], 1, dim), emb], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, D)`` with one fused ``qkv`` projection (timm layout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as timm's default
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block on ``(B, N, D)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` -> ``(B, (H/p) * (W/p), D)``; H and W must be multiples of ``p``."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ScaleMAEEncoder(nn.Module):
    """Scale-MAE's ViT encoder: ``(B, in_chans, H, W)`` and ``res`` -> class token ``(B, embed_dim)``.

    Args:
        img_size: pretraining input side; only sizes the unused stored ``pos_embed`` table.
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the ViT.
        norm_eps: LayerNorm epsilon (1e-6 upstream).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Stored by the official code, never read by forward_features: kept for strict round trips.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch_size) ** 2, embed_dim),
                                      requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def _res(self, res: float | Sequence[float] | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        res = torch.as_tensor(res, dtype=torch.float32, device=device).reshape(-1)
        if not bool(torch.isfinite(res).all()) or bool((res <= 0).any()):
            raise ValueError(f"res must be finite and > 0 (a relative scale; 1.0 is the authors' default), "
                             f"got {res.tolist()}")
        if res.numel() == 1:
            return res.expand(batch)
        if res.numel() != batch:
            raise ValueError(f"res must be one value or one per sample ({batch}), got {res.numel()} values")
        return res

    def forward_features(self, x: torch.Tensor, res: float | Sequence[float] | torch.Tensor = 1.0) -> torch.Tensor:
        """``(B, C, H, W)`` -> tokens ``(B, 1 + N, D)`` after the final norm (class token first)."""
        b, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h} x {w} must be a multiple of the patch size {p}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + gsd_pos_embed(self.embed_dim, (h // p, w // p), self._res(res, b, x.device)).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def feature_map(self, x: torch.Tensor, res: float | Sequence[float] | torch.Tensor = 1.0) -> torch.Tensor:
        """``(B, C, H, W)`` -> patch tokens as a map ``(B, D, H / p, W / p)`` (for dense heads)."""
        b, _, h, w = x.shape
        tokens = self.forward_features(x, res)[:, 1:]
        return tokens.transpose(1, 2).reshape(b, self.embed_dim, h // self.patch_size, w // self.patch_size)

    def forward(self, x: torch.Tensor, res: float | Sequence[float] | torch.Tensor = 1.0) -> torch.Tensor:
        """``(B, C, H, W)`` -> class token ``(B, D)`` (the official ``forward_features`` output).

        Upstream's ``global_pool`` alternative (mean of patch tokens through ``fc_norm``) needs an
        ``fc_norm`` that the pretraining file does not have, so it is not offered.
        """
        return self.forward_features(x, res)[:, 0]


def build(img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024, depth: int = 24,
          num_heads: int | None = 16, mlp_ratio: float = 4.0, qkv_bias: bool = True,
          norm_eps: float = 1e-6) -> ScaleMAEEncoder:
    if num_heads is None:
        raise ValueError(f"num_heads is not stored in the weights and embed_dim {embed_dim} is not an official "
                         f"Scale-MAE size ({', '.join(f'{d}: {h} heads' for d, h in OFFICIAL_HEADS.items())}); "
                         "pass num_heads")
    return ScaleMAEEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias,
                           norm_eps)


#: The encoder's own keys (every timm-style ViT has them).
ENCODER_KEYS = ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight")
#: Detection also needs Scale-MAE's bandpass FPN decoder: a plain MAE or timm ViT file has the
#: same encoder keys but a different position embedding, so it must not be taken for Scale-MAE.
#: An encoder-only Scale-MAE file loads with ``arch="scale_mae"`` (``--arch scale_mae``).
DETECT_KEYS = ENCODER_KEYS + ("fpn.fpn1.0.weight",)


def select_encoder_keys(sd: Mapping[str, Any]) -> dict:
    """A Scale-MAE file without its MAE-only keys (:data:`MAE_ONLY_PREFIXES`); everything else
    stays, so the strict load still reports a missing or unknown key."""
    return {k: v for k, v in sd.items() if not k.startswith(MAE_ONLY_PREFIXES)}


def hparams_from_state_dict(sd: Mapping[str, Any]) -> dict:
    """Constructor arguments from keys and shapes; ``num_heads`` from :data:`OFFICIAL_HEADS` (else None)."""
    missing = [k for k in ENCODER_KEYS if k not in sd]
    if missing:
        raise ValueError(f"weights do not fit scale_mae: missing in checkpoint: {', '.join(missing)}")
    proj = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    dim, chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    pos = sd.get("pos_embed")
    side = int(round((pos.shape[1] - 1) ** 0.5)) if pos is not None else 14
    hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    return {
        "img_size": side * patch, "patch_size": patch, "in_chans": chans, "embed_dim": dim, "depth": depth,
        "num_heads": OFFICIAL_HEADS.get(dim), "mlp_ratio": hidden / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd, "norm_eps": 1e-6,
    }


SPEC = ModelSpec(
    name="scale_mae",
    build=build,
    default_config={"img_size": 224, "patch_size": 16, "in_chans": 3, "embed_dim": 1024, "depth": 24,
                    "num_heads": 16, "mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": 1e-6},
    detect_keys=DETECT_KEYS,
    hparams_from_state_dict=hparams_from_state_dict,
    spatial_dims=2,
    in_channels=lambda c: c["in_chans"],
    tile_grid=lambda c: c["patch_size"],
    size_multiple=16,
    min_size=16,
    description="Scale-MAE ViT encoder (GSD position embedding, input res); official pretraining files load "
                "(encoder keys strictly, MAE-only keys dropped)",
    foreign_keys=select_encoder_keys,
    agreement=Agreement("cosine", 0.9999),  # issue 13: engines' tokens within cosine 0.9999 of eager float32
)
