"""The options of ``run-flow classify``, declared once."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from imagingflows.pipelines.options import ModelOptions, option
from imagingflows.pipelines.remote_sensing_options import (
    Bands,
    Crs,
    block_tiles_option,
    check_crs_res,
    crs_option,
    crs_res_option,
)


class ClassifyRun(ModelOptions):
    weights: Path | None = option(None, "Head checkpoint written by `run-flow train classify` (it records its "
                                        "level, classes, bands, tile, res and encoder). Default: the demo head.",
                                  output=False)
    encoder: Path | None = option(None, "Encoder checkpoint. Default: the file the head records, looked up beside "
                                        "the head (its SHA-256 must match).", output=False)
    num_heads: int | None = option(None, "Encoder attention heads, for a width that is not an official size.",
                                   unit="heads", ge=1, output=True)
    bands: Bands | None = option(None, "Bands in the model's order (index or name). Default: the head's.",
                                 metavar="B1,B2,...", output=True)
    tile: int | None = option(None, "Tile side. Default: the head's.", unit="pixels", ge=16, output=True)
    overlap: int | None = option(None, "Overlap of neighbouring tiles, a multiple of the patch size; overlapping "
                                       "predictions are blended. Default: a quarter tile at patch level, 0 at "
                                       "tile level.", unit="pixels", ge=0, output=True)
    nodata: float | None = option(None, "Nodata value of every band, overriding the file's.", unit="data values",
                                  output=True)
    res: float | None = option(None, "Scale-MAE's relative GSD scale. Default: the head's.", unit="relative scale",
                               gt=0, output=True)
    batch_size: int | None = option(None, "Tiles per forward pass. Default: 8 tiles of 224 px, as many pixels in "
                                          "smaller tiles (at most 128 tiles).", unit="tiles", ge=1, output=True)
    min_valid: float = option(0.0, "Skip tiles whose valid share is at most this.", unit="fraction", ge=0, lt=1,
                              output=True)
    probabilities: bool = option(False, "Also write <scene>_probs.tif: class probabilities at patch resolution.",
                                 output=True)
    require_crs: bool = option(False, "Fail a scene that has no CRS.", output=False)
    block_tiles: int = block_tiles_option()
    crs: Crs | None = crs_option()
    crs_res: float | None = crs_res_option()

    _crs_res_needs_crs = model_validator(mode="after")(check_crs_res)
