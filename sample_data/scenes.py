"""Synthetic multispectral scenes with a known class layout, for tests and the benchmark.

``make_scene`` writes two GeoTIFFs on one north-up projected grid::

    <stem>.tif           (bands, H, W) uint8/uint16/float32, nodata 0 outside the footprint
    <stem>_classes.tif   (1, H, W) uint8 class ids 0..classes-1, nodata 255 outside the footprint

The footprint is a parallelogram whose four corners touch the four image edges, as a real
scene's swath does inside its north-up bounding box (a square image gives a square turned by
about 13 degrees for ``collar=0.3``); the four corner triangles are the nodata collar.

The classes are regions: Voronoi cells (``cell`` px apart, about ``cell**2`` px each) on a
jittered grid, with warped borders, each cell of one random class. A pixel's value in band b is

    mean[class, b] + cell offset (per cell, std 6) + texture (sinusoids, std 6 x class gain)
    + noise (per pixel, std 6)                                          in uint8 units,

around a random base spectrum. The closest two classes differ by 20 (about two within-class
stds) on their most different band, no two by more than 60: a nearest-mean classifier on the
pixels scores about 0.8-0.95 (3 bands, 4 classes: 0.85-0.95), learnable but not trivial.

Every term is a function of the global pixel position and the seed (a counter-based hash
gives the random numbers), so the scene is written window by window, the pixels do not
depend on the window or block layout, and memory stays at a few windows (about 30 MB at
``block=512``, whatever the scene size).

Usage::

    python -m sample_data.scenes --out demo_out/scene.tif --size 4000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

import numpy as np

NODATA = 0
CLASS_NODATA = 255
ORIGIN = (399960.0, 5300040.0)  # upper-left corner (x, y) of the grid, in CRS units
SIGMA_CELL, SIGMA_TEXTURE, SIGMA_NOISE = 6.0, 6.0, 6.0  # uint8 units
SEPARATION = 20.0  # uint8 units: the closest pair of class means differs by this on its most different band
SCALE = {"uint8": 1.0, "uint16": 40.0, "float32": 1.0 / 255.0}  # uint8 units -> dtype units
CACHE_MB = 64  # GDAL block cache while writing


# ---------- counter-based random numbers: a pure function of (seed, stream, integer coords) ----------

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, stream: int, *coords: np.ndarray) -> np.ndarray:
    """uint64 hash of integer ``coords`` (broadcast together) for this seed and stream."""
    start = ((seed & 0xFFFFFFFF) * 0x9E3779B97F4A7C15 + stream) % (1 << 64)
    h = _mix(np.full(1, start, dtype=np.uint64))  # an array: numpy warns on scalar wrap-around, not arrays
    for c in coords:
        h = _mix(h ^ (np.asarray(c).astype(np.int64).view(np.uint64) + _GOLD))
    return h


def _uniform(h: np.ndarray) -> np.ndarray:
    """[0, 1) float64 from the top 53 bits of a uint64 hash."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normal(h: np.ndarray) -> np.ndarray:
    """Approximately standard normal float32: the sum of the hash's four 16-bit uniforms (Irwin-Hall)."""
    total = np.zeros(h.shape, np.float32)
    for shift in (0, 16, 32, 48):
        total += ((h >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.float32)
    return (total / 65536.0 - 2.0) * np.float32(3.0**0.5)  # mean 2, variance 4/12


# ---------- the scene model: class spectra, layout, footprint ----------


def class_means(classes: int, bands: int, seed: int) -> np.ndarray:
    """(classes, bands) float64 mean spectra in uint8 units.

    Around a random base spectrum; scaled so that the closest pair of classes differs by exactly
    SEPARATION on its most different band, and no pair by more than 3 x that (all classes near).
    """
    rng = np.random.default_rng([seed, 7])
    base = rng.uniform(80.0, 170.0, size=bands)
    if classes < 2:
        return base[None, :]
    off_diag = ~np.eye(classes, dtype=bool)
    for _ in range(10_000):
        offsets = rng.normal(size=(classes, bands))
        gaps = np.abs(offsets[:, None, :] - offsets[None, :, :]).max(axis=2)[off_diag]
        if gaps.max() <= 3.0 * gaps.min():
            return base + offsets * (SEPARATION / gaps.min())
    raise ValueError(f"cannot place {classes} class spectra in {bands} band(s)")


def _texture_params(classes: int, bands: int, seed: int) -> dict:
    """Random constants of the texture and border warp (small arrays)."""
    rng = np.random.default_rng([seed, 11])
    wavelength = rng.uniform(6.0, 40.0, size=4)
    angle = rng.uniform(0.0, np.pi, size=4)
    return {
        "kx": 2 * np.pi * np.cos(angle) / wavelength, "ky": 2 * np.pi * np.sin(angle) / wavelength,
        "phase": rng.uniform(0.0, 2 * np.pi, size=4),
        "gain": rng.uniform(0.5, 1.5, size=classes),  # some classes smoother than others
        "band_weight": rng.choice([-1.0, 1.0], size=(classes, bands)) * rng.uniform(0.6, 1.0, size=(classes, bands)),
        "warp_phase": rng.uniform(0.0, 2 * np.pi, size=4),
    }


def class_layout(rows: np.ndarray, cols: np.ndarray, *, classes: int, cell: int, seed: int, tex: dict):
    """Class id and owning cell of each pixel: the nearest jittered-grid seed among the 3 x 3 cells around.

    rows, cols: (h, 1) and (1, w) global pixel indices. Returns (h, w) int64 class ids and the
    (h, w) int64 row and column indices of the owning cell. The borders are warped by a few
    pixels (sinusoids of the other axis) so that they are not straight.
    """
    y = rows + 0.5 + 4.0 * np.sin(cols / 23.0 + tex["warp_phase"][0]) + 2.0 * np.sin(cols / 9.0 + tex["warp_phase"][1])
    x = cols + 0.5 + 4.0 * np.sin(rows / 29.0 + tex["warp_phase"][2]) + 2.0 * np.sin(rows / 11.0 + tex["warp_phase"][3])
    ci0, cj0 = np.floor(y / cell).astype(np.int64), np.floor(x / cell).astype(np.int64)
    i_lo, j_lo = int(ci0.min()) - 1, int(cj0.min()) - 1
    ti = np.arange(i_lo, int(ci0.max()) + 2, dtype=np.int64)[:, None]  # the cells this window can touch
    tj = np.arange(j_lo, int(cj0.max()) + 2, dtype=np.int64)[None, :]
    seed_y = (ti + 0.15 + 0.7 * _uniform(_hash(seed, 1, ti, tj))) * cell
    seed_x = (tj + 0.15 + 0.7 * _uniform(_hash(seed, 2, ti, tj))) * cell
    best = np.full(y.shape, np.inf)
    own_i, own_j = np.zeros(y.shape, np.int64), np.zeros(y.shape, np.int64)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ki, kj = ci0 + di - i_lo, cj0 + dj - j_lo
            d = (y - seed_y[ki, kj]) ** 2 + (x - seed_x[ki, kj]) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            own_i, own_j = np.where(closer, ki, own_i), np.where(closer, kj, own_j)
    cell_class = (_hash(seed, 3, ti, tj) % np.uint64(classes)).astype(np.int64)
    return cell_class[own_i, own_j], own_i + i_lo, own_j + j_lo


def footprint_corners(height: int, width: int, collar: float) -> np.ndarray:
    """(4, 2) float64 (x, y) pixel-space corners, clockwise from the top edge, of the valid footprint.

    For collar <= 0.5 the corners sit on the four edges at a fraction t along each, with
    2 t (1 - t) = collar (the four corner triangles); above 0.5 it is the t = 0.5 diamond shrunk
    about the centre to the asked area.
    """
    if not 0.0 <= collar < 1.0:
        raise ValueError(f"collar must be in [0, 1), got {collar}")
    t = (1.0 - np.sqrt(1.0 - 2.0 * min(collar, 0.5))) / 2.0
    unit = np.array([[t, 0.0], [1.0, t], [1.0 - t, 1.0], [0.0, 1.0 - t]])
    if collar > 0.5:
        unit = 0.5 + (unit - 0.5) * np.sqrt((1.0 - collar) / 0.5)
    return unit * [width, height]


def inside(corners: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixel centres inside the convex clockwise polygon ``corners`` ((n, 2) x, y)."""
    x, y = cols + 0.5, rows + 0.5
    ok = np.ones(np.broadcast_shapes(x.shape, y.shape), bool)
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0)):
        ok &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0  # on the inner side (y points down)
    return ok


def render(window, *, bands: int, classes: int, cell: int, seed: int, means: np.ndarray, tex: dict,
           corners: np.ndarray):
    """Pixels of one window in uint8 units: (bands, h, w) float32 values and (h, w) uint8 classes.

    ``window`` is a rasterio Window; outside the footprint the values are 0 and the class 255.
    """
    rows = np.arange(window.row_off, window.row_off + window.height, dtype=np.int64)[:, None]
    cols = np.arange(window.col_off, window.col_off + window.width, dtype=np.int64)[None, :]
    cls, ci, cj = class_layout(rows, cols, classes=classes, cell=cell, seed=seed, tex=tex)
    wave = sum(np.sin(tex["kx"][k] * cols + tex["ky"][k] * rows + tex["phase"][k]) for k in range(4))
    wave = (wave * (SIGMA_TEXTURE / np.sqrt(2.0)) * tex["gain"][cls]).astype(np.float32)  # var of 4 sines: 2
    valid = inside(corners, rows, cols)
    out = np.empty((bands, *cls.shape), np.float32)
    for b in range(bands):
        v = means[cls, b].astype(np.float32)
        v += SIGMA_CELL * _normal(_hash(seed, 100 + b, ci, cj))
        v += wave * tex["band_weight"][cls, b].astype(np.float32)
        v += SIGMA_NOISE * _normal(_hash(seed, 200 + b, rows, cols))
        out[b] = np.where(valid, v, 0.0)
    return out, np.where(valid, cls, CLASS_NODATA).astype(np.uint8)


def to_dtype(values: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """uint8-unit float values -> ``dtype``; valid pixels never equal the nodata value 0."""
    scaled = values * SCALE[dtype]
    if dtype == "float32":
        return np.where(valid, np.maximum(scaled, 1e-4), 0.0).astype(np.float32)
    top = np.iinfo(dtype).max
    return np.where(valid, np.clip(np.rint(scaled), 1, top), 0).astype(dtype)


# ---------- writing ----------


def windows(height: int, width: int, *, tiled: bool, block: int, bands: int):
    """Write windows: block x block tiles, or full-width strips of at most ~1M values when striped."""
    from rasterio.windows import Window

    if tiled:
        for r in range(0, height, block):
            for c in range(0, width, block):
                yield Window(c, r, min(block, width - c), min(block, height - r))
        return
    step = max(1, min(block, 1_000_000 // (width * bands)))
    for r in range(0, height, step):
        yield Window(0, r, width, min(step, height - r))


def _profiles(height, width, bands, dtype, crs, pixel_size, tiled, compress, block):
    from affine import Affine

    transform = Affine(pixel_size, 0.0, ORIGIN[0], 0.0, -pixel_size, ORIGIN[1])  # north-up
    base = {"driver": "GTiff", "height": height, "width": width, "crs": crs, "transform": transform, "tiled": tiled}
    if tiled:
        base.update(blockxsize=block, blockysize=block)
    if compress:
        base.update(compress=compress)
    image = dict(base, count=bands, dtype=dtype, nodata=NODATA)
    labels = dict(base, count=1, dtype="uint8", nodata=CLASS_NODATA)
    return image, labels


def make_scene(path, *, height: int, width: int, bands: int = 3, dtype: str = "uint8", classes: int = 4,
               collar: float = 0.3, crs: str = "EPSG:32633", pixel_size: float = 10.0, seed: int = 0,
               tiled: bool = True, compress: str | None = "deflate", block: int = 512, cell: int = 24) -> dict:
    """Write the scene ``path`` and its class raster ``<stem>_classes.tif``; return the facts.

    The facts: paths, grid (crs, transform, shape), valid_fraction, class_counts
    ({class: pixels}), class_means and class_stds ((classes, bands) in the file's units).
    Deterministic for a seed; pixels do not depend on ``tiled``/``block``.
    """
    import rasterio

    if dtype not in SCALE:
        raise ValueError(f"dtype must be one of {sorted(SCALE)}, got {dtype!r}")
    if tiled and block % 16:
        raise ValueError(f"block must be a multiple of 16 for a tiled GeoTIFF, got {block}")
    path = Path(path)
    classes_path = path.with_name(path.stem + "_classes.tif")
    means, tex = class_means(classes, bands, seed), _texture_params(classes, bands, seed)
    corners = footprint_corners(height, width, collar)
    image_profile, label_profile = _profiles(height, width, bands, dtype, crs, pixel_size, tiled, compress, block)
    stats = np.zeros((3, classes, bands))  # count, sum, sum of squares (file units)
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), _atomic(path) as tmp_img, _atomic(classes_path) as tmp_cls, \
            rasterio.open(tmp_img, "w", **image_profile) as img, rasterio.open(tmp_cls, "w", **label_profile) as lab:
        for w in windows(height, width, tiled=tiled, block=block, bands=bands):
            values, cls = render(w, bands=bands, classes=classes, cell=cell, seed=seed, means=means, tex=tex,
                                 corners=corners)
            pixels = to_dtype(values, cls != CLASS_NODATA, dtype)
            img.write(pixels, window=w)
            lab.write(cls[None], window=w)
            _accumulate(stats, pixels, cls)
    return _facts(path, classes_path, image_profile, stats)


@contextlib.contextmanager
def _atomic(final: Path):
    """A temp path beside ``final``, renamed onto it if the block succeeds.

    The same temp + rename as ``imagingflows.tasks.write.atomic_path``, done here because
    importing that package loads torch (about 200 MB), more than the whole scene writer needs.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _accumulate(stats: np.ndarray, pixels: np.ndarray, cls: np.ndarray) -> None:
    """Add one window's per-class count, sum and sum of squares (pixels: (bands, h, w))."""
    flat = cls.ravel()
    keep = flat != CLASS_NODATA
    idx = flat[keep].astype(np.int64)
    n = stats.shape[1]
    stats[0] += np.bincount(idx, minlength=n)[:, None]
    for b in range(pixels.shape[0]):
        v = pixels[b].ravel()[keep].astype(np.float64)
        stats[1, :, b] += np.bincount(idx, weights=v, minlength=n)
        stats[2, :, b] += np.bincount(idx, weights=v * v, minlength=n)


def _facts(path: Path, classes_path: Path, profile: dict, stats: np.ndarray) -> dict:
    count = stats[0, :, 0]
    safe = np.maximum(stats[0], 1)
    mean = stats[1] / safe
    std = np.sqrt(np.maximum(stats[2] / safe - mean**2, 0.0))
    return {
        "path": str(path), "classes_path": str(classes_path),
        "height": profile["height"], "width": profile["width"], "bands": profile["count"],
        "dtype": profile["dtype"], "crs": str(profile["crs"]), "transform": list(profile["transform"])[:6],
        "nodata": NODATA, "class_nodata": CLASS_NODATA,
        "valid_fraction": float(count.sum() / (profile["height"] * profile["width"])),
        "class_counts": {int(k): int(c) for k, c in enumerate(count)},
        "class_means": np.round(mean, 3).tolist(), "class_stds": np.round(std, 3).tolist(),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m sample_data.scenes", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output GeoTIFF (.tif), or a folder to write scene.tif in")
    p.add_argument("--size", type=int, default=4000, help="height and width in pixels (default 4000)")
    p.add_argument("--height", type=int, help="overrides --size for the height")
    p.add_argument("--width", type=int, help="overrides --size for the width")
    p.add_argument("--bands", type=int, default=3)
    p.add_argument("--dtype", default="uint8", choices=sorted(SCALE))
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--collar", type=float, default=0.3, help="nodata share of the area (default 0.3)")
    p.add_argument("--crs", default="EPSG:32633")
    p.add_argument("--pixel-size", type=float, default=10.0, help="metres (CRS units) per pixel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, default=512, help="tile size in pixels (default 512)")
    p.add_argument("--striped", action="store_true", help="write strips instead of tiles")
    p.add_argument("--compress", default="deflate", help="GeoTIFF compression, 'none' for none")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        out = out / "scene.tif"
    facts = make_scene(out, height=a.height or a.size, width=a.width or a.size, bands=a.bands, dtype=a.dtype,
                       classes=a.classes, collar=a.collar, crs=a.crs, pixel_size=a.pixel_size, seed=a.seed,
                       tiled=not a.striped, compress=None if a.compress == "none" else a.compress, block=a.block)
    print(json.dumps({k: v for k, v in facts.items() if k not in ("class_means", "class_stds")}, indent=1))
    return facts


if __name__ == "__main__":
    main()
