"""Test set-up: private Prefect home, no telemetry, one Prefect test harness per session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="imagingflows-prefect-"))
# the default pseudonym key (~/.config/imagingflows/anonymize.key) goes to a temp folder, not the user's
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="imagingflows-config-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # sample_data.brats (the generator) is imported by tests

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def engine_cache(tmp_path, monkeypatch):
    """$IMAGINGFLOWS_CACHE in a temp folder and no engines kept in memory, before and after the test."""
    from imagingflows.models import engines

    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    engines.clear_engines()
    yield tmp_path / "cache"
    engines.clear_engines()


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    from imagingflows.models.backend import demo_weights as find

    return find("swin_unetr_brats")


TINY_PROFILE = {"axcodes": "RAS", "spacing": [4.0, 4.0, 4.0], "roi": [64, 64, 64],
                "channels": ["flair", "t1ce", "t1", "t2"]}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A randomly initialised small Swin UNETR in our checkpoint format (fast: 4 mm frame, one 64^3 window)."""
    from imagingflows.models.checkpoints import save_checkpoint
    from imagingflows.models.swin_unetr import build

    torch.manual_seed(0)
    cfg = {"in_channels": 4, "out_channels": 3, "feature_size": 12, "patch_merging": "current"}
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, build(**cfg), arch="swin_unetr", config=cfg, meta={"profile": TINY_PROFILE})
    return path


@pytest.fixture
def make_cases(tmp_path):
    """make_cases(n, seed=0, **make_case kwargs) -> folder of generated BraTS-like cases (3 mm, small)."""
    from sample_data import brats

    def make(n: int = 2, seed: int = 0, folder: str = "cases", **kwargs) -> Path:
        out = tmp_path / folder
        kwargs.setdefault("spacing", (3.0, 3.0, 3.0))
        for i in range(n):
            brats.make_case(out, f"case{seed + i:02d}", seed + i, **kwargs)
        return out

    return make
