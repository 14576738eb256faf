"""Our JDD network (models/jdd.py): a fresh network is the bilinear demosaic, any pattern reads from the
network's RGGB phase (a pattern is a one-pixel shift of another), tiles agree with one pass, the noise
level is estimated within a few per cent, checkpoints load through the registry, and the training pairs
carry the noise they say."""

from __future__ import annotations

import pytest
import torch
from skimage import data

from imagingflows.models.cfa import mosaic as make_mosaic
from imagingflows.models.demosaic_methods import get_method
from imagingflows.models.jdd import JDDNet, demosaic_jdd, estimate_noise, noise_map

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def _rgb(h: int = 96, w: int = 120) -> torch.Tensor:
    return torch.from_numpy(data.astronaut()[100:100 + h, 150:150 + w] / 255.0).float().permute(2, 0, 1)[None]


def _random_net(seed: int = 0) -> JDDNet:
    torch.manual_seed(seed)
    net = JDDNet(width=8, enc_blocks=1, mid_blocks=1).eval()
    torch.nn.init.normal_(net.exit.weight, std=0.05)  # a fresh net's exit is zero: give it some output
    return net


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_fresh_network_is_the_bilinear_demosaic(pattern):
    m = make_mosaic(_rgb(), pattern)
    ours = demosaic_jdd(m, pattern, net=JDDNet(width=8, enc_blocks=1, mid_blocks=1), tile=None, noise=0.0)
    bilinear = get_method("bilinear")(m, pattern, tile=None)
    assert torch.allclose(ours[..., 2:-2, 2:-2], bilinear[..., 2:-2, 2:-2], atol=1e-6)


def test_each_pattern_is_a_one_pixel_shift_of_rggb():
    net = _random_net()
    rgb = _rgb(100, 124)
    m = make_mosaic(rgb, "RGGB")
    ref = demosaic_jdd(m, "RGGB", net=net, tile=None, noise=0.01)
    halo = net.halo
    for pattern, (dy, dx) in {"GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}.items():
        crop = m[..., dy:dy + 96, dx:dx + 120]  # the RGGB mosaic read from (dy, dx) has this pattern
        got = demosaic_jdd(crop, pattern, net=net, tile=None, noise=0.01)
        inner = (slice(None), slice(None), slice(halo, 96 - halo), slice(halo, 120 - halo))
        want = ref[..., dy:dy + 96, dx:dx + 120]
        assert torch.allclose(got[inner], want[inner], atol=1e-5), pattern


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])  # no shift and both shifts (the shift test covers the rest)
def test_tiles_agree_with_one_pass(pattern):
    net = _random_net(1)
    m = make_mosaic(_rgb(160, 200), pattern)
    whole = demosaic_jdd(m, pattern, net=net, tile=None, noise=0.02)
    tiled = demosaic_jdd(m, pattern, net=net, tile=2 * net.halo + 70, noise=0.02)  # cores of 70: 3 x 3 tiles
    assert (whole - tiled).abs().max() <= 1e-5


def test_the_noise_level_is_estimated_within_a_few_per_cent():
    m = make_mosaic(torch.from_numpy(data.coffee() / 255.0).float().permute(2, 0, 1)[None], "GRBG")
    gen = torch.Generator().manual_seed(0)
    assert estimate_noise(m) < 0.008  # clean: texture alone reads low
    for sigma in (0.02, 0.04, 0.06):
        est = float(estimate_noise(m + sigma * torch.randn(m.shape, generator=gen)))
        assert abs(est - sigma) / sigma < 0.1, (sigma, est)


def test_noise_maps_gaussian_and_poisson_gaussian():
    m = torch.full((2, 1, 8, 8), 0.25)
    assert torch.equal(noise_map(m, 0.03), torch.full_like(m, 0.03))
    assert torch.allclose(noise_map(m, torch.tensor([0.01, 0.05]))[:, 0, 0, 0], torch.tensor([0.01, 0.05]))
    assert torch.allclose(noise_map(m, (0.004, 0.0001)), torch.full_like(m, (0.004 * 0.25 + 0.0001) ** 0.5))
    with pytest.raises(ValueError, match="negative"):
        noise_map(m, -0.1)


def test_checkpoints_load_through_the_registry(tmp_path):
    from imagingflows.models.backend import load
    from imagingflows.models.checkpoints import save_checkpoint

    net = _random_net(2)
    save_checkpoint(tmp_path / "ours.pt", net, arch="jdd", config={"width": 8, "enc_blocks": 1, "mid_blocks": 1})
    torch.save(net.state_dict(), tmp_path / "plain.pth")  # a bare state dict: arch and config from its keys
    m = make_mosaic(_rgb(64, 64), "BGGR")
    want = demosaic_jdd(m, "BGGR", net=net, tile=None, noise=0.01)
    for name in ("ours.pt", "plain.pth"):
        lm = load(tmp_path / name)
        assert lm.spec.name == "jdd" and lm.config == {"width": 8, "enc_blocks": 1, "mid_blocks": 1}
        method = get_method("jdd", weights=tmp_path / name)
        assert method.denoises and method.weights[1] == lm.weights_sha256
        assert torch.equal(method(m, "BGGR", tile=None, noise=0.01), want)


def test_training_pairs_carry_the_noise_they_say():
    from imagingflows.pipelines.demosaic_train import add_noise, training_pairs

    gen = torch.Generator().manual_seed(0)
    flat = torch.full((1, 1, 256, 256), 0.4)
    noisy, level = add_noise(flat, torch.tensor([0.03]), "gaussian", gen)
    assert abs(float((noisy - flat).std()) - 0.03) < 0.002 and torch.equal(level, torch.full_like(flat, 0.03))
    noisy, level = add_noise(flat, torch.tensor([0.05]), "poisson-gaussian", gen)
    assert abs(float((noisy - flat).std()) - float(level.mean())) < 0.004  # the map states the std it drew
    pool = [_rgb(120, 120)[0]]
    x, y = training_pairs(pool, 4, 32, {"linear_share": 0.0, "patterns": ("GBRG",), "noise": (0.0, 0.0),
                                        "noise_model": "gaussian"}, gen)
    assert x.shape == (4, 2, 32, 32) and y.shape == (4, 3, 32, 32)
    assert torch.equal(x[:, :1], make_mosaic(y, "RGGB"))  # noise-free: the input is the target's RGGB mosaic
