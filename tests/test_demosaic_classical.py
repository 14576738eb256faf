"""Classical demosaickers (bilinear, Malvar 2004, Menon 2007) and CFA naming.

Parity reference: colour-demosaicing 0.2.7 (dev dependency) on the same mosaic values, in
float64 and float32. Border crop where the reference's own padding differs from ours
(measured, see ``BORDER``): bilinear 1 px, Malvar 2 px (scipy ``reflect`` breaks the CFA
parity), Menon 6 px (its ``d_H``/``d_V`` sums use ``mode="constant"``). Test image: a 256 x 256
crop of scikit-image's astronaut (ships with the package), scaled to [0, 1].
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from imagingflows.models import cfa
from imagingflows.models.demosaic_methods import CLASSICAL, METHODS, get_method

colour_demosaicing = pytest.importorskip("colour_demosaicing")  # dev extra

PATTERNS = cfa.PATTERNS
BORDER = {"bilinear": 1, "malvar": 2, "menon": 6}  # px the reference's padding affects
_REF = {
    "bilinear": "demosaicing_CFA_Bayer_bilinear",
    "malvar": "demosaicing_CFA_Bayer_Malvar2004",
    "menon": "demosaicing_CFA_Bayer_Menon2007",
}


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    from skimage import data

    img = data.astronaut()[40:296, 120:376].astype(np.float64) / 255
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()  # (1, 3, 256, 256) float64


def _reference(name: str, mosaic: torch.Tensor, pattern: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = getattr(colour_demosaicing, _REF[name])
        return fn(mosaic[0, 0].double().numpy(), pattern)  # (H, W, 3) float64


# ---- naming -----------------------------------------------------------------------------------------

# physical, OpenCV, kornia CFA member name, rawpy raw_pattern (color_desc b"RGBG", LibRaw numbering)
TABLE = [
    ("RGGB", "BayerBG", "BG", [[0, 1], [3, 2]]),
    ("BGGR", "BayerRG", "RG", [[2, 3], [1, 0]]),
    ("GRBG", "BayerGB", "GB", [[1, 0], [2, 3]]),
    ("GBRG", "BayerGR", "GR", [[3, 2], [0, 1]]),
]


@pytest.mark.parametrize("physical,opencv,kornia_name,raw_pattern", TABLE)
def test_naming_table(physical, opencv, kornia_name, raw_pattern):
    from kornia.color import CFA

    assert cfa.to_opencv(physical) == opencv
    assert cfa.from_opencv(opencv) == physical
    assert cfa.from_opencv(f"COLOR_{opencv}2RGB") == physical
    assert cfa.to_kornia(physical) is CFA[kornia_name]
    assert cfa.from_kornia(CFA[kornia_name]) == physical
    pat, desc = cfa.to_rawpy(physical)
    assert pat.tolist() == raw_pattern and desc == b"RGBG"
    assert cfa.from_rawpy(np.array(raw_pattern), b"RGBG") == physical
    # either green numbering reads the same (both greens are 'G' in color_desc)
    swapped = np.array(raw_pattern)
    swapped = np.where(swapped == 1, 3, np.where(swapped == 3, 1, swapped))
    assert cfa.from_rawpy(swapped, b"RGBG") == physical
    assert cfa.from_rawpy(np.tile(np.array(raw_pattern), (2, 2)), b"RGBG") == physical  # 2-periodic 4x4
    assert cfa.check_pattern(physical.lower()) == physical


@pytest.mark.parametrize("pattern", PATTERNS)
def test_masks_and_mosaic_match_colour(pattern, astronaut):
    h, w = 6, 8
    ours = cfa.masks(pattern, h, w, dtype=torch.bool).numpy()
    ref = colour_demosaicing.masks_CFA_Bayer((h, w), pattern)
    assert all(np.array_equal(o, r) for o, r in zip(ours, ref))
    m = cfa.mosaic(astronaut, pattern)
    assert m.shape == (1, 1, 256, 256)
    assert np.array_equal(m[0, 0].numpy(), colour_demosaicing.mosaicing_CFA_Bayer(astronaut[0].permute(1, 2, 0).numpy(),
                                                                                  pattern))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_kornia_name_means_the_same_pattern(pattern, astronaut):
    """kornia's bilinear raw_to_rgb with our converted name equals our bilinear: names agree."""
    from kornia.color import raw_to_rgb

    x = cfa.mosaic(astronaut[..., :64, :64].float(), pattern)
    diff = (raw_to_rgb(x, cfa.to_kornia(pattern)) - get_method("bilinear")(x, pattern)).abs().max().item()
    assert diff <= 1e-6


def test_pattern_errors():
    with pytest.raises(cfa.CFAError, match="OpenCV/kornia naming.*BG is RGGB"):
        cfa.check_pattern("BayerBG")
    with pytest.raises(cfa.CFAError, match="unknown CFA pattern 'RGBG'"):
        cfa.check_pattern("RGBG")
    with pytest.raises(cfa.CFAError, match="raw_pattern is None.*Foveon"):
        cfa.from_rawpy(None, b"RGBG")
    xtrans = np.array([list("GGRGGB"), list("GGBGGR"), list("BRGRBG"),
                       list("GGBGGR"), list("GGRGGB"), list("RBGBRG")])
    idx = np.vectorize({"R": 0, "G": 1, "B": 2}.get)(xtrans)
    with pytest.raises(cfa.CFAError, match="6x6 X-Trans"):
        cfa.from_rawpy(idx, b"RGBG")
    quad = np.repeat(np.repeat(np.array([[0, 1], [3, 2]]), 2, axis=0), 2, axis=1)
    with pytest.raises(cfa.CFAError, match="4x4 quad-Bayer"):
        cfa.from_rawpy(quad, b"RGBG")
    with pytest.raises(cfa.CFAError, match="not an RGB Bayer sensor"):
        cfa.from_rawpy(np.array([[0, 1], [3, 2]]), b"RGBE")
    with pytest.raises(cfa.CFAError, match="not a Bayer pattern"):
        cfa.from_rawpy(np.array([[0, 0], [1, 2]]), b"RGBG")
    with pytest.raises(cfa.CFAError, match="do not fit color_desc"):
        cfa.from_rawpy(np.array([[0, 1], [4, 2]]), b"RGBG")
    assert cfa.pattern_of_crop("RGGB", 1, 0) == "GBRG" and cfa.pattern_of_crop("RGGB", 1, 1) == "BGGR"


