"""Options are declared once and typed: every field says whether it changes outputs (resume hashes
exactly those), has help with its unit, a metavar the parser takes, and a bad value is one line
with exit 2, from the CLI and the Python API alike; a deployment shows them as a typed form."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagingflows.flows.cli import build_app
from imagingflows.flows.runners import UsageError
from imagingflows.pipelines import options as opts
from imagingflows.pipelines.base import get_pipeline, pipeline_names
from imagingflows.tasks.manifest import config_hash

ROOT = Path(__file__).resolve().parents[1]
SHARED = (opts.ModelOptions, opts.BatchOptions, opts.ServeOptions, opts.EvaluateOptions, opts.TrainOptions)


def _all_option_classes():
    classes = list(SHARED)
    for name in pipeline_names():
        pipe = get_pipeline(name)
        classes += [pipe.run_options] + ([pipe.train_options] if pipe.train_options else [])
    return classes


@pytest.mark.parametrize("cls", _all_option_classes(), ids=lambda c: c.__name__)
def test_every_field_is_marked_and_explained(cls):
    assert cls.unmarked_fields() == [], f"{cls.__name__}: declare these with option(..., output=...)"
    for name, field in cls.model_fields.items():
        assert field.description and len(field.description) > 10, f"{cls.__name__}.{name} has no help"
        kind = str(field.annotation)
        if ("int" in kind or "float" in kind) and name != "seed":
            assert opts.meta(field).get("unit"), f"{cls.__name__}.{name}: a number needs its unit"


@pytest.mark.parametrize("name", pipeline_names())
def test_the_config_hash_covers_exactly_the_output_fields(name):
    pipe = get_pipeline(name)
    fields = pipe.run_options.model_fields
    base = {k: f.default if f.default is not None else None for k, f in fields.items()}
    keys = pipe.output_keys()
    reference = config_hash(base, keys)
    for key in fields:
        changed = config_hash({**base, key: "changed"}, keys) != reference
        marked = bool(opts.meta(fields[key])["output"])
        assert changed == marked, f"{name}.{key}: output={marked} but the hash {'moves' if changed else 'stays'}"
    for key in pipe.derived_output_keys:  # what prepare adds from the model keys resume too
        assert config_hash({**base, key: "changed"}, keys) != reference


def test_flows_know_no_domain():
    """`grep segment|restore flows/*.py` finds only docs and help: no name in the code."""
    words = ("segment", "restore", "medical", "restoration", "brain", "nifti")
    for path in sorted((ROOT / "flows").glob("*.py")):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.NAME:
                assert not any(w in tok.string.lower() for w in words), f"{path.name}:{tok.start[0]} {tok.string}"


def test_every_pipeline_gets_every_verb_with_its_declared_options():
    runner = CliRunner()
    app = build_app()
    for name in pipeline_names():
        pipe = get_pipeline(name)
        verbs = [([name], pipe.run_options), (["serve", name], pipe.run_options)]
        verbs += [(["train", name], pipe.train_options)] if pipe.train else []
        verbs += [(["evaluate", name], pipe.run_options)] if pipe.evaluate else []
        for verb, cls in verbs:
            out = runner.invoke(app, [*verb, "--help"], env={"COLUMNS": "250"})
            assert out.exit_code == 0, out.output
            for field in cls.model_fields:
                flags = opts.meta(cls.model_fields[field]).get("flags") or [opts.flag_of(field)]
                assert flags[0] in out.output, f"{' '.join(verb)} lacks {flags[0]}"


def test_metavars_say_what_the_parser_takes():
    out = CliRunner().invoke(build_app(), ["segment", "--help"], env={"COLUMNS": "250"}).output
    assert "X Y Z" in out and "2021|2023" in out and "(unit: voxels)" in out
    out = CliRunner().invoke(build_app(), ["restore", "--help"], env={"COLUMNS": "250"}).output
    assert "H W" in out and "denoise|deblur|sr" in out and "(unit: input pixels)" in out


@pytest.mark.parametrize("args, words", [
    (["segment", "--overlap", "1.5"], "--overlap: Input should be less than 1 (got 1.5)"),
    (["segment", "--labels", "2022"], "--labels: Input should be '2021' or '2023' (got '2022')"),
    (["segment", "--patch-merging", "new"], "--patch-merging: Input should be 'legacy' or 'current'"),
    (["restore", "--task", "denoise", "--scale", "2"], "--scale 2 applies to --task sr only"),
    (["restore", "--precision", "fp8", "--task", "sr"], "--precision: Input should be"),
])
def test_a_bad_value_is_one_line_and_exit_2(tmp_path, args, words):
    (tmp_path / "in").mkdir()
    out = CliRunner().invoke(build_app(), [*args, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], out.output


def test_the_python_api_validates_its_options(tmp_path):
    from imagingflows.flows import restore, segment

    (tmp_path / "in").mkdir()
    with pytest.raises(UsageError, match=r"unknown option 'rooi' \(--rooi\)"):
        segment(tmp_path / "in", tmp_path / "out", rooi=[96, 96, 96])
    with pytest.raises(UsageError, match="--task is required"):
        restore(tmp_path / "in", tmp_path / "out")
    with pytest.raises(UsageError, match="unknown option 'anonymize'"):  # restore does not anonymise
        restore(tmp_path / "in", tmp_path / "out", task="denoise", anonymize=True)


def test_the_deployment_form_is_typed_by_the_pipelines_options():
    from prefect.utilities.callables import parameter_schema as prefect_schema

    from imagingflows.flows.serve import parameter_schema, scheduled_run

    schema = parameter_schema("restore", prefect_schema(scheduled_run).model_dump())
    props = schema["properties"]["options"]["properties"]
    assert props["tile"]["type"] == "integer" and props["tile"]["default"] == 512 and props["tile"]["minimum"] == 1
    assert props["task"]["enum"] == ["denoise", "deblur", "sr"]
    assert props["overlap"]["unit"] == "input pixels" and props["tile"]["output"] is True
    assert "task" in schema["properties"]["options"]["required"]
    assert schema["properties"]["pipeline"]["enum"] == ["restore"]
    assert schema["properties"]["workers"]["type"] == "integer"
