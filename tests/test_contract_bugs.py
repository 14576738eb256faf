"""Smaller bugs of the field report and the contract review, each pinned by a test."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from imagingflows.flows import segment
from imagingflows.flows.cli import app
from imagingflows.flows.run import anonymize_key
from imagingflows.pipelines import base


def test_a_failed_item_with_an_empty_id_never_deletes_the_output_folder(make_cases, tiny_weights, tmp_path):
    """Loose files named ``_flair.nii.gz`` ... give the case id "" (its folder is the output folder)."""
    src = make_cases(1, seed=70) / "case70"
    loose = tmp_path / "loose"
    loose.mkdir()
    for path in src.glob("case70_*.nii.gz"):
        (loose / path.name.replace("case70", "")).write_bytes(path.read_bytes())
    t1ce = nib.load(loose / "_t1ce.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(t1ce.shape, np.int16), t1ce.affine), loose / "_t1ce.nii.gz")  # fails
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier result")
    result = segment(loose, out, weights=str(tiny_weights), device="cpu", precision="fp32")
    assert result["counts"]["failed"] == 1
    assert (out / "keep.txt").read_text() == "an earlier result" and (out / "run.json").is_file()


def test_train_with_a_mistyped_pipeline_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["train", "segmnet", "--data", str(tmp_path), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown pipeline 'segmnet'" in result.output
    assert "Did you mean 'segment'" in result.output and "Traceback" not in result.output


def test_a_second_pipeline_under_a_taken_name_is_an_error_naming_both():
    def another():  # pragma: no cover - never built
        raise AssertionError

    base.pipeline_names()
    with pytest.raises(ValueError, match=r"'segment' is registered twice: by .*medical.pipeline and by .*another"):
        base.register("segment", another)
    assert base.get_pipeline("segment").name == "segment"


def test_two_runs_creating_the_anonymize_key_at_once_share_one_whole_key(tmp_path):
    keys, key_path = [], tmp_path / "private" / "anonymize.key"
    threads = [threading.Thread(target=lambda i=i: keys.append(anonymize_key(tmp_path / f"out{i}", key_path)))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) == 16
    assert key_path.stat().st_mode & 0o077 == 0 and not list(key_path.parent.glob(".tmp-*"))


def test_run_json_records_the_versions_each_pipeline_depends_on():
    """tasks/ knows no domain: the pipeline names the packages its outputs depend on."""
    from imagingflows.tasks.manifest import versions

    assert set(versions()) == {"python", "imagingflows", "torch", "prefect", "numpy"}
    assert {"monai", "nibabel", "pydicom"} <= set(versions(base.get_pipeline("segment").packages))
    assert {"pillow", "tifffile"} <= set(versions(base.get_pipeline("restore").packages))
    assert "monai" not in versions(base.get_pipeline("restore").packages)


def test_resume_reads_the_inputs_only_to_confirm_a_skip(tmp_path):
    """Hashing multi-GB inputs serially in the flow delayed the first result: the hash is taken only
    when every cheaper check says the item is done, and otherwise inside the item's own task."""
    from imagingflows.tasks.manifest import RunManifest

    manifest = RunManifest.open(tmp_path, pipeline="p", command="run", resume=False)
    (tmp_path / "a.out").write_text("x")
    manifest.record("done", {"status": "done", "config_hash": "c", "weights_sha256": None, "input_hash": "h",
                             "outputs": {"image": "a.out"}})
    manifest.record("failed", {"status": "failed", "error": "bad"})
    calls = []

    def hashed() -> str:
        calls.append(1)
        return "h"

    kwargs = dict(cfg_hash="c", weights_hash=None, outputs=[])
    assert not manifest.up_to_date("failed", input_hash=hashed, **kwargs) and not calls
    assert not manifest.up_to_date("new", input_hash=hashed, **kwargs) and not calls
    assert not manifest.up_to_date("done", input_hash=hashed, cfg_hash="other", weights_hash=None, outputs=[])
    assert not calls
    assert manifest.up_to_date("done", input_hash=hashed, **kwargs) and calls == [1]
