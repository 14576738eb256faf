"""Checkpoint reading, strict loading, architecture detection and the BraTS21 parity fixture."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from imagingflows.models import CheckpointError, load_model, read_checkpoint, save_checkpoint
from imagingflows.models.backend import load
from imagingflows.models.registry import REGISTRY, Registry, UnknownModelError
from imagingflows.models.swin_unetr import build, hparams_from_state_dict

PARITY = Path(__file__).parent / "data" / "parity_segment"


def test_parity_with_official_monai_14_output():
    """The BraTS21-format file (numpy scalar inside) loads safely and reproduces MONAI 1.4 to 1e-5."""
    net = load_model(PARITY / "model.pt")
    io = torch.load(PARITY / "io.pt", weights_only=True)
    with torch.no_grad():
        out = net(io["input"])
    assert out.shape == io["output"].shape
    assert (out - io["output"]).abs().max().item() <= 1e-5


def test_parity_file_needs_the_allow_list_not_a_full_unpickle():
    with pytest.raises(pickle.UnpicklingError):
        torch.load(PARITY / "model.pt", weights_only=True)  # plain torch refuses the numpy scalar
    ckpt = read_checkpoint(PARITY / "model.pt")  # our allow-list is enough
    assert ckpt.container == "state_dict" and not ckpt.stripped_prefix and not ckpt.ours
    assert len(ckpt.state_dict) == 159


def test_current_patch_merging_is_an_explicit_option_and_differs():
    io = torch.load(PARITY / "io.pt", weights_only=True)
    lm = load(PARITY / "model.pt", patch_merging="current")
    assert lm.config["patch_merging"] == "current"
    with torch.no_grad():
        diff = (lm.module(io["input"]) - io["output"]).abs().max().item()
    assert diff > 0.1  # MONAI >= 1.5 merging does not reproduce the published behaviour


def test_hparams_read_from_keys_and_shapes():
    net = build(in_channels=2, out_channels=5, feature_size=24, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
                norm_name="batch", use_v2=True)
    hp = hparams_from_state_dict(net.state_dict())
    assert hp["in_channels"] == 2 and hp["out_channels"] == 5 and hp["feature_size"] == 24
    assert hp["norm_name"] == "batch" and hp["use_v2"] is True and hp["window_size"] == 7
    assert tuple(hp["depths"]) == (2, 2, 2, 2) and tuple(hp["num_heads"]) == (3, 6, 12, 24)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "params_ema", "params", "model", "module"])
def test_official_containers_and_prefixes(tmp_path, wrap):
    net = build(in_channels=1, out_channels=2, feature_size=12, patch_merging="legacy")
    sd = net.state_dict()
    obj = {
        "bare": sd,
        "state_dict": {"epoch": 3, "state_dict": sd},
        "params_ema": {"params_ema": sd, "params": {k: v + 1 for k, v in sd.items()}},
        "params": {"params": sd},
        "model": {"model": sd},
        "module": {"state_dict": {"module." + k: v for k, v in sd.items()}},
    }[wrap]
    torch.save(obj, tmp_path / "w.pth")
    ckpt = read_checkpoint(tmp_path / "w.pth")
    assert ckpt.stripped_prefix == (wrap == "module")
    if wrap == "params_ema":
        assert ckpt.container == "params_ema"  # preferred over params, and reported
    loaded = load_model(tmp_path / "w.pth")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_our_checkpoint_records_variant_and_round_trips_in_fp16(tmp_path):
    net = build(in_channels=4, out_channels=3, feature_size=12, patch_merging="current")
    cfg = {"in_channels": 4, "out_channels": 3, "feature_size": 12, "patch_merging": "current"}
    save_checkpoint(tmp_path / "ours.pt", net, arch="swin_unetr", config=cfg, meta={"profile": {"axcodes": "RAS"}},
                    half=True)
    lm = load(tmp_path / "ours.pt")
    assert lm.config["patch_merging"] == "current"  # recorded, not the foreign default
    assert lm.meta["profile"]["axcodes"] == "RAS"
    for k, v in lm.module.state_dict().items():
        ref = net.state_dict()[k]
        assert v.dtype == ref.dtype
        tol = 1e-2 * max(1.0, ref.abs().max().item()) if ref.is_floating_point() else 0
        assert torch.allclose(v.float(), ref.float(), atol=tol), k


def test_mismatched_keys_give_a_readable_diff(tmp_path):
    net = build(in_channels=4, out_channels=3, feature_size=12)
    sd = net.state_dict()
    sd.pop("out.conv.conv.bias")
    sd["extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "bad.pt", arch="swin_unetr")
    text = str(err.value)
    assert "missing in checkpoint (1)" in text and "out.conv.conv.bias" in text
    assert "unexpected in checkpoint (1)" in text and "extra.weight" in text


def test_unknown_architecture_and_unsafe_pickle(tmp_path):
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(UnknownModelError, match="matches no known architecture"):
        load_model(tmp_path / "other.pt")

    from fractions import Fraction  # any global outside the allow-list

    torch.save({"state_dict": {"a": torch.zeros(1)}, "args": Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "trunc.pt").write_bytes((PARITY / "io.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        read_checkpoint(tmp_path / "trunc.pt")


def test_registry_lookup_and_duplicates():
    with pytest.raises(UnknownModelError, match="Did you mean 'swin_unetr'"):
        REGISTRY.get("swin_unter")
    spec = REGISTRY.get("swin_unetr")
    with pytest.raises(ValueError, match="registered twice"):
        Registry([spec, spec])
