"""Registry of demosaicking methods: classical ones without weights (bilinear, Malvar 2004, Menon 2007)
and DemosaicNet, whose weights come from the installed ``demosaicnet`` package (loaded on first use).

Why not :class:`~imagingflows.models.registry.ModelSpec`: a spec describes a network with a
state dict (``build``, ``detect_keys``, ``hparams_from_state_dict``); a parameter-free method
has none of these, and a spec with no ``detect_keys`` would match *every* checkpoint in
``Registry.detect``. Learned demosaickers (DemosaicNet, our JDD net) will be ModelSpecs in the
model registry; the demosaic pipeline looks a name up here first.

Every method: ``fn(mosaic (B, 1, H, W) float, pattern, *, tile=...) -> (B, 3, H, W)``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch

from imagingflows.models import demosaic_bilinear, demosaic_malvar, demosaic_menon, demosaicnet, demosaicnet_xtrans


@dataclass(frozen=True)
class DemosaicMethod:
    """One classical method.

    Attributes:
        name: ``--method`` name.
        fn: ``fn(mosaic, pattern, *, tile) -> rgb``.
        halo: context pixels each tile reads beyond its core (even; >= the support radius).
        description: one line for listings.
        reference: the paper.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    halo: int
    description: str
    reference: str

    def __call__(self, mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024) -> torch.Tensor:
        return self.fn(mosaic, pattern, tile=tile)


METHODS: dict[str, DemosaicMethod] = {
    m.name: m for m in (
        DemosaicMethod("bilinear", demosaic_bilinear.demosaic_bilinear, demosaic_bilinear.HALO,
                       "bilinear interpolation per channel (3x3 kernels)",
                       "Losson, Macaire & Yang 2010, Adv. Imaging Electron Phys. 162"),
        DemosaicMethod("malvar", demosaic_malvar.demosaic_malvar, demosaic_malvar.HALO,
                       "Malvar-He-Cutler gradient-corrected linear 5x5 kernels",
                       "Malvar, He & Cutler 2004, ICASSP"),
        DemosaicMethod("menon", demosaic_menon.demosaic_menon, demosaic_menon.HALO,
                       "Menon DDFAPD: directional filtering, a posteriori decision, refining step",
                       "Menon, Andriani & Calvagno 2007, IEEE TIP 16(1)"),
        DemosaicMethod("demosaicnet", demosaicnet.demosaic_demosaicnet, demosaicnet.HALO,
                       "DemosaicNet (Bayer), the MIT demosaicnet package's bayer.pth, read from its installed files",
                       "Gharbi, Chaurasia, Paris & Durand 2016, ACM TOG 35(6)"),
    )
}


#: the methods without weights (compared with colour-demosaicing); the rest are learned
CLASSICAL = ("bilinear", "malvar", "menon")

#: what ``demosaicnet`` runs on a 6 x 6 X-Trans cell (not a ``--method`` of its own)
XTRANS = DemosaicMethod("demosaicnet-xtrans", demosaicnet_xtrans.demosaic_demosaicnet_xtrans, demosaicnet_xtrans.CROP,
                        "DemosaicNet's X-Trans model (the demosaicnet package's xtrans.pth)",
                        "Gharbi, Chaurasia, Paris & Durand 2016, ACM TOG 35(6)")


def get_method(name: str) -> DemosaicMethod:
    """The method called ``name``; ValueError with a "did you mean" hint otherwise."""
    key = str(name).strip().lower()
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, list(METHODS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown demosaic method {name!r}.{hint} Available: {', '.join(METHODS)}")


def list_methods() -> list[str]:
    return list(METHODS)
