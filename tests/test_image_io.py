"""2D image reading/writing for the restoration pipeline: bit depth, alpha, ICC, orientation, bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import tifffile
from PIL import Image, ImageCms, ImageOps

from imagingflows.tasks.image_io import (
    encode_png16,
    from_float,
    merge_alpha,
    read_image,
    split_alpha,
    to_float,
    write_image,
)
from imagingflows.tasks.ingest import InputError
from imagingflows.tasks.write import TEMP_PREFIX, WriteError

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _content(channels: int, depth: int) -> np.ndarray:
    """Real picture content, 48x72 (not square, so a transposition shows), with meaningful low bytes at 16 bit."""
    rgb = skimage.data.astronaut()[100:196:2, 150:294:2]
    gray = skimage.data.camera()[200:296:2, 150:294:2]
    alpha = skimage.data.chelsea()[:48, :72, 0]
    planes = {1: [gray], 2: [gray, alpha], 3: [rgb], 4: [rgb, alpha]}[channels]
    a = np.dstack(planes).astype(np.uint8)
    if depth == 16:
        low = np.random.default_rng(channels).integers(0, 256, a.shape, dtype=np.uint16)
        a = a.astype(np.uint16) << 8 | low
    return np.ascontiguousarray(a)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_round_trip_is_bit_exact(tmp_path, suffix, depth, channels):
    a = _content(channels, depth)
    path = write_image(tmp_path / f"img{suffix}", a)
    img = read_image(path)
    assert img.array.dtype == a.dtype and img.bit_depth == depth
    assert np.array_equal(img.array, a)
    assert img.notes == [] and img.orientation_applied == 1 and img.icc_profile is None
    assert img.has_alpha == (channels in (2, 4))
    # an independent decoder agrees
    if suffix == ".tif":
        assert np.array_equal(tifffile.imread(path).reshape(a.shape), a)
    else:
        with Image.open(path) as im:
            ref = np.asarray(im)
        if depth == 8 or channels == 1:
            assert np.array_equal(ref.reshape(a.shape), a)
        else:  # Pillow keeps only the high bytes of 16-bit colour PNG (and shows gray+alpha as RGBA)
            hi = (a >> 8).astype(np.uint8)
            assert np.array_equal(ref, hi[..., [0, 0, 0, 1]] if channels == 2 else hi)


def test_16_bit_png_from_other_writers_and_every_filter(tmp_path):
    g = _content(1, 16)[..., 0]
    Image.fromarray(g).save(tmp_path / "pil.png")  # Pillow's own 16-bit gray PNG
    assert np.array_equal(read_image(tmp_path / "pil.png").array[..., 0], g)
    # random data makes the encoder pick all five PNG filters; the decoder must undo each one
    noise = np.random.default_rng(0).integers(0, 65536, (40, 33, 3), dtype=np.uint16)
    smooth = np.broadcast_to(np.arange(33, dtype=np.uint16)[None, :, None] * 1000, (40, 33, 3))
    for a in (noise, np.ascontiguousarray(smooth), np.vstack([noise, smooth])):
        (tmp_path / "x.png").write_bytes(encode_png16(a))
        assert np.array_equal(read_image(tmp_path / "x.png").array, a)


def test_16_bit_rgb_tiff_from_tifffile_planar_and_compressed(tmp_path):
    a = _content(3, 16)
    tifffile.imwrite(tmp_path / "planar.tif", a.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "deflate.tif", a, photometric="rgb", compression="zlib", predictor=True)
    for name in ("planar.tif", "deflate.tif"):
        img = read_image(tmp_path / name)
        assert img.bit_depth == 16 and np.array_equal(img.array, a)


def test_lzw_tiff_falls_back_to_pillow_without_losing_bits(tmp_path):
    g = _content(1, 16)[..., 0]
    Image.fromarray(g).save(tmp_path / "lzw16.tif", compression="tiff_lzw")
    img = read_image(tmp_path / "lzw16.tif")
    assert img.bit_depth == 16 and np.array_equal(img.array[..., 0], g)
    assert any("Pillow" in n for n in img.notes)
    rgb = _content(3, 8)
    Image.fromarray(rgb).save(tmp_path / "lzw8.tif", compression="tiff_lzw")
    assert np.array_equal(read_image(tmp_path / "lzw8.tif").array, rgb)


def test_exif_orientation_is_applied(tmp_path):
    rgb = skimage.data.chelsea()  # 300 x 451
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "cat.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "cat.jpg") as im:
        stored = np.asarray(im)  # as stored, not rotated
    img = read_image(tmp_path / "cat.jpg")
    assert img.array.shape == (451, 300, 3) and img.orientation_applied == 6
    assert np.array_equal(img.array, np.rot90(stored, -1))  # 6 = rotate 90 degrees clockwise to display
    assert any("orientation 6" in n for n in img.notes)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    a = _content(3, 8)[:5, :7]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as im:
        want = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(read_image(tmp_path / "o.png").array, want)
    # TIFF tag 274 read by tifffile gets the same treatment
    tifffile.imwrite(tmp_path / "o.tif", a, photometric="rgb", extratags=[(274, 3, 1, orientation, True)])
    assert np.array_equal(read_image(tmp_path / "o.tif").array, want)


@pytest.mark.parametrize("name,depth,channels", [("a.png", 8, 3), ("a.png", 16, 3), ("a.png", 16, 4), ("a.tif", 16, 3),
                                                 ("a.tif", 8, 4), ("a.jpg", 8, 3)])
def test_icc_profile_is_carried_over(tmp_path, name, depth, channels):
    a = _content(channels, depth)
    write_image(tmp_path / name, a, icc_profile=SRGB)
    src = read_image(tmp_path / name)
    assert src.icc_profile == SRGB
    out = write_image(tmp_path / ("out_" + name), src.array, like=src)  # `like` carries it on
    assert read_image(out).icc_profile == SRGB
    if name.endswith(".png"):
        with Image.open(out) as im:
            assert im.info["icc_profile"] == SRGB  # readable by others too


def test_icc_profile_of_another_colour_space_is_refused(tmp_path):
    with pytest.raises(ValueError, match="RGB colour but the image has 1 channels"):
        write_image(tmp_path / "g.png", _content(1, 8), icc_profile=SRGB)
    assert not list(tmp_path.iterdir())


def test_palette_and_cmyk_are_converted_with_notes(tmp_path):
    rgb = _content(3, 8)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(tmp_path / "pal.png")
    img = read_image(tmp_path / "pal.png")
    assert img.array.shape == (48, 72, 3) and img.array.dtype == np.uint8
    assert np.array_equal(img.array, np.asarray(pal.convert("RGB")))
    assert any("palette" in n for n in img.notes)

    pal.save(tmp_path / "pal_t.png", transparency=0)
    img = read_image(tmp_path / "pal_t.png")
    assert img.channels == 4 and img.alpha.min() == 0 and img.alpha.max() == 255

    cmyk = Image.fromarray(rgb).convert("CMYK")
    for name in ("cmyk.jpg", "cmyk.tif"):
        cmyk.save(tmp_path / name)
        img = read_image(tmp_path / name)
        assert img.array.shape == (48, 72, 3) and any("CMYK" in n for n in img.notes)
    assert np.array_equal(read_image(tmp_path / "cmyk.tif").array, np.asarray(cmyk.convert("RGB")))

    Image.fromarray(rgb[..., 0]).save(tmp_path / "key.png", transparency=5)  # gray colour key: kept as gray
    img = read_image(tmp_path / "key.png")
    assert img.channels == 1 and np.array_equal(img.array[..., 0], rgb[..., 0]) and "tRNS" in img.notes[0]

    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "bits.png")
    img = read_image(tmp_path / "bits.png")
    assert img.array.shape == (48, 72, 1) and set(np.unique(img.array)) <= {0, 255}
    assert any("1-bit" in n for n in img.notes)


def test_gray_alpha_is_kept_and_split(tmp_path):
    a = _content(2, 8)
    img = read_image(write_image(tmp_path / "la.png", a))
    assert img.channels == 2 and np.array_equal(img.color[..., 0], a[..., 0]) and np.array_equal(img.alpha, a[..., 1])
    color, alpha = split_alpha(img.array)
    assert np.array_equal(merge_alpha(color, alpha), a)
    info = img.info()
    assert info["alpha"] is True and info["shape"] == [48, 72, 2] and info["bit_depth"] == 8


def _png_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_inputs_raise_input_error_naming_the_file(tmp_path):
    rgb = _content(3, 8)
    bad = {}
    bad["empty.png"] = b""
    png = _png_bytes(rgb)
    bad["truncated.png"] = png[: len(png) // 2]
    jpg = _jpeg_bytes(rgb)
    bad["truncated.jpg"] = jpg[: len(jpg) // 2]
    bad["notes.png"] = b"this is a text file, not a picture\n"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="BMP")
    bad["bitmap.png"] = buf.getvalue()
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 20, 20), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((20, 20), np.float32))
    tiff = write_image(tmp_path / "whole.tif", _content(3, 16)).read_bytes()
    (tmp_path / "truncated.tif").write_bytes(tiff[: len(tiff) // 2])
    tifffile.imwrite(tmp_path / "lzw16rgb.tif", _content(3, 16), photometric="rgb")
    with tifffile.TiffFile(tmp_path / "lzw16rgb.tif", mode="r+b") as tif:  # labelled LZW: no codec here decodes it
        tif.pages[0].tags["Compression"].overwrite(5)

    expect = {
        "empty.png": "0 bytes",
        "truncated.png": "truncated",
        "truncated.jpg": "truncated",
        "notes.png": "not an image",
        "bitmap.png": "found a BMP",
        "stack.tif": "multi-page TIFF with 5 pages",
        "float.tif": "float32",
        "truncated.tif": "truncated",
        "lzw16rgb.tif": "imagecodecs",
    }
    for name, words in expect.items():
        with pytest.raises(InputError) as err:
            read_image(tmp_path / name)
        msg = str(err.value)
        assert name in msg and words in msg and "expected" in msg, msg

    with pytest.raises(InputError, match="too small.*48x72.*at least 64"):
        read_image(write_image(tmp_path / "small.png", rgb), min_size=64)
    assert read_image(tmp_path / "small.png", min_size=48).array.shape == (48, 72, 3)
    with pytest.raises(InputError, match="missing.png.*not found"):
        read_image(tmp_path / "missing.png")
    # a JPEG named .png is read by its content, and the mismatch is noted
    (tmp_path / "photo.png").write_bytes(_jpeg_bytes(rgb))
    assert any("content is JPEG" in n for n in read_image(tmp_path / "photo.png").notes)


def _jpeg_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_writer_leaves_nothing_behind_when_the_write_fails(tmp_path, monkeypatch):
    a = _content(3, 8)
    final = write_image(tmp_path / "out.png", a)
    before = final.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(WriteError, match="out.png.*disk full"):
        write_image(final, a[::-1])
    assert final.read_bytes() == before  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # and no temp file

    monkeypatch.setattr(tifffile, "imwrite", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(WriteError):
        write_image(tmp_path / "new.tif", a)
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*")) and not (tmp_path / "new.tif").exists()


def test_writer_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="JPEG"):
        write_image(tmp_path / "a.jpg", _content(3, 16))
    with pytest.raises(ValueError, match="JPEG"):
        write_image(tmp_path / "a.jpg", _content(4, 8))
    with pytest.raises(ValueError, match="from_float"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    src = read_image(write_image(tmp_path / "s.png", _content(3, 16)))
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "o.png", _content(3, 8), like=src)
    with pytest.raises(ValueError, match="suffix"):
        write_image(tmp_path / "a.gif", _content(3, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


def test_float_conversion_round_trips_every_value():
    for depth, dtype in ((8, np.uint8), (16, np.uint16)):
        top = np.iinfo(dtype).max
        a = np.arange(top + 1, dtype=dtype)[: (top + 1) // 4 * 4].reshape(4, -1, 1).repeat(3, axis=2)
        x = to_float(a)
        assert x.dtype == np.float32 and x.shape == (3, 4, a.shape[1]) and x.min() == 0.0
        assert np.array_equal(from_float(x, depth), a)
    assert to_float(np.zeros((5, 6), np.uint8)).shape == (1, 5, 6)
    over = np.array([[[-0.2, 0.5 / 255, 1.5 / 255, 1.7]]], np.float32)  # (C=1, H=1, W=4)
    assert from_float(over, 8)[..., 0].tolist() == [[0, 0, 2, 255]]  # clipped, rounded half to even
    assert from_float(over[None], 16).shape == (1, 4, 1)  # a batch of one
    with pytest.raises(ValueError, match="NaN"):
        from_float(np.full((3, 2, 2), np.nan), 8)
