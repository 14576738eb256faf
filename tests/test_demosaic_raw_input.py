"""RAW input edge cases through real DNGs (tifffile-written, read back by rawpy/LibRaw in tasks/raw_io.py): the
file's default crop in visible-area coordinates (with and without an ActiveArea), per-site black levels (also
with an odd ActiveArea origin), a WhiteLevel of 0, quad-Bayer and other CFA cells LibRaw misreads; and the
linear-sRGB ICC profile (tasks/icc.py) that linear output carries."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.raw_io import Crop, apply_crop, normalise, read_raw
from sample_data.dng import D65_XYZ, _srational, clean_image, sensor_mosaic

H, W = 64, 96
CODES = {"R": 0, "G": 1, "B": 2}


def _dng(path, raw, cell=("RG", "GB"), black=(256,), black_dim=(1, 1), white=4095, extra=()):
    """A CFA DNG of ``raw`` (uint16 as stored) with the given CFA cell rows, BlackLevel pattern and tags."""
    tags = [(254, "I", 1, 0, True), (271, "s", 0, "imagingflows", True), (272, "s", 0, "edge case", True),
            (33421, "H", 2, (len(cell), len(cell[0])), True),
            (33422, "B", len(cell) * len(cell[0]), bytes(CODES[c] for c in "".join(cell)), True),
            (50706, "B", 4, bytes([1, 4, 0, 0]), True), (50707, "B", 4, bytes([1, 1, 0, 0]), True),
            (50708, "s", 0, "edge case", True), (50713, "H", 2, black_dim, True),
            (50714, "H", len(black), black if len(black) > 1 else black[0], True), (50717, "H", 1, white, True),
            (50721, "2i", 9, _srational(np.eye(3).ravel()), True), (50778, "H", 1, 21, True),
            (50728, "2I", 3, _srational(D65_XYZ), True), *extra]
    tifffile.imwrite(path, np.asarray(raw, np.uint16), photometric=32803, planarconfig=1, extratags=tags)
    return path


def _index_raw() -> np.ndarray:
    """A raw image whose every pixel says where it is: value = 100 + W * row + col."""
    return (100 + W * np.arange(H)[:, None] + np.arange(W)[None, :]).astype(np.uint16)


def _area(aa_top, aa_left, top, left, height, width):
    """The DNG tags of an ActiveArea corner and a default crop (origin x, y relative to the ActiveArea)."""
    return [(50829, "H", 4, (aa_top, aa_left, H, W), True), (50719, "H", 2, (left, top), True),
            (50720, "H", 2, (width, height), True)]


# ------------------------------------------------------------------------------------------ default crop

@pytest.mark.parametrize("aa_top, aa_left", [(0, 0), (4, 2), (1, 1)])
def test_default_crop_is_given_in_visible_coordinates(tmp_path, aa_top, aa_left):
    raw = _index_raw()
    path = _dng(tmp_path / "crop.dng", raw, extra=_area(aa_top, aa_left, 5, 3, 40, 70))
    data = read_raw(path)
    assert data.crop is not None and (data.crop.height, data.crop.width) == (40, 70)
    cropped = apply_crop(data.mosaic, data.crop)
    # the crop's first pixel is the ActiveArea corner + DefaultCropOrigin in the stored image
    assert cropped.shape == (40, 70) and cropped[0, 0] == raw[aa_top + 5, aa_left + 3]
    assert np.array_equal(cropped, raw[aa_top + 5: aa_top + 45, aa_left + 3: aa_left + 73])
    assert data.notes == ()


def test_no_crop_or_the_whole_area_is_none_and_a_crop_outside_is_dropped_with_a_note(tmp_path):
    raw = _index_raw()
    assert read_raw(_dng(tmp_path / "plain.dng", raw)).crop is None
    whole = [(50719, "H", 2, (0, 0), True), (50720, "H", 2, (W, H), True)]
    assert read_raw(_dng(tmp_path / "whole.dng", raw, extra=whole)).crop is None
    # LibRaw passes on a crop inside the raw image that runs into the masked margin: read_raw drops it
    data = read_raw(_dng(tmp_path / "margin.dng", raw, extra=_area(4, 2, 0, 0, H - 2, W - 2)))
    assert data.crop is None and "leaves the visible sensor area 60 x 94" in data.notes[0]


def test_apply_crop_cuts_at_a_dropped_odd_row_and_refuses_a_crop_outside():
    image = np.arange(10 * 12 * 3).reshape(10, 12, 3)
    assert apply_crop(image, None) is image
    assert apply_crop(image, Crop(2, 3, 4, 5)).shape == (4, 5, 3)
    assert apply_crop(image[:9], Crop(2, 3, 8, 5)).shape == (7, 5, 3)  # past the odd row the pipeline drops
    with pytest.raises(ValueError, match="outside the 10 x 12 image"):
        apply_crop(image, Crop(10, 0, 2, 2))


# ------------------------------------------------------------------------------------------ black levels

def _truth() -> np.ndarray:
    """A (H + 2, W + 2) camera mosaic in [0, 1] (sites RGGB from its top-left), from a photograph."""
    image = clean_image()[: H + 2, : W + 2]
    return sensor_mosaic(image, "RGGB", 0, 65535).astype(np.float64) / 65535


@pytest.mark.parametrize("aa", [0, 1])
def test_per_site_black_levels_are_read_and_develop_back(tmp_path, aa):
    """BlackLevelRepeatDim 2 x 2 with four different values (G1 != G2), pattern origin at the ActiveArea
    corner; with an odd corner (aa = 1) LibRaw's own per-site values are misplaced and the file's are used."""
    site_black = np.array([[100.0, 200.0], [300.0, 400.0]])  # R, G1 / G2, B sites of the cell at the corner
    white = 4095
    truth = _truth()[: H - aa, : W - aa]  # the scene from the ActiveArea corner on
    black = np.tile(site_black, (H // 2 + 1, W // 2 + 1))[: H - aa, : W - aa]
    raw = np.zeros((H, W))
    raw[aa:, aa:] = np.round(black + truth * (white - black))
    extra = [(50829, "H", 4, (aa, aa, H, W), True)] if aa else []
    path = _dng(tmp_path / "site.dng", raw, black=(100, 200, 300, 400), black_dim=(2, 2), white=white, extra=extra)
    data = read_raw(path)
    h, w = data.mosaic.shape
    off = H - h - aa  # LibRaw starts the visible area on an even row/column: (2, 2) for ActiveArea (1, 1)
    expected_pattern = "RGGB" if off % 2 == 0 else "BGGR"
    assert data.pattern == expected_pattern and data.white == white
    assert data.black.tolist() == (site_black if off % 2 == 0 else site_black[::-1, ::-1]).tolist()
    assert bool(data.notes) == bool(off % 2)  # the override is said
    developed = normalise(data)
    assert np.abs(developed - truth[off:, off:][:h, :w]).max() < 1.5 / (white - 400)  # quantisation only


# ------------------------------------------------------------------------------------------ bad files

def test_a_zero_white_level_fails_by_name(tmp_path):
    path = _dng(tmp_path / "white0.dng", _index_raw(), white=0)
    with pytest.raises(InputError, match=r"white0\.dng: its WhiteLevel tag is 0.*LibRaw would substitute 65535"):
        read_raw(path)


@pytest.mark.parametrize("cell, words", [
    (("RRGG", "RRGG", "GGBB", "GGBB"), "quad-Bayer CFA (4 x 4 cell RRGG/RRGG/GGBB/GGBB of 2 x 2 same-colour "
                                       "blocks): remosaic it to Bayer first"),
    (("GGRR", "GGRR", "BBGG", "BBGG"), "quad-Bayer CFA"),
    (("RGRG", "GBGB", "RGRG", "GBGB"), "its Bayer pattern RGGB is stated as a 4 x 4 cell"),
    (("RRGG", "GGBB"), "a 2 x 4 CFA cell (RRGG/GGBB) that is neither Bayer"),
])
def test_cfa_cells_libraw_misreads_fail_by_name(tmp_path, cell, words):
    path = _dng(tmp_path / "cell.dng", _index_raw(), cell=cell)
    with pytest.raises(InputError) as info:
        read_raw(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


# ------------------------------------------------------------------------------------------ ICC profiles

def test_linear_srgb_profile_opens_and_reads_back():
    from PIL import ImageCms

    from imagingflows.tasks.icc import linear_srgb_profile

    icc = linear_srgb_profile()
    assert icc == linear_srgb_profile() and len(icc) % 4 == 0  # reproducible bytes
    assert icc[36:40] == b"acsp" and icc[12:20] == b"mntrRGB " and icc[8] == 2
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    assert ImageCms.getProfileDescription(profile).strip() == "imagingflows linear sRGB"
    srgb = ImageCms.ImageCmsProfile(io.BytesIO(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()))
    srgb = srgb.profile  # read back from bytes too: the same s15Fixed16 rounding
    for name in ("red_colorant", "green_colorant", "blue_colorant", "media_white_point"):
        assert getattr(profile.profile, name) == getattr(srgb, name)  # the same primaries and white


def test_a_linear_ramp_converts_to_the_srgb_encoding():
    from PIL import Image, ImageCms

    from imagingflows.tasks.icc import linear_srgb_profile

    transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(linear_srgb_profile())),
                                        ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")), "RGB", "RGB")
    ramp = np.arange(256, dtype=np.uint8)
    out = np.asarray(ImageCms.applyTransform(Image.fromarray(np.stack([ramp] * 3, -1)[None]), transform))[0]
    x = ramp / 255
    encoded = 255 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
    assert np.abs(out - encoded[:, None]).max() <= 1.0
    assert abs(int(out[128, 0]) - 188) <= 1  # linear 0.5 is sRGB code 188


def test_a_16_bit_tiff_carries_the_linear_profile(tmp_path):
    from imagingflows.tasks import icc as icc_module
    from imagingflows.tasks.icc import linear_srgb_profile
    from imagingflows.tasks.image_io import srgb_profile, write_image

    icc = linear_srgb_profile()
    path = write_image(tmp_path / "linear.tif", np.full((8, 8, 3), 30000, np.uint16), icc_profile=icc)
    with tifffile.TiffFile(path) as tif:
        assert bytes(tif.pages[0].tags[34675].value) == icc and tif.pages[0].dtype == np.uint16
    assert srgb_profile is icc_module.srgb_profile and srgb_profile() != icc  # moved; image_io still exports it


# ------------------------------------------------------------------------------------------ the pipeline

def test_the_pipeline_cuts_to_the_files_crop_after_demosaicking(tmp_path):
    """Needs the ``--crop`` wiring in pipelines/demosaic.py (skipped until then)."""
    from imagingflows.flows import run_pipeline
    from imagingflows.pipelines.demosaic_options import DemosaicRun
    from imagingflows.tasks.icc import linear_srgb_profile

    if "crop" not in DemosaicRun.model_fields:
        pytest.skip("run-flow demosaic has no --crop option yet")
    raw = sensor_mosaic(clean_image()[:H, :W], "RGGB", 256, 4095)
    (tmp_path / "in").mkdir()
    _dng(tmp_path / "in" / "plain.dng", raw)
    _dng(tmp_path / "in" / "crop.dng", raw, extra=[(50719, "H", 2, (3, 5), True), (50720, "H", 2, (80, 48), True)])
    result = run_pipeline("demosaic", tmp_path / "in", tmp_path / "out", method="bilinear", linear=True)
    assert result["counts"]["done"] == 2, result["errors"]
    full, cropped = (tifffile.TiffFile(tmp_path / "out" / f"{k}.tif") for k in ("plain", "crop"))
    with full, cropped:
        assert np.array_equal(cropped.asarray(), full.asarray()[5:53, 3:83])  # the same pixels, margin as context
        assert bytes(cropped.pages[0].tags[34675].value) == linear_srgb_profile()
