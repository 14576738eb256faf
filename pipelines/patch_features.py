"""``embed --patch-features``: every tile's patch tokens as one GeoTIFF on the scene's patch grid.

The raster has one band per embedding channel (D), a cell per ``patch x patch`` source pixels
(``ceil(H / p) x ceil(W / p)`` cells; transform = the scene's scaled by the patch size, so cell
(i, j) covers source pixels ``[i p, (i + 1) p) x [j p, (j + 1) p)``), float32 values stored as
IEEE half floats (GDAL ``NBITS=16``), NaN for cells with no valid pixel or in skipped tiles.
Where tiles overlap, each cell takes the tile whose centre it is nearest (each tile writes its
core: half the overlap trimmed on every side that has a neighbour), so cells are written once.
Written window by window through :class:`~imagingflows.tasks.geo_write.CogWriter`: memory is a
tile's tokens, never the raster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NODATA = float("nan")


def grid_shape(height: int, width: int, patch: int) -> tuple[int, int]:
    """Cells of the patch grid over ``height x width`` source pixels."""
    return -(-height // patch), -(-width // patch)


def core_cells(start: int, size: int, stride: int, total: int) -> tuple[int, int]:
    """The cells ``[a, b)`` a tile starting at cell ``start`` (``size`` cells, tiles every
    ``stride`` cells, ``total`` cells in all) writes: its share of each overlap, all of its edge."""
    lead = (size - stride) // 2  # overlap trimmed at the start ...
    a = start + (lead if start > 0 else 0)
    last = start + size >= total
    b = start + size - (0 if last else size - stride - lead)  # ... and the rest of it at the end
    return a, min(b, total)


class PatchFeatureWriter:
    """Collects ``(window, tokens (N, D), valid (N,))`` per tile into cell rows ``[row0, row1)``.

    ``row0/row1`` (cells) let a block of a split scene write its own band of rows; None: all.
    """

    def __init__(self, path: Path, src, *, patch: int, tile: int, overlap: int, dim: int,
                 rows: tuple[int, int] | None = None) -> None:
        from affine import Affine

        from imagingflows.tasks.geo_write import CogWriter

        if overlap % patch:
            raise ValueError(f"--patch-features needs --overlap ({overlap}) to be a multiple of the patch size {patch}")
        self.patch, self.g, self.stride = patch, tile // patch, (tile - overlap) // patch
        self.cells = grid_shape(src.height, src.width, patch)
        self.row0, row1 = rows if rows is not None else (0, self.cells[0])
        transform = src.affine @ Affine.scale(patch) @ Affine.translation(0, self.row0)
        self._writer = CogWriter(path, height=row1 - self.row0, width=self.cells[1], count=dim, dtype="float32",
                                 crs=src.crs, transform=tuple(transform)[:6], nodata=NODATA, resampling="average",
                                 nbits=16, descriptions=[f"feature_{i}" for i in range(dim)])

    def __enter__(self) -> "PatchFeatureWriter":
        self._writer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.__exit__(*exc)

    def add(self, window, tokens: np.ndarray, valid: np.ndarray) -> None:
        """One tile: ``tokens (g * g, D)`` row-major, ``valid (g * g,)`` patches with valid pixels."""
        g, p = self.g, self.patch
        r, c = window.row_off // p, window.col_off // p
        a, b = core_cells(r, g, self.stride, self.cells[0])
        cl, cr = core_cells(c, g, self.stride, self.cells[1])
        block = tokens.reshape(g, g, -1).transpose(2, 0, 1).astype(np.float32)
        block = np.where(valid.reshape(g, g)[None], block, np.float32(NODATA))
        self._writer.write(block[:, a - r:b - r, cl - c:cr - c], a - self.row0, cl)


def core_rows(windows: list, patch: int, tile: int, overlap: int, total_rows: int) -> tuple[int, int]:
    """The cell rows the core of ``windows`` (whole tile rows of a block) covers."""
    g, stride = tile // patch, (tile - overlap) // patch
    spans = [core_cells(w.row_off // patch, g, stride, total_rows) for w in windows]
    return min(a for a, _ in spans), max(b for _, b in spans)


def merge_features(path: Path, parts: list[Path], src, *, patch: int, dim: int) -> None:
    """The blocks' feature rasters (disjoint bands of rows, in order) as one raster at ``path``."""
    import rasterio
    from affine import Affine

    from imagingflows.tasks.geo_write import CogWriter

    cells = grid_shape(src.height, src.width, patch)
    transform = tuple(src.affine @ Affine.scale(patch))[:6]
    with CogWriter(path, height=cells[0], width=cells[1], count=dim, dtype="float32", crs=src.crs,
                   transform=transform, nodata=NODATA, resampling="average", nbits=16,
                   descriptions=[f"feature_{i}" for i in range(dim)]) as out:
        for part in parts:
            with rasterio.open(part) as ds:
                row0 = round((ds.transform.f - transform[5]) / transform[4])
                for r in range(0, ds.height, 256):
                    h = min(256, ds.height - r)
                    out.write(ds.read(window=((r, r + h), (0, ds.width))), row0 + r, 0)
