"""Atomic writers: every output is written to a temp file in its own folder, then renamed.

A killed run therefore never leaves a half-written output under its final name;
at worst a ``.tmp-*`` file, which :func:`remove_stale_temps` clears on the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from imagingflows.models.atomic import TEMP_PREFIX, atomic_path  # noqa: F401 - re-exported for writers


class WriteError(RuntimeError):
    """An output could not be written; names the path and the cause."""


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
    """Write ``array`` with exactly ``affine`` (sform and qform set) in a fresh NIfTI-1 header.

    From the input's ``header`` only geometry is taken: the sform/qform codes and the
    space/time units. Nothing else is copied: no free text (``descrip``, ``db_name``,
    ``aux_file``, ``intent_name``), no header extensions (which can hold DICOM fields such
    as ``PatientName``), no display window, no scaling. A label map has no use for them,
    and they can name the patient, so this holds with or without ``--anonymize``.
    pixdim comes from ``affine``; dtype is ``array``'s.
    """
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)  # a new header: nothing of the input's rides along
    img.set_data_dtype(array.dtype)
    hdr = img.header
    hdr["descrip"] = b"imagingflows"
    hdr.set_slope_inter(None, None)
    codes = _geometry_codes(header)
    if header is not None:
        with contextlib.suppress(Exception):  # a header without NIfTI units keeps nibabel's default
            hdr.set_xyzt_units(*header.get_xyzt_units())
    img.set_sform(affine, code=codes[0])
    img.set_qform(affine, code=codes[1])
    try:
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
    except Exception as e:  # noqa: BLE001
        raise WriteError(f"{path}: could not write {array.shape} {array.dtype} NIfTI: {e}") from e
    return Path(path)


def _geometry_codes(header) -> tuple[int, int]:
    """(sform_code, qform_code) of the input header; 1 (scanner) where it has none."""
    if header is None:
        return 1, 1
    try:
        return int(header["sform_code"]) or 1, int(header["qform_code"]) or 1
    except (KeyError, ValueError, TypeError):
        return 1, 1


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of a killed run anywhere under ``folder``."""
    folder = Path(folder)
    stale = [p for p in folder.rglob(f"{TEMP_PREFIX}*") if p.is_file()] if folder.exists() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
