"""Domain-free run report: ``report.html`` and ``report.md`` rendered from the run manifest.

The manifest (``run.json``) is a plain dict; every key may be absent and every value may have
an unexpected type, so each part renders what it finds and skips what it does not understand.
The HTML is self-contained (inline CSS, no scripts, no external URLs) and refers to images by
paths relative to the run folder; everything taken from the manifest is HTML-escaped (and, in
the Markdown, escaped against tables and inline HTML). It opens from ``file://`` with no server.

The page puts the summary first (counts, failures, warnings, mean metrics, figures), then the item
table and the previews. Above ``PAGE_SIZE`` items the table and the previews are paged with pure
CSS (one radio button per page, labels as page links, plus "all" and "failed"): a browser without
CSS shows every row, printing shows every row, and nothing needs a script.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import numbers
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterable
from urllib.parse import quote

from .write import write_bytes

SHA_SHORT = 12
_ERROR_CELL_CHARS = 120
PAGE_SIZE = 50  # items per page of the HTML item table (and its previews); at most this many: no pager
_OPEN_LIST_MAX = 10  # failed/warned items listed open in the summary; the rest collapsed


# ----------------------------------------------------------------------------- formatting


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or _is_np_number(v)


def _is_np_number(v: Any) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, np.number)


def _non_finite(f: float) -> str | None:
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return None


def format_metric(v: Any) -> str:
    """Metrics: three decimals (``0.912``, ``373.130``), thousands separators above 1000; counts (integers)
    without decimals (``17,212``)."""
    if v is None:
        return ""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return f"{int(v):,}"
    if _is_number(v):
        f = float(v)
        return _non_finite(f) or f"{f:,.3f}"
    return _format_other(v)


def format_value(v: Any) -> str:
    """Summary values (volumes, counts): integers with thousands separators, otherwise
    four significant digits below 1000 and one decimal above (``1,234.5``)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if _is_number(v):
        f = float(v)
        if (special := _non_finite(f)) is not None:
            return special
        if float(f).is_integer() and abs(f) < 1e15:
            return f"{int(f):,}"
        if abs(f) >= 1000:
            return f"{f:,.1f}"
        return f"{f:.4g}"
    return _format_other(v)


def format_seconds(v: Any) -> str:
    if _is_number(v) and math.isfinite(float(v)):
        return f"{float(v):,.1f}"
    return "" if v is None else _format_other(v)


def _format_other(v: Any) -> str:
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(v)


def _short_sha(v: Any) -> str:
    s = "" if v is None else str(v)
    return s[:SHA_SHORT] if re.fullmatch(r"[0-9a-fA-F]{16,}", s) else s


def _parse_time(v: Any) -> _dt.datetime | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        t = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t


def _duration(started: Any, finished: Any) -> str:
    a, b = _parse_time(started), _parse_time(finished)
    if a is None or b is None or (a.tzinfo is None) != (b.tzinfo is None):
        return ""
    s = (b - a).total_seconds()
    if s < 0:
        return ""
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


# ----------------------------------------------------------------------------- manifest model


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to ``{"a_b": v}``; non-dicts give ``{}``."""
    out: dict[str, Any] = {}
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        key = f"{prefix}_{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _items(manifest: dict) -> list[tuple[str, dict]]:
    items = manifest.get("items")
    out: list[tuple[str, dict]] = []
    if isinstance(items, dict):
        for k, v in items.items():
            out.append((str(k), v if isinstance(v, dict) else {"status": _format_other(v)}))
    elif isinstance(items, list):
        for i, v in enumerate(items):
            if isinstance(v, dict):
                out.append((str(v.get("id", i)), v))
            else:
                out.append((str(i), {"status": _format_other(v)}))
    return out


def _union_keys(dicts: Iterable[dict]) -> list[str]:
    """Every key of ``dicts``, sorted: run.json stores keys sorted, so a report rendered again from
    it has the columns of the run's own report."""
    return sorted({k for d in dicts for k in d})


