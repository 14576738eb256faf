"""Invertible geometric transforms into a model's frame (MONAI), and intensity normalisation.

A volume goes into the model frame and the prediction comes back by the exact inverse
of the same transforms, so outputs land on the input's grid:

- ``Orientation`` to the model's axis codes (a pure flip/transpose: exact);
- for an oblique grid, resampling onto a world-aligned grid (the model was trained on
  axis-aligned data; an oblique scan otherwise reaches it rotated). The grid sits on a
  world lattice of the target spacing, so copies of one scan on different grids are
  resampled onto the same points;
- ``Spacing`` to the model's voxel size when it states one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's world convention


def is_oblique(affine: np.ndarray, tol: float = 1e-4) -> bool:
    """True when a voxel axis is not parallel to a world axis."""
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return not np.allclose(np.abs(direction).max(axis=0), 1.0, atol=tol)


def world_aligned_grid(affine: np.ndarray, shape, spacing, axcodes: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """An axis-aligned affine (``axcodes``, ``spacing`` mm) and shape covering the input grid's extent."""
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij")).reshape(3, -1)
    world = (affine @ np.vstack([corners, np.ones(corners.shape[1])]))[:3]
    lo, hi = world.min(axis=1), world.max(axis=1)
    spacing = np.asarray(spacing, float)
    first = np.ceil(lo / spacing) * spacing + 0.0  # lattice points inside the extent
    size = np.floor((hi - first) / spacing).astype(int) + 1
    signs = np.array([1.0 if c in "RAS" else -1.0 for c in axcodes])
    perm = ["RLAPSI".index(c) // 2 for c in axcodes]  # world axis of each voxel axis
    out = np.eye(4)
    shape_out = []
    for voxel_axis, world_axis in enumerate(perm):
        step = signs[voxel_axis] * spacing[world_axis]
        out[world_axis, voxel_axis] = step
        n = int(size[world_axis])
        out[world_axis, 3] = first[world_axis] if step > 0 else first[world_axis] + (n - 1) * spacing[world_axis]
        shape_out.append(n)
    return out, tuple(shape_out)


def _resample_to_grid_class():
    from monai.transforms import SpatialResample
    from monai.transforms.inverse import InvertibleTransform

    class ResampleToGrid(InvertibleTransform):
        """Resample onto a fixed grid; invertible (MONAI records the source grid)."""

        def __init__(self, dst_affine: np.ndarray, spatial_size, mode: str = "bilinear") -> None:
            self.inner = SpatialResample(mode=mode, padding_mode="zeros")
            self.dst_affine, self.spatial_size = dst_affine, tuple(int(s) for s in spatial_size)

        def __call__(self, img):
            import torch

            return self.inner(img, dst_affine=torch.as_tensor(self.dst_affine, dtype=torch.float64),
                              spatial_size=self.spatial_size)

        def inverse(self, data):
            return self.inner.inverse(data)

    return ResampleToGrid


@dataclass
class ModelFrame:
    """The model's frame: axis codes and, optionally, voxel spacing in mm."""

    axcodes: str
    spacing: tuple[float, float, float] | None

    def transform(self, affine: np.ndarray, shape, mode: str = "bilinear"):
        """The invertible MONAI transform taking a volume on (``affine``, ``shape``) into this frame."""
        from monai.transforms import Compose, Orientation, Spacing

        steps = [Orientation(axcodes=self.axcodes, labels=RAS_LABELS)]
        if is_oblique(affine):
            zooms = np.linalg.norm(affine[:3, :3], axis=0)
            spacing = self.spacing or tuple([float(zooms.min())] * 3)
            grid, size = world_aligned_grid(affine, shape, spacing, self.axcodes)
            steps.append(_resample_to_grid_class()(grid, size, mode=mode))
        elif self.spacing:
            steps.append(Spacing(pixdim=tuple(self.spacing), mode=mode, padding_mode="zeros"))
        return Compose(steps)


def to_model_frame(stack: np.ndarray, affine: np.ndarray, frame: ModelFrame, mode: str = "bilinear"):
    """``stack`` (C, X, Y, Z) on ``affine`` -> (MetaTensor (C, X', Y', Z') in the frame, its transform)."""
    from monai.data import MetaTensor

    geo = frame.transform(affine, stack.shape[1:], mode=mode)
    img = MetaTensor(np.ascontiguousarray(stack), affine=affine)
    return geo(img), geo


def from_model_frame(values, reference, geo) -> np.ndarray:
    """Map ``values`` (C, X', Y', Z') on ``reference``'s grid back by the exact inverse of ``geo``."""
    from monai.data import MetaTensor

    pred = MetaTensor(values, meta=dict(reference.meta))
    pred.applied_operations = [dict(op) for op in reference.applied_operations]
    return np.asarray(geo.inverse(pred))


def normalize_nonzero(x):
    """Channel-wise z-score over nonzero voxels (MONAI ``NormalizeIntensity``, the BraTS21 recipe)."""
    from monai.transforms import NormalizeIntensity

    return NormalizeIntensity(nonzero=True, channel_wise=True)(x)
