"""The options of ``run-flow restore`` and ``run-flow train restore``, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from imagingflows.pipelines.options import ModelOptions, TrainOptions, option

Task = Literal["denoise", "deblur", "sr"]


class RestoreRun(ModelOptions):
    task: Task = option(..., "denoise, deblur (NAFNet) or sr (HAT super-resolution).", output=True)
    scale: int | None = option(None, "Super-resolution factor. Default: the checkpoint's (2 for the demo "
                                     "weights).", unit="x", ge=1, output=True)
    tile: int = option(512, "Tile side, context included.", unit="input pixels", ge=1, output=True)
    overlap: int = option(32, "Context on each side of a tile's kept centre.", unit="input pixels", ge=0,
                          output=True)
    nafnet_local: tuple[int, int] | None = option(
        None, "NAFNetLocal: the training patch size (official GoPro/REDS deblur files get 256 256 by default); "
              "0 0 for plain NAFNet (global pooling).", unit="pixels", metavar="H W", output=True)
    pool_passes: int = option(1, "NAFNet in tiles: passes that first measure whole-image channel means (each "
                                 "costs one more forward per tile; 0: each tile pools over itself).",
                              unit="passes", ge=0, output=True)
    whole_max_pixels: int | None = option(
        None, "NAFNet: run the whole image in one forward up to this size (default: what fits about 2 GiB for "
              "the model's width; 0: always tiles).", unit="pixels", ge=0, output=True)
    white_level: int | None = option(
        None, "The largest value the data can take (e.g. 1023 for 10-bit data in 16-bit files). Default: from "
              "the file (PNG sBIT, TIFF tags), else the container's maximum.", unit="counts", ge=1, le=65535,
        output=True)
    collapse_check: bool = option(True, "Fail an item whose output collapsed (blank, flat or far darker than "
                                        "its input).", output=False)

    @model_validator(mode="after")
    def _scale_is_for_sr(self):
        if self.task != "sr" and self.scale not in (None, 1):
            raise ValueError(f"--scale {self.scale} applies to --task sr only; {self.task} keeps the image size")
        return self


class RestoreTrain(TrainOptions):
    data: Path | None = option(None, "Clean images; degraded pairs are made on the fly.", output=True)
    input: Path | None = option(None, "Degraded images, paired by name with --reference (instead of --data).",
                                output=True)
    reference: Path | None = option(None, "Clean images matching --input by name.", output=True)
    task: Task = option("denoise", "denoise, deblur or sr.", output=True)
    scale: int = option(2, "Super-resolution factor (--task sr).", unit="x", ge=1, output=True)
    sigma: str = option("25", "Denoise: Gaussian noise sigma, or a range A-B drawn per crop (a blind "
                              "denoiser, e.g. 0-50).", unit="0-255 scale", metavar="SIGMA|A-B", output=True)
    photometric: bool = option(False, "Random brightness, contrast and gamma per crop (robust to dark images).",
                               output=True)
    patch: int = option(64, "Training crop side.", unit="output pixels", ge=8, output=True)
    loss: Literal["psnr", "charbonnier", "l1"] = option("psnr", "Training loss.", output=True)

    @field_validator("sigma", mode="before")
    @classmethod
    def _sigma(cls, value):
        from imagingflows.pipelines.restore_train import parse_sigma

        parse_sigma(value)  # raises ValueError with the reason
        return str(value)

    @model_validator(mode="after")
    def _some_data(self):
        if self.data is None and not (self.input and self.reference):
            raise ValueError("give --data clean/ (pairs made on the fly) or --input degraded/ --reference clean/")
        return self
