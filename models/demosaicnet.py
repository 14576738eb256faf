"""DemosaicNet (Gharbi, Chaurasia, Paris & Durand 2016, "Deep Joint Demosaicking and Denoising",
SIGGRAPH Asia) for Bayer mosaics, with the released weights of the ``demosaicnet`` package.

The network (``demosaicnet`` 0.0.14, MIT, ``demosaicnet/modules.py`` ``BayerDemosaick(depth=15,
width=64)``; the released model, with its filter/mask split): a 2x2 stride-2 convolution packs
the masked 3-channel mosaic into 4 quarter-resolution channels, 15 *unpadded* 3x3 convolutions
(the last one 128 wide: 64 filters times 64 masks), a 1x1 convolution to 12 residual channels,
a grouped 2x2 transposed convolution back to full resolution, the mosaic concatenated (skip
connection), an unpadded 3x3 and a 1x1 convolution. The state-dict keys here are those of the
package's ``bayer.pth`` (a strict load).

**Native layout and padding (one place: :func:`_window`).** The package's network expects the
masked mosaic ``(B, 3, H, W)`` of a fixed **GRBG** pattern (``demosaicnet/mosaic.py``
``bayer``: ``G r / b G``) and, its convolutions being unpadded, returns ``(B, 3, H - 62,
W - 62)``: output pixel ``(i, j)`` is input pixel ``(i + 31, j + 31)``. The package pads
nothing itself: its demo runs the whole image and its ``scripts/eval.py`` crops the reference
to the output (``utils.crop_like``). Here the mosaic, of any of the four patterns, is read with
``t = 32 + dy`` rows of context above and ``32 - dy`` below (``dx`` likewise for columns),
mirrored beyond the image with the whole-sample mirror (``-i`` copies ``i``, which keeps every
pixel's CFA colour; :func:`imagingflows.models.demosaic_tiling.mirror_index`). ``(dy, dx)`` in
``{0, 1}`` is the one-pixel shift that makes the window start on a GRBG block
(:func:`imagingflows.models.cfa.pattern_of_crop`): ``(0, 0)`` for GRBG, ``(0, 1)`` RGGB,
``(1, 0)`` BGGR, ``(1, 1)`` GBRG. The window is ``H + 64`` high (even), the network returns
``H + 2`` rows, and rows ``1 + dy .. H + dy`` of it are the image's rows ``0 .. H - 1``. The
weights are never flipped or shifted: only the read window moves, so the network always sees
its own layout.

**Weights** come from the installed package's data files (``demosaicnet/data/bayer.pth``),
found through ``importlib.metadata`` without importing the package (its modules import
``pkg_resources``, ``wget`` and ``tqdm``); nothing is downloaded. Install with
``pip install "imagingflows[demosaic]"`` or ``pip install --no-deps demosaicnet==0.0.14``.

Shapes: mosaic ``(B, 1, H, W)`` float (H, W even), output ``(B, 3, H, W)`` of the mosaic's dtype
and device, not clipped. Receptive field: 31 px (plus the packing phase), halo 32.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from imagingflows.models.cfa import masks, pattern_of_crop
from imagingflows.models.demosaic_tiling import check_mosaic, mirror_index, tile_steps
from imagingflows.models.registry import Agreement

NAME = "demosaicnet"
NATIVE_PATTERN = "GRBG"  # demosaicnet/mosaic.py ``bayer``: G r / b G
CROP = 31  # pixels per side the unpadded released network removes (2 * depth + 1)
HALO = CROP + 1  # context read on each side (even; the one-pixel shift moves one pixel across)
PACKAGE = "demosaicnet"
PACKAGE_VERSION = "0.0.14"
INSTALL_HINT = (f'pip install "imagingflows[demosaic]"  (or: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}; '
                "only its weight files are used)")


class DemosaicNetError(RuntimeError):
    """The ``demosaicnet`` package (its weight files) is missing or unreadable."""


def package_weights(name: str = "bayer.pth") -> Path:
    """Path of ``demosaicnet/data/<name>`` in the installed ``demosaicnet`` distribution.

    Looks the file up in the distribution's file list (``importlib.metadata``), then next to the
    package found by ``importlib.util.find_spec`` (neither imports the package's modules).

    Raises:
        DemosaicNetError: the package is not installed, or the file is not in it.
    """
    rel = f"{PACKAGE}/data/{name}"
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or ():
            if str(f).replace("\\", "/") == rel:
                candidates.append(Path(dist.locate_file(f)))
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / name for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    if dist is None and spec is None:
        raise DemosaicNetError(f"DemosaicNet weights: the '{PACKAGE}' package is not installed; its file "
                               f"{rel} holds the released weights. Install it: {INSTALL_HINT}")
    where = ", ".join(str(p) for p in candidates) or "no location"
    raise DemosaicNetError(f"DemosaicNet weights: {rel} not found in the installed '{PACKAGE}' package "
                           f"(looked at {where}); reinstall it: {INSTALL_HINT}")


def load_package_state_dict(name: str = "bayer.pth") -> dict[str, torch.Tensor]:
    """The released state dict ``demosaicnet/data/<name>`` (tensors only: ``weights_only=True``)."""
    path = package_weights(name)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise DemosaicNetError(f"DemosaicNet weights: cannot read {path}: {exc}") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DemosaicNetError(f"DemosaicNet weights: {path} is not a state dict of tensors")
    return dict(sd)


def bayer_shift(pattern: str) -> tuple[int, int]:
    """``(dy, dx)``: the one-pixel offset at which ``pattern`` reads as the native GRBG."""
    for dy in range(2):
        for dx in range(2):
            if pattern_of_crop(pattern, dy, dx) == NATIVE_PATTERN:
                return dy, dx
    raise AssertionError(pattern)  # unreachable for the four Bayer patterns


def _window(mosaic: torch.Tensor, pattern: str, r0: int, r1: int, c0: int, c1: int,
            halo: int = HALO) -> tuple[torch.Tensor, int, int]:
    """Rows ``r0 .. r1 - 1`` and columns ``c0 .. c1 - 1`` (even starts) with the network's context,
    as the masked 3-channel GRBG input: ``((B, 3, r1 - r0 + 2 halo, c1 - c0 + 2 halo), top, left)``,
    where ``top, left`` (``1 + dy``, ``1 + dx``) is where the region starts in the network's output.

    ``halo`` (even) is the network's crop plus one: ``halo + dy`` rows are read above (so the
    window's first row has the GRBG phase), ``halo - dy`` below; columns likewise with ``dx``."""
    dy, dx = bayer_shift(pattern)
    h, w = mosaic.shape[-2:]
    rows = mirror_index(r0 - halo - dy, r1 + halo - dy, h, mosaic.device)
    cols = mirror_index(c0 - halo - dx, c1 + halo - dx, w, mosaic.device)
    x = mosaic.index_select(-2, rows).index_select(-1, cols)
    m = masks(NATIVE_PATTERN, x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)
    return x * m, 1 + dy, 1 + dx


class DemosaicNetBayer(nn.Module):
    """The released Bayer DemosaicNet; keys and shapes of ``demosaicnet/data/bayer.pth``.

    Args:
        depth: number of 3x3 convolutions at quarter resolution (15 released).
        width: their channels (64 released).
        pretrained: load the package's ``bayer.pth`` (strict).
    """

    def __init__(self, depth: int = 15, width: int = 64, *, pretrained: bool = False) -> None:
        super().__init__()
        self.depth, self.width = depth, width
        layers: OrderedDict[str, nn.Module] = OrderedDict(pack_mosaic=nn.Conv2d(3, 4, 2, stride=2))
        for i in range(depth):
            n_in = 4 if i == 0 else width
            n_out = 2 * width if i == depth - 1 else width
            layers[f"conv{i + 1}"] = nn.Conv2d(n_in, n_out, 3)
            layers[f"relu{i + 1}"] = nn.ReLU(inplace=True)
        self.main_processor = nn.Sequential(layers)
        self.residual_predictor = nn.Conv2d(width, 12, 1)
        self.upsampler = nn.ConvTranspose2d(12, 3, 2, stride=2, groups=3)
        self.fullres_processor = nn.Sequential(OrderedDict(
            post_conv=nn.Conv2d(6, width, 3), post_relu=nn.ReLU(inplace=True), output=nn.Conv2d(width, 3, 1)))
        if pretrained:
            if (depth, width) != (15, 64):
                raise ValueError(f"DemosaicNet: the released bayer.pth has depth=15, width=64, not {depth}, {width}")
            self.load_state_dict(load_package_state_dict("bayer.pth"), strict=True)

    @property
    def crop(self) -> int:
        """Pixels per side the unpadded network removes: ``2 depth + 1`` (31 for depth 15)."""
        return 2 * self.depth + 1

    def forward_valid(self, x: torch.Tensor) -> torch.Tensor:
        """The package's ``forward``: masked GRBG ``(B, 3, H, W)`` (H, W even) -> ``(B, 3, H - 2 c, W - 2 c)``,
        ``c = 2 depth + 1``; output ``(i, j)`` is input ``(i + c, j + c)``."""
        features = self.main_processor(x)
        filtered = features[:, :self.width] * features[:, self.width:]
        upsampled = self.upsampler(self.residual_predictor(filtered))
        d = (x.shape[-2] - upsampled.shape[-2]) // 2, (x.shape[-1] - upsampled.shape[-1]) // 2
        cropped = x[..., d[0]:d[0] + upsampled.shape[-2], d[1]:d[1] + upsampled.shape[-1]]
        return self.fullres_processor(torch.cat([cropped, upsampled], 1))

    def forward(self, mosaic: torch.Tensor, pattern: str = NATIVE_PATTERN, *, tile: int | None = 1024,
                valid: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Demosaick ``(B, 1, H, W)`` (any Bayer pattern, H and W even) -> ``(B, 3, H, W)``.

        ``tile``: side of the region one step reads, context included (its core, ``tile - 2 halo``
        rounded down to even, must be >= 2; halo 32 for depth 15); None runs the whole image at
        once. Tiles agree with the untiled result to float rounding (the convolution routine may
        differ by size). ``valid``: what runs :meth:`forward_valid` on each window (an inference engine,
        :func:`imagingflows.models.engines.engine_module` with ``method="forward_valid"``); default itself.
        """
        pattern = check_mosaic(mosaic, pattern, NAME)
        valid = valid or self.forward_valid
        halo = self.crop + 1
        b, _, h, w = mosaic.shape
        step_h, step_w = tile_steps(tile, halo, (h, w), NAME)
        param = next(self.parameters())
        out = mosaic.new_empty(b, 3, h, w)
        for r0 in range(0, h, step_h):
            r1 = min(h, r0 + step_h)
            for c0 in range(0, w, step_w):
                c1 = min(w, c0 + step_w)
                x, top, left = _window(mosaic, pattern, r0, r1, c0, c1, halo)
                y = valid(x.to(param.dtype if param.is_floating_point() else x.dtype))
                out[:, :, r0:r1, c0:c1] = y[..., top:top + r1 - r0, left:left + c1 - c0].to(mosaic.dtype)
        return out


_CACHE: dict[tuple[str, torch.dtype], DemosaicNetBayer] = {}


def load_demosaicnet(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> DemosaicNetBayer:
    """The released model in eval mode on ``device`` (cached per device and dtype)."""
    key = (str(torch.device(device)), dtype)
    if key not in _CACHE:
        _CACHE[key] = DemosaicNetBayer(pretrained=True).to(device=device, dtype=dtype).eval()
    return _CACHE[key]


def demosaic_demosaicnet(mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024, engine: str = "eager",
                         precision: str = "fp32") -> torch.Tensor:
    """The classical methods' signature: ``(B, 1, H, W)`` float, pattern -> ``(B, 3, H, W)``.

    Runs the released weights on the mosaic's device (float64 input is computed in float32 and
    returned as float64), without gradients; ``engine`` (:data:`imagingflows.models.engines.CONCRETE`)
    and ``precision`` (``fp32``, ``bf16`` or ``fp16`` autocast) as resolved by the caller.
    """
    from imagingflows.models.engines import autocast_for, engine_module

    check_mosaic(mosaic, pattern, NAME)
    model = load_demosaicnet(mosaic.device)
    valid = engine_module(model, engine, method="forward_valid") if engine != "eager" else None
    with torch.no_grad(), autocast_for(precision, mosaic.device):
        return model(mosaic, pattern, tile=tile, valid=valid)


#: how close another engine's (or precision's) output must be to eager float32 (issue 13)
AGREEMENT = Agreement("psnr_db", 50.0)


def engine_inputs(side: int = 256) -> tuple[torch.Tensor]:
    """What an engine is measured on: one masked GRBG window ``(1, 3, s, s)`` (``s`` = ``side`` + the
    network's crop on each side, even), as :meth:`DemosaicNetBayer.forward` feeds ``forward_valid``."""
    from imagingflows.models.engines import measure_input

    s = side + 2 * (2 * 15 + 1) + 1
    s += s % 2
    rgb = measure_input(3, s)
    return (rgb * masks(NATIVE_PATTERN, s, s, dtype=rgb.dtype),)
