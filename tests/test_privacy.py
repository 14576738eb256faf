"""The quiet, private defaults apply to the Python API too (not only the CLI), unless the user set them."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

SCRIPT = """
import json, os, sys
from imagingflows.flows import restore
result = restore(sys.argv[1], sys.argv[2], task="denoise", precision="fp32")
print(json.dumps({"counts": result["counts"], "env": {k: os.environ.get(k) for k in
      ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "PREFECT_LOGGING_LEVEL")}}))
"""


def test_python_api_is_private_and_quiet_by_default(tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(tmp_path / "in/a.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_LOGGING_LEVEL="ERROR")  # one the user set
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "in"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert report["counts"]["done"] == 1
    assert report["env"] == {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                             "PREFECT_LOGGING_LEVEL": "ERROR"}  # the user's value kept
    assert "telemetry" not in done.stderr.lower() and "Traceback" not in done.stderr
    run = __import__("json").loads((tmp_path / "out" / "run.json").read_text())
    assert run["demo_weights"]["file"] == "nafnet_denoise.pt"  # the record says demo weights ran


def test_two_runs_starting_at_once_on_a_fresh_prefect_home(tmp_path):
    """Both create and migrate the same fresh SQLite database: the start is serialised, neither
    fails with "database is locked"."""
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8) + 90).save(tmp_path / "in/a.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "fresh-home")
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "in"), str(tmp_path / f"out{i}")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=400) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "locked" not in err.lower() and "Traceback" not in err
