"""The options of ``run-flow segment`` and ``run-flow train segment``, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from imagingflows.pipelines.options import ModelOptions, TrainOptions, option

Triple = tuple[int, int, int]
Spacing = tuple[float, float, float]


class SegmentRun(ModelOptions):
    patch_merging: Literal["legacy", "current"] | None = option(
        None, "Swin UNETR patch merging: legacy (MONAI < 1.5, all published weights) or current "
              "(MONAI >= 1.5). Default: what the checkpoint records, else legacy.", output=True)
    roi: Triple | None = option(None, "Sliding-window size, multiples of 32. Default: the model's.",
                                unit="voxels", metavar="X Y Z", output=True)
    overlap: float = option(0.5, "Overlap of neighbouring windows.", unit="fraction of the window, [0, 1)",
                            ge=0, lt=1, output=True)
    sw_batch_size: int = option(1, "Windows per forward pass.", unit="windows", ge=1, output=True)
    spacing: Spacing | None = option(None, "Resample to this voxel spacing for the model. Default: the model's "
                                           "(none for the published BraTS21 weights).",
                                     unit="mm", metavar="X Y Z", output=True)
    axcodes: str | None = option(None, "Orientation of the model's frame, e.g. RAS. Default: the model's.",
                                 metavar="CODES", output=True)
    labels: Literal["2021", "2023"] = option("2021", "Label values written: 2021 (1 NCR, 2 ED, 4 ET) or 2023 "
                                                     "(1 NETC, 2 SNFH, 3 ET).", output=True)
    save_probabilities: bool = option(False, "Also write <case>_probs.nii.gz (TC, WT, ET sigmoid).", output=True)
    crop_foreground: bool = option(True, "Run windows only over the brain's bounding box.", output=True)
    skip_empty: bool = option(True, "Skip windows whose input is all background.", output=True)
    anonymize: bool = option(False, "Replace case ids by pseudonyms in outputs, logs and reports.", output=False)
    anonymize_key: Path | None = option(
        None, "The secret mapping ids to pseudonyms (created if missing; keep it private, outside the output "
              "folder). Default: ~/.config/imagingflows/anonymize.key ($XDG_CONFIG_HOME honoured).",
        output=False)


class SegmentTrain(TrainOptions):
    data: Path = option(..., "Cases with references (<case>_seg.nii.gz beside the modalities).", output=True)
    steps_per_epoch: int = option(0, "Optimiser steps per epoch (0: one per training case).", unit="steps",
                                  ge=0, output=True)
    batch_size: int = option(2, "Crops per optimiser step.", unit="crops", ge=1, output=True)
    feature_size: int = option(12, "Swin UNETR width when training from scratch (a multiple of 12).",
                               unit="channels", ge=12, output=True)
    roi: Triple | None = option(None, "Training crop size, multiples of 32 (default 64 64 64).", unit="voxels",
                                metavar="X Y Z", output=True)
    spacing: Spacing | None = option(None, "Model voxel spacing (default 2 2 2 from scratch, else the "
                                           "checkpoint's).", unit="mm", metavar="X Y Z", output=True)
    labels: Literal["auto", "2021", "2023"] = option("auto", "Label values of the references: 2021, 2023 or auto "
                                                             "(from the values found).", output=True)
    tumour_share: float = option(0.5, "Share of crops centred on tumour.", unit="fraction", ge=0, le=1,
                                 output=True)
