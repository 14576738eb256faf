"""Heads on frozen encoder features: a linear probe and a cosine kNN vote.

Both map features ``(..., D)`` to class scores ``(..., K)``, so one head serves a tile level
(``(B, D)``: a pooled embedding per tile) and a patch level (``(B, N, D)``: one label per token).

* :class:`LinearProbe`: the MAE / Scale-MAE linear-probe protocol (``main_linprobe.py``): a
  ``BatchNorm1d`` without affine parameters (eps 1e-6) before the linear layer, the layer
  initialised with a truncated normal of std 0.01 and zero bias. In eval mode the norm is a fixed
  per-feature standardisation, so the probe stays linear in the features. One change: the norm's
  running statistics are the cumulative average over every batch seen (``momentum=None``) instead
  of an exponential average with momentum 0.1, so a short probe (tens of steps, not MAE's 90
  epochs) standardises with the training features' statistics and not a blend with the initial
  0 / 1. Scores are logits.
* :class:`KnnProbe`: the Scale-MAE kNN protocol (``eval/knn.py``, after DINO): features and bank
  L2-normalised, the ``k`` most cosine-similar bank entries vote for their labels with weight
  ``exp(sim / T)``; the score of class ``c`` is the sum of its neighbours' weights (>= 0). The bank
  and its labels are buffers: the state dict is the whole model. Queries are scored in chunks so
  that the similarity matrix never exceeds :data:`SIM_ELEMENTS` values.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagingflows.models.registry import ModelSpec

#: most similarity values held at once by :class:`KnnProbe` (float32: 64 MiB)
SIM_ELEMENTS = 1 << 24


def _flat(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(..., D)`` -> ``((Q, D), leading shape)``; a wrong last dimension is an error."""
    if x.shape[-1] != dim:
        raise ValueError(f"features of size {x.shape[-1]} given to a head on {dim}-dim features")
    return x.reshape(-1, dim), tuple(x.shape[:-1])


class LinearProbe(nn.Module):
    """``features (..., D)`` -> logits ``(..., K)``: ``fc(norm(x))``, ``norm`` a BatchNorm without affine."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {classes}")
        self.dim, self.classes = int(dim), int(classes)
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6, momentum=None)
        self.fc = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat(x, self.dim)
        return self.fc(self.norm(flat.float())).reshape(*lead, self.classes)


class KnnProbe(nn.Module):
    """``features (..., D)`` -> vote scores ``(..., K)`` from a bank of labelled features.

    Args:
        bank: ``(M, D)`` features (any scale: stored L2-normalised).
        labels: ``(M,)`` class indices in ``[0, classes)``.
        classes: K.
        k: neighbours that vote (at most M are used).
        temperature: T of the vote weight ``exp(cosine / T)``.
    """

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, classes: int, k: int = 20,
                 temperature: float = 0.07) -> None:
        super().__init__()
        if bank.ndim != 2 or labels.shape != bank.shape[:1]:
            raise ValueError(f"bank must be (M, D) and labels (M,), got {tuple(bank.shape)} and {tuple(labels.shape)}")
        if k < 1 or temperature <= 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise ValueError(f"bank labels must lie in [0, {classes}), got {int(labels.min())}..{int(labels.max())}")
        self.dim, self.classes, self.k, self.temperature = int(bank.shape[1]), int(classes), int(k), float(temperature)
        self.register_buffer("bank", F.normalize(bank.float(), dim=1))
        self.register_buffer("bank_labels", labels.long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat(x, self.dim)
        q = F.normalize(flat.float(), dim=1)
        m = self.bank.shape[0]
        k = min(self.k, m)
        out = q.new_zeros(q.shape[0], self.classes)
        step = max(1, SIM_ELEMENTS // max(m, 1))
        for start in range(0, q.shape[0], step):
            sims, idx = (q[start:start + step] @ self.bank.T).topk(k, dim=1)  # (c, k), best first
            out[start:start + step].scatter_add_(1, self.bank_labels[idx], (sims / self.temperature).exp())
        return out.reshape(*lead, self.classes)


# ----------------------------------------------------------------------------- specs

def build_linear(dim: int, classes: int) -> LinearProbe:
    return LinearProbe(dim, classes)


def build_knn(dim: int, size: int, classes: int, k: int = 20, temperature: float = 0.07) -> KnnProbe:
    """An empty bank of ``size`` entries (the checkpoint's buffers fill it)."""
    return KnnProbe(torch.zeros(size, dim), torch.zeros(size, dtype=torch.long), classes, k, temperature)


def knn_config(probe: KnnProbe) -> dict:
    """The config :func:`build_knn` rebuilds ``probe`` from (what its checkpoint records)."""
    return {"dim": probe.dim, "size": int(probe.bank.shape[0]), "classes": probe.classes, "k": probe.k,
            "temperature": probe.temperature}


def _linear_hparams(sd: Mapping[str, Any]) -> dict:
    weight = sd["fc.weight"]  # (K, D)
    return {"dim": int(weight.shape[1]), "classes": int(weight.shape[0])}


def _knn_hparams(sd: Mapping[str, Any]) -> dict:
    bank, labels = sd["bank"], sd["bank_labels"]
    return {"dim": int(bank.shape[1]), "size": int(bank.shape[0]),
            "classes": int(labels.max()) + 1 if labels.numel() else 2, "k": 20, "temperature": 0.07}


LINEAR_SPEC = ModelSpec(
    name="linear_probe",
    build=build_linear,
    default_config={"dim": 1024, "classes": 2},
    detect_keys=("norm.running_mean", "norm.running_var", "fc.weight", "fc.bias"),
    hparams_from_state_dict=_linear_hparams,
    in_channels=lambda c: c["dim"],
    description="Linear probe on frozen encoder features (BatchNorm without affine, then linear; MAE protocol)",
)

KNN_SPEC = ModelSpec(
    name="knn_probe",
    build=build_knn,
    default_config={"dim": 1024, "size": 1, "classes": 2, "k": 20, "temperature": 0.07},
    detect_keys=("bank", "bank_labels"),
    hparams_from_state_dict=_knn_hparams,
    in_channels=lambda c: c["dim"],
    description="kNN vote on frozen encoder features (cosine top-k, weights exp(sim / T); Scale-MAE protocol)",
)
