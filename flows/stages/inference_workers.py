"""U-Net inference as Dask work: one graph per zone, run where the active
:class:`~flows.dask_context.TaskPool` runs tasks (a distributed client's workers, or this
process's threads with the same graph).

The graph (:func:`zone_graph`) is :func:`pipeline.predict.inference.predict_dataset`'s over
the zone's LSI store (and the cube bands a model reads), chunked like the write tiles: one
task per group of about ``batch_size`` inference tiles, which reads its pixels and runs
the model (each tile of the zone's global tile grid runs once, however many write tiles
it straddles: about 1.27 model pixels per output pixel at the defaults), and one blend
task per write tile. On top, one write task per *pending* write tile (:func:`write_tile`)
reads the tile's ``lsi`` and ``quality``, computes the mosaic variables
(:func:`pipeline.predict.mosaic.risk_tile`) and writes them into the tile's region of the
partial store (:func:`pipeline.store.tiles.write_region`, no lock, no ledger); Dask culls
every group no pending tile needs, so a resumed run computes only what is missing. The
driver enters each tile in the ledger as its write task finishes (:func:`run_writes`).

The model enters the graph once, as a :class:`WorkerModel`: the predictor's description
(channels, halo, size multiple, fills) and how a worker gets the real one, never the
loaded network. A checkpoint-backed predictor travels as a :class:`CheckpointRef` (path,
SHA-256, device, batch size) that each worker resolves with
:func:`models.predictor.cached_predictor` (loaded once per process, the SHA-256 checked;
:func:`model_loads` counts the loads per worker); any other predictor (a test fake, a model
built in memory) travels inside the :class:`WorkerModel`, i.e. once per worker that runs
inference. On a cluster whose workers advertise a ``GPU`` resource, the inference tasks
ask for ``GPU=1`` (:func:`inference_resources`), so they run only there.

Counters: the :class:`~pipeline.predict.inference.PredictionStats` the graph updates is a
:class:`RunCounters`, which pickles as its run's token: every process that runs part of the
graph counts into its own copy (with the devices the model ran on), and
:func:`collect_counters` sums the copies of every process when the graph is done. The
counts are exactly :func:`~pipeline.predict.inference.predict_dataset`'s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import Tile
from pipeline.core.errors import CheckpointError, InputDataError, StoreError
from pipeline.predict.inference import PredictionStats

__all__ = ["DEVICE_CHOICES", "CheckpointRef", "RunCounters", "TileJob", "TileOutcome", "WorkerModel",
           "checkpoint_ref", "collect_counters", "driver_device", "gpu_slots", "inference_resources",
           "model_loads", "parse_device", "run_counters", "run_writes", "write_tile", "zone_graph"]

#: The values ``--device`` takes; ``gpu`` is an alias of ``cuda``, ``cuda:N`` picks a GPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
_ALIASES = {"gpu": "cuda"}

#: The Dask worker resource that marks a GPU worker (``dask worker --resources GPU=1``).
GPU_RESOURCE = "GPU"
#: Seconds a stage that stops waits for the tile writes still under way before it lets go of its store.
DRAIN_TIMEOUT_S = 120.0


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
    the object itself."""
    return source.load() if isinstance(source, CheckpointRef) else source


def device_label(predictor: Any) -> str:
    """Where a predictor runs, as recorded in the mosaic (``cpu (float32)``, ``cuda:0 ... (bfloat16
    autocast)``); the class name for a predictor that does not say."""
    label = getattr(predictor, "device_label", None)
    return str(label) if label else f"{type(predictor).__name__} (in memory)"


# ------------------------------------------------------------------------------ counters
_COUNTERS: dict[str, RunCounters] = {}
_COUNTERS_LOCK = threading.Lock()


@dataclass
class RunCounters(PredictionStats):
    """The inference counters of one zone's graph in this process, and the devices the
    model ran on here. Pickles as its token: unpickled in a worker (or the scheduler) it is
    that process's own copy (:func:`run_counters`), so the graph's tasks count wherever
    they run; :func:`collect_counters` adds the copies up."""

    token: str = ""
    devices: set[str] = field(default_factory=set)

    def __reduce__(self) -> tuple:
        return (run_counters, (self.token,))


def run_counters(token: str) -> RunCounters:
    """This process's :class:`RunCounters` of the graph ``token`` (made on first use)."""
    with _COUNTERS_LOCK:
        counters = _COUNTERS.get(token)
        if counters is None:
            counters = _COUNTERS[token] = RunCounters(token=token)
        return counters


def take_counters(token: str) -> tuple[dict[str, float], list[str]] | None:
    """Remove this process's counters of ``token``: ``(counts, devices)``, or None when it has none."""
    with _COUNTERS_LOCK:
        counters = _COUNTERS.pop(token, None)
    return None if counters is None else (counters.as_dict(), sorted(counters.devices))


