"""Where a run's dask graphs execute.

Default: the threaded scheduler of this process. When a distributed ``Client`` is active
(``slidewatch run --dask-address`` or ``SLIDEWATCH_DASK_ADDRESS``, or a LocalCluster the
caller started), graphs go to it instead. Every stage computes inside
:func:`compute_context`, so the choice is made in this one place; :func:`dask_client`
opens (and closes) the client a run or flow works in.

The local cluster listens on 127.0.0.1 only and starts no dashboard unless asked
(``slidewatch run --dashboard``: on 127.0.0.1, see :func:`dashboard_url`); without it the
scheduler's and worker's HTTP servers answer only ``/health``. What distributed logs is
set by :func:`dask_logging` (the CLI: nothing but CRITICAL by default, everything with
``-v``) and always passes the credential filter, on the workers too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

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


# ------------------------------------------------------------------------ task pools
class TaskPool:
    """Dask graphs run on the active distributed client or on this process's threads.

    The interface a stage needs to compute one graph whose output tasks it handles as each
    finishes, whatever runs them (see :func:`task_pool`): :meth:`compute_each`,
    :meth:`run_everywhere` (a function in every process that runs tasks) and
    :meth:`threads` (how many tasks can run at once).
    """

    client: object | None = None

    def compute_each(self, tasks: Sequence[object], on_done: Callable[[object], None]) -> None:
        """Compute the ``dask.delayed`` ``tasks`` as one graph (what they share runs once)
        and call ``on_done(result)`` in this thread as each finishes, in completion order.
        The first error (a task's, or ``on_done``'s) propagates; tasks not started by then
        are dropped, those running are not waited for (the caller's business)."""
        raise NotImplementedError

    def run_everywhere(self, fn: Callable, *args: object) -> list:
        """``fn(*args)`` in every process that runs this pool's tasks (this one included):
        the results (a process that cannot answer is left out)."""
        return [fn(*args)]

    def threads(self, resource: str | None = None) -> int:
        """Tasks that can run at once (on the workers advertising ``resource``, when given)."""
        raise NotImplementedError


class _ThreadTaskPool(TaskPool):
    """Graphs on dask's threaded scheduler, with a thread pool of this process."""

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._threads = max(1, int(threads))
        self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="slidewatch-task")

    def compute_each(self, tasks: Sequence[object], on_done: Callable[[object], None]) -> None:
        wanted = {t.key for t in tasks}  # type: ignore[attr-defined]

        def posttask(key: object, result: object, dsk: object, state: object, worker_id: object) -> None:
            if key in wanted:  # runs in this thread, as each task finishes
                on_done(result)

        # a callback of this compute only, as the tuple (start, start_state, pretask, posttask,
        # finish) dask's local scheduler takes (a Callback used as a context manager is global)
        dask.compute(*tasks, scheduler="threads", pool=self._executor, callbacks=[(None, None, None, posttask, None)])

    def threads(self, resource: str | None = None) -> int:
        return 0 if resource else self._threads

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class _ClientTaskPool(TaskPool):
    """Graphs on a distributed client's workers."""

    def __init__(self, client: object) -> None:
        self.client = client

    def compute_each(self, tasks: Sequence[object], on_done: Callable[[object], None]) -> None:
        from distributed import as_completed

        futures = self.client.compute(list(tasks))  # type: ignore[attr-defined]
        try:
            for fut in as_completed(futures):
                on_done(fut.result())
        except BaseException:
            self.client.cancel(futures)  # type: ignore[attr-defined]
            raise

    def run_everywhere(self, fn: Callable, *args: object) -> list:
        client = self.client
        out = list(client.run(fn, *args, on_error="ignore").values())  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            out.append(client.run_on_scheduler(fn, *args))  # type: ignore[attr-defined]
        return out + [fn(*args)]  # this process: the driver, and the workers of an in-process cluster

    def threads(self, resource: str | None = None) -> int:
        workers = self.client.scheduler_info()["workers"].values()  # type: ignore[attr-defined]
        if resource is None:
            return sum(int(w.get("nthreads", 1)) for w in workers)
        return sum(int(min(w.get("nthreads", 1), (w.get("resources") or {}).get(resource, 0))) for w in workers)


