"""The repository carries the licence its package metadata declares (Apache-2.0), in full."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_is_the_full_apache_2_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert re.search(r"^\s+Apache License\n\s+Version 2\.0, January 2004\n", text)
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert len(re.findall(r"^\s+\d\. [A-Z]", text, flags=re.M)) == 9  # sections 1-9 of the terms
    assert "   Copyright 2026 the imagingflows authors\n" in text and "[yyyy]" not in text
    # the standard text (apache.org LICENSE-2.0.txt, md5 3b83ef96...) with only the appendix's copyright filled in
    standard = text.replace("   Copyright 2026 the imagingflows authors\n",
                            "   Copyright [yyyy] [name of copyright owner]\n")
    assert hashlib.md5(standard.encode("utf-8")).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"


def test_pyproject_declares_the_same_license():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lic = meta.get("license")
    assert (lic.get("text") if isinstance(lic, dict) else lic) == "Apache-2.0"
