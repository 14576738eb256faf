"""Synthetic BraTS-like multi-modal brain MRI cases (FLAIR, T1ce, T1, T2 + tumour labels).

The phantom is a continuous function of *world* (scanner, RAS, mm) coordinates:
every random choice (brain shape, tissue layout, tumour position/shape/size,
contrasts, bias fields, noise levels) is fixed by the seed, and
:meth:`Phantom.sample` evaluates it on any voxel grid given by an affine and a
shape. The same phantom sampled on a flipped, axis-permuted or oblique grid
therefore shows the same anatomy, and its labels (evaluated at voxel centres,
never blurred) have the same volumes up to discretisation.

What varies per case, as in real scans: brain size and shape, cortical folding
pattern, ventricles, tumour position (one hemisphere), size (whole tumour
about 25-70 mm across), irregular nested shape (necrosis / enhancing rim /
oedema, sometimes no or little necrosis), per-modality tissue contrasts and
global scale, a smooth multiplicative bias field, Rician noise (2-8 % of the
white-matter intensity), partial-volume blur, voxel spacing (isotropic or
anisotropic), orientation (RAS, LPS, permuted axes such as PIR) and small
oblique rotations. Images are skull-stripped: exactly 0 outside the brain.

Usage::

    python -m sample_data.brats --out DIR --n 4 --seed 0 [--spacing 2 2 2] [--naming 2021]

Pure numpy/scipy/nibabel; a 2 mm case (80 x 96 x 80) takes well under a second.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "MODALITIES_2021",
    "SUFFIXES_2023",
    "LABELS_2021",
    "LABELS_2023",
    "Phantom",
    "make_phantom",
    "grid_for",
    "make_case",
    "random_case_params",
    "make_dataset",
    "main",
]

MODALITIES_2021 = ("flair", "t1ce", "t1", "t2")  # file suffix _flair etc.
SUFFIXES_2023 = {"flair": "t2f", "t1ce": "t1c", "t1": "t1n", "t2": "t2w"}  # file suffix -t2f etc.
LABELS_2021 = {"NCR": 1, "ED": 2, "ET": 4}
LABELS_2023 = {"NETC": 1, "SNFH": 2, "ET": 3}

# Tissue classes, in the order of Phantom.contrast rows.
TISSUES = ("csf", "gm", "wm", "ed", "ncr", "et")

# Typical BraTS contrasts relative to each other (white matter of T1 ~ 0.85);
# per case each value is jittered by a few percent and each modality scaled.
_BASE_CONTRAST = {
    #          csf   gm    wm    ed    ncr   et
    "flair": (0.15, 0.78, 0.60, 1.35, 0.85, 1.00),  # oedema bright, core intermediate, CSF dark
    "t1ce": (0.28, 0.62, 0.85, 0.52, 0.30, 1.45),  # ET very bright, necrosis dark
    "t1": (0.28, 0.62, 0.85, 0.52, 0.36, 0.58),  # tumour hypointense
    "t2": (1.60, 0.88, 0.58, 1.28, 1.45, 0.98),  # CSF, oedema and necrosis bright
}

_EDGE_MM = 0.5  # logistic width of tissue boundaries in world space (partial volume)
_PSF_VOXELS = 0.35  # Gaussian blur (voxel units) applied after sampling (acquisition PSF)
_MIN_OEDEMA_MM = 4.0  # oedema always surrounds the core by at least this much (nested regions)
_OEDEMA_INTO_GM_MM = 1.0  # oedema reaches this far from white matter into the cortex
_OBLIQUE_AXIS = np.array([1.0, 0.6, 0.8]) / np.linalg.norm([1.0, 0.6, 0.8])

_AXIS_OF = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}

Vec3 = tuple[float, float, float]
Harmonics = tuple[tuple[float, ...], ...]  # rows (dx, dy, dz, freq, phase, amp) on the unit sphere
Waves = tuple[tuple[float, ...], ...]  # rows (kx, ky, kz, phase, amp) plane waves in world mm


# --------------------------------------------------------------------------- helpers


def _sig(d: np.ndarray, width: float = _EDGE_MM) -> np.ndarray:
    """Soft indicator of {d < 0} (d a signed distance in mm), logistic of the given width."""
    return (0.5 - 0.5 * np.tanh(d * (0.5 / width))).astype(np.float32, copy=False)


def _sphere_fn(h: Harmonics, ux, uy, uz) -> np.ndarray | float:
    """Smooth function of direction: sum amp * cos(freq * (u . d) + phase); |f| <= sum |amp|."""
    out = 0.0
    for dx, dy, dz, freq, phase, amp in h:
        out = out + amp * np.cos(freq * (ux * dx + uy * dy + uz * dz) + phase)
    return out


def _waves(w: Waves, x, y, z) -> np.ndarray | float:
    """Smooth function of position: sum amp * cos(k . x + phase); |f| <= sum |amp|."""
    out = 0.0
    for kx, ky, kz, phase, amp in w:
        out = out + amp * np.cos(kx * x + ky * y + kz * z + phase)
    return out


def _waves_and_grad(w: Waves, x, y, z):
    """The plane-wave sum and the magnitude of its gradient (per mm)."""
    val = 0.0
    gx = gy = gz = 0.0
    for kx, ky, kz, phase, amp in w:
        arg = kx * x + ky * y + kz * z + phase
        val = val + amp * np.cos(arg)
        sn = amp * np.sin(arg)
        gx, gy, gz = gx - kx * sn, gy - ky * sn, gz - kz * sn
    return val, np.sqrt(gx * gx + gy * gy + gz * gz)


def _rand_harmonics(rng: np.random.Generator, n: int, fmin: float, fmax: float) -> Harmonics:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    freq = rng.uniform(fmin, fmax, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.3, 1.0, n)
    amp /= amp.sum()  # so |f| <= 1
    return tuple(tuple(float(v) for v in (*d[i], freq[i], phase[i], amp[i])) for i in range(n))


def _rand_waves(rng: np.random.Generator, n: int, lmin: float, lmax: float) -> Waves:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * np.pi / rng.uniform(lmin, lmax, n))[:, None]
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.3, 1.0, n)
    amp /= amp.sum()
    return tuple(tuple(float(v) for v in (*k[i], phase[i], amp[i])) for i in range(n))


def _rand_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _rot_about(axis: np.ndarray, deg: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _t(a: np.ndarray) -> tuple:
    """numpy array -> nested tuple of floats (keeps the frozen dataclass hashable)."""
    a = np.asarray(a, dtype=float)
    return tuple(_t(r) for r in a) if a.ndim > 1 else tuple(float(v) for v in a)


def _polar(x, y, z, center, axes, rot=None):
    """Ellipsoidal polar coordinates about `center`.

    Returns (r, ux, uy, uz, ell): r the normalised radius (1 on the unit
    ellipsoid), u the unit direction in the ellipsoid's own frame, and ell the
    mm per unit of r along that ray (so (r - R(u)) * ell is a radial distance
    in mm to the surface r = R(u)).
    """
    px, py, pz = x - center[0], y - center[1], z - center[2]
    if rot is not None:  # local coordinates: rot^T (x - c)
        (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = rot
        px, py, pz = (r00 * px + r10 * py + r20 * pz, r01 * px + r11 * py + r21 * pz, r02 * px + r12 * py + r22 * pz)
    mm = np.sqrt(px * px + py * py + pz * pz)
    qx, qy, qz = px / axes[0], py / axes[1], pz / axes[2]
    r = np.sqrt(qx * qx + qy * qy + qz * qz)
    inv = 1.0 / np.maximum(r, 1e-6)
    ell = np.where(r > 1e-6, mm * inv, float(np.mean(axes)))
    return r, qx * inv, qy * inv, qz * inv, ell


# --------------------------------------------------------------------------- phantom


@dataclass(frozen=True)
class Phantom:
    """One synthetic patient: a continuous brain + tumour in world RAS mm; all choices fixed by `seed`."""

    seed: int
    # brain: perturbed ellipsoid
    brain_center: Vec3
    brain_axes: Vec3  # semi-axes (L-R, A-P, S-I) in mm, size scale included
    brain_shape: Harmonics
    brain_shape_amp: float
    # cortex: CSF rim, sulci, grey-matter shell, white-matter core
    csf_rim_mm: float
    sulci: Waves
    sulcus_width_mm: float  # half-width of a sulcus
    sulcus_depth_mm: float
    sulcus_grad_floor: float
    fissure_depth_mm: float
    gm_thickness_mm: float
    gyri: Waves
    fissure_x: float
    # deep structures: ellipsoids (center, semi-axes, rotation rows)
    ventricles: tuple
    deep_gm: tuple
    # tumour
    hemisphere: str  # "left" or "right"
    tumour_center: Vec3
    tumour_rotation: tuple
    tumour_stretch: Vec3
    core_radius_mm: float  # mean radius of the tumour core (ET + NCR)
    core_shape: Harmonics
    core_shape_amp: float
    necrosis: str  # "full", "small" or "none"
    et_thickness_mm: float  # enhancing rim thickness (full necrosis)
    et_shape: Harmonics
    small_ncr_radius_mm: float
    oedema_mm: float  # mean oedema extent beyond the core
    oedema_shape: Harmonics
    oedema_shape_amp: float
    # appearance
    contrast: tuple  # rows per modality (MODALITIES_2021 order), columns per TISSUES
    scale: tuple  # global intensity scale per modality
    bias: tuple  # per modality: 9 coefficients of a quadratic log-bias in x/100 mm
    noise: tuple  # per modality: noise sigma as a fraction of white-matter intensity
    texture: Waves
    tumour_texture: Waves

    # ----------------------------------------------------------------- geometry

    def _brain_distance(self, x, y, z) -> np.ndarray:
        """Radial signed distance (mm) to the brain surface, negative inside."""
        r, ux, uy, uz, ell = _polar(x, y, z, self.brain_center, self.brain_axes)
        radius = 1.0 + self.brain_shape_amp * _sphere_fn(self.brain_shape, ux, uy, uz)
        return ((r - radius) * ell).astype(np.float32)

    def _fields(self, x, y, z) -> dict[str, np.ndarray]:
        """Signed distances (mm, negative inside) and soft fractions at world points."""
        f: dict[str, np.ndarray] = {}
        d_b = self._brain_distance(x, y, z)
        f["d_brain"] = d_b
        # sulci: thin CSF sheets along the zero set of a smooth random field (distance to it
        # ~ |s| / |grad s|), reaching sulcus_depth_mm below the surface; the interhemispheric
        # fissure is one more sheet at the midline of the upper brain
        s, gs = _waves_and_grad(self.sulci, x, y, z)
        d_sheet = np.abs(s) / np.maximum(gs, self.sulcus_grad_floor) - self.sulcus_width_mm
        d_sulci = np.maximum(d_sheet, -(d_b + self.sulcus_depth_mm))
        d_fis = np.maximum(np.abs(x - self.fissure_x) - 1.0, -(d_b + self.fissure_depth_mm))
        d_fis = np.maximum(d_fis, (self.brain_center[2] - 8.0) - z)
        d_csf = np.minimum(d_sulci, d_fis)  # signed distance to the sulcal CSF
        # parenchyma = brain minus the CSF rim and the sulci; white matter = parenchyma eroded by
        # the grey-matter thickness (so the cortex lines every sulcus: gyri)
        gm = self.gm_thickness_mm * (1.0 + 0.3 * _waves(self.gyri, x, y, z))
        d_par = np.maximum(d_b + self.csf_rim_mm, -d_csf)
        d_wm = np.maximum(d_b + self.csf_rim_mm + gm, gm - d_csf)
        f["d_par"] = d_par.astype(np.float32)
        f["d_wm"] = d_wm.astype(np.float32)
        d_vent = np.full(np.shape(x), np.inf, dtype=np.float32)
        for c, a, rot, amp, h in self.ventricles:
            rv, vx, vy, vz, ev = _polar(x, y, z, c, a, rot)
            dv = ((rv - 1.0 - amp * _sphere_fn(h, vx, vy, vz)) * ev).astype(np.float32)
            d_vent = np.minimum(d_vent, dv)
        vent = _sig(d_vent)
        f["d_vent"] = d_vent
        dg = 0.0
        for c, a, rot in self.deep_gm:
            rv, _, _, _, ev = _polar(x, y, z, c, a, rot)
            dg = np.maximum(dg, _sig((rv - 1.0) * ev, 1.5))
        f["par"] = (_sig(d_par) * (1.0 - vent)).astype(np.float32)  # fraction of brain tissue (not CSF)
        f["wm"] = (_sig(d_wm) * (1.0 - dg)).astype(np.float32)  # fraction of tissue that is white matter

        # tumour, in its own rotated and stretched frame
        rt, tx, ty, tz, et = _polar(x, y, z, self.tumour_center, self.tumour_stretch, self.tumour_rotation)
        rho = rt  # radius in the stretched frame (mm; the stretch has geometric mean 1)
        k = et  # mm along the ray per unit of rho
        r_core = self.core_radius_mm * (1.0 + self.core_shape_amp * _sphere_fn(self.core_shape, tx, ty, tz))
        d_core = ((rho - r_core) * k).astype(np.float32)
        if self.necrosis == "full":
            r_ncr = r_core - self.et_thickness_mm * (1.0 + 0.5 * _sphere_fn(self.et_shape, tx, ty, tz))
            d_ncr = ((rho - r_ncr) * k).astype(np.float32)
        elif self.necrosis == "small":
            r_ncr = self.small_ncr_radius_mm * (1.0 + 0.25 * _sphere_fn(self.et_shape, tx, ty, tz))
            d_ncr = ((rho - r_ncr) * k).astype(np.float32)
        else:
            d_ncr = np.full(np.shape(x), np.inf, dtype=np.float32)
        extra = self.oedema_mm * (1.0 + self.oedema_shape_amp * _sphere_fn(self.oedema_shape, tx, ty, tz))
        r_wt = r_core + np.maximum(extra, _MIN_OEDEMA_MM)
        d_wt = ((rho - r_wt) * k).astype(np.float32)
        f["d_core"], f["d_ncr"], f["d_wt"] = d_core, d_ncr, d_wt
        return f

    # ----------------------------------------------------------------- labels

    @staticmethod
    def _labels_from(f: dict[str, np.ndarray]) -> np.ndarray:
        brain = f["d_brain"] < 0
        # oedema: inside the whole-tumour surface, in white matter (vasogenic oedema spares
        # the cortex: finger-like borders); always a band of _MIN_OEDEMA_MM around the core
        # so that the regions stay nested
        tissue = (f["d_wm"] < _OEDEMA_INTO_GM_MM) & (f["d_vent"] >= 0)
        ed = (f["d_wt"] < 0) & brain & (tissue | (f["d_core"] < _MIN_OEDEMA_MM))
        lab = np.zeros(np.shape(f["d_brain"]), dtype=np.uint8)
        lab[ed] = 2
        lab[(f["d_core"] < 0) & brain] = 4
        lab[(f["d_ncr"] < 0) & brain] = 1
        return lab

    def labels_at(self, points: np.ndarray) -> np.ndarray:
        """BraTS 2021 labels (0/1/2/4) at world points (N, 3), mm RAS."""
        p = np.asarray(points, dtype=np.float64)
        return self._labels_from(self._fields(p[:, 0], p[:, 1], p[:, 2]))

    def brain_mask(self, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """The skull-stripping mask (bool (X, Y, Z)) on a grid: where images are nonzero."""
        x, y, z = _world_coords(affine, shape)
        return self._fields(x, y, z)["d_brain"] < 0

    def tissue_fractions(self, affine: np.ndarray, shape: Sequence[int]) -> dict[str, np.ndarray]:
        """Healthy-tissue partial-volume fractions {'csf', 'gm', 'wm'} (float32 (X, Y, Z)).

        Zero outside the brain; the tumour is ignored (the tissue under it).
        """
        x, y, z = _world_coords(affine, shape)
        f = self._fields(x, y, z)
        brain = (f["d_brain"] < 0).astype(np.float32)
        wm = f["par"] * f["wm"]
        return {"csf": (1.0 - f["par"]) * brain, "gm": (f["par"] - wm) * brain, "wm": wm * brain}

    # ----------------------------------------------------------------- sampling

    def sample(
        self, affine: np.ndarray, shape: tuple[int, int, int], noise_seed: int | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Return ({modality: float32 (X,Y,Z) intensities}, labels uint8 (X,Y,Z) in BraTS 2021 convention 0/1/2/4).

        `affine` maps voxel indices (i, j, k) to world RAS mm (voxel centres);
        intensities include partial volume, bias field, Rician noise and are
        exactly 0 outside the brain; labels are the continuous phantom at each
        voxel centre. Same phantom, grid and noise seed -> identical arrays.
        """
        affine = np.asarray(affine, dtype=np.float64)
        shape = tuple(int(s) for s in shape)
        x, y, z = _world_coords(affine, shape)
        f = self._fields(x, y, z)
        labels = self._labels_from(f)
        brain = f["d_brain"] < 0

        par, wm = f["par"], f["wm"]
        csf_frac = 1.0 - par
        wm_frac = par * wm
        gm_frac = par - wm_frac
        core = _sig(f["d_core"])
        ncr = _sig(f["d_ncr"])
        tissue_or_core = np.maximum(par * _sig(f["d_wm"] - _OEDEMA_INTO_GM_MM), _sig(f["d_core"] - _MIN_OEDEMA_MM))
        ramp = np.clip(f["d_core"] / max(self.oedema_mm, 1.0), 0.0, 1.0)
        oed = _sig(f["d_wt"]) * tissue_or_core * (1.0 - 0.3 * ramp)
        tex = 1.0 + 0.03 * _waves(self.texture, x, y, z)
        ttex = _waves(self.tumour_texture, x, y, z)
        xn, yn, zn = x / 100.0, y / 100.0, z / 100.0
        basis = (xn, yn, zn, xn * xn, yn * yn, zn * zn, xn * yn, xn * zn, yn * zn)
        del x, y, z, f

        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        psf = tuple(float(_PSF_VOXELS) for _ in spacing)
        rng = np.random.default_rng([int(self.seed if noise_seed is None else noise_seed), 7])
        images: dict[str, np.ndarray] = {}
        for m, name in enumerate(MODALITIES_2021):
            c_csf, c_gm, c_wm, c_ed, c_ncr, c_et = self.contrast[m]
            img = (csf_frac * c_csf + gm_frac * c_gm + wm_frac * c_wm) * tex
            img = img + oed * (c_ed * (1.0 + 0.05 * ttex) - img)
            img = img + core * (c_et * (1.0 + 0.10 * ttex) - img)
            img = img + ncr * (c_ncr * (1.0 - 0.08 * ttex) - img)
            logb = 0.0
            for coef, b in zip(self.bias[m], basis):
                logb = logb + coef * b
            img = img * np.exp(logb) * self.scale[m]
            img = ndimage.gaussian_filter(img.astype(np.float32), psf, mode="nearest", truncate=3.0)
            sigma = self.noise[m] * c_wm * self.scale[m]
            n1 = rng.standard_normal(shape, dtype=np.float32) * sigma
            n2 = rng.standard_normal(shape, dtype=np.float32) * sigma
            img = np.sqrt((img + n1) ** 2 + n2 * n2)  # Rician magnitude
            img[~brain] = 0.0
            images[name] = img.astype(np.float32, copy=False)
        return images, labels