@contextlib.contextmanager
def task_pool(threads: int = 1) -> Iterator[TaskPool]:
    """A :class:`TaskPool` on the active distributed client (see :func:`dask_client`), else on
    ``threads`` threads of this process; the thread pool is shut down on exit."""
    client = active_client()
    if client is not None:
        yield _ClientTaskPool(client)
        return
    pool = _ThreadTaskPool(threads)
    try:
        yield pool
    finally:
        pool.close()


#: Environment variable naming a scheduler address (``tcp://host:8786``) when none is given.
ADDRESS_ENV = "SLIDEWATCH_DASK_ADDRESS"
#: ``dask_client("threads")``: no distributed client, the threaded scheduler of this process.
THREADS = "threads"


#: Where ``--dashboard`` asks the local scheduler to serve its dashboard (another free port
#: on 127.0.0.1 when that one is taken).
DASHBOARD_ADDRESS = "127.0.0.1:8787"
#: HTTP routes of the local scheduler and workers without a dashboard: a health check only
#: (distributed's info pages show task exceptions, i.e. signed URLs).
_HEALTH_ONLY = ["distributed.http.health"]


def _local_cluster(n_workers: int | None, threads_per_worker: int | None, processes: bool,
                   dashboard: bool = False) -> object:
    """A LocalCluster sized for this machine, reachable from this machine only.

    Default: one in-process worker (``processes=False``) with one thread per core. The
    run's work is GDAL reads and numpy kernels that release the GIL, so threads already
    keep every core busy, nothing is pickled between processes and no process has to
    start (``docs/scaling.md`` has the measured comparison). ``processes=True`` gives one
    single-threaded process per core, for GIL-bound work or to cap memory per worker.

    Every socket it opens is on 127.0.0.1: comms (``tcp://127.0.0.1`` between processes,
    ``inproc://`` in one), and the scheduler's and workers' HTTP servers, which distributed
    would otherwise open on all interfaces. Without ``dashboard`` those serve ``/health``
    only; with it the scheduler serves its dashboard at :data:`DASHBOARD_ADDRESS`.
    """
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    if processes:
        n_workers = n_workers or cores
        threads_per_worker = threads_per_worker or 1
    else:
        n_workers = n_workers or 1
        threads_per_worker = threads_per_worker or cores
    extra: dict[str, object] = {"host": "127.0.0.1"} if processes else {"worker_class": _loopback_worker_class()}
    config: dict[str, object] = {"distributed.worker.http.routes": _HEALTH_ONLY}
    if not dashboard:
        config["distributed.scheduler.http.routes"] = _HEALTH_ONLY
    with dask.config.set(config), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use")  # another port is taken
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=None,
            scheduler_kwargs={"dashboard": dashboard,
                              "dashboard_address": DASHBOARD_ADDRESS if dashboard else "127.0.0.1:0"},
            silence_logs=_silence_level(),
            **extra,
        )


