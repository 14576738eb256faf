"""Restoration metrics: PSNR and SSIM in the BasicSR recipe, computed with scikit-image.

The recipe is the one NAFNet, HAT and most restoration papers report, i.e. the numpy path of
BasicSR 1.4.2 (``basicsr/metrics/psnr_ssim.py``: ``calculate_psnr`` / ``calculate_ssim``):

* **8-bit.** Model outputs are rounded to 8 bit first (:func:`to_uint8`: clip to [0, 1], ``* 255``,
  round half to even, as BasicSR's ``tensor2img``). Metrics run on the 0-255 scale, ``data_range=255``.
* **Crop.** ``crop_border`` pixels are removed on every side of both images before anything else
  (``crop_border=0`` removes nothing; BasicSR guards ``x[0:-0]`` the same way).
* **Y channel** (``y_channel=True``, colour images only): BT.601 studio-swing luma on the 0-255 scale,
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` with R, G, B in 0..255, so Y lies in [16, 235].
  BasicSR's ``bgr2ycbcr`` is fed **BGR** arrays and puts 24.966 on channel 0; we hold **RGB**, so the
  weights here are in R, G, B order. Y is **not** rounded (MATLAB's ``rgb2ycbcr`` on uint8 would round)
  and keeps ``data_range=255`` (not 219). It is computed in float64; BasicSR passes it through float32,
  which moves PSNR-Y by < 1e-6 dB and SSIM-Y by < 1e-8 (``y_float32=True`` reproduces BasicSR bit for bit).
  For a gray image ``y_channel`` changes nothing, as in BasicSR.
* **PSNR**: one MSE over all pixels *and* channels, ``10 log10(255^2 / mse)``; ``inf`` for identical images.
* **SSIM**: Wang et al. with an 11x11 Gaussian window (sigma 1.5, sum 1), K1 = 0.01, K2 = 0.03,
  ``data_range=255``, population (biased) variances, mean over the *valid* part of the SSIM map only
  (5 more pixels left out on every side), computed per channel and averaged for colour. BasicSR does this
  with ``cv2.filter2D(...)[5:-5, 5:-5]``; scikit-image reproduces it with ``gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255`` (truncate 3.5 -> radius 5 -> 11 taps, and
  skimage crops ``(win_size - 1) // 2 = 5`` pixels from the map before the mean). Its defaults (7x7 uniform
  window, sample covariance) are a different metric.

Matched against golden values made by BasicSR itself: ``tests/data/parity_metrics/`` (see its README).

**16-bit images** keep their precision: a uint16 array is compared on the same 0-255 scale as 8-bit data
(``x * 255 / 65535``, float64, not rounded to 8 bit), which is the same as comparing the native values with
``data_range=65535`` (PSNR and SSIM are invariant to scaling both images and the data range together).
A float output compared against a uint16 reference is rounded to 16 bit, not 8. Both images must have
the same bit depth.

Inputs are ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB arrays: uint8, uint16, or float on the [0, 1]
scale (model outputs; rounded as above). Drop alpha before scoring.
"""

from __future__ import annotations

import numpy as np

from imagingflows.tasks.image_io import quantize

#: BT.601 luma weights for R, G, B (values 0..255 / 255), offset 16: Y in [16, 235] on the 0-255 scale.
BT601_Y_WEIGHTS_RGB = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0

#: SSIM settings of the BasicSR recipe, as scikit-image arguments.
SSIM_KWARGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03)
SSIM_WINDOW = 11  # what skimage derives from sigma 1.5 and truncate 3.5: 2 * int(3.5 * 1.5 + 0.5) + 1

#: task -> (Y channel?, crop_border is the scale?)
RECIPES = {"denoise": (False, False), "deblur": (False, False), "sr": (True, True)}


def to_uint8(x) -> np.ndarray:
    """Float image on [0, 1] -> uint8 the BasicSR way: clip, ``* 255`` in float32, round half to even.

    Layout is kept. This is what BasicSR's ``tensor2img`` does to a model output before its metrics.
    """
    return quantize(x, 8)


