"""Previews (orientation, aspect, colour placement) and the run report (escaping, failures, atomic write)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagingflows.tasks.preview import before_after, overlay_slices, save_overlay_previews
from imagingflows.tasks.report import render_html, render_markdown, write_report

SHAPE = (40, 50, 20)  # X (L->R), Y (P->A), Z (I->S)
BLOB = (10, 35, 12)  # left, anterior, a bit above the middle
SPACING = (1.0, 1.0, 3.0)
RED = (255, 0, 0)


def _volume():
    rng = np.random.default_rng(0)
    image = rng.uniform(50, 100, SHAPE).astype(np.float32)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    blob = (x - BLOB[0]) ** 2 + (y - BLOB[1]) ** 2 + ((z - BLOB[2]) * 3.0) ** 2 <= 4.5**2
    labels = blob.astype(np.int16)
    image[blob] += 100
    return image, labels


def _coloured_centre(rgb: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of the reddish pixels, as fractions of height and width."""
    r, g = rgb[..., 0].astype(int), rgb[..., 1].astype(int)
    rows, cols = np.nonzero(r - g > 40)
    assert rows.size, "no coloured pixels"
    return (rows.mean() + 0.5) / rgb.shape[0], (cols.mean() + 0.5) / rgb.shape[1]


def test_overlay_slices_orientation_native():
    image, labels = _volume()
    views = overlay_slices(image, labels, {1: RED})
    X, Y, Z = SHAPE
    assert views["axial"].shape == (Y, X, 3)
    assert views["coronal"].shape == (Z, X, 3)
    assert views["sagittal"].shape == (Z, Y, 3)
    for v in views.values():
        assert v.dtype == np.uint8
    x, y, z = BLOB
    # documented mapping: axial (Y-1-y, x), coronal (Z-1-z, x), sagittal (Z-1-z, Y-1-y)
    expect = {"axial": (Y - 1 - y, x), "coronal": (Z - 1 - z, x), "sagittal": (Z - 1 - z, Y - 1 - y)}
    for view, (er, ec) in expect.items():
        fr, fc = _coloured_centre(views[view])
        h, w = views[view].shape[:2]
        assert abs(fr * h - (er + 0.5)) < 1.0, view
        assert abs(fc * w - (ec + 0.5)) < 1.0, view


def test_save_overlay_previews_aspect_and_position(tmp_path):
    image, labels = _volume()
    # legend=False: the bare slice (tests/test_preview_labels.py checks the legend sits below it, slice unchanged)
    paths = save_overlay_previews(image, labels, tmp_path / "case1", "case1", {1: RED}, spacing=SPACING,
                                  legend=False)
    assert [p.name for p in paths] == ["preview_axial.png", "preview_coronal.png", "preview_sagittal.png"]
    X, Y, Z = SHAPE
    sx, sy, sz = SPACING
    # physical height / width of each view
    aspect = {"axial": (Y * sy) / (X * sx), "coronal": (Z * sz) / (X * sx), "sagittal": (Z * sz) / (Y * sy)}
    x, y, z = BLOB
    # expected blob centre as fractions (row, col) of the image
    frac = {
        "axial": ((Y - y - 0.5) / Y, (x + 0.5) / X),
        "coronal": ((Z - z - 0.5) / Z, (x + 0.5) / X),
        "sagittal": ((Z - z - 0.5) / Z, (Y - y - 0.5) / Y),
    }
    for p in paths:
        assert p.exists()
        view = p.stem.split("_")[1]
        rgb = np.asarray(Image.open(p).convert("RGB"))
        h, w = rgb.shape[:2]
        assert min(h, w) >= 250, (view, rgb.shape)
        assert h / w == pytest.approx(aspect[view], rel=0.02), view
        fr, fc = _coloured_centre(rgb)
        assert fr == pytest.approx(frac[view][0], abs=0.03), view
        assert fc == pytest.approx(frac[view][1], abs=0.03), view
    assert not list((tmp_path / "case1").glob(".tmp-*"))


def test_overlay_no_labels_and_center():
    image, _ = _volume()
    views = overlay_slices(image, np.zeros(SHAPE, np.int32), {1: RED}, center=(5, 5, 5))
    for v in views.values():
        assert np.array_equal(v[..., 0], v[..., 1])  # grey only
    views = overlay_slices(np.zeros(SHAPE), np.zeros(SHAPE, np.int32), {})
    assert all(int(v.max()) == 0 for v in views.values())


def test_before_after():
    a = np.zeros((10, 12), np.float32)
    b = np.full((8, 6, 3), 200, np.uint8)
    out = before_after(a, b, labels=None)
    assert out.shape == (10, 12 + 4 + 6, 3) and out.dtype == np.uint8
    assert (out[:10, :12] == 0).all()
    assert (out[:8, 16:] == 200).all()


