"""DemosaicNet against the ``demosaicnet`` package's own model, with the package's weights.

Reference: ``demosaicnet/modules.py`` of the installed package 0.0.14, loaded from its file
with importlib. Its only import that fails here is ``from pkg_resources import
resource_filename`` (setuptools' ``pkg_resources`` is not installed, and is deprecated); the
test executes the module's source with that one line replaced by a ``resource_filename`` that
joins the package directory and the relative path, so ``th.load`` reads the same installed
``data/bayer.pth`` / ``data/xtrans.pth``. Nothing of torch is stubbed. Skipped (loudly) when
the package is not installed: ``pip install --no-deps demosaicnet==0.0.14``.

X-Trans: the package's ``XTransDemosaick`` and its ``mosaic.py`` (``xtrans``, ``xtrans_cell``;
that file imports only numpy and torch, so it is loaded as is).

Test image: a 256 x 256 crop of scikit-image's astronaut, float32 in [0, 1].
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from imagingflows.models import cfa
from imagingflows.models import demosaicnet as dn
from imagingflows.models import demosaicnet_xtrans as dx


def _package_dir():
    try:
        return dn.package_weights("bayer.pth").parent.parent
    except dn.DemosaicNetError as exc:
        pytest.skip(f"demosaicnet package data missing ({exc})")


@pytest.fixture(scope="module")
def package_modules() -> types.ModuleType:
    root = _package_dir()
    source = (root / "modules.py").read_text()
    line = "from pkg_resources import resource_filename"
    if importlib.util.find_spec("pkg_resources") is None:
        assert line in source, "demosaicnet/modules.py changed: update the test's import patch"
        source = source.replace(line, f"resource_filename = lambda _pkg, rel: {str(root)!r} + '/' + rel")
    module = types.ModuleType("demosaicnet_modules_reference")
    module.__file__ = str(root / "modules.py")
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def package_mosaic() -> types.ModuleType:
    """The package's ``mosaic.py`` (numpy and torch imports only), loaded from its file."""
    root = _package_dir()
    spec = importlib.util.spec_from_file_location("demosaicnet_mosaic_reference", root / "mosaic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ours() -> dn.DemosaicNetBayer:
    _package_dir()
    return dn.DemosaicNetBayer(pretrained=True).eval()


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    from skimage import data

    img = data.astronaut()[40:296, 120:376].astype(np.float32) / 255
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()  # (1, 3, 256, 256)


def _cpsnr(out: torch.Tensor, ref: torch.Tensor, border: int = 4) -> float:
    h, w = ref.shape[-2:]
    d = (out.clamp(0, 1) - ref)[..., border:h - border, border:w - border].double()
    return float(-10 * torch.log10((d ** 2).mean()))


def test_strict_load_keys_match_package():
    _package_dir()
    sd = dn.load_package_state_dict("bayer.pth")
    model = dn.DemosaicNetBayer()
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(sd)
    assert sum(p.numel() for p in model.parameters()) == 560_886


@pytest.mark.parametrize("pattern", cfa.PATTERNS)
def test_matches_package_model(package_modules, ours, astronaut, pattern):
    """Our output equals the package's model, run unpadded on the GRBG-aligned region, to 1e-5."""
    torch.manual_seed(0)
    ref_model = package_modules.BayerDemosaick(pretrained=True).eval()
    mosaic = cfa.mosaic(astronaut, pattern)
    dy, dx = dn.bayer_shift(pattern)
    h, w = 256 - 2 * dy, 256 - 2 * dx  # even region starting on a GRBG block
    region = mosaic[..., dy:dy + h, dx:dx + w]
    x3 = region.expand(-1, 3, -1, -1) * cfa.masks("GRBG", h, w)
    with torch.no_grad():
        ref = ref_model(x3)  # (1, 3, h - 62, w - 62): pixel (i, j) is region (i + 31, j + 31)
        assert torch.equal(ours.forward_valid(x3), ref)
        out = ours(mosaic, pattern, tile=None)
    c = dn.CROP
    inner = out[..., dy + c:dy + c + ref.shape[-2], dx + c:dx + c + ref.shape[-1]]
    assert float((inner - ref).abs().max()) <= 1e-5


def test_sizes_patterns_quality_and_tiles(ours, astronaut):
    """Size kept, every pattern a good demosaick (measured about 39.8 dB vs Malvar's 34.6),
    tiles agree with one pass, float64 in gives float64 out."""
    from imagingflows.models.demosaic_malvar import demosaic_malvar

    for pattern in cfa.PATTERNS:
        mosaic = cfa.mosaic(astronaut, pattern)
        with torch.no_grad():
            out = ours(mosaic, pattern, tile=None)
            if pattern == "GBRG":  # both one-pixel shifts; 2 x 2 tiles of 128 px cores
                tiled = ours(mosaic, pattern, tile=192)
                assert float((out - tiled).abs().max()) <= 1e-5
        assert out.shape == (1, 3, 256, 256) and out.dtype == torch.float32
        ours_db, malvar_db = _cpsnr(out, astronaut), _cpsnr(demosaic_malvar(mosaic, pattern), astronaut)
        assert ours_db > 36 and ours_db > malvar_db + 2, (pattern, ours_db, malvar_db)
    small = cfa.mosaic(astronaut[..., :30, :46].double(), "RGGB")  # smaller than the halo
    out = dn.demosaic_demosaicnet(small, "RGGB")
    assert out.shape == (1, 3, 30, 46) and out.dtype == torch.float64
    assert _cpsnr(out, astronaut[..., :30, :46].double()) > 28


def test_bad_input():
    ours = dn.DemosaicNetBayer()  # the checks come before any weights are needed
    with pytest.raises(ValueError, match="width 33 is odd"):
        ours(torch.zeros(1, 1, 32, 33), "RGGB")
    with pytest.raises(ValueError, match="height 31 and width 33 are odd"):
        dn.demosaic_demosaicnet(torch.zeros(1, 1, 31, 33), "RGGB")
    with pytest.raises(ValueError, match="3-channel"):
        ours(torch.zeros(1, 3, 32, 32), "RGGB")
    with pytest.raises(cfa.CFAError, match="OpenCV"):
        ours(torch.zeros(1, 1, 32, 32), "BayerBG")
    with pytest.raises(ValueError, match="too small"):
        ours(torch.zeros(1, 1, 32, 32), "RGGB", tile=64)


def test_missing_package_error_names_install(monkeypatch):
    monkeypatch.setattr(dn, "PACKAGE", "demosaicnet_not_installed_here")
    with pytest.raises(dn.DemosaicNetError, match=r"not installed.*pip install"):
        dn.package_weights("bayer.pth")


# ---- X-Trans --------------------------------------------------------------------------------------

def test_xtrans_cell_and_strict_load(package_mosaic):
    assert torch.equal(dx.xtrans_masks(None, 6, 6), package_mosaic.xtrans_cell(torch=True))
    sd = dn.load_package_state_dict("xtrans.pth")
    model = dx.DemosaicNetXTrans()
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys and list(model.state_dict()) == list(sd)
    assert sum(p.numel() for p in model.parameters()) == 409_923


def test_xtrans_matches_package_model(package_modules, package_mosaic, astronaut):
    img = astronaut[..., :252, :252]  # multiples of 6, as the package's xtrans() needs
    ref_model = package_modules.XTransDemosaick(pretrained=True).eval()
    ours = dx.DemosaicNetXTrans(pretrained=True).eval()
    x3 = package_mosaic.xtrans(img[0])[None]  # (1, 3, 252, 252) masked with the package's cell
    mosaic = dx.xtrans_mosaic(img)
    assert torch.equal(mosaic, x3.sum(1, keepdim=True))
    with torch.no_grad():
        ref = ref_model(x3)  # (1, 3, 228, 228): pixel (i, j) is input (i + 12, j + 12)
        assert torch.equal(ours.forward_valid(x3), ref)
        out = ours(mosaic, None, tile=None)
    assert out.shape == (1, 3, 252, 252)
    assert float((out[..., 12:-12, 12:-12] - ref).abs().max()) <= 1e-5


def test_xtrans_shifted_patterns_any_size(astronaut):
    """Crops at every kind of offset (so the top-left block is a shifted cell), sizes not a
    multiple of 6: size kept, measured about 38.9 dB (4 px border), tiles agree."""
    _package_dir()
    ours = dx.load_demosaicnet_xtrans()
    for oy, ox in [(0, 0), (1, 2), (3, 5), (5, 1)]:
        img = astronaut[..., oy:oy + 200, ox:ox + 203]
        pattern = dx.shifted_pattern(None, oy, ox)
        mosaic = dx.xtrans_mosaic(img, pattern)
        with torch.no_grad():
            out = ours(mosaic, "/".join(pattern), tile=None)
            if (oy, ox) == (3, 5):
                assert float((out - ours(mosaic, pattern, tile=120)).abs().max()) <= 1e-5
        assert out.shape == (1, 3, 200, 203)
        assert _cpsnr(out, img) > 35, (oy, ox)
        assert _cpsnr(out[..., :16, :], img[..., :16, :], border=0) > 30  # padded borders stay sane


def test_xtrans_bad_input():
    with pytest.raises(cfa.CFAError, match="not an X-Trans layout"):
        dx.check_xtrans_pattern("RGGB" * 9)
    with pytest.raises(cfa.CFAError, match="36 letters"):
        dx.check_xtrans_pattern("RGGB")
    model = dx.DemosaicNetXTrans()  # the checks come before any weights are needed
    with pytest.raises(ValueError, match="3-channel"):
        model(torch.zeros(1, 3, 24, 24))
    with pytest.raises(ValueError, match="smaller than one 6x6"):
        model(torch.zeros(1, 1, 24, 5))
