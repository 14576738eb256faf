"""Small sample images for the restore pipeline, cut from images that ship with scikit-image.

Each file exercises one thing a restoration run has to keep (see ``restore/README.md``)::

    astronaut.png          RGB, 8-bit, 256 x 256, with an sRGB ICC profile
    camera.png             gray, 8-bit, 256 x 256
    chelsea.jpg            RGB JPEG (quality 90, 4:2:0), 300 x 200: written back as a lossless PNG
    coffee_rgba.png        RGBA, 8-bit, 256 x 192, soft elliptical alpha
    tiff/rocket_16bit.tif  RGB, 16-bit TIFF (Deflate), 192 x 256: in a subfolder (the output mirrors it)

Usage::

    python -m sample_data.restore --out sample_data/restore

Deterministic: the same scikit-image data give the same pixels (compare decoded arrays, not
file bytes, since encoders may differ between library versions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FILES = ("astronaut.png", "camera.png", "chelsea.jpg", "coffee_rgba.png", "tiff/rocket_16bit.tif")


def srgb_profile() -> bytes:
    """An sRGB ICC profile (``tasks/image_io.srgb_profile``: LittleCMS, a fixed creation date)."""
    from imagingflows.tasks.image_io import srgb_profile as make

    return make()


def images() -> dict[str, np.ndarray]:
    """``{relative path: (H, W, C) uint8/uint16 array}`` of every sample, before encoding."""
    from scipy import ndimage
    from skimage import data

    astronaut = data.astronaut()[20:276, 130:386]  # face and suit: skin, fabric, flags
    camera = data.camera()[60:316, 130:386][..., None]  # the cameraman and his tripod
    chelsea = data.chelsea()[60:260, 100:400]  # fur and whiskers
    coffee = data.coffee()[80:272, 180:436]  # the cup on the wooden table
    yy, xx = np.mgrid[:192, :256]
    r = np.hypot((yy - 96) / 90.0, (xx - 128) / 120.0)
    alpha = np.clip((1.0 - r) / 0.15, 0.0, 1.0)  # opaque inside the ellipse, a 15 % soft edge, then clear
    coffee_rgba = np.concatenate([coffee, np.rint(alpha * 255).astype(np.uint8)[..., None]], axis=2)
    rocket = data.rocket()[100:292, 200:456].astype(np.float64) / 255.0
    # 16-bit values between the 8-bit levels: a light blur of the 8-bit photo (not a native 16-bit capture)
    rocket = ndimage.gaussian_filter(rocket, sigma=(0.7, 0.7, 0))
    rocket16 = np.rint(np.clip(rocket, 0, 1) * 65535).astype(np.uint16)
    return {
        "astronaut.png": astronaut,
        "camera.png": camera,
        "chelsea.jpg": chelsea,
        "coffee_rgba.png": coffee_rgba,
        "tiff/rocket_16bit.tif": rocket16,
    }


def write_samples(out: str | Path) -> list[Path]:
    """Write every sample under ``out``; returns the paths."""
    from PIL import Image

    from imagingflows.tasks.image_io import write_image

    out = Path(out)
    paths = []
    for rel, array in images().items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".jpg"):  # a camera-like JPEG (4:2:0), not our writer's 4:4:4 quality 95
            Image.fromarray(array).save(path, format="JPEG", quality=90, subsampling=2)
        else:
            write_image(path, array, icc_profile=srgb_profile() if rel == "astronaut.png" else None)
        paths.append(path)
    return paths


#: scikit-image photos the demo restore weights train on: every bundled photo except the five
#: the samples above are cut from (astronaut, camera, chelsea, coffee, rocket: the held-out set).
TRAINING_IMAGES = ("brick", "cell", "coins", "colorwheel", "grass", "gravel", "hubble_deep_field",
                   "immunohistochemistry", "logo", "moon", "motorcycle_left", "page", "retina", "text")


def write_training_set(out: str | Path) -> list[Path]:
    """Write the demo training images as 8-bit PNG (RGB, or gray; RGBA logo flattened to RGB)."""
    import skimage.data as data
    from skimage import io

    from imagingflows.tasks.image_io import write_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TRAINING_IMAGES:
        if name == "motorcycle_left":  # one half of a stereo pair: only the file is bundled
            array = io.imread(Path(data.__file__).parent / "motorcycle_left.png")
        else:
            array = getattr(data, name)()
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        path = out / f"{name}.png"
        write_image(path, np.ascontiguousarray(array.astype(np.uint8)))
        paths.append(path)
    return paths


def write_degraded(src: str | Path, out: str | Path, task: str, *, sigma: float = 25.0, scale: int = 2,
                   seed: int = 0, baseline: str | Path | None = None) -> list[Path]:
    """Degrade every image under ``src`` the way the restore training does, for held-out scoring.

    Colour channels only (alpha is kept, and resized for SR); values are rounded to 8-bit
    levels and stored at the file's bit depth; a JPEG is written as PNG (no new artefacts).
    For SR, ``baseline`` (optional) receives the bicubic upscaling of each degraded image:
    the reference point the model card's gain is measured against.
    """
    import torch
    import torch.nn.functional as F

    from imagingflows.pipelines.restore_train import degrade, list_images
    from imagingflows.tasks.image_io import from_float, merge_alpha, read_image, to_float, write_image

    src, out = Path(src), Path(out)
    gen = torch.Generator().manual_seed(seed)
    written = []
    for path in list_images(src):
        img = read_image(path)
        rel = path.relative_to(src).with_suffix(".png" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix)
        color = torch.from_numpy(to_float(img.color))[None]
        alpha = torch.from_numpy(to_float(img.alpha))[None] if img.alpha is not None else None
        low = degrade(color, task, sigma=sigma, scale=scale, gen=gen)[0]
        if task == "sr" and alpha is not None:
            alpha = F.interpolate(alpha, scale_factor=1 / scale, mode="bicubic", antialias=True)
        planes = [low] + ([alpha[0].clamp(0, 1)] if alpha is not None else [])
        array = merge_alpha(from_float(planes[0].numpy(), img.bit_depth),
                            from_float(planes[1].numpy(), img.bit_depth)[..., 0] if len(planes) > 1 else None)
        written.append(write_image(out / rel, array, icc_profile=img.icc_profile))
        if task == "sr" and baseline is not None:
            up = F.interpolate(torch.cat(planes)[None], size=color.shape[2:], mode="bicubic", align_corners=False)
            up = up[0].clamp(0, 1).numpy()
            c = low.shape[0]
            write_image(Path(baseline) / rel, merge_alpha(from_float(up[:c], img.bit_depth),
                        from_float(up[c:], img.bit_depth)[..., 0] if alpha is not None else None),
                        icc_profile=img.icc_profile)
    return written


def underexpose(array: np.ndarray, mean: float = 11.0) -> np.ndarray:
    """An under-exposed copy of ``(H, W, C)`` uint8/uint16: colour scaled so its mean is ``mean``
    on the 0-255 scale, rounded at the array's own depth; alpha (C 2 or 4) unchanged."""
    top = float(np.iinfo(array.dtype).max)
    c = array.shape[2] - (array.shape[2] in (2, 4))
    colour = array[..., :c].astype(np.float64)
    k = mean / 255.0 * top / max(colour.mean(), 1e-9)
    out = array.copy()
    out[..., :c] = np.rint(np.clip(colour * k, 0, top)).astype(array.dtype)
    return out


