"""Resume (issue 3, section 10).

``--resume`` skips a case only when its outputs exist and its manifest entry matches the
input content hash, the config hash and the weights hash; anything else is redone. A batch
killed mid-way (SIGKILL to the CLI's whole process group, Prefect's server included) and
then resumed gives outputs byte-identical to an uninterrupted run, with no temp files left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagingflows.flows import segment

CASE_FILES = ("{c}_seg.nii.gz", "statistics.json",
              "preview_axial.png", "preview_coronal.png", "preview_sagittal.png")


# ----------------------------------------------------------------------------- helpers

def _outputs(out: Path, case: str) -> list[Path]:
    return [out / case / f.format(c=case) for f in CASE_FILES]


def _mtimes(out: Path, cases) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for c in cases for p in _outputs(out, c)}


def _manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".tmp-*"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save_tiny(path: Path, like: Path, seed: int) -> Path:
    """Another tiny model like ``like`` (same arch, config and profile; initialised with another seed)."""
    import torch

    from imagingflows.models.checkpoints import read_checkpoint, save_checkpoint
    from imagingflows.models.swin_unetr import build

    model = read_checkpoint(like)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        save_checkpoint(path, build(**model.config), arch=model.arch, config=model.config, meta=model.meta)
    finally:
        torch.random.set_rng_state(state)
    return path


def _perturb(path: Path) -> None:
    """Rewrite a NIfTI under the same name with one brain voxel changed (same grid, same header)."""
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).copy()
    idx = tuple(np.argwhere(arr != 0)[len(np.argwhere(arr != 0)) // 2])
    arr[idx] += 7
    nib.save(nib.Nifti1Image(arr, img.affine, header=img.header), str(path))


def _run(inp, out, weights, **kw) -> dict:
    return segment(inp, out, weights=str(weights), device="cpu", **kw)


# ----------------------------------------------------------------------------- the rule, via the Python API

@pytest.fixture(scope="module")
def tiny_weights_b(tiny_weights, tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("weights_b") / "tiny_b.pt", tiny_weights, seed=1)


def test_resume_rules_python_api(tiny_weights, tiny_weights_b, make_cases, tmp_path):
    inp = make_cases(2)
    out = tmp_path / "out"
    cases = ["case00", "case01"]
    everything = lambda s: {c: s for c in cases}  # noqa: E731

    # first run: everything done; a resumed run with nothing changed skips everything
    r = _run(inp, out, tiny_weights, resume=True)
    assert r["outcomes"] == everything("done"), r
    assert r["counts"] == {"done": 2, "failed": 0, "skipped": 0}
    before = _mtimes(out, cases)
    manifest_before = _manifest(out)
    # touching an input (new mtime, same content) is not a change: the hash is of the content
    flair0 = inp / "case00" / "case00_flair.nii.gz"
    os.utime(flair0, ns=(time.time_ns(), time.time_ns()))
    r = _run(inp, out, tiny_weights, resume=True)
    assert r["outcomes"] == everything("skipped"), r
    assert r["counts"] == {"done": 0, "failed": 0, "skipped": 2}
    assert _mtimes(out, cases) == before, "skipped cases' outputs were rewritten"
    m = _manifest(out)
    assert m["items"] == manifest_before["items"], "a resumed run must keep the entries of skipped cases"
    assert m["summary"]["skipped"] == 2 and m["summary"]["done"] == 0
    assert len(m["runs"]) == 1  # the first run's start is kept in the history

    # (a) one input's content changes (same name) -> only that case is redone
    old_hash = _manifest(out)["items"]["case00"]["input_hash"]
    _perturb(flair0)
    r = _run(inp, out, tiny_weights, resume=True)
    assert r["outcomes"] == {"case00": "done", "case01": "skipped"}, r
    now = _mtimes(out, cases)
    assert all(now[str(p)] == before[str(p)] for p in _outputs(out, "case01"))
    assert all(now[str(p)] != before[str(p)] for p in _outputs(out, "case00")[:2])
    assert _manifest(out)["items"]["case00"]["input_hash"] != old_hash

    # (d) one case's seg output deleted -> that case is redone (and it comes back)
    seg1 = out / "case01" / "case01_seg.nii.gz"
    seg1.unlink()
    r = _run(inp, out, tiny_weights, resume=True)
    assert r["outcomes"] == {"case00": "skipped", "case01": "done"}, r
    assert seg1.is_file()

    # (b) an option that changes outputs -> everything redone; then up to date again under it
    cfg_hash = _manifest(out)["config_hash"]
    r = _run(inp, out, tiny_weights, resume=True, labels="2023")
    assert r["outcomes"] == everything("done"), r
    m = _manifest(out)
    assert m["config_hash"] != cfg_hash
    assert all(m["items"][c]["config_hash"] == m["config_hash"] for c in cases)
    assert json.loads((out / "case00" / "statistics.json").read_text())["label_convention"].startswith("BraTS 2023")
    r = _run(inp, out, tiny_weights, resume=True, labels="2023")
    assert r["outcomes"] == everything("skipped"), r

    # (c) other weights (another file, other content) -> everything redone, new hash recorded
    r = _run(inp, out, tiny_weights_b, resume=True, labels="2023")
    assert r["outcomes"] == everything("done"), r
    m = _manifest(out)
    assert {m["items"][c]["weights_sha256"] for c in cases} == {_sha256(tiny_weights_b)}

    # (e) without resume everything is redone, even though all is up to date
    before = _mtimes(out, cases)
    r = _run(inp, out, tiny_weights_b, labels="2023")
    assert r["outcomes"] == everything("done"), r
    after = _mtimes(out, cases)
    assert all(after[k] != before[k] for k in before)
    assert _temps(out) == []


def test_resume_failed_case_is_retried(tiny_weights, make_cases, tmp_path):
    """A case that failed is never 'up to date': resume tries it again, and runs it once its input is fixed."""
    inp = make_cases(1)
    out = tmp_path / "out"
    t2 = inp / "case00" / "case00_t2.nii.gz"
    good = t2.read_bytes()
    t2.write_bytes(good[: len(good) // 2])  # truncated .nii.gz
    r = _run(inp, out, tiny_weights, resume=True)
    assert r["outcomes"] == {"case00": "failed"}, r
    assert not (out / "case00").exists()
    r = _run(inp, out, tiny_weights, resume=True)
    assert r["outcomes"] == {"case00": "failed"}, r
    t2.write_bytes(good)
    r = _run(inp, out, tiny_weights, resume=True)
    assert r["outcomes"] == {"case00": "done"}, r
    assert all(p.is_file() for p in _outputs(out, "case00"))


def test_resume_redoes_when_weights_file_replaced_in_place(tiny_weights, tiny_weights_b, make_cases, tmp_path):
    inp = make_cases(1)
    out = tmp_path / "out"
    w = tmp_path / "model.pt"
    shutil.copyfile(tiny_weights, w)
    assert _run(inp, out, w, resume=True)["outcomes"] == {"case00": "done"}
    shutil.copyfile(tiny_weights_b, w)  # e.g. retrained into the same best.pt
    r = _run(inp, out, w, resume=True)
    recorded = _manifest(out)["items"]["case00"]["weights_sha256"]
    assert (r["outcomes"], recorded) == ({"case00": "done"}, _sha256(tiny_weights_b))


def test_resume_redoes_when_a_preview_is_missing(tiny_weights, make_cases, tmp_path):
    inp = make_cases(1)
    out = tmp_path / "out"
    assert _run(inp, out, tiny_weights, resume=True)["outcomes"] == {"case00": "done"}
    preview = out / "case00" / "preview_axial.png"
    preview.unlink()
    r = _run(inp, out, tiny_weights, resume=True)
    assert (r["outcomes"], preview.is_file()) == ({"case00": "done"}, True)


# ----------------------------------------------------------------------------- kill -9 mid-batch, then resume

def _cli() -> list[str]:
    script = Path(sys.executable).with_name("run-flow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "imagingflows.flows.cli"]


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


def _done_cases(out: Path) -> set[str]:
    try:
        items = json.loads((out / "run.json").read_text()).get("items", {})
    except (OSError, json.JSONDecodeError):
        return set()
    return {k for k, v in items.items() if v.get("status") == "done"}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_killed_batch_resumes_to_identical_outputs(tiny_weights, make_cases, tmp_path):
    inp = make_cases(4)
    cases = [f"case{i:02d}" for i in range(4)]
    ref, out = tmp_path / "ref", tmp_path / "out"
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # each CLI run starts its own ephemeral server
    # Prefect waits 20 s for its ephemeral server by default: too short on 2 busy cores
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    base = _cli() + ["segment", "--input", str(inp), "--weights", str(tiny_weights), "--device", "cpu", "--quiet"]

    def start(output: Path, home: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{output.name}-{len(extra)}.log"
        with open(log, "wb") as fh:  # a new session: the CLI leads its own process group
            proc = subprocess.Popen(base + ["--output", str(output), *extra], stdout=fh, stderr=subprocess.STDOUT,
                                    env=dict(env, PREFECT_HOME=str(tmp_path / home)), start_new_session=True)
        return proc, log

    # the reference (uninterrupted) run and the run to kill go side by side (own Prefect homes)
    ref_proc, ref_log = start(ref, "prefect-ref")
    proc, log = start(out, "prefect-out")
    pgid = proc.pid
    try:
        # SIGKILL the whole process group (CLI, Prefect server) once a case is recorded done
        deadline = time.monotonic() + 240
        while not _done_cases(out):
            assert proc.poll() is None, f"CLI exited ({proc.returncode}) before any case was done:\n" \
                                        + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no case recorded done in time:\n" + log.read_text()[-3000:]
            time.sleep(0.05)
        before_kill = _done_cases(out)
        group = _group_alive(pgid)
        _kill_group(proc)
        assert proc.returncode == -signal.SIGKILL
        assert ref_proc.wait(timeout=300) == 0, ref_log.read_text()[-3000:]
    finally:
        for p in (proc, ref_proc):
            if p.poll() is None:
                _kill_group(p)
    assert _done_cases(ref) == set(cases)
    t_end = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < t_end:
        time.sleep(0.1)
    assert len(group) >= 2, f"expected the CLI and its Prefect server child in the group, found {group}"
    assert _group_alive(pgid) == [], "processes of the killed batch survived SIGKILL"

    finished = _done_cases(out)  # what the killed run's manifest really holds (may be > before_kill)
    assert before_kill <= finished
    assert 1 <= len(finished) < len(cases), f"kill landed outside the batch: {sorted(finished)} done"
    kept = {c: {p.name: p.stat().st_mtime_ns for p in _outputs(out, c)} for c in finished}
    # the kill may or may not have hit a write; make sure there is a stale temp to clear either way
    (out / sorted(finished)[0] / ".tmp-stale.nii.gz").write_bytes(b"half a file")
    (out / ".tmp-stale.json").write_bytes(b"{")

    # resume: finishes the batch, skipping what was done
    resumed, resumed_log = start(out, "prefect-out", "--resume")
    try:
        assert resumed.wait(timeout=300) == 0, resumed_log.read_text()[-3000:]
    finally:
        if resumed.poll() is None:
            _kill_group(resumed)

    manifest = _manifest(out)  # valid JSON
    assert {c: manifest["items"][c]["status"] for c in cases} == {c: "done" for c in cases}
    assert manifest["summary"] == {"done": len(cases) - len(finished), "failed": 0,
                                   "skipped": len(finished), "total": len(cases)}
    for c in finished:
        assert {p.name: p.stat().st_mtime_ns for p in _outputs(out, c)} == kept[c], f"{c} was redone"
    assert _temps(out) == [], "temp files left behind"

    for c in cases:
        for p in _outputs(out, c):
            r = ref / c / p.name
            assert p.read_bytes() == r.read_bytes(), f"{c}/{p.name} differs from the uninterrupted run"
