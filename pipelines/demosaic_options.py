"""The options of ``run-flow demosaic``, declared once."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

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

    @model_validator(mode="after")
    def _levels(self):
        if self.black is not None and self.white is not None and self.white <= self.black:
            raise ValueError(f"--white ({self.white:g}) must be above --black ({self.black:g})")
        return self