# ---- parity with colour-demosaicing ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", CLASSICAL)
def test_matches_colour_demosaicing(name, pattern, dtype, astronaut):
    x = cfa.mosaic(astronaut.to(dtype), pattern)
    ours = get_method(name)(x, pattern)[0].permute(1, 2, 0).double().numpy()
    ref = _reference(name, x, pattern)
    b = BORDER[name]
    diff = np.abs(ours - ref)[b:-b, b:-b].max()
    print(f"{name} {pattern} {str(dtype)[6:]}: max |ours - colour-demosaicing| = {diff:.2e} (border {b} px)")
    assert diff <= 1e-5


@pytest.mark.parametrize("name", CLASSICAL)
def test_tiled_equals_untiled(name, astronaut):
    m = METHODS[name]
    x = torch.cat([cfa.mosaic(astronaut.float()[..., :, :200], "GRBG"),
                   cfa.mosaic(astronaut.float().flip(-1)[..., :, :200], "GRBG")])  # (2, 1, 256, 200)
    whole = m(x, "GRBG", tile=None)
    for tile in (2 * m.halo + 9, 64, 300):
        assert torch.equal(m(x, "GRBG", tile=tile), whole), f"{name} tile={tile}"
    small = x[..., 100:140, 60:96]  # the smallest tile (a core of 2 px) on a small crop
    assert torch.equal(m(small, "GRBG", tile=2 * m.halo + 2), m(small, "GRBG", tile=None))
    # mirrored pads wider than the image (index folding): a 4 x 6 mosaic
    tiny = x[..., :4, :6]
    assert torch.equal(m(tiny, "GRBG", tile=2 * m.halo + 2), m(tiny, "GRBG", tile=None))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", CLASSICAL)
def test_constant_stays_constant_everywhere(name, pattern):
    x = torch.full((2, 1, 18, 22), 0.37, dtype=torch.float64)
    y = get_method(name)(x, pattern)
    assert (y - 0.37).abs().max().item() <= 1e-12  # borders included: CFA parity kept
    if name == "bilinear":  # colour-demosaicing's scipy 'reflect' breaks parity at the borders
        ref = _reference(name, x, pattern)
        assert np.abs(ref - 0.37).max() > 0.1


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", CLASSICAL)
def test_known_samples_kept(name, pattern, astronaut):
    x = cfa.mosaic(astronaut.float(), pattern)
    y = get_method(name)(x, pattern, tile=64)
    assert torch.equal(cfa.mosaic(y, pattern), x)


@pytest.mark.parametrize("name", CLASSICAL)
def test_support_within_halo(name):
    """A change at one pixel moves the output at most halo pixels away (tiles read enough)."""
    m = METHODS[name]
    base = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bumped = base.clone()
    bumped[0, 0, 24, 25] += 0.5
    changed = (m(bumped, "RGGB") - m(base, "RGGB")).abs().amax(1)[0] > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert max((rows - 24).abs().max().item(), (cols - 25).abs().max().item()) <= m.halo


def test_cpsnr_order(astronaut):
    """CPSNR = 10 log10(1 / MSE) over the 3 channels, output clipped to [0, 1], 4 px border crop."""
    x = cfa.mosaic(astronaut.float(), "RGGB")
    ref = astronaut.float()[..., 4:-4, 4:-4]
    score = {}
    for name in CLASSICAL:
        y = get_method(name)(x, "RGGB").clamp(0, 1)[..., 4:-4, 4:-4]
        score[name] = 10 * np.log10(1 / ((y - ref) ** 2).mean().item())
    print("CPSNR (dB, astronaut 256x256, RGGB, crop 4): " + ", ".join(f"{k} {v:.2f}" for k, v in score.items()))
    assert 29 < score["bilinear"] < score["malvar"] < score["menon"], score


# ---- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLASSICAL)
def test_bad_input_errors(name):
    m = get_method(name)
    with pytest.raises(ValueError, match=f"{name}: mosaic width 9 is odd"):
        m(torch.zeros(1, 1, 8, 9), "RGGB")
    with pytest.raises(ValueError, match="height 7 is odd"):
        m(torch.zeros(1, 1, 7, 8), "RGGB")
    with pytest.raises(ValueError, match="height 7 and width 9 are odd"):
        m(torch.zeros(1, 1, 7, 9), "RGGB")
    with pytest.raises(ValueError, match="a 3-channel image is not a mosaic"):
        m(torch.zeros(1, 3, 8, 8), "RGGB")
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "RGGB")
    with pytest.raises(cfa.CFAError, match="unknown CFA pattern"):
        m(torch.zeros(1, 1, 8, 8), "RGB")
    with pytest.raises(ValueError, match="too small"):
        m(torch.zeros(1, 1, 8, 8), "RGGB", tile=2 * METHODS[name].halo)


def test_unknown_method():
    with pytest.raises(ValueError, match="Did you mean 'menon'"):
        get_method("menno")