@functools.cache
def _loopback_worker_class() -> type:
    from distributed import Worker

    class LoopbackWorker(Worker):
        """An in-process worker whose HTTP server listens on 127.0.0.1 (distributed takes the
        host of an ``inproc://`` address, i.e. all interfaces, otherwise)."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            if not kwargs.get("dashboard"):
                kwargs["dashboard_address"] = "127.0.0.1:0"
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    return LoopbackWorker


def dashboard_url(client: object) -> str | None:
    """The URL of the dashboard of ``client``'s scheduler: on 127.0.0.1 for a local cluster
    (whatever address distributed advertises for an ``inproc://`` scheduler), the
    scheduler's own link for a remote one; None when it has none."""
    try:
        cluster = getattr(client, "cluster", None)
        server = getattr(getattr(cluster, "scheduler", None), "http_server", None)
        if server is not None and getattr(server, "port", None):
            return f"http://{getattr(server, 'address', None) or '127.0.0.1'}:{server.port}/status"
        return str(client.dashboard_link) or None  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a link is a convenience
        return None


# ------------------------------------------------------------------------------ logging
#: distributed's log level chosen by :func:`dask_logging` (None: as distributed configures it).
_DASK_LOG_LEVEL: int | None = None
#: Loggers whose level :func:`dask_logging` sets (distributed gives some of them their own).
_DASK_LOGGERS = ("distributed", "distributed.client", "distributed.gc", "distributed.scheduler",
                 "distributed.worker", "distributed.nanny", "bokeh", "tornado", "tornado.application")


def dask_logging(verbose: bool) -> Callable[[], None]:
    """Quiet (default) or verbose Dask logs in this process, for the CLI; returns a function
    that puts things back as they were (the CLI calls it when the command ends).

    Quiet: distributed, tornado and bokeh log nothing below CRITICAL; a failed task is
    reported once, by slidewatch's own one-line error, instead of a traceback per task
    and retry, and a good run prints no ``INFO distributed`` lines. Verbose (``-v``):
    everything from INFO. Both: the credential filter on distributed's loggers and on the
    handlers that write them. Applied now, and again when a cluster or client is made
    (importing distributed resets its loggers' levels).
    """
    global _DASK_LOG_LEVEL
    before = (_DASK_LOG_LEVEL, dask.config.get("distributed.logging", None),
              {n: logging.getLogger(n).level for n in _DASK_LOGGERS})
    _DASK_LOG_LEVEL = logging.INFO if verbose else logging.CRITICAL
    if not verbose:  # what distributed applies when it is imported later
        dask.config.set({"distributed.logging": {n: "critical" for n in _DASK_LOGGERS}})
    _apply_dask_logging()

    def restore() -> None:
        global _DASK_LOG_LEVEL
        _DASK_LOG_LEVEL, config, levels = before
        if config is not None:
            dask.config.set({"distributed.logging": config})
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    return restore


def _silence_level() -> int | bool:
    """``silence_logs`` for a LocalCluster: the chosen level, else distributed's ERROR."""
    if _DASK_LOG_LEVEL is None:
        return logging.ERROR
    return False if _DASK_LOG_LEVEL <= logging.INFO else _DASK_LOG_LEVEL


def _apply_dask_logging() -> None:
    from pipeline.core.secrets import install_handler_redaction, install_log_redaction

    if _DASK_LOG_LEVEL is not None and "distributed" in sys.modules:
        for name in _DASK_LOGGERS:
            logger = logging.getLogger(name)
            if _DASK_LOG_LEVEL > logging.INFO or name == "distributed":
                logger.setLevel(_DASK_LOG_LEVEL)
    install_log_redaction()
    install_handler_redaction()


def _redact_worker_logs(client: object) -> None:
    """Put the credential filter on the loggers of every worker of ``client``, present and
    future (a worker plugin): their "Compute Failed" records carry signed URLs."""

    def setup() -> None:
        from pipeline.core.secrets import (
            install_handler_redaction,
            install_log_redaction,
        )

        install_log_redaction()
        install_handler_redaction()

    try:
        from distributed.diagnostics.plugin import WorkerPlugin

        class RedactLogs(WorkerPlugin):
            name = "slidewatch-redact-logs"

            def setup(self, worker: object) -> None:
                setup()

        client.register_plugin(RedactLogs())  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001 - a worker without slidewatch; its own logs stay its own
        logging.getLogger(__name__).debug("could not install log redaction on the workers: %s", err)


#: Scheduler address schemes distributed speaks.
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


def check_scheduler_address(address: str | None) -> None:
    """Refuse (one line, before any connection) an address that is not ``threads`` or
    ``scheme://host:port`` with a scheme distributed speaks and a port in 1..65535."""
    from urllib.parse import urlsplit

    from pipeline.core.errors import InputDataError

    text = (address or os.environ.get(ADDRESS_ENV) or "").strip()
    if not text or text == THREADS:
        return
    fix = "give the scheduler as tcp://host:8786 (or 'threads' for no cluster)."
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InputDataError(f"--dask-address {text!r} is not an address ({exc}).", fix) from None
    if parts.scheme == "inproc":
        return
    if parts.scheme not in SCHEMES or not parts.hostname or port is None or not 0 < port < 65536:
        raise InputDataError(f"--dask-address {text!r} is not scheme://host:port with a scheme of {', '.join(SCHEMES)}.", fix)


#: Seconds a ``tcp://`` scheduler has to send its greeting (it does so at once on connect).
PROBE_TIMEOUT_S = 10.0
#: A scheduler's greeting (its handshake message) is a few hundred bytes; anything claiming
#: more than this in its 8-byte length header is not one.
_MAX_GREETING_BYTES = 1 << 20


def probe_scheduler(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, in one line, a ``tcp://`` address where no Dask scheduler answers.

    A scheduler greets every new connection at once with its handshake, framed by an
    8-byte little-endian length. A web server (the dashboard's port, say) waits for a
    request instead, and one that answers ``HTTP/1.1 …`` would have distributed read those
    bytes as a frame length and try to allocate exabytes. So read the greeting first, on a
    plain socket, and check that its length is sane. Other schemes (``tls://``, ``ws://``)
    are left to distributed.
    """
    import socket
    import struct
    from urllib.parse import urlsplit

    from pipeline.core.errors import SlidewatchError

    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        return
    fix = (f"give the scheduler's own address (`dask scheduler` prints it, port 8786 by default; "
           f"8787 is its dashboard), or unset {ADDRESS_ENV} / drop --dask-address to run on a local cluster.")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            head = b""
            while len(head) < 8:
                chunk = sock.recv(8 - len(head))
                if not chunk:
                    break
                head += chunk
    except TimeoutError:
        raise SlidewatchError(f"{address} accepted a connection but sent no Dask greeting in {timeout:g} s: "
                              "it is not a Dask scheduler (a web server?).", fix) from None
    except OSError as exc:
        raise SlidewatchError(f"Could not reach the Dask scheduler at {address} ({type(exc).__name__}: {exc}).",
                              f"start it (`dask scheduler`) or check the address; {fix}") from None
    if len(head) < 8:
        raise SlidewatchError(f"{address} closed the connection without a Dask greeting: it is not a Dask scheduler.", fix)
    (length,) = struct.unpack("<Q", head)
    if not 0 < length <= _MAX_GREETING_BYTES:
        shown = head.decode("ascii", "replace") if head.isascii() else head.hex()
        raise SlidewatchError(f"{address} answered {shown!r}, not a Dask greeting: it is not a Dask scheduler "
                              "(a web server?).", fix)


@contextlib.contextmanager
def dask_client(
    address: str | None = None,
    *,
    processes: bool = False,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    timeout: float = 30.0,
    dashboard: bool = False,
) -> Iterator[object | None]:
    """Run the body with a distributed ``Client`` active, and close what was started here.

    ``address`` (else the ``SLIDEWATCH_DASK_ADDRESS`` environment variable) names a running
    scheduler (``tcp://host:8786``, ``dask scheduler``, dask-kubernetes, dask-gateway):
    connect to it. Without one, start a ``LocalCluster`` (threads in this process by
    default, see :func:`_local_cluster`; with ``dashboard`` it serves its dashboard on
    127.0.0.1, see :func:`dashboard_url`). ``"threads"`` uses no distributed client at all
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

    _apply_dask_logging()  # importing distributed has just reset its loggers
    cluster = None
    if address is None:
        cluster = _local_cluster(n_workers, threads_per_worker, processes, dashboard)
        client = Client(cluster, set_as_default=True)
    else:
        probe_scheduler(address, min(timeout, PROBE_TIMEOUT_S))
        try:
            client = Client(address, timeout=timeout, set_as_default=True)
        except (OSError, TimeoutError) as exc:
            raise SlidewatchError(
                f"Could not reach the Dask scheduler at {address} ({type(exc).__name__}: {exc}).",
                f"start it (`dask scheduler`) or check the address; unset {ADDRESS_ENV} or drop "
                "--dask-address to run on a local cluster.",
            ) from None
    _apply_dask_logging()
    _redact_worker_logs(client)
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
