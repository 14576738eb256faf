"""Training and held-out images for the demo JDD weights, from photographs that ship with scikit-image.

``train/``: astronaut, Hubble deep field, immunohistochemistry (ihc), the two motorcycle stereo
views and the retina; ``heldout/``: chelsea, coffee and rocket (never seen in training; the model
card's figures are measured on them). The JPEG sources (Hubble, retina, rocket) are 4:2:0
chroma-subsampled: they are averaged 2 x 2 first, which removes the subsampling (and the JPEG
blocks) so the references have full-resolution colour. Everything else is the file as shipped.

    python -m sample_data.demosaic_demo --out demosaic_data/    # writes train/ and heldout/ PNGs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TRAIN = ("astronaut", "hubble_deep_field", "immunohistochemistry", "motorcycle_left", "motorcycle_right", "retina")
HELDOUT = ("chelsea", "coffee", "rocket")
JPEG = ("hubble_deep_field", "retina", "rocket")


def image(name: str) -> np.ndarray:
    """``(H, W, 3)`` uint8: the scikit-image photograph, 2 x 2 averaged when it is a JPEG."""
    from skimage import data

    if name.startswith("motorcycle"):
        left, right, _ = data.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(data, name)()
    img = np.asarray(img)[..., :3]
    if name in JPEG:
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        img = img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return img


def write(out: Path) -> dict[str, list[Path]]:
    """Write ``out/train/*.png`` and ``out/heldout/*.png``; returns the paths per folder."""
    from PIL import Image

    written: dict[str, list[Path]] = {}
    for folder, names in (("train", TRAIN), ("heldout", HELDOUT)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        written[folder] = []
        for name in names:
            path = out / folder / f"{name}.png"
            Image.fromarray(image(name)).save(path)
            written[folder].append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    for folder, paths in write(ap.parse_args(argv).out).items():
        print(folder, ", ".join(p.name for p in paths))


if __name__ == "__main__":
    main()
