"""Atomic files: write to a temp file beside the final path, rename it into place on success.

The lowest layer owns this so that every layer (checkpoints here, outputs in tasks) writes the
same way: a killed process never leaves a half-written file under its final name, at worst a
``.tmp-*`` file beside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # mkstemp creates 0600; outputs get the usual permissions


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temp name keeps ``final``'s suffixes (``.nii.gz``, ``.png``) so writers that
    pick a format from the extension still work.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
