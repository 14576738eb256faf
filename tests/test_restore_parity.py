"""NAFNet / NAFNetLocal / HAT: official checkpoints load strictly and reproduce the official outputs.

Fixtures in ``tests/data/parity_restore/<case>/`` (see each README.md: official repo, commit,
padding behaviour, measured tolerances): ``checkpoint.pth`` as BasicSR writes it, ``io.pt``
with the official ``input`` -> ``output``, ``config.json`` with the official constructor kwargs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagingflows.models import CheckpointError, load, load_model, read_checkpoint, save_checkpoint
from imagingflows.models import hat, nafnet
from imagingflows.models.registry import REGISTRY

DATA = Path(__file__).parent / "data" / "parity_restore"
ATOL = 1e-5
CASES = {"nafnet_small": "nafnet", "nafnetlocal_small": "nafnet", "hat_small_x2": "hat"}
HINTS = {"nafnetlocal_small": {"local_train_size": [16, 16]}}  # NAFNetLocal's training crop is not in the weights


def _case(name: str) -> tuple[Path, dict, dict]:
    io = torch.load(DATA / name / "io.pt", weights_only=True)
    return DATA / name / "checkpoint.pth", io, json.loads((DATA / name / "config.json").read_text())


def _run(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_detects_arch_and_hparams_and_matches_official_output(name):
    path, io, cfg = _case(name)
    ckpt = read_checkpoint(path)  # weights_only path: no trust needed
    assert ckpt.container == cfg["checkpoint"]["top_level_key"] and not ckpt.ours
    assert REGISTRY.detect(ckpt.state_dict).name == CASES[name]

    lm = load(path, **HINTS.get(name, {}))
    assert lm.spec.name == CASES[name]
    kwargs = dict(cfg["kwargs"])
    if "train_size" in kwargs:  # NAFNetLocal(train_size=(N, C, H, W), fast_imp=False)
        assert kwargs.pop("fast_imp") is False
        kwargs["local_train_size"] = kwargs.pop("train_size")[2:]
    common = sorted(set(kwargs) & set(lm.config))
    assert {k: lm.config[k] for k in common} == {k: kwargs[k] for k in common}
    assert set(kwargs) - set(common) <= {"img_size"}  # HAT's training patch size: not a parameter here

    out = _run(lm.module, io["input"])
    assert out.shape == io["output"].shape
    assert (out - io["output"]).abs().max().item() <= ATOL


def test_every_restore_fixture_and_the_segment_fixture_detect_exactly_one_arch():
    seg = Path(__file__).parent / "data" / "parity_segment" / "model.pt"
    assert REGISTRY.detect(read_checkpoint(seg).state_dict).name == "swin_unetr"
    for name, arch in CASES.items():
        sd = read_checkpoint(DATA / name / "checkpoint.pth").state_dict
        assert [s.name for s in map(REGISTRY.get, REGISTRY.names()) if s.detect(sd)] == [arch]


def test_nafnetlocal_is_an_explicit_option_and_matters():
    path, io, _ = _case("nafnetlocal_small")
    lm = load(path, local_train_size=[16, 16])
    assert lm.describe()["variant"] == {"local_train_size": [16, 16]}
    assert (_run(lm.module, io["input"]) - io["output"]).abs().max().item() <= ATOL

    plain = load(path)  # foreign checkpoint, no hint: plain NAFNet (global pooling)
    assert plain.config["local_train_size"] is None
    diff = (_run(plain.module, io["input"]) - io["output"]).abs().max().item()
    assert diff > 1e-4  # README: 0.000318


def test_arch_pads_itself_for_any_size_and_batch():
    for name in CASES:
        path, io, cfg = _case(name)
        net = load_model(path, **HINTS.get(name, {}))
        scale = cfg["kwargs"].get("upscale", 1)
        x = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(0))
        y = _run(net, x)
        assert y.shape == (2, 3, 9 * scale, 13 * scale)
        assert torch.allclose(_run(net, x[1:]), y[1:], atol=ATOL)  # batch items independent


def test_hat_fixture_network_path_without_padding():
    path, io, _ = _case("hat_small_x2")
    net = load_model(path)
    assert (_run(net, io["net_input"]) - io["net_output"]).abs().max().item() <= ATOL


def test_hat_checkpoint_as_nafnet_is_a_clear_error():
    path, _, _ = _case("hat_small_x2")
    with pytest.raises(ValueError, match=r"do not fit nafnet: missing in checkpoint: intro\.weight.*unexpected"):
        load_model(path, arch="nafnet")


def test_wrong_layout_override_gives_the_key_diff():
    path, _, _ = _case("nafnet_small")
    with pytest.raises(CheckpointError, match=r"(?s)missing in checkpoint \(39\):\n  decoders\.2\.0\..*shape mismatch"):
        load_model(path, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])


@pytest.mark.parametrize("config", [
    dict(img_channel=3, width=32, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2]),  # SIDD
    dict(img_channel=3, width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1]),  # GoPro
    dict(img_channel=1, width=8, middle_blk_num=0, enc_blk_nums=[0, 3], dec_blk_nums=[2, 0]),
])
def test_nafnet_hparams_from_state_dict(config):
    sd = nafnet.build(**config).state_dict()
    found = nafnet.hparams_from_state_dict(sd)
    # the GoPro/REDS layout gets the local variant its official test config runs with
    gopro = config["enc_blk_nums"] == [1, 1, 1, 28]
    assert found.pop("local_train_size") == ([256, 256] if gopro else None)
    assert found == config


HAT_S = dict(in_chans=3, embed_dim=144, depths=[6] * 6, num_heads=[6] * 6, window_size=16, compress_ratio=24,
             squeeze_factor=24, overlap_ratio=0.5, mlp_ratio=2, upscale=4)
HAT_L = dict(HAT_S, embed_dim=180, depths=[6] * 12, num_heads=[6] * 12, compress_ratio=3, squeeze_factor=30, upscale=2)


@pytest.mark.parametrize("config", [
    HAT_S,
    HAT_L,
    dict(HAT_S, embed_dim=180, compress_ratio=3, squeeze_factor=30, upscale=3),  # HAT x3
    dict(in_chans=1, embed_dim=16, depths=[1, 3], num_heads=[4, 2], window_size=4, compress_ratio=2,
         squeeze_factor=4, overlap_ratio=0.5, mlp_ratio=1.5, upscale=8, resi_connection="identity"),
])
def test_hat_hparams_from_state_dict(config):
    sd = hat.build(**config).state_dict()
    hp = hat.hparams_from_state_dict(sd)
    assert {k: hp[k] for k in config} == config
    assert hp["conv_scale"] == 0.01 and hp["img_range"] == 1.0  # not in the weights: upstream defaults


def test_hat_hparams_error_names_the_missing_key():
    sd = hat.build(in_chans=3, embed_dim=8, depths=[1], num_heads=[2], window_size=4, squeeze_factor=4,
                   upscale=2).state_dict()
    sd.pop("upsample.0.weight")
    with pytest.raises(ValueError, match=r"upscale: key 'upsample\.0\.weight' is missing"):
        hat.hparams_from_state_dict(sd)


def test_hat_index_buffers_are_derived_and_may_be_omitted(tmp_path):
    path, io, _ = _case("hat_small_x2")
    lm = load(path)
    buffers = [k for k, _ in lm.module.named_buffers() if lm.spec.is_derived_buffer(k)]
    assert sorted(buffers) == ["relative_position_index_OCA", "relative_position_index_SA"]
    official = read_checkpoint(path).state_dict
    rebuilt = hat.build(**lm.config).state_dict()
    assert all(torch.equal(rebuilt[k], official[k]) for k in buffers)

    save_checkpoint(tmp_path / "ours.pt", lm.module, arch="hat", config=lm.config, omit=tuple(buffers))
    assert not set(buffers) & set(read_checkpoint(tmp_path / "ours.pt").state_dict)
    again = load_model(tmp_path / "ours.pt")
    assert torch.equal(_run(again, io["input"]), _run(lm.module, io["input"]))


def test_hat_reflect_padding_is_the_official_one_and_tiny_inputs_work():
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hat.reflect_pad_to_multiple(x, 8), torch.nn.functional.pad(x, (0, 1, 0, 3), mode="reflect"))
    net = load_model(DATA / "hat_small_x2" / "checkpoint.pth")
    assert _run(net, torch.rand(1, 3, 1, 3)).shape == (1, 3, 2, 6)  # upstream's reflect pad would fail here
