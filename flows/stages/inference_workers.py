"""U-Net inference as Dask work: one task per tile of the risk mosaic, run where the
active :class:`~flows.dask_context.TaskPool` runs tasks (a distributed client's workers, or
this process's threads with the same code).

A task (:func:`predict_tile`) opens the LSI store (and the cube bands a model reads) by
path, reads its tile's window plus halo, runs the model, computes the mosaic variables
(:func:`pipeline.predict.mosaic.risk_tile`) and writes them into the tile's region of the
partial store (:func:`pipeline.store.tiles.write_region`, no lock, no ledger). It returns
the tile key, its inference counters and the device it ran on; the driver enters the tile
in the ledger after its checks (:func:`run_tile_jobs`).

The model reaches a task once per worker, never per task: a checkpoint-backed predictor
travels as a :class:`CheckpointRef` (path, SHA-256, device, batch size) that the worker
resolves with :func:`models.predictor.cached_predictor` (loaded once per process, the
SHA-256 checked; :func:`model_loads` counts the loads per worker); any other predictor
(a test fake, a model built in memory) is scattered once to every worker
(``broadcast=True``). On a cluster whose workers advertise a ``GPU`` resource, inference
tasks ask for ``GPU=1`` (:func:`inference_resources`), so they run only there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import Tile
from pipeline.core.errors import CheckpointError, InputDataError

__all__ = ["DEVICE_CHOICES", "CheckpointRef", "TileJob", "TileOutcome", "checkpoint_ref", "driver_device", "gpu_slots",
           "inference_resources", "model_loads", "parse_device", "predict_tile", "run_tile_jobs"]

#: The values ``--device`` takes; ``gpu`` is an alias of ``cuda``, ``cuda:N`` picks a GPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
_ALIASES = {"gpu": "cuda"}

#: The Dask worker resource that marks a GPU worker (``dask worker --resources GPU=1``).
GPU_RESOURCE = "GPU"


def parse_device(device: str) -> str:
    """The canonical spelling of a ``--device`` value: ``auto``, ``cpu``, ``cuda`` or
    ``cuda:N`` (``gpu``, ``gpu:N`` are aliases). Raises :class:`InputDataError` (one line,
    exit 2 in the CLI) for anything else. Needs no torch: whether CUDA is there is checked
    where the model loads (:func:`models.predictor.resolve_device`)."""
    text = str(device).strip().lower()
    base, sep, index = text.partition(":")
    base = _ALIASES.get(base, base)
    if base == "cuda" and sep and index.isdigit():
        return f"cuda:{int(index)}"
    if sep or base not in DEVICE_CHOICES:
        raise InputDataError(f"--device {device!r} is not a device slidewatch knows.",
                             "use --device auto (CUDA when present, else the CPU), cpu, or cuda (alias gpu).")
    return base


@dataclass(frozen=True)
class CheckpointRef:
    """How a worker gets a checkpoint-backed predictor: the file (at the same path on every
    worker: a shared volume), its SHA-256 when the run started, the device option and the
    batch size."""

    path: str
    sha256: str
    device: str = "auto"
    batch_size: int = 8

    def load(self) -> Any:
        """The predictor of this process (loaded on the first call, then cached)."""
        from models.predictor import cached_predictor

        if not Path(self.path).is_file():
            raise CheckpointError(f"a Dask worker cannot read the checkpoint {self.path}.",
                                  "put the checkpoint where every worker sees it at the same path (the shared "
                                  "volume the outputs go to).")
        return cached_predictor(self.path, self.device, self.batch_size, expected_sha256=self.sha256)


def checkpoint_ref(predictor: Any, device: str | None = None, batch_size: int = 8) -> CheckpointRef | None:
    """A :class:`CheckpointRef` for a predictor loaded from a checkpoint file
    (:meth:`models.predictor.Predictor.from_checkpoint`), else None. ``device`` defaults
    to the option the predictor was built with."""
    path = getattr(predictor, "checkpoint_path", None)
    sha = getattr(predictor, "checkpoint_sha256", None)
    if not path or not sha:
        return None
    return CheckpointRef(str(path), str(sha), device or str(getattr(predictor, "requested_device", "auto")),
                         int(getattr(predictor, "batch_size", batch_size) or batch_size))


def resolve_predictor(source: Any) -> Any:
    """The predictor a task runs: a :class:`CheckpointRef` loaded (once per process), or
    the object itself (a scattered one arrives resolved)."""
    return source.load() if isinstance(source, CheckpointRef) else source


def device_label(predictor: Any) -> str:
    """Where a predictor runs, as recorded in the mosaic (``cpu (float32)``, ``cuda:0 ... (bfloat16
    autocast)``); the class name for a predictor that does not say."""
    label = getattr(predictor, "device_label", None)
    return str(label) if label else f"{type(predictor).__name__} (in memory)"


def _on_cuda(predictor: Any) -> bool:
    return getattr(getattr(predictor, "device", None), "type", None) == "cuda"


@dataclass(frozen=True)
class TileJob:
    """Everything one inference task needs but the model (plain values: cheap to send)."""

    zone: str
    tile: Tile
    lsi_path: str
    partial: str
    channels: tuple[str, ...]
    thresholds: tuple[float, float]
    rain_multiplier: float
    mode: str
    uncertainty: bool
    tile_size: int
    batch_size: int
    cube_path: str | None = None
    cube_vars: tuple[str, ...] = ()


@dataclass(frozen=True)
class TileOutcome:
    """What a task sends back: the tile's key, its inference counters, the device it ran on."""

    key: str
    stats: dict[str, float]
    device: str


