"""Typer commands built from option declarations (``pipelines/options.py``), so the CLI has one
command per registered pipeline and verb without hand-written parameter lists.

Each declared field becomes one ``--option``: its help text gains the unit, its metavar says what
the parser takes (``X Y Z`` for three numbers, ``a|b|c`` for a choice), bounds are the parser's
and pydantic checks the values again (one clear line, exit 2, on a bad one).
"""

from __future__ import annotations

import inspect
import types
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from imagingflows.pipelines.options import Options, flag_of, meta


def cli_type(annotation: Any) -> Any:
    """The type typer parses: choices as ``str``, ``X | None`` as ``Optional[X]``."""
    origin = get_origin(annotation)
    if origin is Annotated:  # a type with its own parser (a comma list): typer sees what is inside
        return cli_type(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return Optional[cli_type(inner[0])] if len(inner) == 1 else str
    if origin is Literal or (origin is tuple and Ellipsis in get_args(annotation)):
        return str  # choices, and lists of any length ("4,3,2"): the option's validator parses them
    return annotation


def choices_of(annotation: Any) -> tuple[str, ...]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return tuple(c for a in get_args(annotation) for c in choices_of(a))
    return tuple(str(v) for v in get_args(annotation)) if origin is Literal else ()


def metavar_of(annotation: Any) -> str | None:
    """What the parser takes: ``a|b`` for choices, ``N N`` for pairs, ``PATH``, ``INT``..."""
    choices = choices_of(annotation)
    if choices:
        return "|".join(choices)
    base = cli_type(annotation)
    if get_origin(base) is Union:
        base = [a for a in get_args(base) if a is not type(None)][0]
    if get_origin(base) is tuple:
        return " ".join("N" if a in (int, float) else "TEXT" for a in get_args(base))
    return {Path: "PATH", int: "INT", float: "NUMBER", str: "TEXT"}.get(base)


def help_of(field: FieldInfo) -> str:
    text = field.description or ""
    unit = meta(field).get("unit")
    return f"{text} (unit: {unit})" if unit else text


def parameter(name: str, field: FieldInfo, *, required: bool | None = None) -> inspect.Parameter:
    """One typer option for a declared field (``required`` overrides the declaration)."""
    info = meta(field)
    must = field.is_required() if required is None else required
    default = ... if must else (None if field.default is PydanticUndefined else field.default)
    annotation = cli_type(field.annotation)
    flags = info.get("flags") or [flag_of(name) + (f"/--no-{flag_of(name)[2:]}" if annotation is bool else "")]
    kwargs: dict[str, Any] = {"help": help_of(field)}
    if annotation is not bool:
        kwargs["metavar"] = info.get("metavar") or metavar_of(field.annotation)
    for bound in field.metadata:  # inclusive bounds go to the parser too; pydantic checks all
        for key, arg in (("ge", "min"), ("le", "max")):
            if getattr(bound, key, None) is not None:
                kwargs[arg] = getattr(bound, key)
    if isinstance(default, tuple):
        default = list(default)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *flags, **kwargs))


def command(body: Callable[..., Any], doc: str, *groups: dict[str, FieldInfo],
            leading: list[inspect.Parameter] = ()) -> Callable[..., Any]:
    """A function typer can register: its signature is the fields of ``groups`` (later groups
    win on a name), its body gets ``(ctx, **values)``."""
    fields: dict[str, FieldInfo] = {}
    for group in groups:
        fields.update(group)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
              *leading, *(parameter(name, f) for name, f in fields.items())]

    def run(ctx: typer.Context, **values: Any) -> Any:
        return body(ctx, **values)

    run.__signature__ = inspect.Signature(params)  # typer reads the signature and these annotations
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = doc
    return run


def fields_of(*classes: type[Options], leave_out: tuple[str, ...] = ()) -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    for cls in classes:
        out.update({k: f for k, f in cls.model_fields.items() if k not in leave_out})
    return out


def given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Only the values the user typed (not the defaults)."""
    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name != "DEFAULT"

    return {k: v for k, v in values.items() if typed(k)}


def optional(fields: dict[str, FieldInfo], note: str = "Required.") -> dict[str, FieldInfo]:
    """The fields with required ones left to pydantic: the parser takes them as optional, so a
    missing one is pydantic's one line (``--task is required``), not a usage box; ``note`` is
    added to their help (evaluate needs restore's ``--task`` only to run the pipeline first)."""
    def loose(f: FieldInfo) -> FieldInfo:
        return FieldInfo.merge_field_infos(f, default=None, description=f"{f.description} {note}")

    return {k: loose(f) if f.is_required() else f for k, f in fields.items()}
