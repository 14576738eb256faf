"""What the report must not hide: item warnings, failure reasons, demo weights; previews at their own size."""

from __future__ import annotations

import re

import numpy as np

from imagingflows.tasks.report import write_report
from imagingflows.tasks.write import write_png

CT_WARNING = "intensities look like CT (Hounsfield units: min -1024, max 3071), not MR; volumes may be meaningless"
DEMO = {"file": "/home/someone/weights/swin_unetr_brats.pt", "trained_on": "synthetic phantoms (sample_data)"}


def _manifest(**extra):
    m = {
        "pipeline": "segment",
        "command": "run",
        "items": {
            "ct_case": {"status": "done", "seconds": 3.0, "summary": {"WT_mm3": 972567.0},
                        "warnings": [CT_WARNING, "spacing 5 mm along z <2 & odd>"],
                        "outputs": {"previews": ["ct_case/preview_axial.png"]}},
            "ok_case": {"status": "done", "seconds": 2.0, "summary": {"WT_mm3": 1200.0},
                        "outputs": {"previews": ["ok_case/preview_axial.png"]}},
            "same_mods": {"status": "failed", "seconds": 0.1,
                          "error": "same_mods: flair and t1 have identical content (sha256 ab12); need 4 modalities"},
        },
    }
    m.update(extra)
    return m


def _reports(tmp_path, manifest):
    run = tmp_path / "run"
    for iid in ("ct_case", "ok_case"):
        write_png(run / iid / "preview_axial.png", np.full((300, 700, 3), 90, np.uint8))
    write_report(run, manifest)
    return (run / "report.html").read_text(encoding="utf-8"), (run / "report.md").read_text(encoding="utf-8")


def test_item_warnings_listed_per_item_and_counted(tmp_path):
    page, md = _reports(tmp_path, _manifest())
    for text in (page, md):
        assert "Warnings" in text
        assert "2 warnings in 1 item" in text
        assert "intensities look like CT (Hounsfield units: min -1024, max 3071)" in text
    assert "spacing 5 mm along z &lt;2 &amp; odd&gt;" in page
    assert "spacing 5 mm along z \\<2 & odd\\>" in md
    section = page[page.index("<h2>Warnings</h2>"):]
    assert "<h3>ct_case</h3>" in section and "ok_case" not in section.split("<h2>", 2)[1]
    assert re.search(r'<tr class="done warned">.*?ct_case', page)
    header = next(line for line in md.splitlines() if line.startswith("| id |"))
    assert "| warnings |" in header
    ct_row = next(line for line in md.splitlines() if line.startswith("| ct\\_case") or line.startswith("| ct_case"))
    assert "| 2 |" in ct_row


def test_no_warning_column_or_section_without_warnings(tmp_path):
    m = _manifest()
    del m["items"]["ct_case"]["warnings"]
    page, md = _reports(tmp_path, m)
    for text in (page, md):
        assert "Warnings" not in text and "warnings in" not in text


def test_failure_reason_shown(tmp_path):
    page, md = _reports(tmp_path, _manifest())
    for text in (page, md):
        assert "flair and t1 have identical content (sha256 ab12); need 4 modalities" in text


def test_demo_weights_notice_at_the_top(tmp_path):
    page, md = _reports(tmp_path, _manifest(demo_weights=DEMO))
    notice = ("Demo weights: swin_unetr_brats.pt — trained on synthetic phantoms (sample_data); "
              "a demonstration, not for real data.")
    assert notice in page and notice in md
    assert page.index(notice) < page.index("<h2>Items</h2>")
    assert md.index(notice) < md.index("## Items")
    assert "/home/someone" not in page and "/home/someone" not in md  # only the file's name
    assert 'class="notice demo-weights"' in page
    plain_page, plain_md = _reports(tmp_path, _manifest())
    assert "Demo weights" not in plain_page and "Demo weights" not in plain_md


def test_previews_shown_at_their_own_pixel_size(tmp_path):
    page, _ = _reports(tmp_path, _manifest())
    imgs = re.findall(r"<img [^>]*>", page)
    assert len(imgs) == 2
    for tag in imgs:
        assert "width" not in tag and "height" not in tag and "style" not in tag, tag
    css = re.sub(r"/\*.*?\*/", "", page[page.index("<style>") + 7:page.index("</style>")], flags=re.S)
    rules = {sel.strip(): body for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css)}
    img_rules = [body for sel, body in rules.items() if re.search(r"\bimg\b", sel)]
    assert img_rules and "max-width: none" in rules[".previews img"]
    for body in img_rules:
        assert not re.search(r"(?<![-\w])width:\s*[\d.]+", body), body  # no fixed (thumbnail) width
    assert "overflow-x: auto" in rules[".previews"]  # wide previews scroll instead of shrinking