def _counts(manifest: dict, items: list[tuple[str, dict]]) -> dict[str, Any]:
    summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
    counts: dict[str, Any] = {}
    for status in ("done", "failed", "skipped"):
        if status in summary:
            counts[status] = summary[status]
        else:
            counts[status] = sum(1 for _, it in items if it.get("status") == status)
    other = [it.get("status") for _, it in items if it.get("status") not in ("done", "failed", "skipped")]
    if other:
        counts["other"] = len(other)
    if "total_seconds" in summary:
        counts["total_seconds"] = summary["total_seconds"]
    return counts


def _path_list(value) -> list[str]:
    """A path, a list of paths or a dict of paths from the manifest, as a list of strings."""
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    elif isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return []
    return [os.fspath(p) for p in value if isinstance(p, (str, os.PathLike)) and os.fspath(p)]


def _previews(item: dict) -> list[str]:
    outputs = item.get("outputs") if isinstance(item.get("outputs"), dict) else {}
    return _path_list(outputs.get("previews", item.get("previews")))


def _warnings(item: dict) -> list[str]:
    """An item's ``warnings`` (a list of strings; a lone string is one warning) as non-empty strings."""
    w = item.get("warnings")
    if isinstance(w, str):
        w = [w]
    if not isinstance(w, (list, tuple)):
        return []
    return [t for t in (_format_other(x).strip() for x in w if x is not None) if t]


def _warning_count_text(items: list[tuple[str, dict]]) -> str:
    """``"3 warnings in 2 items"`` (``""`` without warnings)."""
    per_item = [len(_warnings(it)) for _, it in items]
    total, hit = sum(per_item), sum(1 for n in per_item if n)
    if not total:
        return ""
    return f"{total} warning{'s' if total != 1 else ''} in {hit} item{'s' if hit != 1 else ''}"


def _demo_notice(manifest: dict) -> str:
    """The notice for the run-level ``demo_weights`` key (``{"file", "trained_on"}``); ``""`` without it.

    Only the file's name is shown (the path may name the user's home).
    """
    d = manifest.get("demo_weights")
    if d in (None, False, "", {}, []):
        return ""
    file, trained = (d.get("file"), d.get("trained_on")) if isinstance(d, dict) else (d, None)
    text = "Demo weights"
    if isinstance(file, (str, os.PathLike)) and os.fspath(file):
        text += ": " + os.fspath(file).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if trained not in (None, ""):
        text += f" — trained on {_format_other(trained)}"
    return text + "; a demonstration, not for real data."


def _figures(manifest: dict) -> list[str]:
    return _path_list(manifest.get("figures"))


def _image_url(path: str, base_dir: Path | None) -> str:
    """A URL for an image path: relative to ``base_dir`` when possible, never external.

    Percent-encoding turns ``:`` into ``%3A``, so a manifest string cannot smuggle in a
    scheme (``javascript:``, ``https:``); a leading ``//`` is dropped for the same reason.
    """
    p = Path(path)
    if p.is_absolute():
        if base_dir is not None:
            try:
                return quote(p.resolve().relative_to(Path(base_dir).resolve()).as_posix(), safe="/")
            except ValueError:
                pass
        return p.resolve().as_uri()
    posix = PurePosixPath(path.replace("\\", "/")).as_posix().lstrip("/")
    return quote(posix, safe="/")


def _mean_metrics(manifest: dict) -> tuple[list[str], list[str], dict[str, dict[str, Any]], str]:
    """(stat names, metric names, {stat: {metric: value}}, conventions text)."""
    m = manifest.get("metrics")
    if not isinstance(m, dict):
        return [], [], {}, ""
    labels = m.get("labels")
    if isinstance(labels, dict):
        labels_text = "; ".join(f"{k}: {v}" for k, v in labels.items())
    elif isinstance(labels, list):
        labels_text = "; ".join(str(v) for v in labels)
    else:
        labels_text = "" if labels is None else str(labels)
    stats: dict[str, dict[str, Any]] = {}
    for k, v in m.items():
        if k == "labels":
            continue
        if isinstance(v, dict):
            stats[str(k)] = _flatten(v)
    if not stats:  # a flat {"dice_WT": 0.9, ...} means the mean
        flat = {str(k): v for k, v in m.items() if k != "labels" and _is_number(v)}
        if flat:
            stats["mean"] = flat
    names = _union_keys(stats.values())
    return list(stats), names, stats, labels_text


