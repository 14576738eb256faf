"""Scale-MAE encoder: the official pretraining file loads (encoder strictly, MAE-only keys dropped)
and reproduces the official ``forward_features(x, input_res)`` outputs.

Fixture in ``tests/data/parity_scalemae/`` (its README.md: official repo and commit, load recipe,
measured tolerance): ``scalemae-tiny.pth`` = ``{"model": MaskedAutoencoderViT.state_dict()}`` of a
tiny configuration (embed 64, depth 2, 4 heads), ``io.pt`` with inputs, ``res`` values and the
official class tokens, token sequences and position embeddings, ``keys.txt`` with each key's role.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagingflows.models import CheckpointError, load, load_model, read_checkpoint, save_checkpoint
from imagingflows.models.registry import REGISTRY
from imagingflows.models.scale_mae import gsd_pos_embed

DATA = Path(__file__).parent / "data" / "parity_scalemae"
CHECKPOINT = DATA / "scalemae-tiny.pth"
ATOL = 1e-5
CASES = {"64": "x_64", "96": "x_96", "64_mixedres": "x_64"}


@pytest.fixture(scope="module")
def io() -> dict:
    return torch.load(DATA / "io.pt", weights_only=True)


@pytest.fixture(scope="module")
def encoder():
    return load(CHECKPOINT, num_heads=4)  # the head count is not in the weights (4 in this tiny config)


def _roles() -> dict[str, str]:
    rows = [line.split("\t") for line in (DATA / "keys.txt").read_text().splitlines() if not line.startswith("#")]
    return {row[0]: row[3] for row in rows if len(row) == 4}


def test_release_layout_is_detected_and_hparams_read(encoder):
    ckpt = read_checkpoint(CHECKPOINT)  # weights_only: no trust needed
    assert ckpt.container == "model" and not ckpt.ours
    assert REGISTRY.detect(ckpt.state_dict).name == "scale_mae"
    official = json.loads((DATA / "config.json").read_text())["encoder_kwargs"]
    for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias"):
        assert encoder.config[key] == official[key], key
    assert encoder.config["norm_eps"] == official["norm_layer_eps"]


def test_encoder_keys_load_and_only_mae_keys_are_dropped(encoder):
    roles = _roles()
    assert set(encoder.module.state_dict()) == {k for k, role in roles.items() if role.startswith("encoder")}
    assert len(roles) == 93 and sum(role == "ignored" for role in roles.values()) == 63


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_official_tokens_and_class_token(encoder, io, case):
    x, res = io[CASES[case]], io[f"res_{case}"]
    with torch.no_grad():
        tokens = encoder.module.forward_features(x, res)
        cls = encoder.module(x, res)
    assert tokens.shape == io[f"tokens_{case}"].shape and cls.shape == io[f"cls_{case}"].shape
    assert (tokens - io[f"tokens_{case}"]).abs().max().item() <= ATOL
    assert (cls - io[f"cls_{case}"]).abs().max().item() <= ATOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_gsd_position_embedding_is_the_official_one(io, case):
    official = io[f"pos_embed_{case}"]  # (B, 1 + G*G, D)
    grid = int(round((official.shape[1] - 1) ** 0.5))
    ours = gsd_pos_embed(official.shape[2], (grid, grid), io[f"res_{case}"])
    assert (ours - official).abs().max().item() <= 1e-6
    assert torch.count_nonzero(ours[:, 0]) == 0  # the class token gets nothing added


def test_stored_pos_embed_table_is_not_used(io):
    net = load_model(CHECKPOINT, num_heads=4)
    with torch.no_grad():
        before = net(io["x_96"], io["res_96"])
        net.pos_embed.add_(1.0)
        assert torch.equal(net(io["x_96"], io["res_96"]), before)


def test_res_forms_and_per_sample_values(encoder, io):
    net, x = encoder.module, io["x_64"]
    with torch.no_grad():
        per_sample = net(x, torch.tensor([1.0, 1.0]))
        assert torch.equal(net(x, 1.0), per_sample) and torch.equal(net(x, torch.tensor([1.0])), per_sample)
        mixed = net(x, io["res_64_mixedres"])
        assert not torch.allclose(mixed, per_sample)  # res changes the embedding, per sample
        with pytest.raises(ValueError, match="one value or one per sample"):
            net(x, [1.0, 2.0, 3.0])


def test_input_size_rules_and_feature_map(encoder, io):
    net = encoder.module
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 48)).shape == (1, 64)  # rectangular grids: same formula per axis
        with pytest.raises(ValueError, match="multiple of the patch size 16"):
            net(torch.zeros(1, 3, 40, 48))
        with pytest.raises(ValueError, match="finite and > 0"):
            net(io["x_96"], 0.0)
        fmap = net.feature_map(io["x_96"], io["res_96"])  # (1, 64, 6, 6), token 1 + i * 6 + j at [i, j]
        assert fmap.shape == (1, 64, 6, 6)
        assert torch.equal(fmap[0, :, 2, 5], net.forward_features(io["x_96"], io["res_96"])[0, 1 + 2 * 6 + 5])


def test_rectangular_grid_embedding_is_the_square_one_cut_to_size():
    res = torch.tensor([1.0, 2.5])
    square = gsd_pos_embed(64, (6, 6), res)[:, 1:].reshape(2, 6, 6, 64)
    rect = gsd_pos_embed(64, (4, 6), res)[:, 1:].reshape(2, 4, 6, 64)
    assert torch.equal(rect, square[:, :4])


def test_release_file_with_training_args_loads_without_trust(encoder, io, tmp_path):
    """The real release also pickles ``args`` (an argparse.Namespace holding PosixPaths), the
    optimizer, epoch and scaler: it must load on the weights-only path, giving the same encoder."""
    import argparse
    import pathlib

    sd = read_checkpoint(CHECKPOINT).state_dict
    args = argparse.Namespace(model="mae_vit_large_patch16", input_size=224, output_dir=pathlib.PosixPath("/out"))
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": args}, tmp_path / "release.pth")
    net = load_model(tmp_path / "release.pth", num_heads=4)
    with torch.no_grad():
        assert torch.equal(net(io["x_96"], io["res_96"]), encoder.module(io["x_96"], io["res_96"]))


def test_plain_vit_files_are_not_taken_for_scale_mae(tmp_path):
    """A vanilla MAE / timm ViT has the same encoder keys but another position embedding:
    detection needs Scale-MAE's decoder; an encoder-only file loads when the user says scale_mae."""
    from imagingflows.models.registry import UnknownModelError

    encoder_only = {k: v for k, v in read_checkpoint(CHECKPOINT).state_dict.items() if _roles()[k] != "ignored"}
    torch.save({"model": encoder_only}, tmp_path / "encoder.pth")
    with pytest.raises(UnknownModelError, match="no known architecture"):
        load(tmp_path / "encoder.pth", num_heads=4)
    assert load(tmp_path / "encoder.pth", arch="scale_mae", num_heads=4).spec.name == "scale_mae"


