"""Atomic writers: every output is written to a temp file in its own folder, then renamed.

A killed run therefore never leaves a half-written output under its final name;
at worst a ``.tmp-*`` file, which :func:`remove_stale_temps` clears on the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

TEMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # mkstemp creates 0600; outputs get the usual permissions


class WriteError(RuntimeError):
    """An output could not be written; names the path and the cause."""


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


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (numpy scalars converted)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    return write_bytes(path, (text + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write a (H, W, 3) or (H, W) uint8 array as PNG."""
    from PIL import Image

    try:
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise WriteError(f"{path}: could not write {rgb.shape} {rgb.dtype} as PNG: {e}") from e
    return Path(path)


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, header=None) -> Path:
    """Write ``array`` with exactly ``affine`` (sform and qform set, codes from ``header`` if given)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine, header=header)
    img.set_data_dtype(array.dtype)
    hdr = img.header
    hdr["cal_min"], hdr["cal_max"] = 0, 0  # the input's display window would hide a label map
    hdr["descrip"], hdr["aux_file"] = b"imagingflows", b""  # no free text carried over from the input
    hdr.set_intent("none")
    hdr.set_slope_inter(None, None)
    if header is not None:
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
    else:
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
    try:
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
    except Exception as e:  # noqa: BLE001
        raise WriteError(f"{path}: could not write {array.shape} {array.dtype} NIfTI: {e}") from e
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of a killed run anywhere under ``folder``."""
    folder = Path(folder)
    stale = [p for p in folder.rglob(f"{TEMP_PREFIX}*") if p.is_file()] if folder.exists() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
