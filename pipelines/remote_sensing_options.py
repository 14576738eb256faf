"""The options of ``run-flow embed``, declared once."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, model_validator

from imagingflows.pipelines.options import ModelOptions, option


def _split(value):
    """``"4,3,2"`` or ``"red, green"`` -> a tuple (the CLI gives one string; Python may give a list)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


Numbers = Annotated[tuple[float, ...], BeforeValidator(_split)]
Bands = Annotated[tuple[str, ...], BeforeValidator(lambda v: tuple(str(b) for b in _split(v)))]


def _crs_text(value: str) -> str:
    """A CRS string rasterio accepts, kept as given (stripped); ValueError with the reason otherwise."""
    from imagingflows.tasks.raster_io import parse_crs

    parse_crs(value)
    return value.strip()


Crs = Annotated[str, AfterValidator(_crs_text)]


def crs_option():
    return option(None, "Reproject the scene onto a grid in this CRS (EPSG:4326, EPSG:3857, a WKT or PROJ string), "
                        "read window by window through a warped VRT, bilinear; the collar outside the scene's "
                        "footprint is nodata, and every output is on the warped grid. Default: no reprojection, "
                        "the scene's own grid.", metavar="CRS", output=True)


def crs_res_option():
    return option(None, "Pixel size of the --crs grid, in that CRS's units (metres for UTM or EPSG:3857, degrees "
                        "for EPSG:4326). Default: GDAL's choice, about the scene's own pixel count.",
                  unit="target CRS units", gt=0, output=True)


def check_crs_res(opts):
    if opts.crs_res is not None and opts.crs is None:
        raise ValueError("--crs-res sets the pixel size of the --crs grid: give --crs too")
    return opts


def block_tiles_option():
    return option(1024, "Split a scene with more tiles than this into blocks of this many tiles that run as "
                        "separate items (spread over --workers or the Dask cluster) and are merged into one output "
                        "per scene; resume works per block. 0: never split.", unit="tiles", ge=0, output=False)


class EmbedRun(ModelOptions):
    bands: Bands | None = option(
        None, "Bands in the model's channel order, by 1-based index or by name (the file's band descriptions, "
              "red/green/blue, or a band folder's B2..B7), e.g. 4,3,2 or red,green,blue. Default: all, in order.",
        metavar="B1,B2,...", output=True)
    tile: int | None = option(None, "Tile side (a multiple of the patch size). Default: the model's input size.",
                              unit="pixels", ge=16, output=True)
    overlap: int = option(0, "Overlap of neighbouring tiles (stride = tile - overlap).", unit="pixels", ge=0,
                          output=True)
    nodata: float | None = option(None, "Nodata value of every band, overriding the file's (its nodata value, "
                                        "mask band or alpha).", unit="data values", output=True)
    mean: Numbers | None = option(None, "Per-band mean subtracted before the model. Default: the model's own "
                                        "statistics, else measured on a sample of the scene's valid pixels.",
                                  unit="data values", metavar="M1,M2,...", output=True)
    std: Numbers | None = option(None, "Per-band standard deviation (with --mean).", unit="data values",
                                 metavar="S1,S2,...", output=True)
    res: float | None = option(None, "Scale-MAE's relative GSD scale for every tile. Default: pixel size / "
                                     "--reference-gsd when that is given, else 1.0 (the authors' evaluation).",
                               unit="relative scale", gt=0, output=True)
    reference_gsd: float | None = option(None, "The GSD at which res = 1: res = pixel size / this.", unit="m", gt=0,
                                         output=True)
    pool: Literal["cls", "mean"] = option("cls", "cls: the class token after the final norm; mean: the mean of the "
                                                 "patch tokens over valid patches.", output=True)
    batch_size: int | None = option(None, "Tiles per forward pass. Default: 8 tiles of 224 px, as many pixels in "
                                          "smaller tiles (at most 128 tiles).", unit="tiles", ge=1, output=True)
    num_heads: int | None = option(None, "Attention heads, for an encoder whose width is not an official size "
                                         "(the head count is not in the weights).", unit="heads", ge=1, output=True)
    min_valid: float = option(0.0, "Skip tiles whose valid share is at most this (0: skip only all-nodata tiles).",
                              unit="fraction", ge=0, lt=1, output=True)
    require_crs: bool = option(False, "Fail a scene that has no CRS (default: run, and say its outputs are not "
                                      "georeferenced).", output=False)
    patch_features: bool = option(False, "Also write <scene>_patches.tif: the patch tokens (one band per channel, "
                                         "half floats, NaN where no valid pixel) on the patch grid, 1/patch of "
                                         "the scene's resolution, overlaying it.", output=True)
    block_tiles: int = block_tiles_option()
    crs: Crs | None = crs_option()
    crs_res: float | None = crs_res_option()

    _crs_res_needs_crs = model_validator(mode="after")(check_crs_res)
