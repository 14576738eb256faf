"""The optional ``openvino`` engine (models/engine_openvino.py): agrees with eager within the model's rule,
caches its IR on disk and rebuilds a corrupt one, sends no telemetry (no ``~/intel`` written), and falls back
to eager with the reason when OpenVINO is not installed (forced by hiding the module: any host)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from imagingflows.models import engines, nafnet
from imagingflows.models.engines import choose, engine_module, measure_input

from helpers_engines import NAFNET, tiny_nafnet

pytestmark = pytest.mark.usefixtures("engine_cache")  # conftest: a temp $IMAGINGFLOWS_CACHE per test
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None  # find_spec: importing it starts its telemetry


def test_without_openvino_the_engine_falls_back_to_eager_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError: not installed
    net = tiny_nafnet()
    module = engine_module(net, "openvino")
    assert module.used == "eager" and "not installed" in module.fallback and "imagingflows[openvino]" in module.fallback
    x = measure_input(3, 32)
    with torch.inference_mode():
        assert torch.equal(module(x), net(x))
    picked = choose(net, nafnet.SPEC, NAFNET, "openvino", side=32)
    assert picked.used == "eager" and "not installed" in picked.reason and not picked.changes_outputs


@pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")
def test_openvino_agrees_caches_its_ir_and_rebuilds_a_corrupt_one(engine_cache):
    net = tiny_nafnet()
    x = measure_input(3, 40, 4)
    with torch.inference_mode():
        ref = net(x)
        got = engine_module(net, "openvino")(x)
        other = engine_module(net, "openvino")(measure_input(3, 56, 4))  # dynamic shapes: no reconversion
    assert engine_module(net, "openvino").fallback is None and other.shape == (1, 3, 56, 56)
    assert nafnet.SPEC.agreement.holds(nafnet.SPEC.agreement.measure(ref, got))
    irs = list((engine_cache / "engines" / "openvino").glob("*.xml"))
    assert len(irs) == 1 and irs[0].with_suffix(".bin").stat().st_size > 0
    irs[0].write_text("<not a model")  # a later process must convert again, not trust it
    engines.clear_engines()
    with torch.inference_mode():
        again = engine_module(net, "openvino")(x)
    assert engine_module(net, "openvino").fallback is None and torch.allclose(again, got, atol=1e-5)
    assert irs[0].read_text().startswith("<?xml")


@pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")
def test_openvino_writes_nothing_to_the_home_folder(tmp_path):
    script = textwrap.dedent("""
        import torch
        from imagingflows.models.engines import engine_module, measure_input
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
        with torch.inference_mode():
            engine_module(net, "openvino")(measure_input(3, 16))
        assert engine_module(net, "openvino").fallback is None, engine_module(net, "openvino").fallback
    """)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(HOME=str(home), IMAGINGFLOWS_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (home / "intel").exists()  # OpenVINO's telemetry client id and consent live there
