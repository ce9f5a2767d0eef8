"""The demo region's U-Net: trained once on its planted (synthetic) scars and cached."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipeline
from pipeline.core.files import fingerprint
from pipeline.core.layout import zarr_attrs

from models.calibration import CALIBRATION_VERSION
from models.checkpoint import read_metadata
from models.training import CHECKPOINT_NAME, TrainConfig, train

__all__ = ["DEMO_TRAIN", "ensure_demo_model"]

#: How ``slidewatch demo`` trains its model (small, CPU-friendly; synthetic scars only).
DEMO_TRAIN: dict[str, Any] = {
    "arch": "enhanced", "base_width": 8, "depth": 3, "chip_size": 64, "block_size": 512, "epochs": 12,
    "chips_per_epoch": 512, "lr": 5e-3, "patience": 5, "batch_size": 16, "seed": 0,
}


def ensure_demo_model(
    lsi_path: Path, truth: Path, model_dir: Path, *, retrain: bool = False,
    on_event: Callable[[str, dict], None] | None = None,
) -> Path:
    """The demo's checkpoint: trained once on the demo region's planted (synthetic) scars
    and cached in ``model_dir``; reused while the training inputs and settings match."""
    emit = on_event or (lambda kind, info: None)
    key = fingerprint({
        "train": DEMO_TRAIN, "lsi": zarr_attrs(lsi_path).get("slidewatch_fingerprint"),
        "truth": truth.stat().st_size, "version": pipeline.__version__, "calibration": CALIBRATION_VERSION,
    })
    path, stamp = model_dir / CHECKPOINT_NAME, model_dir / "demo_key.txt"
    if path.is_file() and stamp.is_file() and stamp.read_text().strip() == key and not retrain:
        try:
            read_metadata(path)
        except Exception:  # a corrupt cache is simply retrained
            pass
        else:
            emit("model-reused", {"path": str(path)})
            return path
    emit("training", {"config": DEMO_TRAIN, "out": str(model_dir)})
    tmp_dir = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    new = train(lsi_path, truth, tmp_dir, TrainConfig(**DEMO_TRAIN), progress=True)
    (tmp_dir / "demo_key.txt").write_text(key + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp_dir.rename(model_dir)
    return model_dir / new.name
