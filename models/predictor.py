"""The Predictor: a checkpoint loaded once, numpy in, numpy out.

``pipeline.predict.inference`` takes any object with this shape (``channels``, ``halo``,
``check_channels``, ``__call__``), so it is tested without torch.

Devices: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` (``cuda:N`` picks a
GPU). On CUDA the network runs under ``torch.autocast`` in
bfloat16 (float16 where the GPU has no bfloat16) with batches sized from the GPU's free
memory (:meth:`Predictor.batch_for`); on the CPU it stays float32 with the given batch
size. :func:`cached_predictor` loads a checkpoint once per process (so once per Dask
worker) and :func:`load_count` says how many checkpoint loads this process made.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import CheckpointMetadata, check_channel_list, load_checkpoint, sha256
from models.data import normalise
from models.networks import landslide_logit
from pipeline.core.errors import CheckpointError, InputDataError

__all__ = ["Predictor", "cached_predictor", "load_count", "resolve_device"]

#: Share of the GPU's free memory one batch may use (the rest: cuDNN workspaces, other tasks).
CUDA_MEMORY_SHARE = 0.5
#: The largest batch :meth:`Predictor.batch_for` picks on CUDA.
MAX_CUDA_BATCH = 256


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(device)``.
    Raises :class:`InputDataError` (one line) for a name torch does not know and for CUDA
    where none is available. (The CLI's spelling, ``gpu`` included, is
    :func:`flows.stages.inference_workers.parse_device`.)"""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, ValueError):
        raise InputDataError(f"device {device!r} is not a torch device.", "use auto, cpu or cuda.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InputDataError(f"device {str(dev)!r} was asked for, but {why} (torch {torch.__version__}).",
                                 "use --device auto (the CPU when no GPU is found) or cpu, or run where a GPU is.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputDataError(f"device {str(dev)!r}: this machine has {torch.cuda.device_count()} CUDA device(s).",
                                 "use --device cuda (the first GPU) or an index below the count.")
    return dev