def collect_counters(pool: Any, token: str) -> tuple[PredictionStats, set[str]]:
    """The counters of graph ``token`` summed over every process of ``pool`` (this one, and
    a cluster's workers and scheduler), and the devices the model ran on; each process's
    copy is removed."""
    total, devices = PredictionStats(), set()
    for got in pool.run_everywhere(take_counters, token):
        if got is not None:
            counts, where = got
            total.add(**counts)
            devices.update(where)
    return total, devices


# -------------------------------------------------------------------------------- model
class WorkerModel:
    """The model as the graph holds it (once): the predictor's description (``channels``,
    ``halo``, ``size_multiple``, ``fill_values``, ``output_bands``) and ``source``, how the
    process running a task gets the real predictor: a :class:`CheckpointRef` (loaded once
    per process), or a predictor object, which travels pickled (by cloudpickle, so a class
    registered with ``cloudpickle.register_pickle_by_value`` travels by value too) and is
    unpickled once per process, on the first call (the scheduler, which only reads the
    graph, never unpickles it). Calls record the device the model ran on in ``counters``.
    The first call in a process also checks that the process sees the stores at ``inputs``
    (a worker without the shared volume would otherwise read them as empty, i.e. nodata)."""

    def __init__(self, predictor: Any, source: Any, counters: RunCounters, inputs: Sequence[str] = ()) -> None:
        self.source = source
        self.counters = counters
        self.inputs = tuple(str(p) for p in inputs)
        self._ready = False
        self.channels: tuple[str, ...] = tuple(predictor.channels)
        self.halo = int(predictor.halo)
        self.size_multiple = int(getattr(predictor, "size_multiple", 1) or 1)
        fill = getattr(predictor, "fill_values", None)
        self.fill_values = None if fill is None else tuple(float(v) for v in fill)
        self.output_bands = getattr(predictor, "output_bands", None)
        self._packed: bytes | None = None
        self._lock = threading.Lock()

    def check_channels(self, names: Sequence[str]) -> None:
        """Raise :class:`CheckpointError` unless ``names`` are :attr:`channels`, in order."""
        if tuple(names) != self.channels:
            raise CheckpointError(f"the model reads channels {list(self.channels)}, not {list(names)}.",
                                  "feed the checkpoint's channels in its order.")

    def predictor(self) -> Any:
        """The real predictor, in this process."""
        if not self._ready:
            with self._lock:  # the threads of a worker check and unpickle once
                if not self._ready:
                    missing = [p for p in self.inputs if not Path(p).is_dir()]
                    if missing:
                        raise StoreError(f"a Dask worker cannot read {missing[0]}.",
                                         "mount the run's output volume on every worker at the same path as "
                                         "on the machine that starts the run.")
                    if self.source is None:
                        import cloudpickle

                        self.source = cloudpickle.loads(self._packed)
                    self._ready = True
        return resolve_predictor(self.source)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The real predictor's output for ``batch``."""
        predictor = self.predictor()
        label = device_label(predictor)
        if label not in self.counters.devices:
            self.counters.devices.add(label)
        return predictor(batch)

    def __getstate__(self) -> dict:
        import cloudpickle

        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_ready"] = False  # checked again in each process
        if not isinstance(self.source, CheckpointRef):
            if state["_packed"] is None:
                state["_packed"] = cloudpickle.dumps(self.source)
            state["source"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WorkerModel(channels={list(self.channels)}, halo={self.halo})"


# --------------------------------------------------------------------------------- tiles
@dataclass(frozen=True)
class TileJob:
    """What a write task needs besides the tile's probabilities (plain values: cheap to send)."""

    zone: str
    tile: Tile
    lsi_path: str
    partial: str
    thresholds: tuple[float, float]
    rain_multiplier: float
    mode: str
    uncertainty: bool
    run: str  #: the graph's token: :func:`stop_writes` stops every write of the run


@dataclass(frozen=True)
class TileOutcome:
    """What a write task sends back: the key of the tile it wrote."""

    key: str


class WritesStopped(RuntimeError):
    """A write task of a run whose driver stopped (it writes nothing)."""


_WRITING: dict[str, int] = {}
_STOPPED: set[str] = set()
_GATE = threading.Lock()


@contextlib.contextmanager
def _writing(run: str):  # type: ignore[no-untyped-def]
    """Count a write of ``run`` under way in this process; refuse it once the run stopped."""
    with _GATE:
        if run in _STOPPED:
            raise WritesStopped(f"run {run} stopped: tile not written")
        _WRITING[run] = _WRITING.get(run, 0) + 1
    try:
        yield
    finally:
        with _GATE:
            _WRITING[run] -= 1
            if not _WRITING[run]:
                del _WRITING[run]


def stop_writes(run: str) -> int:
    """Refuse every later write of ``run`` in this process; the writes still under way."""
    with _GATE:
        _STOPPED.add(run)
        return _WRITING.get(run, 0)


def write_tile(probs: np.ndarray, job: TileJob) -> TileOutcome:
    """The write task: the mosaic variables of ``job``'s tile from its blended model output
    ``probs`` (``(h, w)``, or ``(2, h, w)`` mean and spread with uncertainty) and the
    tile's ``lsi`` and ``quality`` (read from the LSI store by path), written into the
    tile's region of the partial store."""
    import xarray as xr

    from pipeline.predict.mosaic import risk_tile, tile_dataset
    from pipeline.store.tiles import write_region

    t = job.tile
    lsi = xr.open_zarr(job.lsi_path, chunks=None, decode_coords="all")[["lsi", "quality"]]
    sub = lsi.isel(y=slice(t.row0, t.row1), x=slice(t.col0, t.col1)).load()
    sus, spread = (probs[0], probs[1]) if job.uncertainty else (probs, None)
    arrays = risk_tile(sus, np.asarray(sub["lsi"].values), np.asarray(sub["quality"].values), job.thresholds,
                       rain_multiplier=job.rain_multiplier, mode=job.mode, uncertainty=spread)
    data = tile_dataset(arrays, sub)
    with _writing(job.run):
        write_region(Path(job.partial), t, data)
    return TileOutcome(t.key)


def _open_inputs(lsi_path: Path, channels: Sequence[str], cube_path: Path | None, cube_vars: Sequence[str]) -> Any:
    """The model's channels from the LSI store (and the cube), opened without dask so that
    each task reads only its own pixels."""
    import xarray as xr

    from_lsi = [c for c in channels if c not in cube_vars]
    ds = xr.open_zarr(lsi_path, chunks=None, decode_coords="all")[from_lsi]
    if cube_vars:
        cube = xr.open_zarr(cube_path, chunks=None, decode_coords="all")[list(cube_vars)]
        ds = xr.merge([ds, cube], join="exact", compat="override", combine_attrs="drop_conflicts")
    return ds


def zone_graph(jobs: Sequence[TileJob], predictor: Any, source: Any, counters: RunCounters, *, lsi_path: Path,
               tile_shape: tuple[int, int], tile: int, batch_size: int, uncertainty: bool,
               cube_path: Path | None = None, cube_vars: Sequence[str] = (),
               resources: dict[str, float] | None = None) -> list:
    """One write task (a ``dask.delayed``, key ``slidewatch-risk-<run>-<zone>-<tile>``) per
    job, over one :func:`~pipeline.predict.inference.predict_dataset` graph of the zone
    chunked by ``tile_shape`` (the write tiles' rows and columns): every inference tile of
    the zone's grid runs once, in a group task that asks for ``resources`` (e.g. ``GPU=1``).

    ``predictor`` (loaded here) gives the model's description; ``source`` is what the
    processes running the tasks resolve it from (:class:`WorkerModel`); ``counters``
    receives the inference counters (:func:`collect_counters`)."""
    import dask

    from pipeline.predict.inference import predict_dataset
    from pipeline.predict.uncertainty import FlipEnsemble

    channels = tuple(predictor.channels)
    ds = _open_inputs(lsi_path, channels, cube_path, cube_vars)
    model: Any = WorkerModel(predictor, source, counters,
                             inputs=[str(lsi_path)] + ([str(cube_path)] if cube_vars else []))
    model = FlipEnsemble(model) if uncertainty else model
    with dask.annotate(resources=resources) if resources else contextlib.nullcontext():
        probs = predict_dataset(ds, model, chunks=tile_shape, channels=channels, tile=tile,
                                batch_size=batch_size, stats=counters, name="susceptibility")
    blocks = probs.data.to_delayed(optimize_graph=False)
    blocks = blocks[0] if blocks.ndim == 3 else blocks  # (band, y, x): one chunk along band
    ty, tx = tile_shape
    write = dask.delayed(write_tile, pure=False)
    return [write(blocks[j.tile.row0 // ty, j.tile.col0 // tx], j,
                  dask_key_name=f"slidewatch-risk-{j.run}-{j.zone}-{j.tile.key}") for j in jobs]


def run_writes(pool: Any, writes: Sequence, on_done: Callable[[TileOutcome], None], *, run: str,
               check: Callable[[], None] | None = None, timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Compute the write tasks of :func:`zone_graph` on ``pool`` (a
    :class:`~flows.dask_context.TaskPool`) and call ``on_done(outcome)`` in this thread as
    each finishes (in completion order).

    When a task fails, ``check`` runs first (a replaced input store is the better
    explanation of a failed read, and its error is raised instead). When a task or
    ``on_done`` raises, every later write of the run is refused (:func:`stop_writes`, in
    every process of the pool), the graph cancelled, and the writes under way waited for
    (up to ``timeout`` s) before the error propagates, so no task writes into the store
    after its owner let go of it."""
    in_callback = False

    def done(outcome: TileOutcome) -> None:
        nonlocal in_callback
        in_callback = True
        on_done(outcome)
        in_callback = False

    try:
        pool.compute_each(list(writes), done)
    except BaseException:
        deadline = time.monotonic() + timeout
        with contextlib.suppress(Exception):  # a cluster gone away: nothing left to wait for
            while sum(pool.run_everywhere(stop_writes, run)) and time.monotonic() < deadline:
                time.sleep(0.05)
        if check is not None and not in_callback:
            check()
        raise


# ------------------------------------------------------------------------------ devices
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