def _title(manifest: dict) -> str:
    pipeline = manifest.get("pipeline")
    command = manifest.get("command")
    parts = [str(p) for p in (pipeline, command) if p not in (None, "")]
    return "imagingflows report" + (": " + " ".join(parts) if parts else "")


def _details(manifest: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The small key/value tables at the end: model, versions, device."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    model = manifest.get("model")
    if isinstance(model, dict) and model:
        rows = []
        for k, v in model.items():
            if k == "weights_sha256" or (isinstance(k, str) and k.endswith("sha256")):
                rows.append((str(k), _short_sha(v)))
            else:
                rows.append((str(k), _format_other(v) if v is not None else ""))
        sections.append(("Model", rows))
    elif model not in (None, "", {}):
        sections.append(("Model", [("model", _format_other(model))]))
    for key, title in (("versions", "Versions"), ("device", "Device")):
        v = manifest.get(key)
        if isinstance(v, dict) and v:
            sections.append((title, [(str(k), _format_other(x) if x is not None else "") for k, x in v.items()]))
        elif v not in (None, "", {}):
            sections.append((title, [(key, _format_other(v))]))
    return sections


def _config_text(manifest: dict) -> str:
    cfg = manifest.get("config")
    if cfg is None:
        return ""
    try:
        return json.dumps(cfg, indent=2, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(cfg)


def _first_line(text: str, limit: int = _ERROR_CELL_CHARS) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ----------------------------------------------------------------------------- markdown

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")


def _md(text: Any) -> str:
    """Escape text for a Markdown table cell or paragraph (no tables broken, no inline HTML)."""
    s = text if isinstance(text, str) else _format_other(text)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\s*[\r\n]+\s*", " ", s)


def _md_fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(rows_cell for rows_cell in row) + " |" for row in rows]
    return lines


def _rows_shown(items: list[tuple[str, dict]], max_items: int | None) -> list[tuple[str, dict]]:
    """All items, or at most ``max_items`` of them: the failed first, then the slowest (in run order)."""
    if max_items is None or len(items) <= max_items:
        return items

    def rank(entry: tuple[int, tuple[str, dict]]) -> tuple:
        seconds = entry[1][1].get("seconds")
        return (entry[1][1].get("status") != "failed", -(seconds if _is_number(seconds) else 0.0))

    keep = sorted(sorted(enumerate(items), key=rank)[:max_items])
    return [item for _, item in keep]


def render_markdown(manifest: dict, *, base_dir: Path | None = None, max_items: int | None = None) -> str:
    """The run report as Markdown (GitHub-flavoured tables, images as ``![](relative/path)``).

    The summary comes first (counts, failed items, warnings, metrics), then the item table.
    ``max_items``: list at most this many items (the failed, then the slowest), e.g. for the
    Prefect UI's markdown artifact of a 2000-item batch; report.md on disk lists every item.
    """
    manifest = manifest if isinstance(manifest, dict) else {}
    items = _items(manifest)
    out: list[str] = [f"# {_md(_title(manifest))}", ""]
    notice = _demo_notice(manifest)
    if notice:
        out += [f"> **{_md(notice)}**", ""]

    meta = []
    if manifest.get("anonymized") is True:
        meta.append("**case ids anonymised**")
    for key in ("started", "finished"):
        if key in manifest:
            meta.append(f"{key}: {_md(manifest[key]) if manifest[key] is not None else '(not finished)'}")
    dur = _duration(manifest.get("started"), manifest.get("finished"))
    if dur:
        meta.append(f"duration: {dur}")
    counts = _counts(manifest, items)
    count_text = ", ".join(f"{counts[k]} {k}" for k in ("done", "failed", "skipped", "other") if k in counts)
    if "total_seconds" in counts:
        count_text += f" ({format_seconds(counts['total_seconds'])} s of item time)"
    meta.append(f"items: {_md(count_text)}")
    if _warning_count_text(items):
        meta.append(f"**{_warning_count_text(items)}**")
    out += [f"- {m}" for m in meta] + [""]

    summary_keys = _union_keys(_flatten(it.get("summary")) for _, it in items)
    metric_keys = _union_keys(_flatten(it.get("metrics")) for _, it in items)
    shown = _rows_shown(items, max_items)

    failed = [(iid, it) for iid, it in items if it.get("status") == "failed"]
    if failed:
        out += ["## Failed items", ""]
        for iid, it in failed[:max_items]:
            out += [f"### {_md(iid)}", "", _md_fence(str(it.get("error") or "(no error message recorded)")), ""]
        if max_items is not None and len(failed) > max_items:
            out += [f"... and {len(failed) - max_items} more failed items (report.html, run.json).", ""]

    warned = [(iid, _warnings(it)) for iid, it in items if _warnings(it)]
    if warned:
        out += ["## Warnings", ""]
        for iid, texts in warned[:max_items]:
            out += [f"### {_md(iid)}", ""] + [f"- {_md(t)}" for t in texts] + [""]
        if max_items is not None and len(warned) > max_items:
            out += [f"... and {len(warned) - max_items} more items with warnings (report.html, run.json).", ""]

    stats, names, table, labels_text = _mean_metrics(manifest)
    if names:
        out += ["## Metrics", ""]
        rows = [[_md(n), *(_md(format_metric(table[s].get(n))) for s in stats)] for n in names]
        out += _md_table(["metric", *stats], rows) + [""]
    if labels_text:
        if not names:
            out += ["## Metrics", ""]
        out += [_md(labels_text), ""]

    figures = _figures(manifest)
    if figures:
        out += ["## Figures", ""]
        out += [f"![{_md(PurePosixPath(p).stem)}]({_image_url(p, base_dir)})" for p in figures] + [""]

    any_warnings = any(_warnings(it) for _, it in items)
    out += ["## Items", ""]
    if len(shown) < len(items):
        out += [f"{len(shown)} of {len(items)} items: the failed ones, then the slowest "
                "(every item: report.html, run.json, `run-flow status`).", ""]
    if items:
        header = ["id", "status", "seconds", *summary_keys, *metric_keys, *(["warnings"] if any_warnings else []),
                  "error"]
        rows = []
        for iid, it in shown:
            s, m = _flatten(it.get("summary")), _flatten(it.get("metrics"))
            status = str(it.get("status", ""))
            err = it.get("error")
            row = [
                _md(iid),
                f"**{_md(status)}**" if status == "failed" else _md(status),
                format_seconds(it.get("seconds")),
                *(_md(format_value(s.get(k))) for k in summary_keys),
                *(_md(format_metric(m.get(k))) for k in metric_keys),
                *([str(len(_warnings(it))) if _warnings(it) else ""] if any_warnings else []),
                _md(_first_line(str(err))) if err else "",
            ]
            rows.append(row)
        out += _md_table(header, rows) + [""]
    else:
        out += ["No items.", ""]

    with_previews = [(iid, _previews(it)) for iid, it in shown]
    with_previews = [(iid, p) for iid, p in with_previews if p]
    if with_previews:
        out += ["## Previews", ""]
        for iid, paths in with_previews:
            out += [f"### {_md(iid)}", ""]
            out += [" ".join(f"![{_md(PurePosixPath(p).stem)}]({_image_url(p, base_dir)})" for p in paths), ""]

    out += ["## Run details", ""]
    cfg = _config_text(manifest)
    if cfg:
        out += ["### Config", ""]
        if manifest.get("config_hash"):
            out += [f"config hash: `{_short_sha(manifest.get('config_hash'))}`", ""]
        out += [_md_fence(cfg), ""]
    for title, rows in _details(manifest):
        out += [f"### {title}", ""] + _md_table(["key", "value"], [[_md(k), _md(v)] for k, v in rows]) + [""]
    for key in ("schema",):
        if key in manifest:
            out += [f"manifest schema: {_md(manifest[key])}", ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- html

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1em 0 .4em; }
.meta { color: #555; margin: .2em 0; }
.anon { display: inline-block; background: #eef3ff; color: #234; border: 1px solid #bcd;
        border-radius: 3px; padding: 0 .4em; font-size: .9em; }
.counts span { display: inline-block; margin-right: 1em; font-weight: 600; }
.counts .done { color: #1a7f37; } .counts .failed { color: #cf222e; } .counts .skipped { color: #9a6700; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failed td { background: #ffebe9; }
tr.skipped td { color: #666; }
.status-failed { color: #cf222e; font-weight: 600; }
.status-done { color: #1a7f37; }
.error { color: #82071e; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: .6em; overflow-x: auto; font-size: .85em;
      white-space: pre-wrap; word-break: break-word; }
.failed-item pre { background: #fff5f5; border-color: #ffcecb; }
.notice { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 4px; padding: .5em .8em;
          font-weight: 600; color: #4d2d00; }
.counts .warnings { color: #9a6700; }
tr.warned td.warn { background: #fff8c5; }
.warnings-item ul { margin: .2em 0 .8em; color: #6b4400; }
.previews { display: flex; flex-wrap: wrap; gap: .6em; overflow-x: auto; }
figure { margin: 0; }
/* previews at their own pixel size: labels and thin outlines stay legible; wide ones scroll */
.previews img { max-width: none; width: auto; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: .8em; color: #555; text-align: center; }
.figure img { max-width: 100%; height: auto; }
table.kv th { width: 12em; }
/* wide item tables scroll inside the page instead of widening it */
.table-wrap { overflow-x: auto; max-width: 100%; }
td.id { white-space: nowrap; }
td.error { min-width: 12em; overflow-wrap: anywhere; }  /* long paths wrap inside the cell */
td.id a { color: inherit; }
details.long > summary { cursor: pointer; color: #0969da; margin: .6em 0; }
/* the pager: one hidden radio per page (pure CSS, works from file:// with no script) */
.paged > input.pg { position: absolute; opacity: 0; width: 1px; height: 1px; margin: 0; }
.pager { display: flex; flex-wrap: wrap; align-items: center; gap: .3em; margin: .5em 0; font-size: .9em; }
.pager .hint { color: #555; margin-right: .4em; }
.pager label { display: inline-block; min-width: 1.6em; text-align: center; padding: .1em .45em;
               border: 1px solid #d0d7de; border-radius: 4px; cursor: pointer; background: #fff; }
.pager label:hover { background: #f3f4f6; }
.pager label.show-failed { color: #cf222e; }
.item-previews:target h3 { background: #fff8c5; }
.toc { margin: .4em 0; } .toc a { color: #0969da; }
/* printed: every page of the table, no pager */
@media print { .pager, .toc, .paged > input.pg { display: none; }
               .paged .items-page, .paged tr, .paged .item-previews { display: revert !important; } }
"""


def _h(v: Any) -> str:
    s = v if isinstance(v, str) else _format_other(v)
    return html.escape(s, quote=True)


def _html_table(header: list[str], rows: list[tuple[str, list[tuple[str, str]]]], cls: str = "") -> str:
    """rows: (tr class, [(td class, escaped html)])."""
    parts = [f'<table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>', "<thead><tr>"]
    parts += [f"<th>{_h(h)}</th>" for h in header]
    parts.append("</tr></thead><tbody>")
    for tr_cls, cells in rows:
        parts.append(f'<tr class="{_h(tr_cls)}">' if tr_cls else "<tr>")
        parts += [f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for c, v in cells]
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _status_class(status: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", status.lower())


def _long_list(blocks: list[str], noun: str) -> list[str]:
    """The first ``_OPEN_LIST_MAX`` blocks as they are, the rest in a collapsed ``<details>``."""
    if len(blocks) <= _OPEN_LIST_MAX:
        return blocks
    rest = len(blocks) - _OPEN_LIST_MAX
    return [*blocks[:_OPEN_LIST_MAX], f'<details class="long"><summary>{rest:,} more {_h(noun)}</summary>',
            *blocks[_OPEN_LIST_MAX:], "</details>"]


def _page_count(n_items: int) -> int:
    """Pages of the HTML item table: 1 (no pager) up to ``PAGE_SIZE`` items."""
    return 1 if n_items <= PAGE_SIZE else math.ceil(n_items / PAGE_SIZE)


def _pager_css(pages: int, with_failed: bool) -> str:
    """The page-count specific rules: radio ``items-pK`` checked hides every other page and marks its labels.

    Everything is visible by default (no CSS, print); "all" has no rule; "failed" hides rows and previews of
    items that did not fail.
    """
    if pages <= 1:
        return ""
    ids = [f"items-p{k}" for k in range(1, pages + 1)] + ["items-all"] + (["items-failed"] if with_failed else [])
    hide = [f"#items-p{k}:checked ~ * .items-page:not(.items-p{k})" for k in range(1, pages + 1)]
    if with_failed:
        hide += ["#items-failed:checked ~ * tbody tr:not(.failed)",
                 "#items-failed:checked ~ * .item-previews:not(.failed)"]
    current = [f'#{i}:checked ~ .pager label[for="{i}"]' for i in ids]
    focus = [f'#{i}:focus-visible ~ .pager label[for="{i}"]' for i in ids]
    return (",\n".join(hide) + " { display: none; }\n"
            + ",\n".join(current) + " { background: #0969da; border-color: #0969da; color: #fff; }\n"
            + ",\n".join(focus) + " { outline: 2px solid #0969da; outline-offset: 1px; }\n")


def _pager_nav(pages: int, n_items: int, n_failed: int) -> str:
    labels = [f'<label for="items-p{k}" title="items {(k - 1) * PAGE_SIZE + 1:,}–{min(k * PAGE_SIZE, n_items):,}">'
              f"{k}</label>" for k in range(1, pages + 1)]
    labels.append(f'<label for="items-all" title="all {n_items:,} items on one page">all</label>')
    if n_failed:
        labels.append(f'<label for="items-failed" class="show-failed" title="only the failed items">'
                      f"failed ({n_failed:,})</label>")
    return (f'<nav class="pager" aria-label="item pages"><span class="hint">{n_items:,} items, {PAGE_SIZE} a page:'
            f"</span>{''.join(labels)}</nav>")


def _item_row(index: int, iid: str, it: dict, summary_keys: list[str], metric_keys: list[str],
              any_warnings: bool, preview_anchor: bool) -> str:
    s, m = _flatten(it.get("summary")), _flatten(it.get("metrics"))
    status = str(it.get("status", ""))
    err = it.get("error")
    id_html = f'<a href="#pv-{index}">{_h(iid)}</a>' if preview_anchor else _h(iid)
    cells = [("id", id_html), (f"status-{_status_class(status)}", _h(status)),
             ("num", _h(format_seconds(it.get("seconds"))))]
    cells += [("num" if _is_number(s.get(k)) else "", _h(format_value(s.get(k)))) for k in summary_keys]
    cells += [("num" if _is_number(m.get(k)) else "", _h(format_metric(m.get(k)))) for k in metric_keys]
    n_warn = len(_warnings(it))
    if any_warnings:
        cells.append(("num warn" if n_warn else "num", _h(n_warn) if n_warn else ""))
    cells.append(("error", _h(_first_line(str(err))) if err else ""))
    tr_cls = _status_class(status) + (" warned" if n_warn else "")
    return ((f'<tr class="{_h(tr_cls)}">' if tr_cls else "<tr>")
            + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for c, v in cells) + "</tr>")


def _item_previews(index: int, iid: str, status: str, paths: list[str], base_dir: Path | None) -> str:
    parts = [f'<section class="item-previews {_status_class(status)}" id="pv-{index}"><h3>{_h(iid)}</h3>',
             '<div class="previews">']
    for p in paths:
        name = PurePosixPath(p.replace("\\", "/")).stem
        url = _h(_image_url(p, base_dir))
        parts.append(f'<figure><a href="{url}"><img src="{url}" alt="{_h(name)}" loading="lazy"></a>'
                     f"<figcaption>{_h(name)}</figcaption></figure>")
    parts.append("</div></section>")
    return "".join(parts)


def _items_and_previews(items: list[tuple[str, dict]], summary_keys: list[str], metric_keys: list[str],
                        any_warnings: bool, base_dir: Path | None) -> list[str]:
    """The item table (one ``<tr>`` per item, one ``<tbody class="items-page items-pK">`` per page) and the
    previews (one ``<div class="items-page items-pK">`` per page).

    Above ``PAGE_SIZE`` items both sit in ``<div class="paged">`` after one radio button per page (and
    "all", "failed"); the pager's CSS (``_pager_css``, in the head) shows the chosen page only.
    """
    pages = _page_count(len(items))
    previews = [_previews(it) for _, it in items]
    n_failed = sum(1 for _, it in items if it.get("status") == "failed")
    out: list[str] = []
    nav = ""
    if pages > 1:
        out.append('<div class="paged">')
        radios = [(f"items-p{k}", f"items {(k - 1) * PAGE_SIZE + 1:,} to {min(k * PAGE_SIZE, len(items)):,}")
                  for k in range(1, pages + 1)] + [("items-all", "all items")]
        if n_failed:
            radios.append(("items-failed", "failed items only"))
        out += [f'<input type="radio" class="pg" name="items-page" id="{i}" aria-label="{a}"'
                f'{" checked" if i == "items-p1" else ""}>' for i, a in radios]
        nav = _pager_nav(pages, len(items), n_failed)
        out.append(nav)
    header = ["id", "status", "seconds", *summary_keys, *metric_keys, *(["warnings"] if any_warnings else []),
              "error"]
    out.append('<div class="table-wrap"><table class="items"><thead><tr>'
               + "".join(f"<th>{_h(h)}</th>" for h in header) + "</tr></thead>")
    spans = [(k * PAGE_SIZE, min((k + 1) * PAGE_SIZE, len(items))) for k in range(pages)]
    for k, (lo, hi) in enumerate(spans, 1):
        out.append(f'<tbody class="items-page items-p{k}">' if pages > 1 else "<tbody>")
        out += [_item_row(i + 1, *items[i], summary_keys, metric_keys, any_warnings, bool(previews[i]))
                for i in range(lo, hi)]
        out.append("</tbody>")
    out.append("</table></div>")

    if any(previews):
        if pages > 1:
            out.append('<span class="anchor" id="sec-previews"></span>')
        out.append("<h2>Previews</h2>")
        if pages > 1:
            out.append(nav.replace('aria-label="item pages"', 'aria-label="item pages (previews)"'))
            out.append('<div class="preview-pages">')
        for k, (lo, hi) in enumerate(spans, 1):
            block = [_item_previews(i + 1, items[i][0], str(items[i][1].get("status", "")), previews[i], base_dir)
                     for i in range(lo, hi) if previews[i]]
            out += [f'<div class="items-page items-p{k}">', *block, "</div>"] if pages > 1 else block
        if pages > 1:
            out.append("</div>")
    if pages > 1:
        out.append("</div>")
    return out


def render_html(manifest: dict, *, base_dir: Path | None = None) -> str:
    """The run report as one self-contained HTML page (inline CSS, no scripts, no external URLs).

    Summary first (counts, failures, warnings, mean metrics, figures), then the item table and the
    previews, paged with pure CSS above ``PAGE_SIZE`` items. Images are referenced by their path
    relative to the run folder (``base_dir``, used to turn absolute paths under it into relative
    ones). Everything from the manifest is escaped.
    """
    manifest = manifest if isinstance(manifest, dict) else {}
    items = _items(manifest)
    title = _title(manifest)
    pager_css = _pager_css(_page_count(len(items)), any(it.get("status") == "failed" for _, it in items))
    b: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>",
        f"<style>{_CSS}</style>",
        *([f"<style>{pager_css}</style>"] if pager_css else []),
        "</head><body>",
        f"<h1>{_h(title)}</h1>",
    ]
    notice = _demo_notice(manifest)
    if notice:
        b.append(f'<p class="notice demo-weights">{_h(notice)}</p>')
    if manifest.get("anonymized") is True:
        b.append('<p class="meta"><span class="anon">case ids anonymised</span></p>')
    times = []
    if "started" in manifest:
        times.append(f"started {_h(manifest['started'] if manifest['started'] is not None else '')}")
    if "finished" in manifest:
        fin = manifest["finished"]
        times.append(f"finished {_h(fin)}" if fin is not None else "not finished")
    dur = _duration(manifest.get("started"), manifest.get("finished"))
    if dur:
        times.append(f"duration {_h(dur)}")
    if times:
        b.append(f'<p class="meta">{" &middot; ".join(times)}</p>')
    counts = _counts(manifest, items)
    cs = [f'<span class="{k}">{_h(format_value(counts[k]))} {k}</span>'
          for k in ("done", "failed", "skipped", "other") if k in counts]
    if "total_seconds" in counts:
        cs.append(f'<span class="seconds">{_h(format_seconds(counts["total_seconds"]))} s item time</span>')
    if _warning_count_text(items):
        cs.append(f'<span class="warnings">{_h(_warning_count_text(items))}</span>')
    b.append(f'<p class="counts">{"".join(cs)}</p>')
    paged = _page_count(len(items)) > 1
    toc_at, toc = len(b), []  # long reports get a line of links to their sections, filled in below

    def h2(name: str) -> str:
        if not paged:
            return f"<h2>{name}</h2>"
        anchor = "sec-" + re.sub(r"[^a-z]+", "-", name.lower())
        toc.append(f'<a href="#{anchor}">{name}</a>')
        return f'<span class="anchor" id="{anchor}"></span><h2>{name}</h2>'

    summary_keys = _union_keys(_flatten(it.get("summary")) for _, it in items)
    metric_keys = _union_keys(_flatten(it.get("metrics")) for _, it in items)
    any_warnings = any(_warnings(it) for _, it in items)

    # --- summary: failures, warnings, mean metrics, figures (before the long item table)
    failed = [(iid, it) for iid, it in items if it.get("status") == "failed"]
    if failed:
        b.append(h2("Failed items"))
        b += _long_list([f'<div class="failed-item"><h3>{_h(iid)}</h3>'
                         f'<pre>{_h(str(it.get("error") or "(no error message recorded)"))}</pre></div>'
                         for iid, it in failed], "failed items")

    warned = [(iid, _warnings(it)) for iid, it in items if _warnings(it)]
    if warned:
        b.append(h2("Warnings"))
        b += _long_list([f'<div class="warnings-item"><h3>{_h(iid)}</h3><ul>'
                         + "".join(f"<li>{_h(t)}</li>" for t in texts) + "</ul></div>"
                         for iid, texts in warned], "items with warnings")

    stats, names, table, labels_text = _mean_metrics(manifest)
    if names or labels_text:
        b.append(h2("Metrics"))
    if names:
        rows = [("", [("", _h(n)), *(("num", _h(format_metric(table[s].get(n)))) for s in stats)]) for n in names]
        b.append(_html_table(["metric", *stats], rows, "metrics"))
    if labels_text:
        b.append(f'<p class="meta">{_h(labels_text)}</p>')

    figures = _figures(manifest)
    if figures:
        b.append(h2("Figures"))
        for p in figures:
            name = PurePosixPath(p.replace("\\", "/")).stem
            b.append(f'<figure class="figure"><img src="{_h(_image_url(p, base_dir))}" alt="{_h(name)}">'
                     f"<figcaption>{_h(name)}</figcaption></figure>")

    # --- items table and previews, paged above PAGE_SIZE items
    b.append(h2("Items"))
    if not items:
        b.append("<p>No items.</p>")
    else:
        b += _items_and_previews(items, summary_keys, metric_keys, any_warnings, base_dir)
        if paged and any(_previews(it) for _, it in items):
            toc.append('<a href="#sec-previews">Previews</a>')

    # --- run details
    b.append(h2("Run details"))
    cfg = _config_text(manifest)
    if cfg:
        hash_txt = ""
        if manifest.get("config_hash"):
            hash_txt = f' <span class="meta">(hash <code>{_h(_short_sha(manifest["config_hash"]))}</code>)</span>'
        b.append(f"<details><summary>Config{hash_txt}</summary><pre>{_h(cfg)}</pre></details>")
    for title_, rows_ in _details(manifest):
        b.append(f"<h3>{_h(title_)}</h3>")
        b.append(_html_table(["key", "value"], [("", [("", _h(k)), ("", _h(v))]) for k, v in rows_], "kv"))
    if "schema" in manifest:
        b.append(f'<p class="meta">manifest schema {_h(manifest["schema"])}</p>')
    if toc:
        b.insert(toc_at, f'<nav class="toc" aria-label="sections">{" &middot; ".join(toc)}</nav>')
    b.append("</body></html>")
    return "\n".join(b) + "\n"


def write_report(run_dir: Path, manifest: dict) -> list[Path]:
    """Write ``run_dir/report.html`` and ``run_dir/report.md`` atomically; return their paths."""
    run_dir = Path(run_dir)
    html_path = write_bytes(run_dir / "report.html", render_html(manifest, base_dir=run_dir).encode("utf-8"))
    md_path = write_bytes(run_dir / "report.md", render_markdown(manifest, base_dir=run_dir).encode("utf-8"))
    return [html_path, md_path]
