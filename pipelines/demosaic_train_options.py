"""The options of ``run-flow train demosaic`` (our JDD network), declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from imagingflows.pipelines.options import TrainOptions, option


class DemosaicTrain(TrainOptions):
    data: Path | None = option(None, "Clean RGB images (PNG/TIFF/JPEG); mosaics and noise are made on the fly.",
                               output=True)
    val_data: Path | None = option(None, "Held-out clean images for validation (instead of a --val-fraction "
                                         "share of --data).", output=True)
    noise: str = option("0..0.06", "Noise std on the [0, 1] mosaic: one level, or a range A..B drawn per crop "
                                   "(one network for every level; the network is told the level).",
                        metavar="STD|A..B", output=True)
    noise_model: Literal["gaussian", "poisson-gaussian"] = option(
        "gaussian", "gaussian: one std per crop; poisson-gaussian: variance a x + b, the std at mid-grey drawn "
                    "from --noise and split at random between shot and read noise.", output=True)
    patterns: str = option("RGGB,BGGR,GRBG,GBRG", "Bayer patterns the crops are mosaicked with (comma list).",
                           output=True)
    linear_share: float = option(0.2, "Share of crops converted to linear light and darkened (as camera RAW "
                                      "data reach the network).", unit="fraction", ge=0, le=1, output=True)
    patch: int = option(64, "Training crop side (a multiple of 4).", unit="pixels", ge=16, output=True)
    batch_size: int = option(16, "Crops per optimiser step.", unit="crops", ge=1, output=True)
    val_crop: int = option(192, "Side of the centre crop of each held-out image that is scored.", unit="pixels",
                           ge=32, output=True)

    @field_validator("noise", mode="before")
    @classmethod
    def _noise(cls, value):
        from imagingflows.pipelines.demosaic_train import parse_noise

        parse_noise(value)
        return str(value)

    @field_validator("patterns", mode="before")
    @classmethod
    def _patterns(cls, value):
        from imagingflows.pipelines.demosaic_train import parse_patterns

        return ",".join(parse_patterns(value))

    @model_validator(mode="after")
    def _data(self):
        if self.data is None:
            raise ValueError("give --data: a folder of clean RGB images")
        if self.patch % 4:
            raise ValueError(f"--patch must be a multiple of 4, got {self.patch}")
        return self
