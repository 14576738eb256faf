"""Registry of demosaicking methods: classical ones without weights (bilinear, Malvar 2004, Menon 2007),
DemosaicNet, whose weights come from the installed ``demosaicnet`` package (loaded on first use), and
our JDD network (joint demosaick-denoise, ``models/jdd.py``), whose weights are a checkpoint (default:
the bundled demo weights ``weights/jdd_demo.pt``).

Why not :class:`~imagingflows.models.registry.ModelSpec`: a spec describes a network with a
state dict (``build``, ``detect_keys``, ``hparams_from_state_dict``); a parameter-free method
has none of these, and a spec with no ``detect_keys`` would match *every* checkpoint in
``Registry.detect``. Our JDD net is a ModelSpec (its checkpoints load through the backend) wrapped
here as a method; DemosaicNet's released weights are the package's, loaded by ``models/demosaicnet.py``.

Every method: ``method(mosaic (B, 1, H, W) float, pattern, *, tile=..., noise=None) -> (B, 3, H, W)``;
``noise`` (the noise std on the [0, 1] mosaic, None: unknown) is used by the methods that denoise
(``denoises``: JDD, which estimates it when None) and ignored by the others.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch

from imagingflows.models import demosaic_bilinear, demosaic_malvar, demosaic_menon, demosaicnet, demosaicnet_xtrans, jdd


@dataclass(frozen=True)
class DemosaicMethod:
    """One method.

    Attributes:
        name: ``--method`` name.
        fn: ``fn(mosaic, pattern, *, tile) -> rgb``, or with ``noise=`` too when ``denoises``.
        halo: context pixels each tile reads beyond its core (even; >= the support radius).
        description: one line for listings.
        reference: the paper.
        denoises: the method takes the noise level and removes the noise (JDD).
        weights: the checkpoint it runs, with its SHA-256 (None: no checkpoint).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    halo: int
    description: str
    reference: str
    denoises: bool = False
    weights: tuple[str, str] | None = None

    def __call__(self, mosaic: torch.Tensor, pattern: str, *, tile: int | None = 1024, noise=None) -> torch.Tensor:
        if self.denoises:
            return self.fn(mosaic, pattern, tile=tile, noise=noise)
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


#: methods that run a checkpoint (``get_method(name, weights=...)``)
LEARNED = {"jdd": jdd.NAME}
JDD_DEMO = "jdd_demo"  # models/weights/jdd_demo.pt, trained by `run-flow train demosaic`


def _jdd_model(weights, device: str):
    from imagingflows.models.backend import cached_model, demo_weights

    path = str(weights) if weights is not None else str(demo_weights(JDD_DEMO))
    lm = cached_model(path, device=device)
    if lm.spec.name != jdd.NAME:
        raise ValueError(f"{path}: a {lm.spec.name} checkpoint, not a {jdd.NAME} one")
    return path, lm


def _jdd_with(mosaic, pattern, *, net, run, precision, tile=1024, noise=None):
    from imagingflows.models.engines import autocast_for

    with autocast_for(precision, mosaic.device):
        return jdd.demosaic_jdd(mosaic, pattern, net=net, tile=tile, noise=noise, run=run)


def jdd_method(weights=None, device: str = "cpu", engine: str = "eager", precision: str = "fp32") -> DemosaicMethod:
    """Our JDD network from ``weights`` (default: the bundled demo weights) on ``device``, loaded once per
    process (:func:`imagingflows.models.backend.cached_model`), run by ``engine`` at ``precision``;
    ValueError when the file is not a JDD checkpoint."""
    from functools import partial

    from imagingflows.models.engines import engine_module

    path, lm = _jdd_model(weights, device)
    net = lm.module.eval()
    run = engine_module(net, engine) if engine != "eager" else None
    return DemosaicMethod("jdd", partial(_jdd_with, net=net, run=run, precision=precision), net.halo,
                          "JDD: our joint demosaick-denoise network (noise-level input, any Bayer pattern)",
                          "imagingflows (models/jdd.py; trained by run-flow train demosaic)", denoises=True,
                          weights=(path, lm.weights_sha256))


def engine_target(name: str, *, weights=None, device: str = "cpu"):
    """The network a learned method runs, as :func:`imagingflows.models.engines.choose` measures it
    (:class:`~imagingflows.models.engines.EngineTarget`); None for a method without one (classical)."""
    from imagingflows.models.engines import EngineRule, EngineTarget, measure_input

    key = str(name).strip().lower()
    if key == "jdd":
        _, lm = _jdd_model(weights, device)
        side = 256  # a multiple of 4, as the network needs; channel 2 is a flat noise level
        x = torch.cat([measure_input(1, side), torch.full((1, 1, side, side), 0.02)], 1)
        return EngineTarget.of(lm, (x,))
    if key == "demosaicnet":
        from hashlib import sha256

        net = demosaicnet.load_demosaicnet(device)
        digest = sha256(demosaicnet.package_weights().read_bytes()).hexdigest()
        return EngineTarget(net, EngineRule(demosaicnet.AGREEMENT), {}, torch.device(device), digest,
                            demosaicnet.engine_inputs(), "forward_valid")
    return None


def get_method(name: str, *, weights=None, device: str = "cpu", engine: str = "eager",
               precision: str = "fp32") -> DemosaicMethod:
    """The method called ``name``; ValueError with a "did you mean" hint otherwise. ``weights`` applies to
    the methods that run a checkpoint (``jdd``); ``device``, ``engine`` (resolved, e.g. by
    :func:`imagingflows.models.engines.choose` on :func:`engine_target`) and ``precision`` (``fp32``,
    ``bf16``, ``fp16`` autocast) to the learned ones (``jdd``, ``demosaicnet``)."""
    from functools import partial

    key = str(name).strip().lower()
    if key == "jdd":
        return jdd_method(weights, device, engine, precision)
    if key == "demosaicnet" and (engine != "eager" or precision != "fp32"):
        base = METHODS[key]
        return DemosaicMethod(base.name, partial(demosaicnet.demosaic_demosaicnet, engine=engine, precision=precision),
                              base.halo, base.description, base.reference)
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, list_methods(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown demosaic method {name!r}.{hint} Available: {', '.join(list_methods())}")


def list_methods() -> list[str]:
    return [*METHODS, *LEARNED]
