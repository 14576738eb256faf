"""Edge cases of the restore pipeline a demanding BasicSR/spandrel user hits, end to end (real Prefect runs).

Three flow runs in all (tiny random-weight NAFNet and HAT x2, tiny images made here with Pillow/tifffile/numpy):

- ``denoise_run``: NAFNet forced into small tiles (tile 16, overlap 4, whole_max_pixels 0) over 1x1, 1xN, Nx1,
  3x3 (below NAFNet's pad size 4) and 3x700 / 300x2 strips; 16-bit gray TIFF; 16-bit gray+alpha PNG (written by an
  independent encoder here) and TIFF; an EXIF-rotated JPEG; a CMYK JPEG; a palette PNG with transparency;
  all-black / all-white (8 and 16 bit); names with spaces, ``#`` and non-ASCII characters in a nested folder under
  an input root whose own name has them too; then ``resume=True`` after deleting one output.
- ``sr_run``: HAT x2 with tile 16 over images smaller than its window (1x5, 6x1, 7x3), a 3x700 strip,
  16-bit gray+alpha PNG/TIFF and a palette PNG with transparency (alpha upscaled bicubic), an EXIF-rotated JPEG.
- Discovery/outputs: a directory symlink loop, an input named like another image's preview, ``-o`` inside ``-i``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from imagingflows.models.tiling import predict_tiles
from imagingflows.flows import restore
from imagingflows.pipelines import restoration
from imagingflows.tasks.image_io import read_image

from bicubic import bicubic_reference

NAFNET_CFG = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1],
              "local_train_size": None}
HAT_CFG = {"in_chans": 3, "embed_dim": 24, "depths": [2], "num_heads": [2], "window_size": 8, "upscale": 2,
           "compress_ratio": 3, "squeeze_factor": 8, "mlp_ratio": 2.0}

#: tiling forced for NAFNet: every image runs in tiles of 16 with 4 px of context (grid 4: step 8)
DENOISE_OPTS = {"tile": 16, "overlap": 4, "whole_max_pixels": 0, "precision": "fp32", "device": "cpu"}
SR_OPTS = {"tile": 16, "overlap": 4, "precision": "fp32", "device": "cpu"}  # HAT window 8: step 8


# ----------------------------------------------------------------------------- helpers

def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _u8(shape, seed: int) -> np.ndarray:
    return _rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _u16(shape, seed: int) -> np.ndarray:
    """Random 16-bit samples: low bytes carry information (not 8-bit values times 257)."""
    return _rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def _png16(path: Path, a: np.ndarray) -> Path:
    """A plain 16-bit PNG (filter 0, no interlace), gray/gray+alpha/RGB/RGBA, written without the project's code."""
    h, w, c = a.shape
    raw = b"".join(b"\x00" + np.ascontiguousarray(a[r]).astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _pil(path: Path, a: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(path, **kwargs)
    return path


def _tif(path: Path, a: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = a.shape[2]
    tifffile.imwrite(path, a[..., 0] if c == 1 else a, photometric="rgb" if c in (3, 4) else "minisblack",
                     planarconfig="contig", extrasamples=["unassalpha"] if c in (2, 4) else None)
    return path


def _palette_with_alpha(h: int, w: int, seed: int) -> Image.Image:
    """A 'P' image with an RGBA palette of 4 entries whose alphas are 0, 64, 200, 255 (tRNS chunk on save)."""
    im = Image.fromarray((_rng(seed).integers(0, 4, (h, w))).astype(np.uint8), mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250], rawmode="RGB")
    im.info["transparency"] = bytes([0, 64, 200, 255])
    return im


def _exif_jpeg(path: Path, stored: np.ndarray, orientation: int) -> np.ndarray:
    exif = Image.Exif()
    exif[0x0112] = orientation
    _pil(path, stored, exif=exif, quality=95, subsampling=0)
    with Image.open(path) as im:
        return np.asarray(im)  # decoded as stored (not rotated)


def _save(path: Path, build, arch: str, cfg: dict, randomize_blocks: bool = False) -> Path:
    from imagingflows.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    net = build(**cfg)
    if randomize_blocks:  # NAFNet's beta/gamma are 0 at init (every block the identity): make them matter
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith(("beta", "gamma")):
                    p.normal_(0, 0.5)
    return save_checkpoint(path, net, arch=arch, config=cfg)


def _entries(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["items"]


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    from imagingflows.models import hat, nafnet

    d = tmp_path_factory.mktemp("edge_weights")
    return {"nafnet": _save(d / "nafnet.pt", nafnet.build, "nafnet", NAFNET_CFG, randomize_blocks=True),
            "hat_x2": _save(d / "hat_x2.pt", hat.build, "hat", HAT_CFG)}


# ----------------------------------------------------------------------------- denoise run (+ resume)

NESTED_JPEG = "sub dir/ñandú/深い/写真 1.jpeg"
DENOISE_IDS = {
    "tiny/px1x1.png", "tiny/row1x37.png", "tiny/col29x1.png", "tiny/px3x3.tif",
    "strip 3x700.png", "tall 300x2.png",
    "gray16.tif", "la16.png", "la16.tif",
    "exif6.jpg", "cmyk.jpg", "palette_t.png",
    "black.png", "white.png", "white16.png",
    "names/my photo #1 é.png", "names/猫 ñandú.TIF", NESTED_JPEG, "sub dir/UPPER.JPG", "premult.tif",
}


@pytest.fixture(scope="module")
def denoise_run(weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("edge_denoise")
    src = root / "in put é"  # the input root's own name has a space and a non-ASCII letter
    inputs: dict = {}
    for rel, shape, seed in (("tiny/px1x1.png", (1, 1, 3), 1), ("tiny/row1x37.png", (1, 37, 3), 2),
                             ("tiny/col29x1.png", (29, 1, 3), 3), ("strip 3x700.png", (3, 700, 3), 4),
                             ("tall 300x2.png", (300, 2, 1), 5), ("names/my photo #1 é.png", (10, 13, 3), 6)):
        inputs[rel] = _u8(shape, seed)
        _pil(src / rel, inputs[rel])
    inputs["tiny/px3x3.tif"] = _u8((3, 3, 3), 7)
    _tif(src / "tiny/px3x3.tif", inputs["tiny/px3x3.tif"])
    inputs["names/猫 ñandú.TIF"] = _u8((9, 11, 3), 8)
    _tif(src / "names/猫 ñandú.TIF", inputs["names/猫 ñandú.TIF"])
    inputs["gray16.tif"] = _u16((24, 20, 1), 9)
    _tif(src / "gray16.tif", inputs["gray16.tif"])
    inputs["la16.png"] = _u16((12, 10, 2), 10)
    _png16(src / "la16.png", inputs["la16.png"])
    inputs["la16.tif"] = _u16((11, 9, 2), 11)
    _tif(src / "la16.tif", inputs["la16.tif"])
    inputs["exif6.jpg"] = _exif_jpeg(src / "exif6.jpg", _u8((20, 36, 3), 12), 6)  # stored 20 x 36, shown 36 x 20
    Image.fromarray(_u8((16, 24, 3), 13)).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    pal = _palette_with_alpha(14, 18, 14)
    pal.save(src / "palette_t.png")
    inputs["palette_t.png"] = np.asarray(pal.convert("RGBA"))
    inputs["black.png"] = np.zeros((20, 20, 3), np.uint8)
    _pil(src / "black.png", inputs["black.png"])
    inputs["white.png"] = np.full((20, 20, 3), 255, np.uint8)
    _pil(src / "white.png", inputs["white.png"])
    inputs["white16.png"] = np.full((20, 20, 3), 65535, np.uint16)
    _png16(src / "white16.png", inputs["white16.png"])
    inputs[NESTED_JPEG] = _u8((8, 12, 3), 15)
    _pil(src / NESTED_JPEG, inputs[NESTED_JPEG], quality=95)
    _pil(src / "sub dir/UPPER.JPG", _u8((6, 10, 3), 16), quality=95)
    rgba = _u8((8, 10, 4), 17)
    rgba[..., :3] = (rgba[..., :3].astype(np.uint16) * rgba[..., 3:] // 255).astype(np.uint8)  # premultiplied
    inputs["premult.tif"] = rgba
    tifffile.imwrite(src / "premult.tif", rgba, photometric="rgb", extrasamples=["assocalpha"])
    assert _files(src) == DENOISE_IDS

    out = root / "out ü"
    opts = {"task": "denoise", "weights": str(weights["nafnet"]), **DENOISE_OPTS}
    first = restore(src, out, **opts)
    run1 = json.loads((out / "run.json").read_text())
    files1 = _files(out)
    nested_out = out / restoration.output_rel(NESTED_JPEG)
    nested_bytes = nested_out.read_bytes() if nested_out.is_file() else None
    nested_out.unlink(missing_ok=True)  # one output deleted: only that image is redone under resume
    second = restore(src, out, resume=True, **opts)
    return {"src": src, "out": out, "opts": opts, "inputs": inputs, "first": first, "run1": run1,
            "files1": files1, "nested_bytes": nested_bytes, "second": second}


def test_denoise_every_edge_case_image_is_done(denoise_run):
    first = denoise_run["first"]
    statuses = {k: v["status"] for k, v in denoise_run["run1"]["items"].items()}
    assert statuses == {i: "done" for i in DENOISE_IDS}, {k: v.get("error") for k, v in
                                                          denoise_run["run1"]["items"].items() if v.get("error")}
    assert first["counts"] == {"done": len(DENOISE_IDS), "failed": 0, "skipped": 0}


@pytest.mark.parametrize("rel, shape", [
    ("tiny/px1x1.png", (1, 1, 3)), ("tiny/row1x37.png", (1, 37, 3)), ("tiny/col29x1.png", (29, 1, 3)),
    ("tiny/px3x3.tif", (3, 3, 3)), ("strip 3x700.png", (3, 700, 3)), ("tall 300x2.png", (300, 2, 1)),
])
def test_denoise_tiny_and_extreme_aspect_keep_the_exact_size(denoise_run, rel, shape):
    out = read_image(denoise_run["out"] / rel)
    assert out.array.shape == shape and out.array.dtype == np.uint8
    entry = denoise_run["run1"]["items"][rel]
    assert entry["summary"]["size_in"] == entry["summary"]["size_out"] == f"{shape[1]}x{shape[0]}"
    assert (denoise_run["out"] / "previews" / f"{rel}.png").is_file()


def test_denoise_strips_ran_in_many_tiles_with_pool_passes(denoise_run):
    items = denoise_run["run1"]["items"]
    strip, tall = items["strip 3x700.png"]["inference"], items["tall 300x2.png"]["inference"]
    # step (16 - 2 * 4) on NAFNet's grid 4 = 8: 1 + ceil((700 - 16) / 8) = 87 and 1 + ceil((300 - 16) / 8) = 37
    assert (strip["whole"], strip["tiles"], strip["passes"]) == (False, 87, 2)
    assert (tall["whole"], tall["tiles"], tall["passes"]) == (False, 37, 2)
    assert items["tiny/px1x1.png"]["inference"]["tiles"] == 1  # one tile: nothing to measure first
    assert items["tiny/px1x1.png"]["inference"]["passes"] == 1
    assert any("R = G = B" in n for n in items["tall 300x2.png"]["notes"])


def test_denoise_16_bit_gray_tiff_keeps_depth_and_low_bytes(denoise_run):
    out = read_image(denoise_run["out"] / "gray16.tif")
    assert out.format == "TIFF" and out.bit_depth == 16 and out.array.dtype == np.uint16
    assert out.array.shape == (24, 20, 1)
    assert np.any(out.array % 257 != 0)  # real 16-bit values, not 8-bit ones scaled up
    entry = denoise_run["run1"]["items"]["gray16.tif"]
    assert entry["summary"] == {"size_in": "20x24", "size_out": "20x24", "bit_depth": 16, "mode": "gray"}
    assert entry["inference"]["precision"] == "fp32"


@pytest.mark.parametrize("rel", ["la16.png", "la16.tif"])
def test_denoise_16_bit_gray_alpha_passes_alpha_through_bit_exact(denoise_run, rel):
    src = denoise_run["inputs"][rel]
    out = read_image(denoise_run["out"] / rel)
    assert out.format == ("PNG" if rel.endswith(".png") else "TIFF")
    assert out.array.shape == src.shape and out.array.dtype == np.uint16 and out.bit_depth == 16
    np.testing.assert_array_equal(out.alpha, src[..., 1])
    assert np.any(out.color % 257 != 0)
    entry = denoise_run["run1"]["items"][rel]
    assert entry["summary"]["mode"] == "gray+alpha" and entry["summary"]["bit_depth"] == 16
    assert "alpha passed through unchanged" in entry["notes"]
    if rel.endswith(".tif"):  # what the file itself says, read without the project's reader
        with tifffile.TiffFile(denoise_run["out"] / rel) as tif:
            page = tif.pages[0]
            assert page.shape == src.shape and page.dtype == np.uint16 and tuple(page.extrasamples) == (2,)
    else:
        ihdr = (denoise_run["out"] / rel).read_bytes()[16:29]
        assert (ihdr[8], ihdr[9]) == (16, 4)  # bit depth 16, colour type 4 (gray + alpha)


def test_denoise_exif_rotated_jpeg_is_written_upright_as_png(denoise_run, weights):
    out_path = denoise_run["out"] / "exif6.png"
    assert not (denoise_run["out"] / "exif6.jpg").exists()
    out = read_image(out_path)
    assert out.array.shape == (36, 20, 3)  # stored 20 x 36, orientation 6: height and width swapped
    with Image.open(out_path) as im:
        assert im.getexif().get(0x0112) is None  # no orientation tag left to apply twice
    # the network saw the upright image: same pixels as restoring the rotated array directly
    cfg = restoration.prepare({"task": "denoise", "weights": str(weights["nafnet"]), **DENOISE_OPTS})
    upright = np.ascontiguousarray(np.rot90(denoise_run["inputs"]["exif6.jpg"], -1))
    want, _, _ = restoration.restore_array(upright, cfg)
    np.testing.assert_array_equal(out.array, want)
    entry = denoise_run["run1"]["items"]["exif6.jpg"]
    assert entry["input"]["orientation_applied"] == 6 and entry["summary"]["size_in"] == "20x36"
    assert any("EXIF orientation 6 applied" in n for n in entry["notes"])
    assert any("lossless PNG" in n for n in entry["notes"])


def test_denoise_cmyk_jpeg_converted_to_rgb_and_noted(denoise_run):
    out = read_image(denoise_run["out"] / "cmyk.png")
    assert out.array.shape == (16, 24, 3) and out.array.dtype == np.uint8 and out.icc_profile is None
    entry = denoise_run["run1"]["items"]["cmyk.jpg"]
    assert entry["input"]["source_mode"] == "CMYK" and entry["summary"]["mode"] == "RGB"
    assert any("CMYK converted to RGB" in n for n in entry["notes"])


def test_denoise_palette_png_with_transparency_becomes_rgba_alpha_kept(denoise_run):
    want = denoise_run["inputs"]["palette_t.png"]
    assert sorted(np.unique(want[..., 3])) == [0, 64, 200, 255]
    out = read_image(denoise_run["out"] / "palette_t.png")
    assert out.array.shape == (14, 18, 4) and out.array.dtype == np.uint8
    np.testing.assert_array_equal(out.alpha, want[..., 3])
    entry = denoise_run["run1"]["items"]["palette_t.png"]
    assert entry["input"]["source_mode"] == "P" and entry["summary"]["mode"] == "RGBA"
    assert "palette image converted to RGBA" in entry["notes"]


@pytest.mark.parametrize("rel, dtype", [("black.png", np.uint8), ("white.png", np.uint8), ("white16.png", np.uint16)])
def test_denoise_constant_images_are_restored(denoise_run, rel, dtype):
    out = read_image(denoise_run["out"] / rel)
    assert out.array.shape == (20, 20, 3) and out.array.dtype == dtype
    assert denoise_run["run1"]["items"][rel]["status"] == "done"
    prev = read_image(denoise_run["out"] / "previews" / f"{rel}.png")
    assert prev.array.shape[2] == 3 and prev.array.dtype == np.uint8


def test_constant_images_give_finite_float_outputs(weights):
    """No NaN/inf anywhere in the networks for an all-black or all-white image (uint casting would hide them)."""
    for key, task, extra in (("nafnet", "denoise", DENOISE_OPTS), ("hat_x2", "sr", SR_OPTS)):
        cfg = restoration.prepare({"task": task, "weights": str(weights[key]), **extra})
        lm = restoration.model_of(cfg)
        net, grid = lm.module, lm.spec.grid_of(lm.config)
        for value in (0.0, 1.0):
            for whole in (0, None):  # tiled (NAFNet: whole-image means measured first) and one forward
                img = np.full((20, 24, 3), value, np.float32)
                y, run = predict_tiles(net, img, scale=cfg["scale"], grid=grid, tile=16, overlap=4,
                                       out_dtype=np.float32, pool_passes=1,
                                       whole_max_pixels=whole if key == "nafnet" else None)
                assert y.shape == (20 * cfg["scale"], 24 * cfg["scale"], 3)
                assert np.isfinite(y).all(), (key, value, whole, run)


def test_denoise_names_with_spaces_hash_and_non_ascii_in_nested_folders(denoise_run):
    out, files = denoise_run["out"], denoise_run["files1"]
    want = {restoration.output_rel(i) for i in DENOISE_IDS} | {f"previews/{i}.png" for i in DENOISE_IDS}
    assert files == want | {"report.html", "report.md", "run.json", "run.log"}
    assert restoration.output_rel(NESTED_JPEG) == "sub dir/ñandú/深い/写真 1.png"
    assert "sub dir/UPPER.png" in files
    assert read_image(out / "names/猫 ñandú.TIF").array.shape == (9, 11, 3)
    entry = denoise_run["run1"]["items"]["names/my photo #1 é.png"]
    assert entry["outputs"] == {"image": "names/my photo #1 é.png",
                                "previews": ["previews/names/my photo #1 é.png.png"]}
    html = (out / "report.html").read_text(encoding="utf-8")
    for rel in ("names/my photo #1 é.png", NESTED_JPEG):
        assert f'src="{quote(f"previews/{rel}.png", safe="/")}"' in html  # '#' and spaces percent-encoded


def test_resume_after_deleting_one_output_redoes_only_that_image(denoise_run):
    assert denoise_run["nested_bytes"] is not None
    second = denoise_run["second"]
    assert second["outcomes"] == {i: ("done" if i == NESTED_JPEG else "skipped") for i in DENOISE_IDS}
    assert second["counts"] == {"done": 1, "failed": 0, "skipped": len(DENOISE_IDS) - 1}
    out = denoise_run["out"]
    assert (out / restoration.output_rel(NESTED_JPEG)).read_bytes() == denoise_run["nested_bytes"]  # same result
    assert _files(out) == denoise_run["files1"]
    entries = _entries(out)
    assert entries[NESTED_JPEG]["status"] == "done"
    assert entries["strip 3x700.png"]["status"] in ("done", "skipped")


def test_denoise_premultiplied_tiff_alpha_is_read_as_straight_and_written_so(denoise_run):
    from imagingflows.tasks.image_io import unpremultiply

    src = denoise_run["inputs"]["premult.tif"]
    entry = denoise_run["run1"]["items"]["premult.tif"]
    assert "associated (premultiplied) alpha converted to straight alpha" in entry["notes"]
    read = read_image(denoise_run["src"] / "premult.tif").array
    np.testing.assert_array_equal(read, unpremultiply(src))
    assert np.all(read[..., :3][src[..., 3] == 0] == 0)  # nothing to recover where alpha is 0
    out = read_image(denoise_run["out"] / "premult.tif")
    assert out.array.shape == src.shape
    np.testing.assert_array_equal(out.alpha, src[..., 3])
    with tifffile.TiffFile(denoise_run["out"] / "premult.tif") as tif:
        # straight colour in the file, and the file says so (ExtraSamples = 2, unassociated alpha)
        assert tuple(int(e) for e in tif.pages[0].extrasamples) == (2,)


# ----------------------------------------------------------------------------- discovery edge cases

def test_symlink_loop_in_the_input_lists_each_image_once(tmp_path):
    src = tmp_path / "in"
    _pil(src / "a.png", _u8((2, 2, 3), 30))
    _pil(src / "sub" / "b.png", _u8((2, 2, 3), 31))
    (src / "sub" / "up").symlink_to("..", target_is_directory=True)  # sub/up -> in (a loop)
    items, errors = restoration.discover(src, {})
    assert errors == []
    assert [i.id for i in items] == ["a.png", "sub/b.png"]


@pytest.fixture(scope="module")
def collision_run(weights, tmp_path_factory):
    """An input folder with a subfolder named ``previews`` whose file name equals the preview name of another image."""
    src = tmp_path_factory.mktemp("edge_collide") / "in"
    _pil(src / "a.png", _u8((8, 8, 3), 40))
    _pil(src / "previews" / "a.png.png", _u8((6, 10, 3), 41))  # its output path = the preview path of a.png
    out = src.parent / "out"
    result = restore(src, out, task="denoise", weights=str(weights["nafnet"]), device="cpu", precision="fp32")
    return src, out, result


def test_an_input_named_like_a_preview_never_overwrites_it(collision_run):
    src, out, result = collision_run
    entries = _entries(out)
    assert entries["a.png"]["status"] == "done" and entries["previews/a.png.png"]["status"] == "failed"
    assert "would overwrite the output of a.png" in entries["previews/a.png.png"]["error"]
    written: list[str] = []
    for entry in entries.values():
        if entry["status"] == "done":
            written += [entry["outputs"]["image"], *entry["outputs"]["previews"]]
    assert len(written) == len(set(written)), sorted(written)  # no file claimed by two items
    if entries["previews/a.png.png"]["status"] == "done":
        assert read_image(out / "previews" / "a.png.png").array.shape == (6, 10, 3)


def test_output_folder_inside_the_input_is_never_taken_as_input(weights, tmp_path):
    src = tmp_path / "in"
    _pil(src / "a.png", _u8((6, 6, 3), 50))
    _pil(src / "deep" / "b.jpg", _u8((5, 7, 3), 51), quality=95)
    out = src / "restored"  # -o inside -i, as in `-i photos -o photos/restored`
    opts = {"task": "denoise", "weights": str(weights["nafnet"]), "device": "cpu", "precision": "fp32"}
    assert restore(src, out, **opts)["outcomes"] == {"a.png": "done", "deep/b.jpg": "done"}
    again = restore(src, out, resume=True, **opts)
    assert again["outcomes"] == {"a.png": "skipped", "deep/b.jpg": "skipped"}  # restored/ and its previews skipped
    assert _files(out) == {"a.png", "deep/b.png", "previews/a.png.png", "previews/deep/b.jpg.png",
                           "report.html", "report.md", "run.json", "run.log"}


# ----------------------------------------------------------------------------- SR run

@pytest.fixture(scope="module")
def sr_run(weights, tmp_path_factory):
    src = tmp_path_factory.mktemp("edge_sr") / "in"
    inputs: dict = {}
    for rel, shape, seed in (("row1x5.png", (1, 5, 3), 21), ("col6x1.png", (6, 1, 1), 22),
                             ("px7x3.png", (7, 3, 3), 23), ("strip 3x700.png", (3, 700, 3), 24)):
        inputs[rel] = _u8(shape, seed)
        _pil(src / rel, inputs[rel])
    inputs["la16.png"] = _u16((9, 7, 2), 25)
    _png16(src / "la16.png", inputs["la16.png"])
    inputs["la16.tif"] = _u16((5, 11, 2), 26)
    _tif(src / "la16.tif", inputs["la16.tif"])
    pal = _palette_with_alpha(6, 10, 27)
    pal.save(src / "palette_t.png")
    inputs["palette_t.png"] = np.asarray(pal.convert("RGBA"))
    inputs["exif8.jpg"] = _exif_jpeg(src / "exif8.jpg", _u8((5, 9, 3), 28), 8)
    out = src.parent / "out"
    result = restore(src, out, task="sr", weights=str(weights["hat_x2"]), **SR_OPTS)
    return {"src": src, "out": out, "inputs": inputs, "result": result, "items": _entries(out)}


def test_sr_all_done(sr_run):
    assert {k: v["status"] for k, v in sr_run["items"].items()} == {k: "done" for k in sr_run["inputs"]}, \
        {k: v.get("error") for k, v in sr_run["items"].items() if v.get("error")}


@pytest.mark.parametrize("rel, shape", [("row1x5.png", (2, 10, 3)), ("col6x1.png", (12, 2, 1)),
                                        ("px7x3.png", (14, 6, 3)), ("strip 3x700.png", (6, 1400, 3)),
                                        ("exif8.png", (18, 10, 3))])
def test_sr_smaller_than_window_and_extreme_aspect_are_exactly_twice(sr_run, rel, shape):
    out = read_image(sr_run["out"] / rel)
    assert out.array.shape == shape and out.array.dtype == np.uint8
    prev = read_image(sr_run["out"] / "previews" / f"{Path(rel).stem}{'.jpg' if rel == 'exif8.png' else '.png'}.png")
    assert prev.array.ndim == 3 and prev.array.shape[0] >= 192  # tiny crops are enlarged


def test_sr_strip_tiled_on_the_window_grid(sr_run):
    strip = sr_run["items"]["strip 3x700.png"]
    assert (strip["inference"]["whole"], strip["inference"]["tiles"]) == (False, 87)
    assert strip["summary"]["size_out"] == "1400x6"
    assert sr_run["items"]["exif8.jpg"]["summary"]["size_in"] == "5x9"  # upright: stored 9 x 5, orientation 8


@pytest.mark.parametrize("rel", ["la16.png", "la16.tif", "palette_t.png"])
def test_sr_alpha_is_upscaled_bicubic_bit_depth_kept(sr_run, rel):
    src = sr_run["inputs"][rel]
    out = read_image(sr_run["out"] / rel)
    h, w, c = src.shape
    assert out.array.shape == (2 * h, 2 * w, c) and out.array.dtype == src.dtype
    np.testing.assert_array_equal(out.alpha, bicubic_reference(np.ascontiguousarray(src[..., -1]), 2))
    notes = sr_run["items"][rel]["notes"]
    assert "alpha upscaled x2 separately (bicubic, a = -0.5)" in notes
    if rel == "palette_t.png":
        assert "palette image converted to RGBA" in notes
        assert {0, 255} <= set(np.unique(out.alpha))  # fully transparent / opaque areas survive
    else:
        assert sr_run["items"][rel]["summary"]["bit_depth"] == 16 and np.any(out.alpha % 257 != 0)
