"""Captions on before/after pairs and the colour legend under segment overlays, read back from real PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagingflows.tasks.preview import LABEL_BAND_PX, before_after, legend_entries, preview_size, save_overlay_previews
from imagingflows.tasks.write import write_png

SHAPE = (40, 48, 24)  # X, Y, Z
COLORS = {1: (255, 60, 60), 2: (255, 220, 0), 3: (60, 140, 255), 4: (60, 140, 255)}
BRATS_2021 = {1: "NCR", 2: "ED", 4: "ET"}
BRATS_2023 = {1: "NETC", 2: "SNFH", 3: "ET"}


def _dark(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1) < 100


def _pair_png(tmp_path, name, **kw) -> np.ndarray:
    """A mid-grey 200 x 200 before/after pair written and read back as a PNG."""
    grey = np.full((200, 200, 3), 128, np.uint8)
    path = write_png(tmp_path / f"{name}.png", before_after(grey, grey, **kw))
    return np.asarray(Image.open(path).convert("RGB"))


def test_before_after_captions_each_image_in_a_band_above_it(tmp_path):
    plain = _pair_png(tmp_path, "plain", labels=None)
    labelled = _pair_png(tmp_path, "labelled")  # default labels: "input" / "output"
    assert plain.shape == (200, 404, 3)
    assert labelled.shape == (200 + LABEL_BAND_PX, 404, 3)
    assert np.array_equal(labelled[LABEL_BAND_PX:], plain)  # the images themselves are untouched
    band = labelled[:LABEL_BAND_PX]
    left, gap, right = _dark(band[:, :200]), _dark(band[:, 200:204]), _dark(band[:, 204:])
    assert left.sum() > 20 and right.sum() > 20, "no caption text over one of the images"
    assert not gap.any()
    assert right.sum() > left.sum()  # "output" has more ink than "input"
    assert (band.max(axis=-1) == band.min(axis=-1)).all() and (band == 255).mean() > 0.8  # grey text on white


def test_before_after_custom_labels_for_super_resolution(tmp_path):
    default = _pair_png(tmp_path, "default")
    sr = _pair_png(tmp_path, "sr", labels=("input (bicubic x2)", "output x2"))
    assert sr.shape == default.shape
    assert _dark(sr[:LABEL_BAND_PX, :200]).sum() > 1.5 * _dark(default[:LABEL_BAND_PX, :200]).sum()
    with pytest.raises(ValueError, match="two strings"):
        before_after(np.zeros((4, 4)), np.zeros((4, 4)), labels=("only one",))


def test_before_after_caption_clipped_to_a_narrow_image(tmp_path):
    a = np.zeros((30, 20, 3), np.uint8)
    out = before_after(a, a, labels=("a very long caption that cannot fit", "b"))
    assert out.shape == (30 + LABEL_BAND_PX, 44, 3)
    assert not _dark(out[:LABEL_BAND_PX, 20:24]).any()  # nothing spills into the gap


def _case(labels_present):
    rng = np.random.default_rng(1)
    image = rng.uniform(50, 100, SHAPE).astype(np.float32)
    lab = np.zeros(SHAPE, np.int16)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    r2 = (x - 20) ** 2 + (y - 24) ** 2 + (z - 12) ** 2
    shells = [(r2 <= 100), (r2 <= 36), (r2 <= 9)]  # outer -> inner
    for value, mask in zip(labels_present, shells):
        lab[mask] = value
    return image, lab


def _has_colour(rgb: np.ndarray, colour) -> int:
    return int((rgb == np.asarray(colour, np.uint8)).all(axis=-1).sum())


@pytest.mark.parametrize("values, names", [((2, 1, 4), BRATS_2021), ((2, 1, 3), BRATS_2023)])
def test_overlay_preview_has_a_legend_with_each_label_colour(tmp_path, values, names):
    image, lab = _case(values)
    with_legend = save_overlay_previews(image, lab, tmp_path / "a", "a", COLORS, names=names)
    without = save_overlay_previews(image, lab, tmp_path / "b", "b", COLORS, legend=False)
    for p, q in zip(with_legend, without):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        bare = np.asarray(Image.open(q).convert("RGB"))
        h, w = bare.shape[:2]
        assert rgb.shape[1] == w and rgb.shape[0] >= h + LABEL_BAND_PX, p.name
        assert np.array_equal(rgb[:h], bare), p.name  # the slice above the legend is unchanged
        legend = rgb[h:]
        for v in values:
            assert _has_colour(legend, COLORS[v]) >= 100, (p.name, v)  # a 12 x 12 swatch per label
        assert (legend.min(axis=-1) > 200).sum() > 50, "no legend text"
    assert legend_entries({v: COLORS[v] for v in values}, names) == [
        (f"{v} {names[v]}", COLORS[v]) for v in sorted(values)]


def test_legend_defaults_to_label_values_and_wraps(tmp_path):
    assert legend_entries({4: (1, 2, 3), 1: (4, 5, 6)}) == [("1", (4, 5, 6)), ("4", (1, 2, 3))]
    assert legend_entries({1: (0, 0, 0), 2: (9, 9, 9)}, {1: "NCR"}) == [("1 NCR", (0, 0, 0)), ("2", (9, 9, 9))]
    image, lab = _case((2, 1, 4))
    long_names = {1: "necrotic tumour core", 2: "peritumoral oedema", 4: "enhancing tumour"}
    one_row = save_overlay_previews(image, lab, tmp_path / "s", "s", COLORS, names=BRATS_2021)
    wrapped = save_overlay_previews(image, lab, tmp_path / "l", "l", COLORS, names=long_names)
    h_short = Image.open(one_row[0]).height
    assert Image.open(wrapped[0]).height >= h_short + LABEL_BAND_PX  # a second legend row


def test_no_legend_without_labels(tmp_path):
    image, _ = _case(())
    paths = save_overlay_previews(image, np.zeros(SHAPE, np.int16), tmp_path, "e", COLORS, names=BRATS_2021)
    axial = Image.open(paths[0])
    assert axial.size == preview_size((SHAPE[1], SHAPE[0]), (1.0, 1.0))
