"""The shared training loop (pipelines/fit.py) on a real 2-layer conv net and a toy regression:
exact resume from last.pt, best.pt at the best epoch, the resume guard, result/headline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from imagingflows.models.backend import LoadedModel
from imagingflows.models.checkpoints import read_checkpoint
from imagingflows.models.registry import ModelSpec
from imagingflows.pipelines import fit

SCORE = fit.Score("val_score", "best_score", "score", digits=4, shown=".3f")


def _net(width: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(width, 1, 3, padding=1))


def _model(width: int = 4, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    spec = ModelSpec(name="toy_conv", build=_net, default_config={}, detect_keys=(),
                     hparams_from_state_dict=lambda sd: {})
    return LoadedModel(_net(width), spec, {"width": width}, None, None, {}, torch.device("cpu"))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of shape (8, 1, 12, 12): y is a fixed blur-and-shift of x, learnable by two 3x3 convs."""
    x = torch.randn((8, 1, 12, 12), generator=torch.Generator().manual_seed(seed))
    kernel = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]]).view(1, 1, 3, 3)
    return x, torch.nn.functional.conv2d(x, kernel, padding=1) + 0.3


def _fit(lm, run, *, epochs=4, validate=None, settings=None, lr=1e-2, grad_clip=None, curve=None):
    x, y = _data()
    xv, yv = _data(1)

    def held_out(net):  # higher is better: minus the validation MSE
        with torch.no_grad():
            return {"score": -float(((net(xv) - yv) ** 2).mean()), "recipe": "toy MSE"}

    return fit.fit(lm, run, optimizer=fit.AdamW(lr, weight_decay=1e-4), batches=lambda start: lambda: (x, y),
                   loss=lambda p, t: ((p - t) ** 2).mean(), validate=validate or held_out, score=SCORE,
                   settings=settings or {"task": "toy", "width": lm.config["width"]}, meta={"profile": "toy"},
                   split={"train": ["a"], "val": ["b"], "seed": 0}, epochs=epochs, steps=5,
                   grad_clip=grad_clip, curve=curve)


