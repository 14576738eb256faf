"""A pipeline added as one file through the ``imagingflows.pipelines`` entry point: discovered
without editing the package, run by the same flow (thread and process runners), resumed,
recorded and reported; a plug-in that takes a built-in's name is refused, naming both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imagingflows.flows import run_pipeline
from imagingflows.pipelines import base

PLUGIN = Path(__file__).parent / "plugins" / "toy_pipeline.py"


def _install(site: Path, entry: str) -> None:
    """What `pip install` of a package declaring the entry point leaves on the path."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, site / "toy_pipeline.py")
    info = site / "toy_pipeline-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-pipeline\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[imagingflows.pipelines]\n{entry}\n")


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(base, "_PIPELINES", {})
    monkeypatch.setattr(base, "_BUILTINS_LOADED", False)


def test_a_plugin_pipeline_runs_resumes_and_reports(tmp_path, monkeypatch, fresh_registry):
    _install(tmp_path / "site", "toy = toy_pipeline:pipeline")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "toy" in base.pipeline_names() and {"segment", "restore"} <= set(base.pipeline_names())
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    (inp / "a.txt").write_text("hello")
    (inp / "sub" / "b.txt").write_text("world")
    (inp / "c.txt").write_text("FAIL please")

    first = run_pipeline("toy", inp, tmp_path / "out")
    assert first["counts"] == {"done": 2, "failed": 1, "skipped": 0}
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "WORLD"
    assert first["errors"] == {"c.txt": "c.txt: asks to fail"}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["pipeline"] == "toy" and run["items"]["a.txt"]["summary"] == {"characters": 5}
    assert "c.txt: asks to fail" in (tmp_path / "out" / "report.html").read_text()
    again = run_pipeline("toy", inp, tmp_path / "out", resume=True)
    assert again["counts"] == {"done": 0, "failed": 1, "skipped": 2}

    procs = run_pipeline("toy", inp, tmp_path / "procs", runner="process", workers=2)  # workers find it too
    assert procs["counts"]["done"] == 2 and (tmp_path / "procs" / "a.txt").read_text() == "HELLO"


def test_a_plugin_gets_every_command_from_its_declarations(tmp_path, monkeypatch, fresh_registry):
    from typer.testing import CliRunner

    from imagingflows.flows.cli import build_app

    _install(tmp_path / "site", "toy = toy_pipeline:pipeline")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "a.txt").write_text("hello")
    cli = CliRunner()

    def run(*args: str):
        return cli.invoke(build_app(), [str(a) for a in args])

    assert "--shout" in run("toy", "--help").output and "--no-shout" in run("toy", "--help").output
    done = run("toy", "-i", inp, "-o", out, "--quiet")
    assert done.exit_code == 0 and (out / "a.txt").read_text() == "HELLO", done.output
    assert run("toy", "-i", inp, "-o", out, "--resume", "--quiet").exit_code == 0
    assert json.loads((out / "run.json").read_text())["summary"]["skipped"] == 1
    quiet = run("toy", "-i", inp, "-o", out, "--resume", "--no-shout", "--quiet")  # an output field: redone
    assert quiet.exit_code == 0 and (out / "a.txt").read_text() == "hello"
    assert run("toy", "-i", inp, "-o", out, "--resume", "--no-collapse-check", "--no-shout", "-q").exit_code == 0
    assert json.loads((out / "run.json").read_text())["summary"]["skipped"] == 1  # not an output field: kept

    trained = run("train", "toy", "--data", inp, "-o", tmp_path / "run")
    assert trained.exit_code == 0 and "train toy: learnt nothing from" in trained.output, trained.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["result"]["data_sha256"]
    scored = run("evaluate", "toy", "--predictions", out, "--reference", inp, "-o", tmp_path / "ev")
    assert scored.exit_code == 0 and "mean: equal 1" in scored.output, scored.output
    served = run("serve", "toy", "-i", inp, "-o", out, "--cron", "every night")
    assert served.exit_code == 2 and "invalid --cron 'every night'" in served.output
    typo = run("train", "tyo", "--data", inp)
    assert typo.exit_code == 2 and "unknown pipeline 'tyo'. Did you mean 'toy'?" in typo.output


def test_a_plugin_taking_a_builtin_name_is_refused_naming_both(tmp_path, monkeypatch, fresh_registry):
    _install(tmp_path / "site", "segment = toy_pipeline:pipeline")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ValueError, match=r"'segment' is registered twice: by .*medical.pipeline and by "
                                         r"toy_pipeline.pipeline"):
        base.get_pipeline("restore")


def test_a_broken_plugin_is_named(tmp_path, monkeypatch, fresh_registry):
    _install(tmp_path / "site", "toy = toy_pipeline:no_such_factory")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ValueError, match=r"plug-in 'toy' \(toy_pipeline:no_such_factory, from toy-pipeline\)"):
        base.pipeline_names()
