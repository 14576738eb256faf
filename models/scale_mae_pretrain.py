"""Scale-MAE masked-autoencoder pretraining model: :class:`ScaleMAEEncoder` plus a small pixel decoder.

The model *is* the encoder (a subclass), so its state dict holds the official encoder keys at top
level (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``) next to the
official MAE decoder names: ``mask_token``, ``decoder_embed``, ``decoder_blocks.N`` (timm blocks),
``decoder_norm``, and MAE's linear pixel head ``decoder_pred`` (Scale-MAE's release replaces that head
with its bandpass FPN/FCN heads; this model keeps the plain MAE head: a small decoder).
:func:`encoder_state_dict` is exactly the encoder's keys.

Recipe (He et al. 2022 MAE, as Scale-MAE's ``models_mae.py`` uses it), shapes for ``images (B, C, H, W)``,
patch ``p``, grid ``Gh x Gw``, ``N = Gh * Gw`` tokens, ``K = round(N * (1 - mask_ratio))`` kept:

1. ``patch_embed`` -> ``(B, N, D)`` plus the GSD position embedding of ``res (B,)``
   (:func:`gsd_pos_embed`, the same ``res`` per sample as the encoder uses at inference).
2. Per-sample random masking: the ``K`` tokens with the smallest ``noise (B, N)`` are kept.
3. Class token (its position row is zero) + the kept tokens ``(B, 1 + K, D)`` -> blocks -> ``norm``.
4. Decoder: ``decoder_embed`` -> ``(B, 1 + K, Dd)``; ``mask_token`` fills the masked positions, tokens
   back in row-major order ``(B, 1 + N, Dd)``; plus the GSD position embedding (decoder width, same ``res``);
   ``decoder_blocks`` -> ``decoder_norm`` -> ``decoder_pred`` -> ``(B, N, p * p * C)`` (class token dropped).
5. Loss: MSE per patch against the patchified input, each target patch normalised by its own mean and
   variance (``norm_pix_loss``), averaged over the masked patches that ``weight (B, N)`` allows
   (patches holding nodata are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from imagingflows.models.registry import ModelSpec
from imagingflows.models.scale_mae import MAE_ONLY_PREFIXES, Block, ScaleMAEEncoder, gsd_pos_embed

#: Keys of the decoder (everything of this model that is not the encoder).
DECODER_PREFIXES = ("mask_token", "decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")
#: Constructor arguments of the encoder part (the rest of the config is the decoder's and the loss's).
ENCODER_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "norm_eps")


@dataclass
class MaeInput:
    """One batch: ``images (B, C, H, W)`` normalised, ``res (B,)`` relative GSD scale, ``noise (B, N)`` (the
    masking order: lowest kept), ``weight (B, N)`` 1 for patches that may count in the loss (valid pixels)."""

    images: torch.Tensor
    res: torch.Tensor
    noise: torch.Tensor
    weight: torch.Tensor

    def to(self, device) -> "MaeInput":
        return MaeInput(self.images.to(device), self.res.to(device), self.noise.to(device), self.weight.to(device))

    def __len__(self) -> int:
        return int(self.images.shape[0])


class ScaleMAEPretrain(ScaleMAEEncoder):
    """The encoder with an MAE decoder: ``forward(MaeInput) -> (loss (), pred (B, N, p*p*C), mask (B, N))``.

    Args: the encoder's (:class:`ScaleMAEEncoder`), then ``decoder_embed_dim`` (a multiple of 4),
    ``decoder_depth``, ``decoder_num_heads``, ``mask_ratio`` (share of tokens masked), ``norm_pix_loss``.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6, decoder_embed_dim: int = 128, decoder_depth: int = 2,
                 decoder_num_heads: int = 4, mask_ratio: float = 0.75, norm_pix_loss: bool = True) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps)
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_embed_dim % 4:
            raise ValueError(f"decoder_embed_dim must be a multiple of 4, got {decoder_embed_dim}")
        self.in_chans, self.mask_ratio, self.norm_pix_loss = in_chans, mask_ratio, norm_pix_loss
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias, norm_eps)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)

    def init_weights(self) -> "ScaleMAEPretrain":
        """MAE's initialisation (for a fresh model): xavier-uniform linears and patch projection,
        LayerNorm 1 / 0, class and mask tokens N(0, 0.02)."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        return self

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, N, p * p * C)`` in row-major patch order (MAE's ``nchpwq -> nhwpqc``)."""
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def forward_encoder(self, images: torch.Tensor, res: torch.Tensor, noise: torch.Tensor):
        """-> ``(latent (B, 1 + K, D), mask (B, N) 1 = masked, ids_restore (B, N))``."""
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h} x {w} must be a multiple of the patch size {p}")
        pos = gsd_pos_embed(self.embed_dim, (h // p, w // p), self._res(res, b, images.device)).to(images.dtype)
        x = self.patch_embed(images) + pos[:, 1:]
        n = x.shape[1]
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + pos[:, :1]).expand(b, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, res: torch.Tensor,
                        grid: tuple[int, int]) -> torch.Tensor:
        """``latent (B, 1 + K, D)`` -> pixel predictions ``(B, N, p * p * C)``."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masked], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1)
        x = x + gsd_pos_embed(self.decoder_embed_dim, grid, self._res(res, b, x.device)).to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over masked (and allowed) patches of the per-patch MSE; ``norm_pix_loss``: each target patch
        standardised by its own mean and variance (+1e-6), as MAE."""
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
        counted = mask if weight is None else mask * weight
        return (per_patch * counted).sum() / counted.sum().clamp_min(1.0)

    def forward(self, batch: MaeInput):  # type: ignore[override] - the pretraining forward, not the encoder's
        """``MaeInput`` -> ``(loss (), pred (B, N, p*p*C), mask (B, N))``."""
        images = batch.images
        p = self.patch_size
        latent, mask, ids_restore = self.forward_encoder(images, batch.res, batch.noise)
        pred = self.forward_decoder(latent, ids_restore, batch.res, (images.shape[2] // p, images.shape[3] // p))
        return self.loss(images, pred, mask, batch.weight), pred, mask


def encoder_config(config: dict) -> dict:
    """The :class:`ScaleMAEEncoder` arguments within a pretraining config."""
    return {k: config[k] for k in ENCODER_ARGS if k in config}


def encoder_state_dict(sd: dict) -> dict:
    """The official encoder keys of a pretraining (or official release) state dict: decoder and every
    other MAE-only key dropped."""
    return {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES + MAE_ONLY_PREFIXES)}


def decoder_state_dict(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k.startswith(DECODER_PREFIXES)}


def build(**config) -> ScaleMAEPretrain:
    return ScaleMAEPretrain(**config)


def hparams_from_state_dict(sd) -> dict:
    raise ValueError("a scale_mae_pretrain model is only read from the checkpoints imagingflows writes")


#: Not in the registry (nothing runs it for inference); used by the training loop's checkpoints.
SPEC = ModelSpec(
    name="scale_mae_pretrain",
    build=build,
    default_config={"img_size": 64, "patch_size": 16, "in_chans": 3, "embed_dim": 96, "depth": 4, "num_heads": 4,
                    "mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": 1e-6, "decoder_embed_dim": 64,
                    "decoder_depth": 2, "decoder_num_heads": 4, "mask_ratio": 0.75, "norm_pix_loss": True},
    detect_keys=("cls_token", "patch_embed.proj.weight", "decoder_embed.weight", "decoder_pred.weight"),
    hparams_from_state_dict=hparams_from_state_dict,
    spatial_dims=2,
    in_channels=lambda c: c["in_chans"],
    tile_grid=lambda c: c["patch_size"],
    description="Scale-MAE masked-autoencoder pretraining (encoder + small MAE decoder)",
)