def test_paths_pickled_before_python_3_13_are_allowed():
    """Files written by Python < 3.13 name ``pathlib PosixPath`` (3.13 moved it to pathlib._local):
    a hand-written pickle with that global goes through torch's weights-only unpickler."""
    import io as bytes_io

    from torch.serialization import _weights_only_unpickler  # what torch.load(weights_only=True) runs

    from imagingflows.models.checkpoints import _safe_globals

    raw = (b"\x80\x02}q\x00X\n\x00\x00\x00output_dirq\x01cpathlib\nPosixPath\nq\x02X\x04\x00\x00\x00/outq\x03"
           b"\x85q\x04Rq\x05s.")  # {"output_dir": pathlib.PosixPath("/out")}, protocol 2
    with torch.serialization.safe_globals(_safe_globals()):
        obj = _weights_only_unpickler.load(bytes_io.BytesIO(raw), encoding="utf-8")
    assert str(obj["output_dir"]) == "/out"


def test_missing_head_count_is_a_clear_error_naming_the_file():
    with pytest.raises(CheckpointError, match="scalemae-tiny.pth.*pass num_heads"):
        load(CHECKPOINT)


def test_unknown_key_is_reported_not_dropped(tmp_path):
    sd = dict(read_checkpoint(CHECKPOINT).state_dict)
    sd["head.weight"] = torch.zeros(10, 64)  # a classifier head: not the encoder, not MAE-only
    torch.save({"model": sd}, tmp_path / "with_head.pth")
    with pytest.raises(CheckpointError, match="head.weight"):
        load(tmp_path / "with_head.pth", num_heads=4)


def test_our_file_round_trips(encoder, io, tmp_path):
    save_checkpoint(tmp_path / "ours.pt", encoder.module, arch="scale_mae", config=encoder.config)
    again = load_model(tmp_path / "ours.pt")  # our file carries num_heads
    with torch.no_grad():
        assert torch.equal(again(io["x_96"], io["res_96"]), encoder.module(io["x_96"], io["res_96"]))


def test_torchgeo_encoder_only_file_loads_and_matches(encoder, io, tmp_path):
    """TorchGeo's ``vit_large_patch16_224_fmow_rgb_scalemae`` file is a flat OrderedDict of the encoder's
    timm keys (no ``"model"`` wrapper, no decoder; the pickle holds only OrderedDict and tensors): it loads
    weights-only with ``--arch scale_mae`` and gives the official outputs."""
    from collections import OrderedDict

    flat = OrderedDict((k, v) for k, v in read_checkpoint(CHECKPOINT).state_dict.items() if _roles()[k] != "ignored")
    torch.save(flat, tmp_path / "vit_large_patch16_224_fmow_rgb_scalemae-98ed9821.pth")
    net = load_model(tmp_path / "vit_large_patch16_224_fmow_rgb_scalemae-98ed9821.pth", arch="scale_mae",
                     num_heads=4)
    with torch.no_grad():
        for case, x in CASES.items():
            assert (net(io[x], io[f"res_{case}"]) - io[f"cls_{case}"]).abs().max() <= ATOL
