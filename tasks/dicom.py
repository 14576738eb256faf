"""Read one DICOM series folder as a 3D volume with a nibabel (RAS+) affine.

Geometry comes only from ImagePositionPatient (IPP), ImageOrientationPatient (IOP)
and PixelSpacing; file names, InstanceNumber and SliceThickness are never used
for geometry. DICOM world coordinates are LPS; the returned affine is RAS+
(nibabel's convention), i.e. the first two world axes are negated.

Voxel order
-----------
The DICOM grid is first built "natively": array axis 0 runs along a row
(IOP[:3], increasing column index), axis 1 along a column (IOP[3:], increasing
row index), axis 2 along the slice normal IOP[:3] x IOP[3:] (slices sorted by
IPP . normal, ascending). By default (``orientation="LAS"``) the volume is then
flipped/permuted (no resampling) to the closest LAS orientation, which is what
``dicom2nifti.dicom_series_to_nifti(..., reorient_nifti=True)`` writes and
therefore what TotalSegmentator's masks of DICOM input use. For an ordinary
axial head-first series this keeps the axes (columns, rows, slices) and only
flips the row axis, which is also what dcm2niix does. ``orientation=None``
keeps the native order (what ITK/SimpleITK give).

Errors are :class:`DicomSeriesError` whose message starts with the folder and
says what was expected and what was found.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["DicomSeriesError", "is_dicom_series_dir", "read_dicom_series"]

# Names that are never slices: OS litter and the DICOM media directory index.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "dicomdir"}
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MAX_LISTED = 5


class DicomSeriesError(ValueError):
    """A folder that is not one readable DICOM image series; the message names the folder."""


# --------------------------------------------------------------------------- file discovery


def _candidate_files(folder: Path) -> list[Path]:
    """Non-hidden regular files directly in ``folder`` (no recursion), sorted by name."""
    out = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or entry.name.lower() in _IGNORED_NAMES:
            continue
        if entry.is_file():
            out.append(Path(entry.path))
    return sorted(out)


def _is_dicom_file(path: Path) -> bool:
    """'DICM' at byte 128, or (for preamble-less files) a header pydicom can parse."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    # Preamble-less (old ACR-NEMA style) files start with a group 0x0002 or 0x0008 tag,
    # little endian. Only then ask pydicom, which with force=True would "parse" anything.
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=1024)
        return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:
        return False


def is_dicom_series_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder holding at least one file and every file in it
    (hidden files, Thumbs.db, desktop.ini and DICOMDIR ignored; subfolders not
    searched) is DICOM. Cheap: reads 132 bytes per file, plus a header parse only for
    files without the 'DICM' preamble. Says nothing about the series being valid;
    :func:`read_dicom_series` checks that.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        files = _candidate_files(path)
    except OSError:
        return False
    return bool(files) and all(_is_dicom_file(f) for f in files)


def _names(paths, limit: int = _MAX_LISTED) -> str:
    names = [Path(p).name for p in paths]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------- headers


def _ts_text(ds) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "unknown transfer syntax (no file meta information)"
    return f"{uid.name} ({uid})"


def _pip_names(requirement: str) -> list[str]:
    """'pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0' -> ['pylibjpeg', 'pylibjpeg-openjpeg']."""
    wanted = requirement.split("requires", 1)[-1]
    names = [re.split(r"[<>=!~ ]", part.strip(), maxsplit=1)[0] for part in wanted.split(" and ")]
    names = [{"gdcm": "python-gdcm"}.get(n, n) for n in names if n and n != "numpy"]
    return names


