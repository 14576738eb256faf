"""The shared model backend: registry, checkpoint loading, cached models, tiled inference."""

from imagingflows.models.backend import cached_model, load, load_model, predict_volume, sliding_window_predict
from imagingflows.models.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
from imagingflows.models.registry import REGISTRY, ModelSpec, get_spec, list_models

__all__ = [
    "load_model", "load", "cached_model", "sliding_window_predict", "predict_volume",
    "CheckpointError", "read_checkpoint", "save_checkpoint",
    "REGISTRY", "ModelSpec", "get_spec", "list_models",
]
