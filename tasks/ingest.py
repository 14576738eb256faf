"""Find and validate inputs; read volumes with one clear error per bad item.

Errors are :class:`InputError`: the message names the item/file and says what
was expected and what was found. Reading never modifies an input.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class InputError(ValueError):
    """A bad input item; the batch goes on without it."""


@dataclass(frozen=True)
class Item:
    """One unit of work: an id and its input files (role -> path), JSON-friendly."""

    id: str
    paths: dict[str, str]
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "paths": dict(self.paths), "meta": dict(self.meta)}

    @staticmethod
    def from_dict(d: dict) -> "Item":
        return Item(d["id"], dict(d["paths"]), dict(d.get("meta", {})))


@dataclass(frozen=True)
class Volume:
    """A 3D image with its geometry: ``array`` (X, Y, Z) in file voxel order, ``affine`` 4x4 RAS mm.

    ``modality`` is the DICOM Modality tag (``"MR"``, ``"CT"`` ...) of a DICOM series, ``""``
    for NIfTI (which does not say).
    """

    array: np.ndarray
    affine: np.ndarray
    header: object | None
    source: str
    modality: str = ""

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def hash_inputs(paths: list[str | os.PathLike]) -> str:
    """sha256 over the contents of files (and of every file inside folders), order-independent of listing."""
    h = hashlib.sha256()
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    for f in sorted(files):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


#: errno values of transient read errors: an I/O error or a stale file handle, as network file systems
#: (NFS, SMB, Lustre) report a server hiccup or a file replaced under an open handle
TRANSIENT_ERRNOS = (errno.EIO, errno.ESTALE)
#: retries after the first attempt, and the wait before each (the last repeats if there are more)
READ_RETRIES = 3
READ_BACKOFF_SECONDS = (1.0, 2.0, 4.0)


def transient_error(exc: BaseException) -> OSError | None:
    """The transient ``OSError`` (EIO/ESTALE) behind ``exc`` (itself, or its cause/context: readers
    wrap it, e.g. in :class:`InputError`), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def retry_transient(fn: Callable[[], T], *, what: str, retries: int = READ_RETRIES,
                    backoff: tuple[float, ...] = READ_BACKOFF_SECONDS,
                    on_retry: Callable[[int, OSError, float], None] | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, called again after a transient read error (EIO/ESTALE, see :func:`transient_error`)
    up to ``retries`` times, waiting ``backoff[i]`` seconds before retry ``i + 1``.

    ``on_retry(retry, error, wait)`` runs before each wait (to log, and to remove what the failed
    attempt wrote). Other errors are raised at once; after the last retry an :class:`InputError`
    names ``what``, the error and how many attempts were made.
    """
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            err = transient_error(exc)
            if err is None:
                raise
            if attempt == retries:
                name = errno.errorcode.get(err.errno, str(err.errno))
                raise InputError(f"{what}: transient read error ({name}) on each of {retries + 1} attempts, "
                                 f"the last: {err}") from exc
            wait = backoff[min(attempt, len(backoff) - 1)] if backoff else 0.0
            if on_retry is not None:
                on_retry(attempt + 1, err, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def files_by_stem(input_dir: str | os.PathLike, suffixes: tuple[str, ...], skip: str | None = None
                  ) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """``([(id, path)], errors)`` for the files under ``input_dir`` (recursively, sorted) whose suffix is in
    ``suffixes`` (lower case), hidden files and folders and the top-level folder ``skip`` left out; id = the
    relative path without its suffix. Two files with one id (``a.png`` and ``a.tif``) would write the same
    outputs: the second is an error naming both."""
    input_dir = Path(input_dir)
    found, errors, seen = [], [], {}
    for path in sorted(input_dir.rglob("*")):
        rel = path.relative_to(input_dir)
        if path.suffix.lower() not in suffixes or not path.is_file() or rel.parts[0] == skip \
                or any(p.startswith(".") for p in rel.parts):
            continue
        item_id = rel.with_suffix("").as_posix()
        if item_id in seen:
            errors.append((item_id, f"{path}: has the same name as {seen[item_id]}; their outputs would collide"))
            continue
        seen[item_id] = path
        found.append((item_id, path))
    return found, errors


def strip_nifti_suffix(name: str) -> str | None:
    for s in NIFTI_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return None


def read_volume(path: str | os.PathLike, role: str = "image") -> Volume:
    """Read a NIfTI file or a DICOM series folder as a finite, non-empty 3D volume.

    Raises :class:`InputError` for: unreadable/truncated/non-image files, images that
    are not 3D (a trailing singleton 4th dimension is dropped), NaN/inf voxels, and
    volumes that are all zero.
    """
    path = Path(path)
    if path.is_dir():
        from imagingflows.tasks.dicom import DicomSeriesError, read_dicom_series

        try:
            array, affine, info = read_dicom_series(path)
        except DicomSeriesError as e:
            raise InputError(str(e)) from e
        # no DICOM header travels on: only the Modality tag (for the intensity check)
        vol = Volume(np.asarray(array, dtype=np.float32), affine, None, str(path), str(info.get("modality") or ""))
    else:
        vol = _read_nifti(path, role)
    _check_content(vol, role)
    return vol


def _read_nifti(path: Path, role: str) -> Volume:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    where = f"{path} ({role})"
    if not path.is_file():
        raise InputError(f"{where}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{where}: empty file (0 bytes)")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except (ImageFileError, EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        kind = "truncated or corrupt" if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)) else "not a NIfTI image"
        raise InputError(f"{where}: {kind}: {e}") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{where}: expected a 3D volume, found {data.ndim}D shape {tuple(data.shape)}")
    if min(data.shape) < 2:
        raise InputError(f"{where}: expected a 3D volume, found a single slice of shape {tuple(data.shape)}")
    return Volume(np.asarray(data, dtype=np.float32), np.asarray(img.affine, dtype=np.float64), img.header, str(path))


def _check_content(vol: Volume, role: str) -> None:
    where = f"{vol.source} ({role})"
    finite = np.isfinite(vol.array)
    if not finite.all():
        raise InputError(f"{where}: {int((~finite).sum())} voxels are NaN or infinite; expected finite intensities")
    if not vol.array.any():
        raise InputError(f"{where}: the volume is all zero; expected image content")
    if not np.isfinite(vol.affine).all() or abs(np.linalg.det(vol.affine[:3, :3])) < 1e-9:
        raise InputError(f"{where}: invalid affine (singular or non-finite): {vol.affine.tolist()}")