def _world_coords(affine: np.ndarray, shape: Sequence[int]):
    """World coordinates (three float32 arrays of `shape`) of the voxel centres of a grid."""
    a = np.asarray(affine, dtype=np.float64)
    i, j, k = (np.arange(n, dtype=np.float64) for n in shape)
    out = []
    for row in range(3):
        v = (
            (a[row, 0] * i)[:, None, None]
            + (a[row, 1] * j)[None, :, None]
            + (a[row, 2] * k)[None, None, :]
            + a[row, 3]
        )
        out.append(np.ascontiguousarray(np.broadcast_to(v, tuple(shape)), dtype=np.float32))
    return tuple(out)


# --------------------------------------------------------------------------- construction


def _ellipsoid(rng, center, axes, max_tilt_deg: float = 12.0, jitter: float = 0.1):
    c = np.asarray(center, float)
    a = np.asarray(axes, float) * rng.uniform(1 - jitter, 1 + jitter, 3)
    rot = _rot_about(rng.normal(size=3), rng.uniform(-max_tilt_deg, max_tilt_deg))
    return c, a, rot


def make_phantom(seed: int, *, brain_extent_mm: Sequence[float] | None = None) -> Phantom:
    """A random brain with a tumour; every choice is fixed by `seed` (a non-negative int).

    `brain_extent_mm` (L-R, A-P, S-I), optional: the brain ellipsoid's full axes in mm
    instead of the random size (about 140 x 168 x 128 mm, kept inside the default
    160 x 192 x 160 mm FOV), e.g. (140, 170, 140) for a real-size adult brain in a
    240 x 240 x 155 mm BraTS grid. The surface perturbation adds a few percent either
    way. Every random draw is the same either way, so the rest of the phantom (shape,
    tissue, contrasts, noise) follows the seed as before; None (the default) leaves the
    phantom exactly as it was.
    """
    seed = int(seed)
    rng = np.random.default_rng([seed, 0xB7A75])

    # brain: 140 (L-R) x 168 (A-P) x 128 (S-I) mm ellipsoid, scaled and perturbed, kept inside
    # the default 160 x 192 x 160 mm field of view
    size = rng.uniform(0.9, 1.08)
    axes = np.array([70.0, 84.0, 64.0]) * size * rng.uniform(0.97, 1.03, 3)
    axes = np.minimum(axes, [73.0, 88.0, 72.0])
    center = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-2, 2)])
    brain_shape = _rand_harmonics(rng, 6, 0.8, 3.0)
    brain_amp = rng.uniform(0.015, 0.04)
    if brain_extent_mm is not None:
        extent = np.asarray(brain_extent_mm, dtype=float).reshape(3)
        if np.any(extent <= 0):
            raise ValueError(f"brain_extent_mm must be three positive lengths (mm), got {tuple(extent)}")
        axes = extent / 2.0

    csf_rim = rng.uniform(1.0, 2.5)
    sulci = _rand_waves(rng, 12, 18.0, 40.0)
    sulcus_width = rng.uniform(0.5, 1.0)
    sulcus_depth = rng.uniform(9.0, 16.0)
    k2 = sum(w[4] ** 2 * (w[0] ** 2 + w[1] ** 2 + w[2] ** 2) for w in sulci) / 2.0
    grad_floor = 0.3 * math.sqrt(k2)  # keeps |s|/|grad s| finite away from the zero set
    fissure_depth = rng.uniform(25.0, 40.0)
    gm = rng.uniform(2.5, 4.0)
    gyri = _rand_waves(rng, 6, 15.0, 40.0)
    fissure_x = float(center[0] + rng.uniform(-1.5, 1.5))

    # lateral ventricles: two elongated ellipsoids either side of the midline, a bit above centre
    vsize = rng.uniform(0.7, 1.5)
    ventricles = []
    for side in (-1, 1):
        c = center + [side * rng.uniform(6, 9) * np.sqrt(vsize), rng.uniform(-4, 4), rng.uniform(4, 12)]
        c, a, rot = _ellipsoid(rng, c, np.array([6.5, 24.0, 10.0]) * vsize, 10.0, 0.12)
        ventricles.append((_t(c), _t(a), _t(rot), float(rng.uniform(0.05, 0.15)), _rand_harmonics(rng, 4, 1.0, 3.0)))
    # deep grey matter (thalamus / basal ganglia): two ellipsoids lateral and below the ventricles
    deep = []
    for side in (-1, 1):
        c = center + [side * rng.uniform(16, 22), rng.uniform(-8, 4), rng.uniform(-6, 2)]
        c, a, rot = _ellipsoid(rng, c, [9.0, 14.0, 10.0], 15.0, 0.15)
        deep.append((_t(c), _t(a), _t(rot)))

    # tumour sizes: whole tumour 25-70 mm across, oedema 5-25 mm beyond the core
    necrosis = str(rng.choice(["full", "small", "none"], p=[0.8, 0.1, 0.1]))
    wt_radius = rng.uniform(12.5, 35.0)
    oedema = rng.uniform(5.0, max(5.5, min(25.0, 0.6 * wt_radius)))
    core_r = wt_radius - oedema
    et_thick = rng.uniform(2.0, 5.0)
    if necrosis == "full" and core_r - et_thick < 2.5:
        necrosis = "small"
    small_ncr = rng.uniform(1.5, max(1.6, min(4.0, core_r - et_thick - 1.0)))
    if necrosis == "small" and core_r - et_thick - 1.0 < 1.5:
        necrosis = "none"
    core_shape = _rand_harmonics(rng, 6, 1.0, 3.5)
    core_amp = rng.uniform(0.08, 0.2)
    et_shape = _rand_harmonics(rng, 6, 1.5, 5.0)
    oedema_shape = _rand_harmonics(rng, 8, 1.0, 5.0)
    oedema_amp = rng.uniform(0.3, 0.6)
    stretch = rng.uniform(0.8, 1.25, 3)
    stretch /= np.prod(stretch) ** (1 / 3)
    t_rot = _rand_rotation(rng)
    hemisphere = "left" if rng.random() < 0.5 else "right"
    sign = -1.0 if hemisphere == "left" else 1.0

    # contrasts, scale, bias, noise
    contrast = []
    for m in MODALITIES_2021:
        base = np.array(_BASE_CONTRAST[m])
        contrast.append(base * rng.uniform(0.93, 1.07, len(base)))
    scale = rng.uniform(1100.0, 2400.0, len(MODALITIES_2021))
    bias = []
    for _ in MODALITIES_2021:
        coef = rng.normal(size=9)
        bias.append(coef / np.abs(coef).sum() * rng.uniform(0.08, 0.25))  # |log bias| <= amp
    noise = rng.uniform(0.02, 0.08, len(MODALITIES_2021))
    texture = _rand_waves(rng, 6, 6.0, 20.0)
    tumour_texture = _rand_waves(rng, 6, 4.0, 12.0)

    base = dict(
        seed=seed,
        brain_center=_t(center),
        brain_axes=_t(axes),
        brain_shape=brain_shape,
        brain_shape_amp=float(brain_amp),
        csf_rim_mm=float(csf_rim),
        sulci=sulci,
        sulcus_width_mm=float(sulcus_width),
        sulcus_depth_mm=float(sulcus_depth),
        sulcus_grad_floor=float(grad_floor),
        fissure_depth_mm=float(fissure_depth),
        gm_thickness_mm=float(gm),
        gyri=gyri,
        fissure_x=fissure_x,
        ventricles=tuple(ventricles),
        deep_gm=tuple(deep),
        hemisphere=hemisphere,
        tumour_rotation=_t(t_rot),
        tumour_stretch=_t(stretch),
        core_shape=core_shape,
        core_shape_amp=float(core_amp),
        necrosis=necrosis,
        et_thickness_mm=float(et_thick),
        et_shape=et_shape,
        small_ncr_radius_mm=float(small_ncr),
        oedema_shape=oedema_shape,
        oedema_shape_amp=float(oedema_amp),
        contrast=tuple(_t(c) for c in contrast),
        scale=_t(scale),
        bias=tuple(_t(b) for b in bias),
        noise=_t(noise),
        texture=texture,
        tumour_texture=tumour_texture,
    )

    # place the tumour: centre in one hemisphere, the core (plus a 4 mm margin) inside the
    # brain and its hemisphere; candidates are drawn in batches, the size shrinks if none fits
    dirs = rng.normal(size=(256, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    r_dir = 1.0 + core_amp * _sphere_fn(core_shape, dirs[:, 0], dirs[:, 1], dirs[:, 2])
    unit_surface = (dirs * stretch * r_dir[:, None]) @ t_rot.T  # core surface of radius 1, world frame
    probe = Phantom(tumour_center=_t(center), core_radius_mm=1.0, oedema_mm=1.0, **base)  # for its brain
    shrink = 1.0
    for _ in range(60):
        q = rng.uniform(-0.75, 0.75, size=(64, 3))
        q[:, 0] = sign * np.abs(q[:, 0])
        ok = (np.linalg.norm(q, axis=1) <= 0.75) & (np.abs(q[:, 0]) >= 0.12)
        centres = center + q * axes
        rc = core_r * shrink
        surf = unit_surface * rc
        norm = np.linalg.norm(surf, axis=1, keepdims=True)
        margin = surf * (1.0 + 4.0 / np.maximum(norm, 1e-6))  # 4 mm beyond the core surface
        pts = centres[:, None, :] + margin[None, :, :]  # (64, D, 3)
        d_b = probe._brain_distance(pts[..., 0], pts[..., 1], pts[..., 2])
        ok &= np.all(d_b < -1.0, axis=1)
        ok &= np.all(sign * (pts[..., 0] - fissure_x) > 2.0, axis=1)
        if ok.any():
            tc = centres[int(np.flatnonzero(ok)[0])]
            return Phantom(tumour_center=_t(tc), core_radius_mm=float(rc), oedema_mm=float(oedema * shrink), **base)
        shrink *= 0.95
    raise RuntimeError(f"could not place a tumour for seed {seed}")  # pragma: no cover


# --------------------------------------------------------------------------- grids


def _axcode_matrix(axcodes: str) -> np.ndarray:
    codes = str(axcodes).upper()
    if len(codes) != 3 or any(c not in _AXIS_OF for c in codes) or len({_AXIS_OF[c][0] for c in codes}) != 3:
        raise ValueError(
            f"axcodes must name each of the three world axes once (e.g. 'RAS', 'LPS', 'PIR'), got {axcodes!r}"
        )
    d = np.zeros((3, 3))
    for col, c in enumerate(codes):
        ax, s = _AXIS_OF[c]
        d[ax, col] = s
    return d


def grid_for(
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    axcodes: str = "RAS",
    oblique_deg: float = 0.0,
    fov_mm: Sequence[float] = (160.0, 192.0, 160.0),
    origin_jitter: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An affine (4x4) and shape covering the FOV centred on the world origin.

    The voxel axes are in the given orientation (e.g. 'LPS', or 'PIR' i.e.
    permuted), with an optional rotation (degrees, about a fixed oblique axis)
    for oblique grids.

    `spacing` is per voxel axis (i, j, k); `fov_mm` is per world axis (L-R,
    A-P, S-I). With a rotation the grid grows to hold the rotated FOV
    ellipsoid. `origin_jitter` (mm, world) shifts the whole grid.
    """
    s = np.asarray(spacing, dtype=float).reshape(3)
    if np.any(s <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(s)}")
    w = _rot_about(_OBLIQUE_AXIS, float(oblique_deg)) @ _axcode_matrix(axcodes)  # columns: voxel axes in world
    half = np.asarray(fov_mm, dtype=float).reshape(3) / 2.0
    extent = np.sqrt(((w * half[:, None]) ** 2).sum(axis=0))  # half-extent of the FOV ellipsoid along each voxel axis
    if abs(float(oblique_deg)) < 1e-9:
        extent = np.abs(w.T) @ half  # exact box for the axis-aligned case
    shape = tuple(int(max(1, math.ceil(2 * e / sp - 1e-6))) for e, sp in zip(extent, s))
    lin = w * s[None, :]
    centre_vox = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = -lin @ centre_vox
    if origin_jitter is not None:
        aff[:3, 3] += np.asarray(origin_jitter, dtype=float).reshape(3)
    return aff, shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- files


def _save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.set_data_dtype(arr.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)


def _to_dtype(img: np.ndarray, brain: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return img.astype(dt)
    info = np.iinfo(dt)
    out = np.clip(np.rint(img), max(info.min, 0), info.max)
    out[brain] = np.maximum(out[brain], 1)  # skull-stripped: zero outside, nonzero inside
    return out.astype(dt)


def make_case(
    out_dir,
    case_id: str,
    seed: int,
    *,
    spacing=(2.0, 2.0, 2.0),
    axcodes: str = "RAS",
    oblique_deg: float = 0.0,
    naming: str = "2021",
    labels: str = "2021",
    dtype: str = "int16",
    with_seg: bool = True,
    origin_jitter=None,
    fov_mm=(160.0, 192.0, 160.0),
    noise_seed: int | None = None,
    brain_extent_mm=None,
) -> Path:
    """Write one case and return its folder.

    Files: <out_dir>/<case_id>/<case_id>_flair.nii.gz ... (2021 naming) or
    <case_id>-t2f.nii.gz ... (2023 naming), plus <case_id>_seg.nii.gz (2021) /
    <case_id>-seg.nii.gz (2023) with labels 1,2,4 (2021: 1 NCR, 2 ED, 4 ET) or
    1,2,3 (2023: 1 NETC, 2 SNFH, 3 ET). The phantom is make_phantom(seed), the
    grid grid_for(spacing, axcodes, oblique_deg, fov_mm, origin_jitter), the
    noise seeded by `noise_seed` (default `seed`); `brain_extent_mm` as in
    make_phantom (default: the seed's random size). Images are `dtype` (int16
    by default), exactly 0 outside the brain; sform and qform = the grid's
    affine, code 1 (scanner).
    """
    naming, labels = str(naming), str(labels)
    if naming not in ("2021", "2023"):
        raise ValueError(f"naming must be '2021' or '2023', got {naming!r}")
    if labels not in ("2021", "2023"):
        raise ValueError(f"labels must be '2021' or '2023', got {labels!r}")
    affine, shape = grid_for(spacing, axcodes, oblique_deg, fov_mm, origin_jitter)
    phantom = make_phantom(seed, brain_extent_mm=brain_extent_mm)
    images, lab = phantom.sample(affine, shape, noise_seed=seed if noise_seed is None else noise_seed)
    brain = images["flair"] > 0  # Rician magnitude: > 0 everywhere inside the brain, exactly 0 outside
    case_dir = Path(out_dir) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for m in MODALITIES_2021:
        name = f"{case_id}_{m}.nii.gz" if naming == "2021" else f"{case_id}-{SUFFIXES_2023[m]}.nii.gz"
        _save_nifti(_to_dtype(images[m], brain, dtype), affine, case_dir / name)
    if with_seg:
        if labels == "2023":
            lab = lab.copy()
            lab[lab == 4] = 3
        name = f"{case_id}_seg.nii.gz" if naming == "2021" else f"{case_id}-seg.nii.gz"
        _save_nifti(lab.astype(np.uint8), affine, case_dir / name)
    return case_dir


_SPACINGS = (
    ((1.0, 1.0, 1.0), 0.10),
    ((1.25, 1.25, 1.25), 0.08),
    ((1.5, 1.5, 1.5), 0.14),
    ((2.0, 2.0, 2.0), 0.22),
    ((2.5, 2.5, 2.5), 0.08),
    ((1.0, 1.0, 2.5), 0.10),
    ((1.2, 1.2, 2.0), 0.10),
    ((2.0, 2.0, 2.5), 0.08),
    ((1.5, 1.5, 2.5), 0.10),
)
_AXCODES = (
    ("RAS", 0.25),
    ("LPS", 0.25),
    ("LAS", 0.12),
    ("RPI", 0.10),
    ("PIR", 0.08),
    ("ASL", 0.08),
    ("LIP", 0.06),
    ("SRA", 0.06),
)


def random_case_params(seed) -> dict:
    """Acquisition parameters `make_case` varies per case: spacing, axcodes, oblique angle, grid shift."""
    rng = np.random.default_rng([int(seed), 0xACC])
    sp = [s for s, _ in _SPACINGS]
    i = rng.choice(len(sp), p=np.array([p for _, p in _SPACINGS]) / sum(p for _, p in _SPACINGS))
    codes = [c for c, _ in _AXCODES]
    j = rng.choice(len(codes), p=np.array([p for _, p in _AXCODES]) / sum(p for _, p in _AXCODES))
    oblique = float(rng.uniform(-12.0, 12.0)) if rng.random() < 0.3 else 0.0
    return {
        "spacing": tuple(float(v) for v in sp[i]),
        "axcodes": codes[j],
        "oblique_deg": round(oblique, 3),
        "origin_jitter": tuple(float(v) for v in np.round(rng.uniform(-2.0, 2.0, 3), 3)),
    }


def make_dataset(out_dir, n: int, seed: int, **fixed) -> list[Path]:
    """Write `n` cases synth_<seed+i> (at least 3 digits: synth_000, synth_001, ...).

    Case i is make_case(..., seed + i, **random_case_params(seed + i)), with
    any make_case keyword in `fixed` overriding the random choice.
    """
    out = []
    for i in range(int(n)):
        s = int(seed) + i
        params = random_case_params(s)
        params.update(fixed)
        out.append(make_case(out_dir, f"synth_{s:03d}", s, **params))
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sample_data.brats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per case)")
    ap.add_argument("--n", type=int, default=4, help="number of cases")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first case (case i uses seed+i)")
    ap.add_argument(
        "--spacing", type=float, nargs=3, default=None, help="fixed voxel spacing (mm); default random per case"
    )
    ap.add_argument("--axcodes", default=None, help="fixed orientation, e.g. RAS, LPS, PIR; default random per case")
    ap.add_argument(
        "--oblique", type=float, default=None, help="fixed oblique angle (degrees); default random per case"
    )
    ap.add_argument("--naming", choices=("2021", "2023"), default="2021", help="file naming convention")
    ap.add_argument("--labels", choices=("2021", "2023"), default=None, help="label convention (default: as --naming)")
    ap.add_argument("--dtype", default="int16", choices=("int16", "uint16", "float32"))
    ap.add_argument("--no-seg", action="store_true", help="do not write the label maps")
    a = ap.parse_args(argv)
    fixed: dict = {"naming": a.naming, "labels": a.labels or a.naming, "dtype": a.dtype, "with_seg": not a.no_seg}
    if a.spacing is not None:
        fixed["spacing"] = tuple(a.spacing)
    if a.axcodes is not None:
        fixed["axcodes"] = a.axcodes
    if a.oblique is not None:
        fixed["oblique_deg"] = a.oblique
    for p in make_dataset(a.out, a.n, a.seed, **fixed):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
