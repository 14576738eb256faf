"""The options of ``run-flow demosaic``, declared once (reference mode: ``--simulate``, ``--methods``, ``--noise``,
``--border``; see ``pipelines/demosaic_evaluate.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from imagingflows.pipelines.options import Options, option

Pattern = Literal["RGGB", "BGGR", "GRBG", "GBRG"]
Method = Literal["bilinear", "malvar", "menon", "demosaicnet"]


class DemosaicRun(Options):
    method: Method = option("menon", "bilinear, malvar (Malvar-He-Cutler 2004), menon (Menon 2007, with its "
                                     "refining step) or demosaicnet (Gharbi et al. 2016, the demosaicnet package's "
                                     "Bayer weights).", output=True)
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
    linear: bool = option(False, "RAW files: write linear sRGB (no tone curve, no ICC profile) instead of "
                                 "sRGB-encoded values with the sRGB profile embedded.", output=True)
    format: Literal["tiff", "png"] = option("tiff", "tiff: 16-bit RGB TIFF; png: 8-bit RGB PNG.", output=True)
    tile: int = option(1024, "Tile side: memory is bounded by a tile plus its halo.", unit="pixels", ge=16,
                       output=True)
    device: str = option("cpu", "cpu, cuda or cuda:N.", output=False)
    simulate: bool = option(False, "Reference mode: the inputs are clean RGB images (PNG/TIFF/JPEG, 8/16-bit); each "
                                   "is mosaicked with --pattern (default RGGB here), --noise added, and demosaicked "
                                   "by every --methods (`run-flow evaluate demosaic --input` sets it).", output=True)
    methods: str | None = option(None, "Reference mode: comma-separated methods to compare (bilinear, malvar, menon, "
                                       "demosaicnet, learned ones registered later, and LibRaw's rawpy-ahd, rawpy-dht, "
                                       "rawpy-vng, rawpy-aahd, rawpy-ppg, rawpy-dcb, rawpy-linear). Default: every "
                                       "method available here (LibRaw: ahd, dht, vng, aahd).", output=True)
    noise: float = option(0.0, "Reference mode: std of Gaussian noise added to the [0, 1] mosaic (seeded from the "
                               "image's id: every method gets the same noisy mosaic); 10/255 = 0.0392.",
                          unit="fraction of full scale", ge=0, output=True)
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
        if not self.simulate and (self.methods is not None or self.noise):
            raise ValueError("--methods and --noise belong to reference mode (--simulate: clean RGB inputs are "
                             "mosaicked); `run-flow evaluate demosaic --input` sets it")
        return self
