"""Swin UNETR (Hatamizadeh et al. 2022, arXiv:2201.01266) via MONAI's implementation.

Upstream: Project-MONAI/MONAI ``monai/networks/nets/swin_unetr.py`` (Apache-2.0).
Published BraTS21 weights: Project-MONAI/research-contributions ``SwinUNETR/BRATS21``.

MONAI 1.5 (PR #8285) changed the 3D ``PatchMerging`` slice order. Every published
checkpoint was trained with the old order, so it is kept here as
:class:`PatchMergingLegacy` and selected by ``patch_merging="legacy"``. Key names
are identical in both variants, so the weights cannot tell: checkpoints we write
record the variant; a foreign checkpoint gets ``"legacy"`` (``foreign_defaults``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from imagingflows.models.registry import Agreement, ModelSpec

PATCH_MERGING_VARIANTS = ("legacy", "current")


def _legacy_class():
    from monai.networks.nets.swin_unetr import PatchMerging

    class PatchMergingLegacy(PatchMerging):
        """MONAI <= 1.4 3D patch merging: offsets (d,h,w) 000,100,010,001,101,010,001,111.

        Slots 5 and 6 repeat slots 2 and 3 (offsets 110 and 011 are never used); the
        published weights were trained this way. Input ``(B, D, H, W, C)`` channels-last,
        output ``(B, D/2, H/2, W/2, 2C)``.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 5:
                return super().forward(x)
            _, d, h, w, _ = x.shape
            if d % 2 or h % 2 or w % 2:
                x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
            x = torch.cat(
                [
                    x[:, 0::2, 0::2, 0::2], x[:, 1::2, 0::2, 0::2], x[:, 0::2, 1::2, 0::2],
                    x[:, 0::2, 0::2, 1::2], x[:, 1::2, 0::2, 1::2], x[:, 0::2, 1::2, 0::2],
                    x[:, 0::2, 0::2, 1::2], x[:, 1::2, 1::2, 1::2],
                ],
                -1,
            )
            return self.reduction(self.norm(x))

    return PatchMergingLegacy


_LEGACY = None


def patch_merging_legacy():
    """The legacy PatchMerging class (built lazily so importing this file stays cheap)."""
    global _LEGACY
    if _LEGACY is None:
        _LEGACY = _legacy_class()
    return _LEGACY


def build(
    in_channels: int = 4,
    out_channels: int = 3,
    feature_size: int = 48,
    depths: tuple[int, ...] = (2, 2, 2, 2),
    num_heads: tuple[int, ...] = (3, 6, 12, 24),
    window_size: int = 7,
    patch_size: int = 2,
    norm_name: str = "instance",
    use_v2: bool = False,
    patch_merging: str = "legacy",
    use_checkpoint: bool = False,
    use_flash_attention: bool = True,
):
    """A MONAI ``SwinUNETR``; ``patch_merging`` picks the MONAI <=1.4 or >=1.5 3D merging.

    ``use_flash_attention`` (MONAI's switch; on by default here): window attention through
    ``torch.nn.functional.scaled_dot_product_attention`` at inference (MONAI uses it only without
    gradients, so training is unchanged). Same outputs in float32 (1.2e-6 on random weights, every voxel
    of the demo cases), 1.3x faster per window in float32 and 1.5x in bf16 on a CPU, less memory
    (``benchmarks/segment.py --flash-attention``: 0.23x MONAI's time in bf16 on the real-size brain).
    """
    from monai.networks.nets import SwinUNETR

    if patch_merging not in PATCH_MERGING_VARIANTS:
        raise ValueError(f"patch_merging must be one of {PATCH_MERGING_VARIANTS}, got {patch_merging!r}")
    downsample = patch_merging_legacy() if patch_merging == "legacy" else "merging"
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
        patch_size=patch_size,
        norm_name=norm_name,
        use_v2=use_v2,
        downsample=downsample,
        use_checkpoint=use_checkpoint,
        use_flash_attention=use_flash_attention,
    )


def hparams_from_state_dict(sd: Mapping[str, Any]) -> dict:
    """Constructor arguments recoverable from key names and shapes."""
    proj = sd["swinViT.patch_embed.proj.weight"]  # (feature_size, in_channels, p, p, p)
    depths, heads = [], []
    for stage in range(1, 5):
        blocks = {
            int(m.group(1))
            for k in sd
            if (m := re.match(rf"swinViT\.layers{stage}\.0\.blocks\.(\d+)\.", k))
        }
        if not blocks:
            break
        depths.append(len(blocks))
        heads.append(int(sd[f"swinViT.layers{stage}.0.blocks.0.attn.relative_position_bias_table"].shape[1]))
    table_rows = int(sd["swinViT.layers1.0.blocks.0.attn.relative_position_bias_table"].shape[0])
    window = round(table_rows ** (1 / 3) + 1) // 2  # (2w-1)^3 rows
    return {
        "in_channels": int(proj.shape[1]),
        "out_channels": int(sd["out.conv.conv.weight"].shape[0]),
        "feature_size": int(proj.shape[0]),
        "patch_size": int(proj.shape[2]),
        "depths": tuple(depths),
        "num_heads": tuple(heads),
        "window_size": window,
        "norm_name": "batch" if "encoder1.layer.norm1.running_mean" in sd else "instance",
        "use_v2": any(k.startswith("swinViT.layers1c.") for k in sd),
        # patch_merging: not in the state dict (same keys for both variants)
    }


SPEC = ModelSpec(
    name="swin_unetr",
    build=build,
    default_config={"in_channels": 4, "out_channels": 3, "feature_size": 48, "patch_merging": "current"},
    detect_keys=(
        "swinViT.patch_embed.proj.weight",
        "encoder1.layer.conv1.conv.weight",
        "decoder1.transp_conv.conv.weight",
        "out.conv.conv.weight",
    ),
    hparams_from_state_dict=hparams_from_state_dict,
    foreign_defaults={"patch_merging": "legacy"},
    variant_keys=("patch_merging",),
    spatial_dims=3,
    in_channels=lambda c: c["in_channels"],
    size_multiple=32,
    # issue 13: >= 99.5% of voxels with the same thresholded regions as eager float32 (the segment benchmark
    # checks the Dice change <= 0.005 on real cases); auto leaves compile out: on 2 cores its first call took
    # 222 s (fp32) / 374 s (bf16) and the compiled 96^3 window ran 2.5x slower than eager (4.46 s vs 1.80 s)
    agreement=Agreement("labels_equal", 0.995),
    engine_candidates=("eager", "channels-last"),
    min_size=64,
    description="Swin UNETR (MONAI), 3D segmentation; BraTS21 checkpoints load as-is",
    derived_buffers=("attn.relative_position_index",),
)