def _open_inputs(job: TileJob) -> Any:
    """The LSI store (merged with the cube bands the model reads), opened without dask so
    that reading a window reads only its own pixels."""
    import xarray as xr

    ds = xr.open_zarr(job.lsi_path, chunks=None, decode_coords="all")
    if job.cube_vars:
        cube = xr.open_zarr(job.cube_path, chunks=None, decode_coords="all")[list(job.cube_vars)]
        ds = xr.merge([ds, cube], join="exact", compat="override", combine_attrs="drop_conflicts")
    return ds


def predict_tile(job: TileJob, source: Any) -> TileOutcome:
    """The inference task: predict ``job``'s tile and write its mosaic variables into the
    partial store. ``source`` is a :class:`CheckpointRef` or a predictor object."""
    import numpy as np

    from pipeline.predict.inference import PredictionStats, iter_chunk_predictions
    from pipeline.predict.mosaic import risk_tile, tile_dataset
    from pipeline.predict.uncertainty import FlipEnsemble
    from pipeline.store.tiles import write_region

    predictor = resolve_predictor(source)
    model = FlipEnsemble(predictor) if job.uncertainty else predictor
    # on CUDA as many tiles per call as the GPU holds; on the CPU the run's batch size
    batch = predictor.batch_for(job.tile_size) if _on_cuda(predictor) else job.batch_size
    ds = _open_inputs(job)
    t = job.tile
    stats = PredictionStats()
    ((sy, sx), out), = iter_chunk_predictions(
        ds, model, channels=list(job.channels), windows=[(slice(t.row0, t.row1), slice(t.col0, t.col1))],
        tile=job.tile_size, batch_size=batch, stats=stats)
    sub = ds.isel(y=sy, x=sx)
    sus, spread = (out[0], out[1]) if job.uncertainty else (out, None)
    arrays = risk_tile(sus, np.asarray(sub["lsi"].values), np.asarray(sub["quality"].values), job.thresholds,
                       rain_multiplier=job.rain_multiplier, mode=job.mode, uncertainty=spread)
    write_region(Path(job.partial), t, tile_dataset(arrays, sub[["lsi", "quality"]]))
    return TileOutcome(t.key, stats.as_dict(), device_label(predictor))


def run_tile_jobs(pool: Any, jobs: Iterable[TileJob], source: Any, on_done: Callable[[TileOutcome], None], *,
                  key_prefix: str, resources: dict[str, float] | None = None, slots: int = 2,
                  check: Callable[[], None] | None = None) -> None:
    """Run :func:`predict_tile` for every job on ``pool`` (a
    :class:`~flows.dask_context.TaskPool`), at most ``slots`` at once, and call
    ``on_done(outcome)`` in this thread as each finishes (in completion order).

    When a task fails, ``check`` runs first (a replaced input store is the better
    explanation of a failed read, and its error is raised instead); when ``on_done`` or a
    task raises, the tasks not started are dropped and the running ones waited for
    (:meth:`~flows.dask_context.TaskPool.drain`) before the error propagates, so no task
    writes into the store after its owner let go of it.
    """
    pending = iter(jobs)
    in_flight: dict[Any, TileJob] = {}

    def refill() -> None:
        while len(in_flight) < max(1, slots):
            job = next(pending, None)
            if job is None:
                return
            fut = pool.submit(predict_tile, job, source, key=f"{key_prefix}-{job.zone}-{job.tile.key}",
                              resources=resources)
            in_flight[fut] = job

    try:
        refill()
        while in_flight:
            done = pool.wait_any(set(in_flight))
            order = {f: i for i, f in enumerate(in_flight)}  # submission order among the finished
            for fut in sorted(done, key=order.__getitem__):
                in_flight.pop(fut)
                try:
                    outcome = fut.result()
                except BaseException:
                    if check is not None:
                        check()
                    raise
                on_done(outcome)
            refill()
    except BaseException:
        pool.drain(set(in_flight))
        raise


def inference_resources(pool: Any, device: str) -> tuple[dict[str, float] | None, int]:
    """The resources an inference task asks for and how many run at once on ``pool``:
    ``GPU=1`` when some worker advertises a GPU resource and ``device`` is not ``cpu``
    (then as many at once as the GPU workers hold), else none (one per worker thread)."""
    gpus = gpu_slots(pool) if device != "cpu" else 0
    if gpus:
        return {GPU_RESOURCE: 1}, gpus
    return None, max(1, pool.threads())


def driver_device(device: str, pool: Any | None) -> str:
    """The device this process loads the model on for a run with ``device`` (parsed) whose
    tasks go to ``pool`` (None: this process): ``device`` itself, except ``cuda`` asked for
    here without CUDA while GPU workers will run the tasks (then ``cpu``: this process only
    reads the model's description). Raises :class:`InputDataError` (one line) for ``cuda``
    with no CUDA here and no GPU worker, before any work."""
    if not device.startswith("cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return device
    if pool is not None and gpu_slots(pool):
        return "cpu"
    cluster = pool is not None and pool.client is not None
    where = "on this machine, and no Dask worker advertises a GPU resource" if cluster else "on this machine"
    raise InputDataError(f"--device {device}: no CUDA GPU {where} (torch {torch.__version__}).",
                         "use --device auto (the CPU when no GPU is found) or cpu, or start GPU workers "
                         "(dask worker --resources GPU=1).")


def gpu_slots(pool: Any) -> int:
    """Inference tasks the GPU workers of ``pool`` run at once (0: no worker advertises ``GPU``)."""
    return int(pool.threads(GPU_RESOURCE))


def model_loads(client: Any) -> dict[str, int]:
    """Checkpoint loads per worker of ``client`` (:func:`models.predictor.load_count`)."""
    from models.predictor import load_count

    return dict(client.run(load_count))
