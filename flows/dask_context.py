"""Where a run's dask graphs execute.

Default: the threaded scheduler of this process. When a distributed ``Client`` is active
(``slidewatch run --dask-address`` or ``SLIDEWATCH_DASK_ADDRESS``, or a LocalCluster the
caller started), graphs go to it instead. Every stage computes inside
:func:`compute_context`, so the choice is made in this one place; :func:`dask_client`
opens (and closes) the client a run or flow works in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dask


def active_client() -> object | None:
    """The current ``distributed.Client``, or ``None``."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


@contextlib.contextmanager
def compute_context() -> Iterator[None]:
    """Compute on the active distributed client if there is one, else on local threads."""
    if active_client() is not None:
        yield
        return
    with dask.config.set(scheduler="threads"):
        yield


#: Environment variable fixing how many write tiles are computed at once.
CONCURRENCY_ENV = "SLIDEWATCH_TILE_CONCURRENCY"
#: Threads per concurrent write tile (a tile is 2 × 2 chunks) and the most tiles at once.
THREADS_PER_TILE = 4
MAX_TILE_CONCURRENCY = 32


def tile_concurrency() -> int:
    """How many write tiles a stage computes at once.

    ``SLIDEWATCH_TILE_CONCURRENCY`` when set (a positive integer). Otherwise one tile per
    :data:`THREADS_PER_TILE` threads of the active distributed client's workers (at most
    :data:`MAX_TILE_CONCURRENCY`), so a cluster gets several tiles' graphs together; on
    this process's threads, or a client with fewer than 8 threads, one tile at a time (a
    tile's chunks already keep a few threads busy, and memory stays one tile's).
    """
    raw = os.environ.get(CONCURRENCY_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value >= 1:
            return min(value, 256)
        import logging

        logging.getLogger(__name__).warning("ignoring %s=%r: not a positive integer", CONCURRENCY_ENV, raw)
    client = active_client()
    if client is None:
        return 1
    try:
        threads = sum(client.nthreads().values())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a client that cannot answer gets the safe default
        return 1
    return max(1, min(MAX_TILE_CONCURRENCY, threads // THREADS_PER_TILE)) if threads >= 2 * THREADS_PER_TILE else 1


#: Environment variable naming a scheduler address (``tcp://host:8786``) when none is given.
ADDRESS_ENV = "SLIDEWATCH_DASK_ADDRESS"
#: ``dask_client("threads")``: no distributed client, the threaded scheduler of this process.
THREADS = "threads"


def _local_cluster(n_workers: int | None, threads_per_worker: int | None, processes: bool) -> object:
    """A LocalCluster sized for this machine.

    Default: one in-process worker (``processes=False``) with one thread per core. The
    run's work is GDAL reads and numpy kernels that release the GIL, so threads already
    keep every core busy, nothing is pickled between processes and no process has to
    start (``docs/scaling.md`` has the measured comparison). ``processes=True`` gives one
    single-threaded process per core, for GIL-bound work or to cap memory per worker.
    """
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    if processes:
        n_workers = n_workers or cores
        threads_per_worker = threads_per_worker or 1
    else:
        n_workers = n_workers or 1
        threads_per_worker = threads_per_worker or cores
    extra = {"host": "127.0.0.1"} if processes else {}  # in-process clusters talk over inproc://
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address=None,
        silence_logs=40,  # logging.ERROR
        **extra,
    )


@contextlib.contextmanager
def dask_client(
    address: str | None = None,
    *,
    processes: bool = False,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    timeout: float = 30.0,
) -> Iterator[object | None]:
    """Run the body with a distributed ``Client`` active, and close what was started here.

    ``address`` (else the ``SLIDEWATCH_DASK_ADDRESS`` environment variable) names a running
    scheduler (``tcp://host:8786``, ``dask scheduler``, dask-kubernetes, dask-gateway):
    connect to it. Without one, start a ``LocalCluster`` (threads in this process by
    default, see :func:`_local_cluster`). ``"threads"`` uses no distributed client at all
    (the threaded scheduler; yields ``None``). When a client is already active (a flow
    nested in another) and no other address is asked for, that client is reused and left
    open. Every compute inside goes to the client through :func:`compute_context`.

    Raises:
        SlidewatchError: the scheduler at ``address`` could not be reached in ``timeout`` s.
    """
    from pipeline.core.errors import SlidewatchError

    address = (address or os.environ.get(ADDRESS_ENV) or "").strip() or None
    if address == THREADS:
        yield None
        return
    current = active_client()
    if current is not None and (address is None or _same_scheduler(current, address)):
        yield current
        return

    from distributed import Client

    cluster = None
    if address is None:
        cluster = _local_cluster(n_workers, threads_per_worker, processes)
        client = Client(cluster, set_as_default=True)
    else:
        try:
            client = Client(address, timeout=timeout, set_as_default=True)
        except (OSError, TimeoutError) as exc:
            raise SlidewatchError(
                f"Could not reach the Dask scheduler at {address} ({type(exc).__name__}: {exc}).",
                f"start it (`dask scheduler`) or check the address; unset {ADDRESS_ENV} or drop "
                "--dask-address to run on a local cluster.",
            ) from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()  # type: ignore[attr-defined]


def _same_scheduler(client: object, address: str) -> bool:
    try:
        return str(client.scheduler.address) == address  # type: ignore[attr-defined]
    except AttributeError:
        return False