def write_underexposed(src: str | Path, out: str | Path, mean: float = 11.0) -> list[Path]:
    """Under-exposed copies (:func:`underexpose`) of every image under ``src``; JPEG written as PNG."""
    from imagingflows.pipelines.restore_train import list_images
    from imagingflows.tasks.image_io import read_image, write_image

    src, out = Path(src), Path(out)
    written = []
    for path in list_images(src):
        img = read_image(path)
        rel = path.relative_to(src).with_suffix(".png" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix)
        written.append(write_image(out / rel, underexpose(img.array, mean), icc_profile=img.icc_profile))
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "restore"))
    ap.add_argument("--training-set", action="store_true",
                    help="write the demo weights' training photos (not the samples) into --out")
    ap.add_argument("--degrade", choices=("denoise", "deblur", "sr"),
                    help="write degraded copies of the images under --src into --out (held-out scoring)")
    ap.add_argument("--src", default=str(Path(__file__).parent / "restore"))
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", default=None, help="SR: also write bicubic upscalings of the degraded images here")
    ap.add_argument("--underexpose", type=float, default=None, metavar="MEAN",
                    help="write under-exposed copies (colour mean MEAN on the 0-255 scale) of --src into --out")
    args = ap.parse_args(argv)
    if args.underexpose is not None:
        paths = write_underexposed(args.src, args.out, args.underexpose)
    elif args.degrade:
        paths = write_degraded(args.src, args.out, args.degrade, sigma=args.sigma, scale=args.scale, seed=args.seed,
                               baseline=args.baseline)
    else:
        paths = (write_training_set if args.training_set else write_samples)(args.out)
    for p in paths:
        print(f"{p}  {p.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
