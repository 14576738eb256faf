"""The options of ``run-flow demosaic``, declared once (reference mode: ``--simulate``, ``--methods``, ``--noise``,
``--border``; see ``pipelines/demosaic_evaluate.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from imagingflows.pipelines.engine_choice import DEFAULT_ENGINE, ENGINE_HELP
from imagingflows.pipelines.options import Engine, Options, option

Pattern = Literal["RGGB", "BGGR", "GRBG", "GBRG"]
Method = Literal["bilinear", "malvar", "menon", "demosaicnet", "jdd"]


class DemosaicRun(Options):
    method: Method = option("menon", "bilinear, malvar (Malvar-He-Cutler 2004), menon (Menon 2007, with its "
                                     "refining step), demosaicnet (Gharbi et al. 2016, the demosaicnet package's "
                                     "Bayer weights) or jdd (our joint demosaick-denoise network: also removes "
                                     "noise; bundled demo weights unless --weights).", output=True)
    weights: Path | None = option(None, "jdd: a checkpoint written by `run-flow train demosaic` (default: the "
                                        "bundled demo weights, models/weights/jdd_demo.pt).", output=False)
    pattern: Pattern | None = option(
        None, "CFA pattern of a mosaic file, named by its physical top-left 2 x 2 block (RGGB = OpenCV's "
              "BayerBG). A mosaic does not say it; required for mosaic inputs.", output=True)
    black: float | None = option(None, "Black level of the mosaic (subtracted). Default: 0.", unit="counts", ge=0,
                                 output=True)
    white: float | None = option(None, "White level (maps to 1.0). Default: the file's declared level (PNG sBIT, "
                                       "TIFF MaxSampleValue), else the container's maximum.", unit="counts", gt=0,
                                 output=True)
    crop_odd: bool = option(False, "Crop one row and/or column of a mosaic with an odd height or width (the "
                                   "bottom row, the right column: the pattern is kept) instead of failing it.",
                            output=True)
    wb: Literal["camera", "daylight", "none"] = option(
        "camera", "RAW files: white balance from the camera's as-shot values, LibRaw's daylight values, or none.",
        output=True)
    linear: bool = option(False, "RAW files: write linear sRGB (no tone curve; a linear-sRGB ICC profile, gamma "
                                 "1.0, embedded) instead of sRGB-encoded values with the sRGB profile embedded.",
                          output=True)
    crop: bool = option(True, "RAW files: cut the result to the default crop the file states (DNG DefaultCropOrigin/"
                              "DefaultCropSize, or the maker's crop LibRaw reports), as raw converters do; the whole "
                              "visible sensor area is still demosaicked, so the margin gives context. --no-crop "
                              "keeps the margins.", output=True)
    format: Literal["tiff", "png"] = option("tiff", "tiff: 16-bit RGB TIFF; png: 8-bit RGB PNG.", output=True)
    tile: int = option(1024, "Tile side: memory is bounded by a tile plus its halo.", unit="pixels", ge=16,
                       output=True)
    device: str = option("cpu", "cpu, cuda or cuda:N.", output=False)
    precision: Literal["fp32", "bf16", "fp16"] = option(
        "fp32", "jdd, demosaicnet: autocast precision. bf16 is 1.3-2.8x faster on CPUs with native bf16 "
                "(AVX512-BF16/AMX; slower elsewhere) at about 54 dB PSNR against fp32, but keeps about 8 "
                "significant bits (16-bit TIFF outputs lose their extra precision); fp16 needs CUDA.",
        output=True)
    engine: Engine = option(DEFAULT_ENGINE, "jdd, demosaicnet: " + ENGINE_HELP, output=False)
    simulate: bool = option(False, "Reference mode: the inputs are clean RGB images (PNG/TIFF/JPEG, 8/16-bit); each "
                                   "is mosaicked with --pattern (default RGGB here), --noise added, and demosaicked "
                                   "by every --methods (`run-flow evaluate demosaic --input` sets it).", output=True)
    methods: str | None = option(None, "Reference mode: comma-separated methods to compare (bilinear, malvar, menon, "
                                       "demosaicnet, learned ones registered later, and LibRaw's rawpy-ahd, rawpy-dht, "
                                       "rawpy-vng, rawpy-aahd, rawpy-ppg, rawpy-dcb, rawpy-linear). Default: every "
                                       "method available here (LibRaw: ahd, dht, vng, aahd).", output=True)
    noise: float | None = option(
        None, "jdd: the noise std of the inputs on the [0, 1] mosaic (default: estimated per image). Reference "
              "mode: the std of Gaussian noise added to each mosaic (seeded from the image's id: every method gets "
              "the same noisy mosaic; default 0); 10/255 = 0.0392.", unit="fraction of full scale", ge=0, output=True)
    border: int = option(4, "Reference mode: pixels cropped from each side before scoring.", unit="pixels", ge=0,
                         output=False)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from imagingflows.pipelines.demosaic_evaluate import check_methods

        return ",".join(check_methods(value))

    @model_validator(mode="after")
    def _levels(self):
        if self.black is not None and self.white is not None and self.white <= self.black:
            raise ValueError(f"--white ({self.white:g}) must be above --black ({self.black:g})")
        if not self.simulate and self.methods is not None:
            raise ValueError("--methods belongs to reference mode (--simulate: clean RGB inputs are "
                             "mosaicked); `run-flow evaluate demosaic --input` sets it")
        if not self.simulate and self.noise is not None and self.method != "jdd":
            raise ValueError(f"--noise tells a denoising method (jdd) the noise level; {self.method} does not "
                             "denoise (in reference mode, --simulate, it is the noise added)")
        if not self.simulate and self.weights is not None and self.method != "jdd":
            raise ValueError(f"--weights is for --method jdd (or reference mode); {self.method} has none")
        return self
