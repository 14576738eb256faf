"""2D tiled inference (models/tiling.py): exact where it should be, close for real networks, bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn

from imagingflows.models import hat, nafnet
from imagingflows.models.tiling import TileRun, predict_tiles, tile_spans


def _pointwise(cin: int = 3, cout: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, 1).eval()


def _tiny_hat() -> nn.Module:
    torch.manual_seed(0)
    tiny = {"embed_dim": 24, "depths": [2], "num_heads": [2], "window_size": 8, "squeeze_factor": 8, "upscale": 2}
    return hat.build(**{**hat.SPEC.default_config, **tiny}).eval()


def _tiny_nafnet() -> nn.Module:
    """Random tiny NAFNet; beta/gamma (zero at init, which makes every block the identity) randomised too."""
    torch.manual_seed(0)
    tiny = {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}
    net = nafnet.build(**{**nafnet.SPEC.default_config, **tiny}).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)
    return net


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


def _whole(net: nn.Module, image: np.ndarray) -> np.ndarray:
    """Reference: one plain forward of the whole float image, ``(H*s, W*s, C)`` float32."""
    with torch.inference_mode():
        y = net(torch.from_numpy(image).permute(2, 0, 1)[None])
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("n,tile,overlap,align", [(1, 8, 2, 1), (8, 8, 2, 1), (9, 8, 2, 1), (100, 48, 16, 1),
                                                  (97, 50, 15, 8), (2048, 512, 32, 16), (300, 64, 0, 1)])
def test_spans_partition_the_axis_with_context_and_aligned_origins(n, tile, overlap, align):
    spans = tile_spans(n, tile, overlap, align)
    assert spans[0][2] == 0 and spans[-1][3] == n
    for (lo, hi, klo, khi), nxt in zip(spans, spans[1:] + [None]):
        assert 0 <= lo <= klo < khi <= hi <= n and hi - lo <= tile and lo % align == 0
        assert klo - lo >= overlap or lo == 0  # context on the left, or the image border
        assert hi - khi >= overlap or hi == n  # context on the right, or the image border
        if nxt is not None:
            assert nxt[2] == khi  # kept ranges are contiguous and disjoint
    assert len(spans) == 1 or n > tile


def test_pointwise_net_tiled_equals_whole_exactly():
    net, img = _pointwise(3, 5), _image(70, 53)
    y, run = predict_tiles(net, img, grid=1, tile=16, overlap=4)
    assert run.tiles == 8 * 6 and not run.whole
    assert y.shape == (70, 53, 5) and y.dtype == np.float32
    np.testing.assert_array_equal(y, _whole(net, img))


def test_local_net_is_exact_when_receptive_field_fits_in_overlap():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).eval()  # radius 2
    img = _image(41, 37)
    y, _ = predict_tiles(net, img, grid=1, tile=12, overlap=2)
    np.testing.assert_allclose(y, _whole(net, img), rtol=0, atol=1e-6)


def test_hat_x2_tiled_close_to_whole():
    """Tiny random HAT x2 on 96x80 at tile 48 / overlap 16 (8 kept pixels of margin beyond a window).

    Measured max |tiled - whole|: about 4e-7 here (2.6e-6 on a smooth image; 3e-6 at tile 64 /
    overlap 16 and 9e-7 at tile 128 / overlap 32 on 256x256). What differs is only HAT's
    channel attention, a mean over the tile instead of the image, damped by conv_scale 0.01;
    1e-4 leaves ~25x headroom over float32 noise and stays 10x under the 1e-3 goal.
    """
    net, img = _tiny_hat(), _image(96, 80)
    y, run = predict_tiles(net, img, grid=8, scale=2, tile=48, overlap=16)
    diff = float(np.abs(y - _whole(net, img)).max())
    print(f"HAT x2 tiny, 96x80, tile 48 / overlap 16, {run.tiles} tiles: max |tiled - whole| = {diff:.2e}")
    assert y.shape == (192, 160, 3) and run.tiles == 12
    assert diff < 1e-4


def test_off_grid_tiles_would_change_hat_so_origins_are_aligned():
    net, img = _tiny_hat(), _image(96, 80)
    whole = _whole(net, img)
    aligned, _ = predict_tiles(net, img, grid=8, scale=2, tile=50, overlap=15)  # step 20 -> 16, origins on the 8-grid
    off_grid, _ = predict_tiles(net, img, grid=8, scale=2, tile=50, overlap=15, align=1)  # origins 20, 40, ...
    assert np.abs(aligned - whole).max() < 1e-4
    assert np.abs(off_grid - whole).max() > 1e-2


def test_nafnet_tiled_psnr_and_whole_switch():
    net, img = _tiny_nafnet(), _image(64, 64)
    whole = _whole(net, img)
    y, run = predict_tiles(net, img, grid=4, tile=32, overlap=8)
    psnr = 10 * np.log10(1 / np.mean((y.astype(np.float64) - whole) ** 2))
    print(f"NAFNet tiny, 64x64, tile 32 / overlap 8, {run.tiles} tiles: PSNR tiled vs whole = {psnr:.1f} dB")
    assert run.tiles == 9 and not run.whole and run.passes == 2 and psnr > 50  # global pooling: close, not exact
    y, run = predict_tiles(net, img, grid=4, tile=32, overlap=8, whole_max_pixels=64 * 64)
    assert run.whole and run.tiles == 1
    np.testing.assert_array_equal(y, whole)
    _, run = predict_tiles(net, img, grid=4, tile=32, overlap=8, whole_max_pixels=64 * 64 - 1)
    assert not run.whole and run.tiles == 9


def _half_dark(h: int, w: int) -> np.ndarray:
    """Noise whose left part is dark and right part bright: tiles see very different channel means."""
    img = _image(h, w)
    img[:, : w // 3] *= 0.1
    img[:, w // 3:] = 0.7 + 0.3 * img[:, w // 3:]
    return img


def test_nafnet_measured_pool_means_are_the_whole_image_means():
    """The first pool's input depends on 5 x 5 pixels only, so with overlap >= 4 its measured
    whole-image mean is exact: this checks that tile cores partition the image, zero padding included."""
    net, img = _tiny_nafnet(), _half_dark(61, 70)  # not a multiple of the pad size 4: the net pads
    first = net.encoders[0][0].sca[0]
    seen: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    _whole(net, img)
    whole_mean = seen[-1].flatten()
    predict_tiles(net, img, grid=4, tile=24, overlap=4)
    hook.remove()
    tiled_mean = seen[-1].flatten()  # the last tile of the final pass uses the measured mean
    local_mean = seen[len(seen) // 2].flatten()  # a tile of the measuring pass: its own mean
    np.testing.assert_allclose(tiled_mean, whole_mean, rtol=0, atol=1e-5)
    assert float((local_mean - whole_mean).abs().max()) > 1e-2


def test_nafnet_pool_passes_bring_tiles_to_the_whole_image_output():
    net, img = _tiny_nafnet(), _half_dark(96, 96)
    whole = _whole(net, img)
    psnr = {}
    for passes in (0, 1, 2):
        y, run = predict_tiles(net, img, grid=4, tile=32, overlap=8, pool_passes=passes)
        assert run.passes == passes + 1 and run.tiles == 25
        psnr[passes] = 10 * np.log10(1 / np.mean((y.astype(np.float64) - whole) ** 2))
    print(f"NAFNet tiny, half-dark 96x96, tile 32 / overlap 8: PSNR tiled vs whole by pool_passes {psnr}")
    assert psnr[1] > psnr[0] + 10 and psnr[2] > psnr[1] - 0.5 and psnr[1] > 70
    y, run = predict_tiles(net, img, grid=4, tile=32, overlap=8, pool_passes=1)
    again, _ = predict_tiles(net, img, grid=4, tile=32, overlap=8, pool_passes=1)
    np.testing.assert_array_equal(y, again)  # no state is left in the pools between calls
    with torch.inference_mode():
        plain = net(torch.from_numpy(img).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(plain, whole)  # the net behaves as before after tiling


def test_pool_means_are_kept_per_image_of_a_batch():
    """The restore pipeline runs an RGB image through a gray model as a batch of 3 planes."""
    torch.manual_seed(0)
    tiny = {"img_channel": 1, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}
    gray = nafnet.build(**{**nafnet.SPEC.default_config, **tiny}).eval()
    with torch.no_grad():
        for name, p in gray.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)

    class PlaneByPlane(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = gray

        def forward(self, x):
            return self.inner(x.reshape(3, 1, *x.shape[-2:])).reshape(1, 3, *x.shape[-2:])

    img = _half_dark(80, 80) * np.array([1.0, 0.5, 0.1], dtype=np.float32)  # planes with very different means
    y, run = predict_tiles(PlaneByPlane(), img, grid=4, tile=32, overlap=8)
    psnr = 10 * np.log10(1 / np.mean((y.astype(np.float64) - _whole(PlaneByPlane(), img)) ** 2))
    assert run.passes == 2 and psnr > 70


def test_threads_sharing_one_net_keep_their_own_pool_means():
    """The thread runner shares one cached model between items: tiled calls must not mix their means."""
    from concurrent.futures import ThreadPoolExecutor

    net = _tiny_nafnet()
    images = [_half_dark(64, 80), _image(80, 64, seed=3), _image(64, 64, seed=4) * 0.2]
    alone = [predict_tiles(net, img, grid=4, tile=32, overlap=8)[0] for img in images]
    whole_first = _whole(net, images[2])
    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            results = list(pool.map(lambda img: predict_tiles(net, img, grid=4, tile=32, overlap=8)[0], images))
            for got, want in zip(results, alone):
                np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_whole(net, images[2]), whole_first)  # plain forwards are untouched


def test_tiled_call_inside_another_keeps_the_outer_means():
    net, img = _tiny_nafnet(), _half_dark(64, 80)
    want, _ = predict_tiles(net, img, grid=4, tile=32, overlap=8)
    first, inner_calls = net.encoders[0][0].sca[0], []

    def inner_call(*_):  # once, in the middle of the outer measuring pass
        if not inner_calls:
            inner_calls.append(None)
            inner_calls[0] = predict_tiles(net, _image(40, 40), grid=4, tile=24, overlap=4)[1]

    hook = first.register_forward_hook(inner_call)
    try:
        got, _ = predict_tiles(net, img, grid=4, tile=32, overlap=8)
    finally:
        hook.remove()
    assert inner_calls[0].passes == 2
    np.testing.assert_array_equal(got, want)


def test_the_specs_state_the_grid_their_networks_use():
    """The tiler takes the grid from the ModelSpec, never from the network: the two must agree."""
    assert nafnet.SPEC.grid_of({"enc_blk_nums": [1, 1]}) == _tiny_nafnet().padder_size == 4
    assert hat.SPEC.grid_of({"window_size": 8}) == _tiny_hat().window_size == 8
    assert nafnet.SPEC.whole_image_pooling and not hat.SPEC.whole_image_pooling
    assert hat.SPEC.scale_of({"upscale": 3}) == 3 and nafnet.SPEC.scale_of({}) == 1
    assert nafnet.SPEC.channels_of({"img_channel": 1}) == 1 and hat.SPEC.channels_of({"in_chans": 3}) == 3


def test_pool_passes_need_the_network_grid():
    from imagingflows.models.global_pool import GlobalAvgPool2d

    class Attention(nn.Module):  # pools globally and pads nothing: grid 1 measures the exact image mean
        def __init__(self):
            super().__init__()
            self.pool = GlobalAvgPool2d()

        def forward(self, x):
            return x * self.pool(x)

    img = _image(64, 64)
    y, run = predict_tiles(Attention(), img, grid=1, tile=32, overlap=8)
    assert run.passes == 2 and run.tiles > 1
    np.testing.assert_allclose(y, _whole(Attention(), img), rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="grid"):
        predict_tiles(_tiny_nafnet(), img, tile=32, overlap=8)  # never guessed
    with pytest.raises(ValueError, match="align=2 is not a multiple"):
        predict_tiles(_tiny_nafnet(), _image(64, 64), grid=4, tile=32, overlap=8, align=2)
    y, run = predict_tiles(_tiny_nafnet(), _image(64, 64), grid=4, tile=32, overlap=8, align=2, pool_passes=0)
    assert run.passes == 1 and y.shape == (64, 64, 3)


def test_pool_passes_only_apply_to_networks_with_global_pools():
    y, run = predict_tiles(_tiny_hat(), _image(96, 80), grid=8, scale=2, tile=48, overlap=16, pool_passes=1)
    assert run.passes == 1 and run.tiles > 1
    with pytest.raises(ValueError, match="pool_passes"):
        predict_tiles(_tiny_nafnet(), _image(32, 32), grid=4, tile=16, overlap=4, pool_passes=-1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_images_keep_dtype_and_scale_shape(dtype):
    info = np.iinfo(dtype)
    img = np.random.default_rng(1).integers(0, info.max, (45, 38, 3), dtype=dtype, endpoint=True)
    y, run = predict_tiles(nn.Identity(), img, grid=1, tile=16, overlap=3)
    assert y.dtype == dtype and run.tiles > 1
    np.testing.assert_array_equal(y, img)  # /max, *max, rint: an exact round trip
    y, _ = predict_tiles(nn.Upsample(scale_factor=2, mode="nearest"), img, grid=1, scale=2, tile=16, overlap=3)
    assert y.shape == (90, 76, 3) and y.dtype == dtype
    np.testing.assert_array_equal(y, img.repeat(2, 0).repeat(2, 1))
    y, _ = predict_tiles(nn.Identity(), img, grid=1, tile=16, overlap=3, out_dtype=np.float32)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, img / info.max, rtol=0, atol=1e-7)


def test_integer_output_is_clipped_and_float_output_is_not():
    img = np.array([[[-0.5], [0.25], [1.5]]], dtype=np.float32)  # (1, 3, 1)
    y, _ = predict_tiles(nn.Identity(), img, grid=1, out_dtype=np.uint8)
    assert y.ravel().tolist() == [0, 64, 255]  # rint(0.25 * 255) = rint(63.75)
    y, _ = predict_tiles(nn.Identity(), img, grid=1)
    np.testing.assert_array_equal(y, img)


def test_small_image_is_one_forward_and_run_record_is_json():
    y, run = predict_tiles(_pointwise(), _image(20, 30), grid=1, tile=32, overlap=8, precision="bf16")
    assert run.tiles == 1 and run.whole and run.precision == "bf16" and y.shape == (20, 30, 3)
    record = json.loads(json.dumps(run.as_dict()))
    assert set(record) == {"tiles", "tile", "overlap", "whole", "precision", "passes", "seconds"}
    assert isinstance(run, TileRun)


def test_memory_is_bounded_by_the_tile():
    """2048x2048x3 uint16 (24 MB; a float32 copy would be 48 MB): numpy's peak beyond the output stays tile-sized."""
    img = np.random.default_rng(2).integers(0, 65535, (2048, 2048, 3), dtype=np.uint16)
    tile_bytes = 256 * 256 * 3 * 4  # one float32 tile, 0.75 MB
    tracemalloc.start()
    try:
        y, run = predict_tiles(_pointwise(), img, grid=1, tile=256, overlap=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    extra = peak - y.nbytes
    print(f"2048x2048x3 uint16, {run.tiles} tiles: traced peak {peak / 2**20:.1f} MB, "
          f"beyond the output {extra / 2**20:.2f} MB")
    assert y.dtype == np.uint16 and y.shape == img.shape and run.tiles == 81
    assert extra < 16 * tile_bytes  # 12 MB: well under one whole-image float copy


@pytest.mark.parametrize("kwargs,match", [
    ({"tile": 32, "overlap": 16}, "larger than 2 \\* overlap"),
    ({"tile": 0}, "tile must be"),
    ({"overlap": -1}, "overlap must be"),
    ({"scale": 0}, "scale must be"),
    ({"tile": 2.5}, "tile must be"),
    ({"out_dtype": np.int16}, "out_dtype"),
    ({"whole_max_pixels": -1}, "whole_max_pixels"),
    ({"align": 0}, "align must be"),
    ({"tile": 20, "overlap": 8, "align": 8}, "at least the network's grid"),
    ({"precision": "fp64"}, "precision"),
    ({"precision": "fp16"}, "CUDA"),
    ({"scale": 2}, "is scale=2 right"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_tiles(_pointwise(), _image(40, 40), grid=1, **kwargs)


@pytest.mark.parametrize("image", [np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.int16),
                                   np.zeros((0, 8, 3), np.uint8), [[[0.0]]]])
def test_bad_images_raise_value_error(image):
    with pytest.raises(ValueError, match="image"):
        predict_tiles(_pointwise(), image, grid=1)