def _autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bfloat16 on a CUDA GPU that supports it, float16 on older ones, None (float32) elsewhere."""
    if not amp or device.type != "cuda":
        return None
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


_LOADS = 0
_LOADS_LOCK = threading.Lock()


def load_count() -> int:
    """How many checkpoints this process has loaded (:meth:`Predictor.from_checkpoint` calls).
    On a Dask cluster, ``client.run(load_count)`` gives it per worker."""
    return _LOADS


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
        checkpoint_path: the file it was loaded from (``None`` when built in memory).
        requested_device: the device option it was built with (``auto``, ``cpu``, ``cuda``).
        device: the torch device it runs on.
        precision: ``"float32"``, or the autocast dtype on CUDA (``"bfloat16"``/``"float16"``).
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
        self.requested_device = device.strip().lower() if isinstance(device, str) else str(self.device)
        self.model = model.to(self.device).eval()
        self.metadata = metadata
        self.channels: tuple[str, ...] = tuple(metadata.channels)
        self.halo: int = int(model.halo())
        self.receptive_field: int = int(model.receptive_field())
        self.size_multiple: int = int(getattr(model, "size_multiple", 1))
        self.batch_size = int(batch_size)
        self._autocast = _autocast_dtype(self.device, amp)
        self.amp = self._autocast is not None
        self.precision = str(self._autocast or torch.float32).removeprefix("torch.")
        self.checkpoint_sha256 = checkpoint_sha256
        self.checkpoint_path: str | None = None
        mean = getattr(metadata.normalisation, "mean", None)
        self.fill_values: tuple[float, ...] | None = tuple(float(v) for v in mean) if mean is not None else None
        self._batches: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        self._gpu_lock = threading.Lock()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # few distinct tile shapes: tuned once each

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", batch_size: int = 16, amp: bool = True
    ) -> Predictor:
        """Load and validate a checkpoint once; CUDA when present (``device="auto"``)."""
        global _LOADS
        model, meta = load_checkpoint(path, device="cpu")
        predictor = cls(model, meta, device, batch_size, amp, checkpoint_sha256=sha256(path))
        predictor.checkpoint_path = str(Path(path).resolve())
        with _LOADS_LOCK:
            _LOADS += 1
        return predictor

    @property
    def device_label(self) -> str:
        """Where it runs, for people and attributes: ``cpu (float32)`` or
        ``cuda:0 NVIDIA H200 (bfloat16 autocast)``."""
        if self.device.type != "cuda":
            return f"{self.device.type} ({self.precision})"
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        how = f"{self.precision} autocast" if self.amp else self.precision
        return f"cuda:{index} {torch.cuda.get_device_name(index)} ({how})"

    def check_channels(self, names: Sequence[str]) -> None:
        """Raise :class:`~pipeline.core.errors.CheckpointError` unless ``names`` equals
        :attr:`channels` (listing missing, extra or misordered channels)."""
        check_channel_list(self.channels, list(names), what="cube")

    def batch_for(self, height: int, width: int | None = None) -> int:
        """Tiles of ``height × width`` per forward pass: :attr:`batch_size` on the CPU; on
        CUDA as many as fit in :data:`CUDA_MEMORY_SHARE` of the GPU's free memory (measured
        once per tile shape with a forward pass of two tiles, at most :data:`MAX_CUDA_BATCH`)."""
        if self.device.type != "cuda":
            return self.batch_size
        shape = (int(height), int(width if width is not None else height))
        with self._lock:
            if shape not in self._batches:
                with self._gpu_lock:  # measured with no other batch on the GPU
                    self._batches[shape] = self._probe_batch(*shape)
            return self._batches[shape]

    def _probe_batch(self, height: int, width: int) -> int:
        dev = self.device
        torch.cuda.synchronize(dev)
        free, _ = torch.cuda.mem_get_info(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        probe = 2
        with torch.inference_mode():
            x = torch.zeros((probe, len(self.channels), height, width), device=dev)
            if self._autocast is not None:
                with torch.autocast("cuda", dtype=self._autocast):
                    landslide_logit(self.model(x))
            else:
                landslide_logit(self.model(x))
            del x
        torch.cuda.synchronize(dev)
        per_tile = max(1.0, (torch.cuda.max_memory_allocated(dev) - base) / probe)
        return int(max(1, min(MAX_CUDA_BATCH, (free * CUDA_MEMORY_SHARE) // per_tile)))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, H, W)`` float32 for raw inputs ``(N, C, H, W)``.

        Inputs are normalised with the checkpoint's statistics (NaN → 0 afterwards) and
        run in chunks of :meth:`batch_for` tiles under ``torch.inference_mode()`` (and
        autocast on CUDA).
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
        step = self.batch_for(x.shape[2], x.shape[3])
        # on CUDA one caller at a time (the threads of a Dask worker share the GPU, and the
        # batch size was measured for one batch in memory); the CPU runs callers in parallel
        gpu = self._gpu_lock if self.device.type == "cuda" else contextlib.nullcontext()
        with gpu, torch.inference_mode():
            for i in range(0, x.shape[0], step):
                xt = torch.from_numpy(x[i : i + step]).to(self.device)
                if self._autocast is not None:
                    with torch.autocast("cuda", dtype=self._autocast):
                        logit = landslide_logit(self.model(xt))
                else:
                    logit = landslide_logit(self.model(xt))
                out[i : i + step] = torch.sigmoid(logit.float()).cpu().numpy()
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state.pop("_gpu_lock", None)
        state["_batches"] = {}  # measured for this process's GPU
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._gpu_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Predictor({self.metadata.architecture}, channels={list(self.channels)}, "
            f"device={self.device}, halo={self.halo})"
        )


#: Checkpoints kept loaded per process (least recently used dropped first).
_CACHE_SIZE = 4
_CACHE: OrderedDict[tuple, Predictor] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def cached_predictor(path: str, device: str = "auto", batch_size: int = 8,
                     expected_sha256: str | None = None) -> Predictor:
    """:meth:`Predictor.from_checkpoint`, loaded once per process (and so once per Dask
    worker, however many of its threads ask at once): later calls with the same file,
    device and batch size reuse it. The key includes the file's size and modification
    time, so a replaced checkpoint is reloaded. ``expected_sha256`` (a worker's check
    that it loads the file the run started with) raises :class:`CheckpointError` when
    the file's hash differs."""
    resolved = str(Path(path).resolve())
    key = (resolved, str(device), int(batch_size), _stamp(resolved))
    with _CACHE_LOCK:  # one load at a time: concurrent callers wait for it, then share it
        predictor = _CACHE.get(key)
        if predictor is None:
            predictor = Predictor.from_checkpoint(resolved, device=device, batch_size=batch_size)
            _CACHE[key] = predictor
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
    if expected_sha256 is not None and predictor.checkpoint_sha256 != expected_sha256:
        raise CheckpointError(f"{resolved} is not the checkpoint this run started with (its SHA-256 changed).",
                              "leave the checkpoint in place during a run, or rerun with the new one.")
    return predictor


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = Path(path).stat()
    except OSError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)