def _decoder_hint(ds) -> str:
    """Which pip packages would let pydicom decode this file's transfer syntax."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return " The file has no transfer syntax in its file meta information."
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(uid)
    except Exception:  # pydicom has no decoder class for this syntax at all
        return f" pydicom cannot decode {uid.name} pixel data with any plugin."
    if decoder.is_available:
        plugins = ", ".join(decoder.available_plugins)
        return f" A decoder is installed ({plugins}), so the pixel data of this file is probably corrupt or truncated."
    options = [" ".join(_pip_names(m)) for m in decoder.missing_dependencies]
    options = [o for o in options if o]
    if not options:
        return f" No decoder for {uid.name} is installed."
    return f" No decoder for {uid.name} is installed; install one of: " + " | ".join(f"`pip install {o}`" for o in options) + "."


def _one_line(e: Exception) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_headers(folder: Path, files: list[Path]):
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            ds = None
        except Exception as e:  # truncated / corrupt
            raise DicomSeriesError(f"{folder}: cannot read the DICOM header of {f.name}: {type(e).__name__}: {e}") from e
        if ds is None:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            except Exception as e:
                raise DicomSeriesError(f"{folder}: cannot read the DICOM header of {f.name}: {type(e).__name__}: {e}") from e
        if str(ds.get("SOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY:
            continue  # a DICOMDIR index under another name
        headers.append((f, ds))
    return headers


def _floats(ds, keyword: str, n: int, f: Path, folder: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
        found = "it is missing" if value is None else f"found {value!r}"
        raise DicomSeriesError(
            f"{folder}: {f.name} has no valid {keyword} (expected {n} numbers, {found}); "
            "expected a cross-sectional image series (CT, MR, PET) with slice geometry"
        )
    return arr


def _check_one_series(folder: Path, headers) -> None:
    by_uid: dict[str, list] = defaultdict(list)
    for f, ds in headers:
        by_uid[str(ds.get("SeriesInstanceUID", "(missing)"))].append(ds)
    if len(by_uid) > 1:
        parts = []
        for uid, dss in sorted(by_uid.items(), key=lambda kv: -len(kv[1])):
            # SeriesDescription is free text (it can name the patient; DICOM PS3.15 removes it): not quoted
            num = dss[0].get("SeriesNumber", None)
            label = f", series number {num}" if num not in (None, "") else ""
            parts.append(f"{uid or '(empty)'} ({len(dss)} file{'s' * (len(dss) != 1)}{label})")
        raise DicomSeriesError(
            f"{folder}: expected one DICOM series, found {len(by_uid)} SeriesInstanceUIDs: "
            + "; ".join(parts)
            + ". Put each series in its own folder."
        )


def _check_same(folder: Path, headers, what: str, values: list, close) -> None:
    groups: list[tuple[object, list[Path]]] = []
    for (f, _), v in zip(headers, values):
        for ref, members in groups:
            if close(ref, v):
                members.append(f)
                break
        else:
            groups.append((v, [f]))
    if len(groups) > 1:
        groups.sort(key=lambda g: -len(g[1]))
        desc = "; ".join(f"{_fmt(v)} in {len(m)} file(s) ({_names(m, 3)})" for v, m in groups[:_MAX_LISTED])
        raise DicomSeriesError(f"{folder}: expected the same {what} in every slice, found {len(groups)} different: {desc}")


def _fmt(v) -> str:
    if isinstance(v, np.ndarray):
        return "[" + ", ".join(f"{x:.6g}" for x in v) + "]"
    return str(v)


# --------------------------------------------------------------------------- main entry


def read_dicom_series(
    folder: str | os.PathLike, orientation: str | None = "LAS"
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one DICOM series folder as a 3D volume.

    Returns ``(array, affine, info)``:

    - ``array``: float32 ``(X, Y, Z)``, modality LUT applied (RescaleSlope/Intercept,
      so CT is in HU). With the default ``orientation="LAS"`` the voxel order is the one
      nibabel gives for the NIfTI that dicom2nifti (``reorient_nifti=True``, as used by
      TotalSegmentator) writes; for an axial series that is also dcm2niix's order:
      axis 0 = DICOM columns direction, axis 1 = rows (flipped), axis 2 = slices in
      ascending position along the slice normal. ``orientation=None`` keeps the native
      DICOM order (columns, rows, slices; no flips); any other axcodes string
      (e.g. ``"RAS"``) reorients to the closest such orientation.
    - ``affine``: 4x4 float64, voxel index -> world mm in nibabel's RAS+ convention.
    - ``info``: ``modality``, ``series_uid``, ``series_description``, ``series_number``,
      ``manufacturer``, ``model``, ``n_slices``, ``rows``, ``columns``, ``shape``,
      ``spacing`` (mm per output axis), ``pixel_spacing``, ``slice_spacing`` (from the
      positions), ``slice_thickness`` (as stated, may differ), ``image_orientation``,
      ``axcodes``, ``rescale`` (``slope``, ``intercept``: a number, or ``[min, max]`` when
      they vary per slice; ``type``; ``modality_lut``), ``transfer_syntax``
      (``uid``, ``name``), ``photometric``, ``bits_stored``. No patient identifiers
      or dates.

    Raises :class:`DicomSeriesError` (message names the folder) for: a missing path or
    a file instead of a folder; no DICOM files; non-DICOM files in the folder; more than
    one SeriesInstanceUID; multi-frame or colour images; missing geometry tags;
    inconsistent ImageOrientationPatient, Rows/Columns or PixelSpacing; fewer than 2
    slices; duplicate slice positions; non-uniform slice spacing (tolerance 1 % of the
    median spacing, at least 0.005 mm); slices not stacked along their normal (gantry
    tilt); pixel data that cannot be decoded (names the file, the transfer syntax and
    the decoder packages pydicom would need).
    """
    folder = Path(folder)
    if not folder.exists():
        raise DicomSeriesError(f"{folder}: not found; expected a folder holding one DICOM series")
    if not folder.is_dir():
        raise DicomSeriesError(
            f"{folder}: expected a folder holding one DICOM series, found a single file. "
            "A single DICOM slice is not a 3D volume: pass the folder that holds all slices of the series"
        )
    try:
        files = _candidate_files(folder)
    except OSError as e:
        raise DicomSeriesError(f"{folder}: cannot list the folder: {e}") from e

    is_dicom = {f: _is_dicom_file(f) for f in files}
    dicom = [f for f in files if is_dicom[f]]
    other = [f for f in files if not is_dicom[f]]
    if not dicom:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        found = f"{len(other)} non-DICOM file(s): {_names(other)}" if other else "no files"
        if subdirs:
            found += f" and {len(subdirs)} subfolder(s): {_names(subdirs)} (pass the folder of one series, not its parent)"
        raise DicomSeriesError(f"{folder}: expected DICOM files of one series, found {found}")
    if other:
        raise DicomSeriesError(
            f"{folder}: expected only DICOM files of one series, found {len(other)} non-DICOM file(s) "
            f"next to {len(dicom)} DICOM file(s): {_names(other)}. Move them out of the folder"
        )

    headers = _read_headers(folder, dicom)
    if not headers:
        raise DicomSeriesError(f"{folder}: expected DICOM image slices, found only a DICOMDIR index")
    _check_one_series(folder, headers)

    for f, ds in headers:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DicomSeriesError(
                f"{folder}: {f.name} is a multi-frame DICOM ({frames} frames); expected one slice per file "
                "(enhanced/multi-frame DICOM is not supported: convert it with dcm2niix first)"
            )
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        if spp != 1:
            raise DicomSeriesError(
                f"{folder}: {f.name} has {spp} samples per pixel ({ds.get('PhotometricInterpretation', '?')}); "
                "expected greyscale slices (1 sample per pixel)"
            )
        if "Rows" not in ds or "Columns" not in ds:
            raise DicomSeriesError(f"{folder}: {f.name} has no Rows/Columns; expected an image slice")

    n = len(headers)
    if n < 2:
        f = headers[0][0]
        raise DicomSeriesError(
            f"{folder}: expected at least 2 slices to make a 3D volume, found 1 ({f.name}). "
            "A single DICOM slice is not a volume: the folder must hold every slice of the series"
        )

    iops = [_floats(ds, "ImageOrientationPatient", 6, f, folder) for f, ds in headers]
    ipps = [_floats(ds, "ImagePositionPatient", 3, f, folder) for f, ds in headers]
    pss = [_floats(ds, "PixelSpacing", 2, f, folder) for f, ds in headers]
    _check_same(folder, headers, "ImageOrientationPatient", iops, lambda a, b: np.allclose(a, b, atol=1e-3))
    _check_same(
        folder, headers, "image size (Rows x Columns)", [f"{int(ds.Rows)}x{int(ds.Columns)}" for _, ds in headers],
        lambda a, b: a == b,
    )
    _check_same(folder, headers, "PixelSpacing", pss, lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6))

    iop = np.mean(iops, axis=0)
    row_dir, col_dir = iop[:3], iop[3:]
    if np.linalg.norm(row_dir) < 0.5 or np.linalg.norm(col_dir) < 0.5:
        raise DicomSeriesError(f"{folder}: ImageOrientationPatient {_fmt(iops[0])} is degenerate; expected two unit vectors")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    if abs(row_dir @ col_dir) > 1e-3:
        raise DicomSeriesError(
            f"{folder}: ImageOrientationPatient {_fmt(iops[0])} is not orthogonal; expected two perpendicular unit vectors"
        )
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    # Sort by position along the slice normal (never by file name or InstanceNumber).
    pos = np.array(ipps)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    headers = [headers[i] for i in order]
    pos, dist = pos[order], dist[order]
    gaps = np.diff(dist)
    pixel_spacing = pss[0]  # [row spacing (between rows), column spacing (between columns)]

    nonzero = gaps[gaps > 1e-6]
    same_tol = 0.01 * float(np.median(nonzero)) if nonzero.size else 1e-4
    dup = np.flatnonzero(gaps <= same_tol)
    if dup.size:
        i = int(dup[0])
        fa, da = headers[i]
        fb, db = headers[i + 1]
        differing = [
            kw
            for kw in ("AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier", "TriggerTime", "ImageType", "DiffusionBValue")
            if str(da.get(kw, "")) != str(db.get(kw, ""))
        ]
        why = f"; they differ in {', '.join(differing)}" if differing else ""
        raise DicomSeriesError(
            f"{folder}: expected one slice per position, found {dup.size} duplicate slice position(s), "
            f"e.g. {fa.name} and {fb.name} both at {dist[i]:.3f} mm along the slice normal{why}. "
            "The series may hold several acquisitions, echoes or time points: split them into separate folders"
        )

    median = float(np.median(gaps))
    tol = max(0.01 * median, 0.005)
    if np.any(np.abs(gaps - median) > tol):
        worst = int(np.argmax(np.abs(gaps - median)))
        raise DicomSeriesError(
            f"{folder}: expected uniform slice spacing (within {tol:.3g} mm), found spacing from "
            f"{gaps.min():.4g} to {gaps.max():.4g} mm (median {median:.4g} mm); the most different gap is "
            f"{gaps[worst]:.4g} mm between {headers[worst][0].name} and {headers[worst + 1][0].name} "
            "(missing or extra slices?)"
        )
    spacing = float((dist[-1] - dist[0]) / (n - 1))

    # Slices must be stacked along their normal; otherwise (gantry tilt) the grid is sheared.
    offsets = pos - pos[0]
    perp = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(perp, axis=1).max())
    if drift > 0.25 * float(pixel_spacing.min()):
        span = float(dist[-1] - dist[0])
        angle = float(np.degrees(np.arctan2(np.linalg.norm(perp[-1]), span)))
        raise DicomSeriesError(
            f"{folder}: expected slices stacked along their normal, found positions drifting {drift:.3g} mm sideways "
            f"over {span:.4g} mm (about {angle:.2f} degrees: gantry tilt?). The voxel grid would be sheared; "
            "resample the series first (e.g. dcm2niix corrects gantry tilt)"
        )

    # Native affine (LPS): i along a row (column index), j along a column (row index), k along the normal.
    aff_lps = np.eye(4)
    aff_lps[:3, 0] = row_dir * pixel_spacing[1]
    aff_lps[:3, 1] = col_dir * pixel_spacing[0]
    aff_lps[:3, 2] = normal * spacing
    aff_lps[:3, 3] = pos[0]
    affine = _LPS_TO_RAS @ aff_lps

    rows, cols = int(headers[0][1].Rows), int(headers[0][1].Columns)
    array = np.empty((cols, rows, n), dtype=np.float32)
    slopes, intercepts, lut_seq = [], [], False
    ts_ds = None
    import pydicom
    from pydicom.pixels import apply_modality_lut

    for k, (f, _) in enumerate(headers):
        try:
            ds = pydicom.dcmread(f, force=True)
        except Exception as e:
            raise DicomSeriesError(f"{folder}: cannot read {f.name}: {type(e).__name__}: {e}") from e
        if ts_ds is None:
            ts_ds = ds
        if "PixelData" not in ds:
            raise DicomSeriesError(
                f"{folder}: {f.name} has no pixel data (SOP class {ds.get('SOPClassUID', '?')}); expected image slices"
            )
        try:
            pixels = ds.pixel_array
        except Exception as e:
            raise DicomSeriesError(
                f"{folder}: cannot decode the pixel data of {f.name} (transfer syntax {_ts_text(ds)}): "
                f"{_one_line(e)}.{_decoder_hint(ds)}"
            ) from e
        if pixels.shape != (rows, cols):
            raise DicomSeriesError(
                f"{folder}: {f.name} decoded to shape {pixels.shape}, expected (Rows, Columns) = ({rows}, {cols})"
            )
        if "ModalityLUTSequence" in ds:
            lut_seq = True
        slopes.append(float(ds.get("RescaleSlope", 1.0) or 1.0))
        intercepts.append(float(ds.get("RescaleIntercept", 0.0) or 0.0))
        array[:, :, k] = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32).T

    axcodes_native = "".join(_axcodes(affine))
    if orientation is not None:
        array, affine = _reorient(array, affine, orientation)

    first = headers[0][1]
    ts_uid = getattr(getattr(ts_ds, "file_meta", None), "TransferSyntaxUID", None)

    def _one_or_range(v):
        return v[0] if min(v) == max(v) else [min(v), max(v)]

    info = {
        "modality": str(first.get("Modality", "") or ""),
        "series_uid": str(first.get("SeriesInstanceUID", "") or ""),
        "series_description": str(first.get("SeriesDescription", "") or ""),
        "series_number": _int_or_none(first.get("SeriesNumber")),
        "manufacturer": str(first.get("Manufacturer", "") or ""),
        "model": str(first.get("ManufacturerModelName", "") or ""),
        "n_slices": n,
        "rows": rows,
        "columns": cols,
        "shape": tuple(int(s) for s in array.shape),
        "spacing": tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))),
        "pixel_spacing": [float(pixel_spacing[0]), float(pixel_spacing[1])],
        "slice_spacing": abs(spacing),
        "slice_thickness": _float_or_none(first.get("SliceThickness")),
        "image_orientation": [float(v) for v in iops[0]],
        "axcodes": "".join(_axcodes(affine)),
        "native_axcodes": axcodes_native,
        "rescale": {
            "slope": _one_or_range(slopes),
            "intercept": _one_or_range(intercepts),
            "type": str(first.get("RescaleType", "") or ("HU" if str(first.get("Modality", "")) == "CT" else "")),
            "modality_lut": lut_seq,
        },
        "transfer_syntax": {"uid": str(ts_uid or ""), "name": ts_uid.name if ts_uid else ""},
        "photometric": str(first.get("PhotometricInterpretation", "") or ""),
        "bits_stored": _int_or_none(first.get("BitsStored")),
    }
    return array, affine, info


# --------------------------------------------------------------------------- helpers


def _axcodes(affine: np.ndarray) -> tuple[str, ...]:
    import nibabel as nib

    return nib.aff2axcodes(affine)


def _reorient(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute (never resample) to the closest orientation ``axcodes`` (nibabel's as_reoriented)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    try:
        target = axcodes2ornt(tuple(axcodes.upper()))
    except Exception as e:
        raise ValueError(f"orientation must be 3 axis codes like 'LAS' or 'RAS' (or None), got {axcodes!r}") from e
    transform = ornt_transform(io_orientation(affine), target)
    new_affine = affine @ inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(apply_orientation(array, transform)), new_affine


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _float_or_none(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