def _manifest(**extra):
    m = {
        "schema": 1,
        "pipeline": "segment",
        "command": "evaluate",
        "started": "2025-01-01T10:00:00+00:00",
        "finished": "2025-01-01T10:01:05+00:00",
        "versions": {"imagingflows": "0.1.0", "torch": "2.13.0", "python": "3.12"},
        "device": {"type": "cpu", "torch_threads": 2, "workers": 1},
        "config": {"roi": [96, 96, 96], "note": "<b>x</b>"},
        "config_hash": "a" * 64,
        "model": {"arch": "swin_unetr", "weights": "w.pt", "weights_sha256": "0123456789abcdef" * 4},
        "items": {
            "<script>alert(1)</script>&": {
                "status": "done",
                "seconds": 12.345,
                "outputs": {"previews": ["evil/preview_axial.png"]},
                "summary": {"WT_mm3": 1234567.0, "TC_mm3": 12.5},
                "metrics": {"dice_WT": 0.912345, "hd95_WT": 3.14159},
            },
            "case2": {
                "status": "failed",
                "seconds": 0.5,
                "error": "expected 4 modalities (flair, t1ce, t1, t2), found 3 in case2: missing t2 <&>",
                "outputs": {},
            },
            "case3": {"status": "skipped"},
        },
        "summary": {"done": 1, "failed": 1, "skipped": 1, "total_seconds": 12.845},
        "metrics": {"mean": {"dice_WT": 0.912345}, "labels": "Dice/HD95 per BraTS region; HD95 in mm"},
        "figures": ["training_curve.png"],
    }
    m.update(extra)
    return m


def test_html_escapes_manifest_text():
    page = render_html(_manifest())
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in page
    assert "<b>x</b>" not in page
    assert "missing t2 &lt;&amp;&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<script" not in page.lower()


def test_failed_items_listed_with_error():
    m = _manifest()
    for text in (render_html(m), render_markdown(m)):
        assert "Failed items" in text
        assert "case2" in text
        assert "found 3 in case2: missing t2" in text
    page = render_html(m)
    assert '<tr class="failed">' in page


def test_markdown_table_and_formatting():
    md = render_markdown(_manifest())
    assert "# imagingflows report: segment evaluate" in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| id | status |"))
    for col in ("seconds", "WT_mm3", "TC_mm3", "dice_WT", "hd95_WT", "error"):
        assert col in header
    i = lines.index(header)
    assert re.fullmatch(r"\|(---\|)+", lines[i + 1])
    ncols = header.count("|")
    for row in lines[i + 2 : i + 5]:
        assert row.count("|") - row.count("\\|") == ncols
    assert "1,234,567" in md and "0.912" in md and "3.142" in md and "12.3" in md
    assert "\\<script\\>" in md  # no raw HTML from ids
    assert "0123456789ab" in md and "0123456789abcdef0123" not in md
    assert "1 done, 1 failed, 1 skipped" in md
    assert "## Previews" in md and "evil/preview_axial.png" in md
    assert "Dice/HD95 per BraTS region" in md
    assert "case ids anonymised" not in md


def test_anonymized_flag_in_header():
    m = _manifest(anonymized=True)
    assert "case ids anonymised" in render_markdown(m)
    assert "case ids anonymised" in render_html(m)


def test_robust_to_sparse_manifest():
    for m in ({}, {"items": None}, {"items": {"a": "weird"}}, {"items": [{"id": "x", "status": "done"}]},
              {"metrics": {"dice": 0.5}}, {"finished": None, "summary": "?"}):
        assert render_markdown(m).startswith("# imagingflows report")
        assert "<html" in render_html(m)


def test_write_report_atomic(tmp_path):
    run = tmp_path / "run"
    paths = write_report(run, _manifest())
    assert sorted(p.name for p in paths) == ["report.html", "report.md"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp-")]
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'src="evil/preview_axial.png"' in html
    assert not re.search(r"<img [^>]*width=", html)  # previews at their own pixel size
    assert 'src="training_curve.png"' in html


def test_markdown_of_a_big_batch_puts_the_summary_first_and_can_list_only_the_failed_and_slowest():
    items = {f"case{i:04d}": {"status": "done", "seconds": 1.0 + (i % 7) / 10, "summary": {"b": i, "a": 1}}
             for i in range(2000)}
    items["case0500"] = {"status": "failed", "seconds": 0.1, "error": "case0500: not a NIfTI image"}
    items["case1999"]["seconds"] = 99.0
    m = {"pipeline": "segment", "command": "run", "items": items}
    full, capped = render_markdown(m), render_markdown(m, max_items=50)

    def rows(md: str) -> list[str]:
        return [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| case")]

    assert len(rows(full)) == 2000
    assert full.index("## Failed items") < full.index("## Items")  # the summary before the long table
    assert "| id | status | seconds | a | b | error |" in full  # columns sorted, as run.json stores them
    listed = rows(capped)
    assert len(listed) == 50 and listed == sorted(listed)  # in run order
    assert {"case0500", "case1999"} <= set(listed)  # the failed one and the slowest
    assert all(items[i]["seconds"] >= 1.6 for i in listed if i not in ("case0500", "case1999"))
    assert "50 of 2000 items: the failed ones, then the slowest" in capped
