"""Torch networks, losses, metrics, training, checkpoints and the Predictor.

Public API (imports torch; ``pipeline`` never imports this package)::

    from models import EnhancedUNet, UNet, Predictor, TrainConfig, train, evaluate
    from models import save_checkpoint, load_checkpoint, read_metadata, sha256

Everything else lives in the submodules (``models.data``, ``models.metrics``, ...).
"""

from __future__ import annotations

from models.checkpoint import CheckpointMetadata, load_checkpoint, read_metadata, save_checkpoint, sha256
from models.evaluate import EvaluationReport, ablation, evaluate
from models.networks import DEFAULT_CHANNELS, EnhancedUNet, UNet, build_model, count_parameters
from models.predictor import Predictor
from models.training import TrainConfig, train

__all__ = [
    "DEFAULT_CHANNELS",
    "CheckpointMetadata",
    "EnhancedUNet",
    "EvaluationReport",
    "Predictor",
    "TrainConfig",
    "UNet",
    "ablation",
    "build_model",
    "count_parameters",
    "evaluate",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "sha256",
    "train",
]
