"""The Predictor: a checkpoint loaded once, numpy in, numpy out.

``pipeline.predict.inference`` takes any object with this shape (``channels``, ``halo``,
``check_channels``, ``__call__``), so it is tested without torch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import CheckpointMetadata, check_channel_list, load_checkpoint, sha256
from models.data import normalise
from models.networks import landslide_logit
from pipeline.core.errors import InputDataError

__all__ = ["Predictor", "cached_predictor", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputDataError("device 'cuda' requested but CUDA is not available.", "use --device cpu or auto.")
    return dev


class Predictor:
    """Landslide probability for batches of raw (un-normalised) factor chips.

    Attributes:
        channels: channel names in the order the network expects.
        halo: half the network's theoretical receptive field in pixels (overlap needed for
            seam-free chunked inference).
        size_multiple: the network's ``2**depth``; inputs that are multiples of it need no
            internal padding (``pipeline.predict.inference`` aligns its tiles to it).
        metadata: the checkpoint's :class:`~models.checkpoint.CheckpointMetadata`.
        checkpoint_sha256: SHA-256 of the checkpoint file (``None`` when built in memory).
        fill_values: per-channel fill for missing inputs: the training normalisation means,
            so a filled pixel normalises to 0, as a NaN input does inside the Predictor.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        metadata: CheckpointMetadata,
        device: str | torch.device = "auto",
        batch_size: int = 16,
        amp: bool = True,
        checkpoint_sha256: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.metadata = metadata
        self.channels: tuple[str, ...] = tuple(metadata.channels)
        self.halo: int = int(model.halo())
        self.receptive_field: int = int(model.receptive_field())
        self.size_multiple: int = int(getattr(model, "size_multiple", 1))
        self.batch_size = int(batch_size)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.checkpoint_sha256 = checkpoint_sha256
        mean = getattr(metadata.normalisation, "mean", None)
        self.fill_values: tuple[float, ...] | None = tuple(float(v) for v in mean) if mean is not None else None

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", batch_size: int = 16, amp: bool = True
    ) -> Predictor:
        """Load and validate a checkpoint once; CUDA when present (``device="auto"``)."""
        model, meta = load_checkpoint(path, device="cpu")
        return cls(model, meta, device, batch_size, amp, checkpoint_sha256=sha256(path))

    def check_channels(self, names: Sequence[str]) -> None:
        """Raise :class:`~pipeline.core.errors.CheckpointError` unless ``names`` equals
        :attr:`channels` (listing missing, extra or misordered channels)."""
        check_channel_list(self.channels, list(names), what="cube")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, H, W)`` float32 for raw inputs ``(N, C, H, W)``.

        Inputs are normalised with the checkpoint's statistics (NaN → 0 afterwards) and
        run in chunks of ``batch_size`` under ``torch.inference_mode()``.
        """
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != len(self.channels):
            raise InputDataError(
                f"expected a batch (N, {len(self.channels)}, H, W) for channels "
                f"{list(self.channels)}, got shape {batch.shape}.",
                "pass raw factor chips shaped (N, C, H, W) with the checkpoint's channels in "
                "the order of Predictor.channels.",
            )
        x = normalise(batch.astype(np.float32, copy=True), self.metadata.normalisation)
        out = np.empty((x.shape[0], x.shape[2], x.shape[3]), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                xt = torch.from_numpy(x[i : i + self.batch_size]).to(self.device)
                if self.amp:
                    with torch.autocast("cuda", dtype=torch.float16):
                        logit = landslide_logit(self.model(xt))
                else:
                    logit = landslide_logit(self.model(xt))
                out[i : i + self.batch_size] = torch.sigmoid(logit.float()).cpu().numpy()
        return out

    def __repr__(self) -> str:
        return (
            f"Predictor({self.metadata.architecture}, channels={list(self.channels)}, "
            f"device={self.device}, halo={self.halo})"
        )


def cached_predictor(path: str, device: str = "auto", batch_size: int = 8) -> Predictor:
    """:meth:`Predictor.from_checkpoint`, loaded once per process (and so once per dask
    worker): later calls with the same file, device and batch size reuse it. The cache key
    includes the file's size and modification time, so a replaced checkpoint is reloaded."""
    return _cached(str(Path(path).resolve()), device, batch_size, _stamp(path))


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = Path(path).stat()
    except OSError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _cached(path: str, device: str, batch_size: int, stamp: tuple[int, int]) -> Predictor:
    return Predictor.from_checkpoint(path, device=device, batch_size=batch_size)