def rgb_to_y(rgb, float32: bool = False) -> np.ndarray:
    """BT.601 Y (studio swing, [16, 235]) of an RGB image on the 0-255 scale, as float64, not rounded.

    ``rgb`` is ``(H, W, 3)`` in **R, G, B** order with values 0..255 (uint8 or float). ``float32=True``
    repeats BasicSR's ``to_y_channel`` float32 steps exactly (for parity checks); the default is float64.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_y: expected (H, W, 3) RGB, found shape {rgb.shape}")
    if float32:  # BasicSR: x.astype(float32) / 255 -> dot with float64 weights + 16 -> / 255 -> float32 -> * 255
        x = rgb.astype(np.float32) / np.float32(255.0)
        y = np.dot(x, np.array(BT601_Y_WEIGHTS_RGB)) + BT601_Y_OFFSET
        return ((y / 255.0).astype(np.float32) * np.float32(255.0)).astype(np.float64)
    x = rgb.astype(np.float64)
    wr, wg, wb = BT601_Y_WEIGHTS_RGB
    return BT601_Y_OFFSET + (wr * x[..., 0] + wg * x[..., 1] + wb * x[..., 2]) / 255.0


def _depth_of(x: np.ndarray) -> int | None:
    if x.dtype == np.uint8:
        return 8
    if x.dtype == np.uint16:
        return 16
    if np.issubdtype(x.dtype, np.floating):
        return None
    raise ValueError(f"expected uint8, uint16 or float [0, 1] images, found dtype {x.dtype}")


def _check_float(x: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    if x.size and (x.max() > 2.0 or x.min() < -1.0):
        raise ValueError(
            f"{name}: float images must be on the [0, 1] scale (found {x.min():.4g}..{x.max():.4g}); "
            "pass uint8/uint16 arrays for 0-255 or 0-65535 data"
        )


def _prepare(img, ref) -> tuple[np.ndarray, np.ndarray, int]:
    """Both images as float64 on the 0-255 scale, ``(H, W)`` or ``(H, W, 3)``, plus the bit depth used."""
    arrays = []
    for name, x in (("img", img), ("ref", ref)):
        x = np.asarray(x)
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)):
            raise ValueError(f"{name}: expected an (H, W) gray or (H, W, 3) RGB image, found shape {x.shape}")
        arrays.append(x)
    img, ref = arrays
    if img.shape != ref.shape:
        raise ValueError(f"img and ref differ in shape: {img.shape} vs {ref.shape}")
    d_img, d_ref = _depth_of(img), _depth_of(ref)
    if d_img is not None and d_ref is not None and d_img != d_ref:
        raise ValueError(f"img is {d_img}-bit but ref is {d_ref}-bit; compare images of one bit depth")
    depth = d_img or d_ref or 8
    out = []
    for name, x, d in (("img", img, d_img), ("ref", ref, d_ref)):
        if d is None:  # a float output: round it to the comparison's bit depth first
            _check_float(x, name)
            x = quantize(x, depth)
        x = x.astype(np.float64)
        if depth == 16:
            x *= 255.0 / 65535.0
        out.append(x)
    return out[0], out[1], depth


def _crop(x: np.ndarray, b: int) -> np.ndarray:
    return x if b == 0 else x[b:-b, b:-b, ...]


def _metric_inputs(img, ref, crop_border: int, y_channel: bool, y_float32: bool) -> tuple[np.ndarray, np.ndarray]:
    crop_border = int(crop_border)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, found {crop_border}")
    a, b, _ = _prepare(img, ref)
    h, w = a.shape[:2]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    a, b = _crop(a, crop_border), _crop(b, crop_border)  # crop first, as BasicSR
    if y_channel and a.ndim == 3:
        a, b = rgb_to_y(a, y_float32), rgb_to_y(b, y_float32)
    return a, b


def psnr(img, ref, crop_border: int = 0, y_channel: bool = False, *, y_float32: bool = False) -> float:
    """PSNR in dB, BasicSR recipe (see the module docstring); ``inf`` when the images are identical."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _metric_inputs(img, ref, crop_border, y_channel, y_float32)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(b, a, data_range=255.0))


def ssim(img, ref, crop_border: int = 0, y_channel: bool = False, *, y_float32: bool = False) -> float:
    """SSIM, BasicSR recipe: 11x11 Gaussian window (sigma 1.5), valid region only, channel mean."""
    from skimage.metrics import structural_similarity

    a, b = _metric_inputs(img, ref, crop_border, y_channel, y_float32)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after crop_border={crop_border}, "
            f"found {a.shape[0]}x{a.shape[1]}"
        )
    return float(
        structural_similarity(
            b, a, data_range=255.0, channel_axis=-1 if a.ndim == 3 else None, **SSIM_KWARGS
        )
    )


def recipe_label(task: str, scale: int = 1, channels: int = 3, bit_depth: int = 8) -> str:
    """Human label of the metric recipe :func:`restore_metrics` uses, e.g. ``BasicSR: Y (BT.601, 16-235), crop 2``."""
    y_channel, crop = _recipe(task, scale)
    if channels == 1:
        space = "gray"
    else:
        space = "Y (BT.601, 16-235)" if y_channel else "RGB"
    label = f"BasicSR: {space}, crop {crop}"
    if bit_depth == 16:
        label += ", 16-bit (scaled to 0-255, not rounded to 8 bit)"
    return label


def _recipe(task: str, scale: int) -> tuple[bool, int]:
    if task not in RECIPES:
        raise ValueError(f"unknown restoration task {task!r}; expected one of {sorted(RECIPES)}")
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, found {scale}")
    y_channel, crop_is_scale = RECIPES[task]
    return y_channel, scale if crop_is_scale else 0


def restore_metrics(pred, ref, task: str, scale: int = 1) -> dict:
    """PSNR/SSIM of one restored image against its reference, with the recipe the papers use for ``task``.

    ``denoise`` and ``deblur``: RGB (or gray), no crop. ``sr``: Y channel, ``crop_border = scale``.
    ``pred`` and ``ref`` are ``(H, W[, 1 or 3])`` uint8/uint16 arrays (or a float [0, 1] ``pred``, which
    is rounded to the reference's bit depth). Returns ``{"psnr", "ssim", "recipe"}``; ``psnr`` is ``inf``
    for identical images.
    """
    y_channel, crop = _recipe(task, scale)
    ref_arr = np.asarray(ref)
    channels = 1 if ref_arr.ndim == 2 or ref_arr.shape[-1] == 1 else ref_arr.shape[-1]
    depth = _depth_of(ref_arr) or _depth_of(np.asarray(pred)) or 8
    return {
        "psnr": psnr(pred, ref, crop, y_channel),
        "ssim": ssim(pred, ref, crop, y_channel),
        "recipe": recipe_label(task, scale, channels, depth),
    }