def _without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_a_killed_run_resumes_from_last_pt_as_if_never_stopped(tmp_path):
    straight = _fit(_model(), tmp_path / "straight")

    calls = []

    def dies_in_epoch_3(net):  # the process is killed during epoch 3: last.pt holds epoch 2
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        with torch.no_grad():
            xv, yv = _data(1)
            return {"score": -float(((net(xv) - yv) ** 2).mean())}

    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), tmp_path / "killed", validate=dies_in_epoch_3)
    assert read_checkpoint(tmp_path / "killed" / "last.pt").meta["train_state"]["epoch"] == 2
    # a fresh model with other initial weights: fit continues from last.pt's weights and optimizer state
    resumed = _fit(_model(seed=7), tmp_path / "killed")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert _without_seconds(resumed["history"]) == _without_seconds(straight["history"])
    a = read_checkpoint(tmp_path / "straight" / "last.pt").state_dict
    b = read_checkpoint(tmp_path / "killed" / "last.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["history"][-1]["loss"] < 0.5 * straight["history"][0]["loss"]  # it learns


def test_more_epochs_continue_the_run_and_its_lr_schedule(tmp_path):
    first = _fit(_model(), tmp_path / "run", epochs=2)
    more = _fit(_model(), tmp_path / "run", epochs=4)
    straight = _fit(_model(), tmp_path / "straight", epochs=4)
    assert more["epochs_done"] == 4 and more["history"][:2] == first["history"]
    # the cosine LR is recomputed from the step's place in the longer run
    assert [h["lr"] for h in more["history"][2:]] == [h["lr"] for h in straight["history"][2:]]
    assert more["history"][1]["lr"] < more["history"][0]["lr"]


def test_best_pt_holds_the_epoch_with_the_best_score(tmp_path):
    scores, weights = iter([0.2, 0.7, math.nan, 0.5]), []

    def scripted(net):
        weights.append({k: v.clone() for k, v in net.state_dict().items()})
        return {"score": next(scores)}

    out = _fit(_model(), tmp_path / "run", validate=scripted, curve={
        "loss_label": "MSE", "series": {"score": "val_score"}, "ylabel": "score"})
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert [h["epoch"] for h in best.meta["history"]] == [1, 2] and best.meta["profile"] == "toy"
    assert all(torch.equal(best.state_dict[k], weights[1][k]) for k in weights[1])
    assert not all(torch.equal(best.state_dict[k], weights[3][k]) for k in weights[3])
    assert out["best_score"] == 0.7 and out["best_checkpoint"] == str(tmp_path / "run" / "best.pt")
    with Image.open(tmp_path / "run" / "training_curve.png") as im:
        assert im.size[0] > 400


def test_no_validation_score_means_no_best_pt(tmp_path):
    out = _fit(_model(), tmp_path / "run", epochs=2, validate=lambda net: {})
    assert not (tmp_path / "run" / "best.pt").exists()
    assert out["result"] == {"epochs_done": 2, "best_score": None, "best_checkpoint": str(tmp_path / "run" / "last.pt"),
                             "last_checkpoint": str(tmp_path / "run" / "last.pt")}
    assert out["headline"] == f"2 epochs, no validation score -> {tmp_path / 'run' / 'last.pt'}"


def test_a_resumed_run_with_other_settings_is_refused(tmp_path):
    run = tmp_path / "run"
    _fit(_model(), run, epochs=1)
    with pytest.raises(ValueError, match=r"started with other settings: width 4 \(asked now: 8\)"):
        _fit(_model(8), run, epochs=2)
    with pytest.raises(ValueError, match=r"lr 0.01 \(asked now: 0.02\)"):
        _fit(_model(), run, epochs=2, lr=0.02)
    with pytest.raises(ValueError, match=r"grad_clip None \(asked now: 0.5\)"):
        _fit(_model(), run, epochs=2, grad_clip=0.5)
    assert read_checkpoint(run / "last.pt").meta["train_state"]["epoch"] == 1  # nothing was trained on
    assert _fit(_model(), run, epochs=2)["epochs_done"] == 2


def test_result_and_headline_name_no_domain_metric(tmp_path):
    score = fit.Score("val_psnr", "best_psnr", "PSNR", unit="dB", digits=3, shown=".2f",
                      gain=("gain_db", "val_gain_db"))
    run = tmp_path / "run"
    result = {"epochs_done": 10, "best_psnr": 31.2, "gain_db": 5.1, "best_checkpoint": str(run / "best.pt"),
              "last_checkpoint": str(run / "last.pt")}
    assert fit.headline(result, score) == f"10 epochs, best validation PSNR 31.20 dB (gain +5.10 dB) -> {run}/best.pt"
    out = _fit(_model(), run, epochs=1)
    assert set(out["result"]) == {"epochs_done", "best_score", "best_checkpoint", "last_checkpoint"}
    assert out["result"]["best_score"] == round(out["history"][0]["val_score"], 4) == out["best_score"]
    assert out["headline"] == f"1 epoch, best validation score {out['best_score']:.3f} -> {run}/best.pt"
    assert read_checkpoint(run / "best.pt").meta["recipe"] == "toy MSE"  # non-numbers go to the meta
    assert "val_recipe" not in out["history"][0]


TINY_NAFNET = {"width": 8, "enc_blk_nums": [1], "dec_blk_nums": [1], "middle_blk_num": 1}


def test_restore_refuses_another_scratch_model_and_summarises_domain_free(tmp_path):
    """A resume with another scratch architecture is refused (it used to go on training the old one)."""
    from imagingflows.pipelines.restore_train import train as train_restore

    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(clean / f"{i}.png")
    cfg = {"task": "denoise", "epochs": 1, "steps_per_epoch": 1, "batch_size": 1, "patch": 32,
           "val_fraction": 0.34, "arch_config": TINY_NAFNET, "val_crop": 32}
    out = train_restore(clean, tmp_path / "restore", cfg)
    assert out["result"]["best_psnr"] == out["best_psnr"] and out["result"]["gain_db"] == out["gain_db"]
    assert out["headline"].startswith("1 epoch, best validation PSNR ") and " dB (gain " in out["headline"]
    with pytest.raises(ValueError, match=r"arch_config .*'width': 8.* \(asked now: .*'width': 16"):
        train_restore(clean, tmp_path / "restore", {**cfg, "epochs": 2, "arch_config": {**TINY_NAFNET, "width": 16}})


def test_segment_summary_carries_result_and_headline(tmp_path, make_cases):
    """No validation cases (a validation pass of Swin UNETR costs ~10 s here): the headline says so."""
    from imagingflows.pipelines.medical_train import train as train_segment

    run = tmp_path / "segment"
    out = train_segment(make_cases(2, seed=0), run, {
        "epochs": 1, "steps_per_epoch": 1, "batch_size": 1, "roi": [64, 64, 64], "spacing": [6.0, 6.0, 6.0],
        "feature_size": 12, "val_fraction": 0.0})
    assert out["result"] == {"epochs_done": 1, "best_dice": None, "best_checkpoint": str(run / "last.pt"),
                             "last_checkpoint": str(run / "last.pt")}
    assert out["headline"] == f"1 epoch, no validation score -> {run / 'last.pt'}"
    settings = read_checkpoint(run / "last.pt").meta["train_state"]["settings"]
    assert settings["feature_size"] == 12 and settings["loss"] == "dice+bce"
