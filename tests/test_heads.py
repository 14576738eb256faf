"""models/heads.py: the linear probe and the kNN vote on frozen features, tile (B, D) and patch (B, N, D) alike;
the kNN vote equals a brute-force numpy reference (neighbours and scores), chunking changes no vote, and both heads
round-trip through our checkpoint format and `load()` strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagingflows.models import CheckpointError, load, save_checkpoint
from imagingflows.models import heads
from imagingflows.models.heads import KnnProbe, LinearProbe, knn_config
from imagingflows.models.registry import REGISTRY


def _bank(m: int = 300, d: int = 16, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 2
    labels = torch.randint(k, (m,), generator=g)
    return centres[labels] + torch.randn(m, d, generator=g), labels, centres


def knn_reference(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray, classes: int, k: int, t: float):
    """Brute force in float64: every cosine, a full sort, then the weighted vote."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ b.T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(q), classes))
    for i, row in enumerate(idx):
        np.add.at(scores[i], labels[row], np.exp(sims[i, row] / t))
    return scores, idx


def test_knn_vote_matches_a_brute_force_reference_at_tile_and_patch_level():
    bank, labels, centres = _bank()
    probe = KnnProbe(bank, labels, classes=4, k=20, temperature=0.07)
    g = torch.Generator().manual_seed(1)
    queries = centres[torch.arange(60) % 4] + torch.randn(60, 16, generator=g)
    ref, ref_idx = knn_reference(bank.double().numpy(), labels.numpy(), queries.double().numpy(), 4, 20, 0.07)
    got = probe(queries)
    assert got.shape == (60, 4)
    # the same neighbours (as sets: the order of equal similarities is not part of the vote)
    q = torch.nn.functional.normalize(queries, dim=1)
    idx = (q @ probe.bank.T).topk(20, dim=1).indices.numpy()
    assert all(set(a) == set(b) for a, b in zip(idx, ref_idx))
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5)
    assert (got.argmax(1).numpy() == ref.argmax(1)).all()
    # patch level: (B, N, D) gives each token the score it gets as a row
    assert torch.equal(probe(queries.reshape(6, 10, 16)), got.reshape(6, 10, 4))
    # the vote is meaningful: queries near a class centre are voted to that class
    assert (got.argmax(1) == torch.arange(60) % 4).float().mean() > 0.9


def test_knn_chunks_bound_memory_without_changing_scores(monkeypatch):
    bank, labels, _ = _bank(m=500)
    probe = KnnProbe(bank, labels, classes=4, k=7, temperature=0.1)
    queries = torch.randn(33, 16, generator=torch.Generator().manual_seed(2))
    whole = probe(queries)
    monkeypatch.setattr(heads, "SIM_ELEMENTS", 1000)  # 2 queries per chunk against 500 bank entries
    chunked = probe(queries)
    # the same votes; the matmul of a smaller block may round the cosines differently in the last bit
    assert torch.equal(chunked > 0, whole > 0)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=0)


def test_knn_uses_every_entry_when_k_exceeds_the_bank_and_checks_its_inputs():
    bank, labels, _ = _bank(m=5)
    probe = KnnProbe(bank, labels, classes=4, k=20, temperature=0.07)
    scores = probe(bank[:2])
    ref, _ = knn_reference(bank.double().numpy(), labels.numpy(), bank[:2].double().numpy(), 4, 5, 0.07)
    np.testing.assert_allclose(scores.numpy(), ref, rtol=2e-5)
    with pytest.raises(ValueError, match="labels must lie in"):
        KnnProbe(bank, labels + 10, classes=4)
    with pytest.raises(ValueError, match="features of size 8"):
        probe(torch.zeros(3, 8))


def test_linear_probe_is_batchnorm_without_affine_then_linear():
    probe = LinearProbe(16, 3)
    assert [k for k in probe.state_dict()] == ["norm.running_mean", "norm.running_var", "norm.num_batches_tracked",
                                               "fc.weight", "fc.bias"]
    x = torch.randn(4, 50, 16) * 3 + 5
    probe.train()
    for chunk in x:  # cumulative average of the batch statistics (momentum None)
        probe(chunk)
    np.testing.assert_allclose(probe.norm.running_mean.numpy(), x.mean(1).mean(0).numpy(), rtol=1e-5)
    probe.eval()
    with torch.no_grad():
        tokens = probe(x)  # (B, N, D) -> (B, N, K)
        rows = probe(x.reshape(-1, 16)).reshape(4, 50, 3)
        z = (x - probe.norm.running_mean) / torch.sqrt(probe.norm.running_var + 1e-6)
        by_hand = z @ probe.fc.weight.T + probe.fc.bias
    assert tokens.shape == (4, 50, 3) and torch.equal(tokens, rows)
    torch.testing.assert_close(tokens, by_hand, rtol=1e-5, atol=1e-5)


def test_both_heads_round_trip_through_our_checkpoints_and_load_strictly(tmp_path):
    bank, labels, _ = _bank()
    knn = KnnProbe(bank, labels, classes=4, k=9, temperature=0.2)
    linear = LinearProbe(16, 4).eval()
    queries = torch.randn(2, 7, 16)
    for net, arch, config in ((knn, "knn_probe", knn_config(knn)), (linear, "linear_probe", {"dim": 16, "classes": 4})):
        path = save_checkpoint(tmp_path / f"{arch}.pt", net, arch=arch, config=config, meta={"level": "patch"})
        lm = load(path)
        assert lm.spec.name == arch and lm.meta["level"] == "patch" and lm.config == config
        with torch.no_grad():
            assert torch.equal(lm.module(queries), net(queries))
        assert REGISTRY.detect(net.state_dict()).name == arch  # a bare state dict is recognised too
        assert lm.spec.channels_of(lm.config) == 16
    sd = {k: v for k, v in knn.state_dict().items() if k != "bank_labels"}
    torch.save({"format": "imagingflows", "arch": "knn_probe", "config": knn_config(knn), "meta": {},
                "state_dict": sd}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="bank_labels"):
        load(tmp_path / "broken.pt")
