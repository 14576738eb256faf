"""The segment pipeline end to end: real Prefect, real MONAI, real files (no mocks).

- the Python API on generated cases in different orientations (exact output grid,
  statistics, previews, manifest, report, log, no temp files);
- one batch mixing a good case with every kind of bad input (clear errors, batch
  goes on, inputs untouched, no partial outputs);
- ``run-flow segment`` exit codes in real subprocesses (2: nothing could run,
  1: some cases failed);
- ``--anonymize``, the BraTS 2023 label convention, input discovery by suffix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imagingflows.flows import segment
from imagingflows.flows.run import RUN_CONFIG_KEYS
from imagingflows.pipelines.base import get_pipeline
from imagingflows.pipelines.medical import MODEL_CHANNELS, discover
from imagingflows.tasks.manifest import config_hash

RUN_FLOW = Path(sys.executable).with_name("run-flow")
SUFFIX_2021 = {"flair": "_flair", "t1ce": "_t1ce", "t1": "_t1", "t2": "_t2"}
PSEUDONYM = re.compile(r"^case-[0-9a-f]{10}$")


# ----------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _temps(*folders: Path) -> list[Path]:
    return [p for f in folders for p in Path(f).rglob(".tmp-*")]


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.set_data_dtype(arr.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _regions_2021(lab: np.ndarray) -> dict[str, np.ndarray]:
    tc = (lab == 1) | (lab == 4)
    return {"TC": tc, "WT": tc | (lab == 2), "ET": lab == 4}


def _make_case(folder: Path, case_id: str, seed: int, **kwargs) -> Path:
    from sample_data import brats

    kwargs.setdefault("spacing", (3.0, 3.0, 3.0))
    return brats.make_case(folder, case_id, seed, **kwargs)


# ----------------------------------------------------------------------------- 1. end to end (Python API)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, tiny_weights):
    """Two generated cases (LPS; PIR + 7 degrees oblique) segmented once through the Python API."""
    root = tmp_path_factory.mktemp("e2e")
    inp, out = root / "in", root / "out"
    _make_case(inp, "case00", 0, axcodes="LPS")
    _make_case(inp, "case01", 1, axcodes="PIR", oblique_deg=7)
    before = _tree_hashes(inp)
    result = segment(inp, out, weights=str(tiny_weights), device="cpu")
    return {"in": inp, "out": out, "result": result, "before": before, "weights": tiny_weights}


def test_end_to_end_counts_and_no_temp_files(e2e):
    result, out = e2e["result"], e2e["out"]
    assert result["counts"] == {"done": 2, "failed": 0, "skipped": 0}
    assert result["outcomes"] == {"case00": "done", "case01": "done"}
    assert _temps(e2e["in"], out) == []
    assert _tree_hashes(e2e["in"]) == e2e["before"]  # inputs untouched (the _seg reference too)


@pytest.mark.parametrize("case", ["case00", "case01"])
def test_end_to_end_label_map_on_the_exact_input_grid(e2e, case):
    ref = nib.load(e2e["in"] / case / f"{case}_flair.nii.gz")
    seg_path = e2e["out"] / case / f"{case}_seg.nii.gz"
    seg = nib.load(seg_path)
    lab = np.asarray(seg.dataobj)
    assert seg.get_data_dtype() == np.uint8 and lab.dtype == np.uint8
    assert lab.shape == ref.shape
    assert np.array_equal(seg.affine, ref.affine)
    assert int(seg.header["sform_code"]) > 0 and int(seg.header["qform_code"]) > 0
    assert np.array_equal(seg.get_sform(), ref.get_sform())
    assert np.allclose(seg.get_qform(), ref.affine, atol=1e-4)
    assert set(np.unique(lab).tolist()) <= {0, 1, 2, 4}
    # nothing labelled outside the (skull-stripped) brain
    brain = np.zeros(ref.shape, bool)
    for m in MODEL_CHANNELS:
        brain |= np.asarray(nib.load(e2e["in"] / case / f"{case}{SUFFIX_2021[m]}.nii.gz").dataobj) != 0
    assert not lab[~brain].any()


@pytest.mark.parametrize("case", ["case00", "case01"])
def test_end_to_end_statistics_match_the_label_map(e2e, case):
    case_dir = e2e["out"] / case
    seg = nib.load(case_dir / f"{case}_seg.nii.gz")
    lab = np.asarray(seg.dataobj)
    voxel = abs(float(np.linalg.det(seg.affine[:3, :3])))
    stats = json.loads((case_dir / "statistics.json").read_text())
    assert stats["voxel_volume_mm3"] == pytest.approx(voxel, rel=1e-9)
    assert stats["shape"] == list(lab.shape)
    for name, mask in _regions_2021(lab).items():
        assert stats["regions_mm3"][name] == pytest.approx(int(mask.sum()) * voxel, abs=1e-3), name
    assert set(stats["regions_mm3"]) == {"TC", "WT", "ET"}


@pytest.mark.parametrize("case", ["case00", "case01"])
def test_end_to_end_three_previews(e2e, case):
    from PIL import Image

    for view in ("axial", "coronal", "sagittal"):
        png = e2e["out"] / case / f"preview_{view}.png"
        assert png.is_file(), png
        with Image.open(png) as im:
            assert im.format == "PNG" and min(im.size) >= 32


def test_end_to_end_manifest(e2e):
    run = _run_json(e2e["out"])
    for pkg in ("torch", "monai", "prefect"):
        assert run["versions"].get(pkg), pkg
    assert isinstance(run["config"], dict) and run["config"]["labels"] == "2021"
    assert run["config_hash"] == config_hash(run["config"], get_pipeline("segment").output_keys() + RUN_CONFIG_KEYS)
    assert run["model"]["weights_sha256"] == _sha256(e2e["weights"])
    assert set(run["items"]) == {"case00", "case01"}
    for case, entry in run["items"].items():
        assert entry["status"] == "done", entry
        assert entry["weights_sha256"] == _sha256(e2e["weights"])
        assert entry["config_hash"] == run["config_hash"]
        assert {"read", "infer", "write"} <= set(entry["timings"])
        assert all(isinstance(v, (int, float)) and v >= 0 for v in entry["timings"].values())
        assert entry["seconds"] > 0
        assert entry["outputs"]["seg"] == f"{case}/{case}_seg.nii.gz"
    assert run["summary"]["done"] == 2 and run["summary"]["failed"] == 0
    assert run["finished"]


def test_end_to_end_report_and_log(e2e):
    out = e2e["out"]
    html = (out / "report.html").read_text()
    for case in ("case00", "case01"):
        assert case in html
        assert f"{case}/preview_axial.png" in html
    log = (out / "run.log").read_text()
    assert "case00: done" in log and "case01: done" in log


# ----------------------------------------------------------------------------- 5. label convention


def test_labels_2023_writes_only_0_to_3_and_matches_2021(e2e, tmp_path):
    """Same case, same weights: the 2023 map is the 2021 map with ET 4 -> 3."""
    inp = tmp_path / "in"
    _make_case(inp, "case00", 0, axcodes="LPS")  # identical to the e2e case00
    out = tmp_path / "out"
    result = segment(inp, out, weights=str(e2e["weights"]), device="cpu", labels="2023")
    assert result["counts"]["done"] == 1
    lab23 = np.asarray(nib.load(out / "case00" / "case00_seg.nii.gz").dataobj)
    assert set(np.unique(lab23).tolist()) <= {0, 1, 2, 3}
    lab21 = np.asarray(nib.load(e2e["out"] / "case00" / "case00_seg.nii.gz").dataobj)
    expected = lab21.copy()
    expected[lab21 == 4] = 3
    assert np.array_equal(lab23, expected)
    stats = json.loads((out / "case00" / "statistics.json").read_text())
    assert "2023" in stats["label_convention"]
    assert stats["regions_mm3"]["ET"] == pytest.approx(
        int((lab23 == 3).sum()) * stats["voxel_volume_mm3"], abs=1e-3)
    assert _run_json(out)["config"]["labels"] == "2023"


# ----------------------------------------------------------------------------- 2. bad inputs in one batch


BAD_CASES = {  # case id -> words its error must contain
    "bad_missing": ["missing t2"],
    "bad_dup": ["2 files for modality t1"],
    "bad_shape": ["differ in shape"],
    "bad_affine": ["differ in affine"],
    "bad_trunc": ["truncated or corrupt"],
    "bad_text": ["not a NIfTI"],
    "bad_2d": ["expected a 3D volume"],
    "bad_zero": ["all zero"],
    "bad_nan": ["NaN"],
}


def _bad_batch(inp: Path) -> None:
    """Next to the good case00, one folder per kind of bad input (built from case00's files)."""
    good = inp / "case00"
    src = {m: good / f"case00{SUFFIX_2021[m]}.nii.gz" for m in MODEL_CHANNELS}
    ref = nib.load(src["flair"])
    arr, aff = np.asarray(ref.dataobj), ref.affine

    def clone(case: str, skip: tuple[str, ...] = ()) -> dict[str, Path]:
        d = inp / case
        d.mkdir()
        paths = {m: d / f"{case}{SUFFIX_2021[m]}.nii.gz" for m in MODEL_CHANNELS}
        for m, p in paths.items():
            if m not in skip:
                p.write_bytes(src[m].read_bytes())
        return paths

    clone("bad_missing", skip=("t2",))
    clone("bad_dup")
    (inp / "bad_dup" / "bad_dup-t1n.nii.gz").write_bytes(src["t1"].read_bytes())
    p = clone("bad_shape", skip=("t2",))
    _save(p["t2"], arr[:, :-3, :], aff)
    p = clone("bad_affine", skip=("t2",))
    shifted = aff.copy()
    shifted[:3, 3] += 5.0
    _save(p["t2"], arr, shifted)
    p = clone("bad_trunc", skip=("t1",))
    data = src["t1"].read_bytes()
    p["t1"].write_bytes(data[: len(data) // 2])
    p = clone("bad_text", skip=("t2",))
    p["t2"].write_bytes(b"patient notes, not an image\n" * 20)
    p = clone("bad_2d", skip=("flair",))
    _save(p["flair"], np.ascontiguousarray(arr[:, :, arr.shape[2] // 2]), aff)
    p = clone("bad_zero", skip=("t1ce",))
    _save(p["t1ce"], np.zeros_like(arr), aff)
    p = clone("bad_nan", skip=("flair",))
    nan = arr.astype(np.float32)
    nan[tuple(s // 2 for s in nan.shape)] = np.nan
    nan[0, 0, 0] = np.nan
    _save(p["flair"], nan, aff)


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("bad")
    inp, out = root / "in", root / "out"
    _make_case(inp, "case00", 0)
    _bad_batch(inp)
    before = _tree_hashes(inp)
    result = segment(inp, out, weights=str(tiny_weights), device="cpu")
    return {"in": inp, "out": out, "result": result, "before": before}


def test_bad_inputs_the_good_case_is_done(bad_batch):
    result, out = bad_batch["result"], bad_batch["out"]
    assert result["outcomes"]["case00"] == "done"
    assert result["counts"] == {"done": 1, "failed": 9, "skipped": 0}
    assert (out / "case00" / "case00_seg.nii.gz").is_file()
    assert (out / "case00" / "statistics.json").is_file()


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gives_one_clear_error(bad_batch, case):
    entry = _run_json(bad_batch["out"])["items"][case]
    assert entry["status"] == "failed"
    error = entry["error"]
    assert case in error, error  # names the case (or a file of it)
    for word in BAD_CASES[case]:
        assert word.lower() in error.lower(), error
    assert "Traceback" not in error and len(error.splitlines()) == 1
    assert bad_batch["result"]["outcomes"][case] == "failed"


def test_bad_inputs_leave_no_output_and_inputs_untouched(bad_batch):
    out = bad_batch["out"]
    for case in BAD_CASES:
        assert not (out / case).exists(), case
        assert not any(case in p.name for p in out.rglob("*")), case
    assert _tree_hashes(bad_batch["in"]) == bad_batch["before"]
    assert _temps(bad_batch["in"], out) == []
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["case00"]


def test_bad_inputs_are_listed_in_the_report(bad_batch):
    html = (bad_batch["out"] / "report.html").read_text()
    for case in BAD_CASES:
        assert case in html, case
    assert "failed" in html
    log = (bad_batch["out"] / "run.log").read_text()
    for case in BAD_CASES:
        assert case in log, case


# ----------------------------------------------------------------------------- 3. CLI exit codes


def _env() -> dict:
    env = dict(os.environ)
    env["COLUMNS"] = "400"  # rich wraps at 80 columns when stderr is not a terminal
    return env


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN_FLOW), "segment", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_exit2(tmp_path_factory, tiny_weights):
    """Every set-up that must stop before the run, as real ``run-flow`` processes started together
    (none of them reaches the flow, so none starts a Prefect server; running them side by side
    only saves wall time)."""
    import torch

    from imagingflows.models.swin_unetr import build

    root = tmp_path_factory.mktemp("cli2")
    cases = root / "cases"
    _make_case(cases, "case00", 0)
    (root / "empty").mkdir()
    sd = build(in_channels=4, out_channels=3, feature_size=12).state_dict()
    sd.pop("out.conv.conv.bias")
    sd["extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": sd}, root / "bad.pt")
    (root / "somefile.txt").write_text("not a folder\n")
    w = str(tiny_weights)
    runs = {
        "empty": ["--input", root / "empty", "--output", root / "out_empty", "--weights", w],
        "missing": ["--input", root / "nope", "--output", root / "out_missing", "--weights", w],
        "keys": ["--input", cases, "--output", root / "out_keys", "--weights", root / "bad.pt", "--arch", "swin_unetr"],
        "under_file": ["--input", cases, "--output", root / "somefile.txt" / "out", "--weights", w],
    }
    if os.geteuid() != 0:  # root ignores folder permissions
        (root / "ro").mkdir()
        (root / "ro").chmod(0o500)
        runs["read_only"] = ["--input", cases, "--output", root / "ro", "--weights", w]
    procs = {k: subprocess.Popen([str(RUN_FLOW), "segment", *map(str, a)], env=_env(), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, a in runs.items()}
    try:
        results = {}
        for k, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            results[k] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        if (root / "ro").exists():
            (root / "ro").chmod(0o700)
    return root, results


def _one_error(proc: subprocess.CompletedProcess) -> str:
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert text.count("error:") == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return text


def test_cli_exit_2_empty_input_folder(cli_exit2):
    root, runs = cli_exit2
    text = _one_error(runs["empty"])
    assert "holds no segment inputs" in text and str(root / "empty") in text


def test_cli_exit_2_missing_input_folder(cli_exit2):
    root, runs = cli_exit2
    text = _one_error(runs["missing"])
    assert "does not exist" in text and str(root / "nope") in text
    assert not (root / "out_missing").exists()


def test_cli_exit_2_checkpoint_keys_do_not_fit(cli_exit2):
    root, runs = cli_exit2
    text = _one_error(runs["keys"])
    assert "missing in checkpoint" in text and "out.conv.conv.bias" in text
    assert "unexpected in checkpoint" in text and "extra.weight" in text
    assert not (root / "out_keys" / "case00").exists() and not (root / "out_keys" / "run.json").exists()


def test_cli_exit_2_output_under_a_file(cli_exit2):
    root, runs = cli_exit2
    text = _one_error(runs["under_file"])
    assert "not writable" in text and str(root / "somefile.txt" / "out") in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_cli_exit_2_output_folder_read_only(cli_exit2):
    root, runs = cli_exit2
    text = _one_error(runs["read_only"])
    assert "not writable" in text and str(root / "ro") in text


def test_cli_exit_1_when_one_case_fails(tmp_path, make_cases, tiny_weights):
    """The one CLI test that runs a flow (its own ephemeral Prefect server)."""
    inp = make_cases(1)
    bad = inp / "broken01"
    bad.mkdir()
    for m in ("flair", "t1ce", "t1"):
        (bad / f"broken01{SUFFIX_2021[m]}.nii.gz").write_bytes(
            (inp / "case00" / f"case00{SUFFIX_2021[m]}.nii.gz").read_bytes())
    out = tmp_path / "out"
    proc = _cli("--input", inp, "--output", out, "--weights", tiny_weights, "--quiet", "--device", "cpu")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "broken01" in proc.stderr and "failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    run = _run_json(out)
    assert run["items"]["case00"]["status"] == "done"
    assert run["items"]["broken01"]["status"] == "failed"
    assert "missing t2" in run["items"]["broken01"]["error"]
    assert (out / "case00" / "case00_seg.nii.gz").is_file() and not (out / "broken01").exists()


# ----------------------------------------------------------------------------- 4. anonymize


@pytest.fixture(scope="module")
def anon(tmp_path_factory, tiny_weights):
    """One anonymized batch: a good case, a case failing while read (all-zero t1ce), a case failing
    at discovery (missing t2); the ids look like patient names on purpose."""
    from imagingflows.flows.run import anonymize_key, pseudonym

    root = tmp_path_factory.mktemp("anon")
    inp, out = root / "in", root / "out"
    good, unread, undiscovered = "SmithJohn1970", "DoeJane1980", "RoeRichard1975"
    src = _make_case(inp, good, 0)
    for case, skip in ((unread, ()), (undiscovered, ("t2",))):
        (inp / case).mkdir()
        for m in MODEL_CHANNELS:
            if m not in skip:
                (inp / case / f"{case}{SUFFIX_2021[m]}.nii.gz").write_bytes(
                    (src / f"{good}{SUFFIX_2021[m]}.nii.gz").read_bytes())
    zero = nib.load(src / f"{good}_t1ce.nii.gz")
    _save(inp / unread / f"{unread}_t1ce.nii.gz", np.zeros(zero.shape, np.int16), zero.affine)
    result = segment(inp, out, weights=str(tiny_weights), device="cpu", anonymize=True,
                     anonymize_key=str(root / "private" / "pseudonyms.key"))
    key = anonymize_key(out, root / "private" / "pseudonyms.key")  # the secret the run created
    ids = {case: pseudonym(case, key) for case in (good, unread, undiscovered)}
    return {"out": out, "result": result, "ids": ids, "good": good, "unread": unread,
            "undiscovered": undiscovered}


def _texts(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text().lower() for name in ("run.json", "report.html", "report.md", "run.log")}


def test_anonymize_uses_pseudonyms_for_folders_and_ids(anon):
    out, ids = anon["out"], anon["ids"]
    assert all(PSEUDONYM.match(p) for p in ids.values()), ids
    assert anon["result"]["outcomes"] == {ids[anon["good"]]: "done", ids[anon["unread"]]: "failed",
                                          ids[anon["undiscovered"]]: "failed"}
    pseudo = ids[anon["good"]]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [pseudo]
    assert (out / pseudo / f"{pseudo}_seg.nii.gz").is_file()
    run = _run_json(out)
    assert sorted(run["items"]) == sorted(ids.values()) and run["anonymized"] is True
    html = (out / "report.html").read_text()
    assert all(p in html for p in ids.values())
    stats = json.loads((out / pseudo / "statistics.json").read_text())
    assert stats["case"] == pseudo


def test_anonymize_good_case_id_not_in_report_log_or_file_names(anon):
    out, texts = anon["out"], _texts(anon["out"])
    for real in (anon["good"], anon["undiscovered"]):
        for name in ("report.html", "report.md", "run.log"):
            assert real.lower() not in texts[name], (real, name)
        assert not any(real.lower() in str(p.relative_to(out)).lower() for p in out.rglob("*")), real
    assert anon["good"].lower() not in (out / anon["ids"][anon["good"]] / "statistics.json").read_text().lower()


def test_anonymize_no_real_id_in_run_json(anon):
    text = _texts(anon["out"])["run.json"]
    for real in (anon["good"], anon["undiscovered"]):
        assert real.lower() not in text, real


def test_anonymize_read_errors_hide_the_real_id(anon):
    entry = _run_json(anon["out"])["items"][anon["ids"][anon["unread"]]]
    assert entry["status"] == "failed" and "all zero" in entry["error"]
    for name, text in _texts(anon["out"]).items():
        assert anon["unread"].lower() not in text, name


# ----------------------------------------------------------------------------- 6. discovery (no model)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


CFG = {"channels": list(MODEL_CHANNELS)}


def test_discover_brats_2023_names_in_model_channel_order(tmp_path):
    case = "BraTS-GLI-00001-000"
    # written in an order unlike the channel order, plus the reference and a README
    _touch(tmp_path / case, f"{case}-t2w.nii.gz", f"{case}-t1n.nii.gz", f"{case}-t1c.nii.gz",
           f"{case}-t2f.nii.gz", f"{case}-seg.nii.gz", "README.txt")
    items, errors = discover(tmp_path, CFG)
    assert errors == []
    (item,) = items
    assert item.id == case
    assert list(item.paths) == ["flair", "t1ce", "t1", "t2"]
    names = {m: Path(p).name for m, p in item.paths.items()}
    assert names == {"flair": f"{case}-t2f.nii.gz", "t1ce": f"{case}-t1c.nii.gz",
                     "t1": f"{case}-t1n.nii.gz", "t2": f"{case}-t2w.nii.gz"}


def test_discover_t1_is_not_confused_with_t1ce_and_seg_is_ignored(tmp_path):
    _touch(tmp_path / "P7", "P7_t1ce.nii.gz", "P7_t1.nii.gz", "P7_t2.nii.gz", "P7_flair.nii", "P7_seg.nii.gz",
           "README.txt")
    items, errors = discover(tmp_path, CFG)
    assert errors == []
    (item,) = items
    names = {m: Path(p).name for m, p in item.paths.items()}
    assert names == {"flair": "P7_flair.nii", "t1ce": "P7_t1ce.nii.gz", "t1": "P7_t1.nii.gz",
                     "t2": "P7_t2.nii.gz"}
    # the same with only t1ce present: t1 is missing, not satisfied by t1ce
    _touch(tmp_path / "Q8", "Q8_t1ce.nii.gz", "Q8_t2.nii.gz", "Q8_flair.nii.gz")
    items, errors = discover(tmp_path, CFG)
    assert [i.id for i in items] == ["P7"]
    assert len(errors) == 1 and errors[0][0] == "Q8" and "missing t1" in errors[0][1]


def test_discover_loose_files_grouped_by_case_id(tmp_path):
    _touch(tmp_path, "A1_flair.nii.gz", "A1_t1ce.nii.gz", "A1_t1.nii.gz", "A1_t2.nii.gz", "A1_seg.nii.gz",
           "B2-t2f.nii.gz", "B2-t1c.nii.gz", "B2-t1n.nii.gz", "B2-t2w.nii.gz", "B2-seg.nii.gz",
           "README.txt", "checksums.md5")
    items, errors = discover(tmp_path, CFG)
    assert errors == []
    by_id = {i.id: {m: Path(p).name for m, p in i.paths.items()} for i in items}
    assert by_id == {
        "A1": {"flair": "A1_flair.nii.gz", "t1ce": "A1_t1ce.nii.gz", "t1": "A1_t1.nii.gz", "t2": "A1_t2.nii.gz"},
        "B2": {"flair": "B2-t2f.nii.gz", "t1ce": "B2-t1c.nii.gz", "t1": "B2-t1n.nii.gz", "t2": "B2-t2w.nii.gz"},
    }
    for i in items:
        assert list(i.paths) == list(MODEL_CHANNELS)


def test_anonymize_key_lives_outside_the_output_folder(anon, tmp_path, tiny_weights):
    """The key maps pseudonyms back to ids: it never sits in the folder people share."""
    from imagingflows.flows.run import default_anonymize_key
    from imagingflows.flows.runners import UsageError

    out = anon["out"]
    assert not [p for p in out.rglob("*") if "key" in p.name.lower()]
    assert (out.parent / "private" / "pseudonyms.key").stat().st_mode & 0o077 == 0  # owner only
    assert out.resolve() not in default_anonymize_key().resolve().parents
    cases = _make_case(tmp_path / "in", "c1", 1).parent
    with pytest.raises(UsageError, match="inside the output folder"):
        segment(cases, tmp_path / "o", weights=str(tiny_weights), anonymize=True,
                anonymize_key=str(tmp_path / "o" / "k.key"))
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / ".anonymize-key").write_text("0" * 32)  # left by an older version
    with pytest.raises(UsageError, match="move it out"):
        segment(cases, tmp_path / "o2", weights=str(tiny_weights), anonymize=True)
