"""GDAL settings for cloud reads, set in this one place and passed to every stackstac read.

Network settings can be overridden from the environment without code changes, e.g. for a
slow link or a test: ``SLIDEWATCH_GDAL_HTTP_TIMEOUT=120 slidewatch run ...``. Each key of
:data:`OVERRIDABLE` is read from ``SLIDEWATCH_<KEY>``; a value that is not a positive
number is ignored with a warning (the default stays). Overrides are read when
:func:`gdal_env` is first called, i.e. by the first read.

Reads go through :class:`CrsCheckedReader`, stackstac's reader plus one check
(:func:`check_georef`, once per file): the file's own CRS, geotransform and shape must be
the ones its STAC item declares (``proj:epsg``/``proj:code``, ``proj:transform``,
``proj:shape``; asset-level fields override item-level ones), otherwise the pixels would
silently land elsewhere (or nowhere) on the grid. A read error is
explained by :func:`read_failure` (URL, HTTP status, whether retrying can help), and
:func:`clear_http_cache` makes GDAL forget a failed URL before a retry.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import DEFAULT_GDAL_ENV, AutoParallelRioReader

from pipeline.core.errors import InputDataError
from pipeline.core.secrets import install_log_redaction, redact

log = logging.getLogger(__name__)

ENV_PREFIX = "SLIDEWATCH_"

#: Settings that may be overridden from ``SLIDEWATCH_<KEY>``, with their defaults.
OVERRIDABLE: dict[str, float] = {
    "GDAL_HTTP_MAX_RETRY": 5,  # retry 429/5xx and timeouts ...
    "GDAL_HTTP_RETRY_DELAY": 1,  # ... starting one second apart (GDAL backs off)
    "GDAL_HTTP_TIMEOUT": 60,  # seconds for a whole request
    "GDAL_HTTP_CONNECTTIMEOUT": 30,  # seconds to connect
}

#: Integer-valued settings (GDAL parses them with atoi).
_INTEGER = {"GDAL_HTTP_MAX_RETRY", "GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT"}


def gdal_options(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The GDAL options slidewatch sets on every read, with ``SLIDEWATCH_*`` overrides applied."""
    env = os.environ if environ is None else environ
    options: dict[str, object] = {
        **OVERRIDABLE,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # never LIST a container on open
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_CACHEMAX": 256,  # MB, per process
    }
    for key, default in OVERRIDABLE.items():
        raw = env.get(ENV_PREFIX + key)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not (value >= 0 and value < float("inf")) or (key != "GDAL_HTTP_MAX_RETRY" and value == 0):
            log.warning("ignoring %s%s=%r: not a positive number; using %s", ENV_PREFIX, key, raw, default)
            continue
        if key in _INTEGER:
            value = int(value) if key == "GDAL_HTTP_MAX_RETRY" else max(1, int(round(value)))
        options[key] = value
    return options


def build_gdal_env(environ: Mapping[str, str] | None = None) -> LayeredEnv:
    """stackstac's default GDAL environment plus :func:`gdal_options`."""
    return DEFAULT_GDAL_ENV.updated(always=gdal_options(environ))


@functools.cache
def gdal_env() -> LayeredEnv:
    """The environment every read uses: stackstac's defaults plus retries for flaky object
    storage and no directory listing, with the ``SLIDEWATCH_*`` overrides read on first use.

    GDAL's messages reach Python through rasterio's loggers with full (signed) URLs, so the
    first call also puts the credential filter on those loggers.
    """
    import rasterio  # noqa: F401  (creates its loggers)

    install_log_redaction()
    return build_gdal_env()


def _libgdal():  # type: ignore[no-untyped-def]
    """The GDAL shared library rasterio has loaded (ctypes handle), or None."""
    import ctypes
    import ctypes.util
    from pathlib import Path

    import rasterio  # loads libgdal

    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            candidates = sorted({line.split()[-1] for line in fh if "libgdal" in line and "/" in line})
    except OSError:
        pass
    # Other wheels bundle their own GDAL (pyogrio's is loaded beside rasterio's when an
    # inventory is read): the cache to clear is the one of the GDAL rasterio links against.
    libs = str(Path(rasterio.__file__).resolve().parent.parent / "rasterio.libs")
    candidates.sort(key=lambda path: not path.startswith(libs))
    found = ctypes.util.find_library("gdal")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def clear_http_cache(url: str | None = None) -> bool:
    """Forget what GDAL cached about ``url`` (or every URL): sizes, blocks and failures.

    GDAL's ``/vsicurl/`` layer caches a failed request per URL, so a retry of the same URL
    in the same process would fail again without asking the server; call this before a
    retry. Returns False when the GDAL library could not be reached (nothing cleared).
    """
    global _LIB, _GENERATION
    _GENERATION += 1  # files kept open by the readers are reopened (their handles cache bytes too)
    if _LIB is None:
        _LIB = _libgdal() or False
    if not _LIB:
        return False
    try:
        if url is None:
            _LIB.VSICurlClearCache()
        else:
            prefix = url if url.startswith("/vsi") else "/vsicurl/" + url
            _LIB.VSICurlPartialClearCache(prefix.encode())
    except AttributeError:
        return False
    return True


_LIB = None
_GENERATION = 0


def http_cache_generation() -> int:
    """How many times :func:`clear_http_cache` ran in this process: a reader that keeps files
    open (:mod:`pipeline.acquire.readers`) closes them when it changes, so a retry never reads
    through a handle that saw the failure."""
    return _GENERATION


# ------------------------------------------------------------------------------ reading
#: How far (in pixels of the file) the file's georeferencing may stray from its item's before it
#: is refused: float rounding only.
GEOREF_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class AssetGeoref:
    """What a STAC item says about one asset's file (``proj:*``, asset-level fields overriding
    item-level ones): its EPSG code, geotransform (a, b, c, d, e, f) and (rows, cols); None where
    the item says nothing. ``what`` names the asset and item in messages."""

    what: str
    epsg: int | None = None
    transform: tuple[float, float, float, float, float, float] | None = None
    shape: tuple[int, int] | None = None


def _declared_epsg(value: object) -> int | None:
    if isinstance(value, str) and value.upper().startswith("EPSG:"):
        value = value.split(":", 1)[1]
        value = int(value) if value.isdigit() else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _declared_transform(value: object) -> tuple[float, float, float, float, float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) < 6:
        return None
    try:
        t = tuple(float(v) for v in value[:6])
    except (TypeError, ValueError):
        return None
    return t if all(abs(v) < float("inf") for v in t) else None  # type: ignore[return-value]


def _declared_shape(value: object) -> tuple[int, int] | None:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    dims = []
    for v in value[-2:]:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            return None
        dims.append(v)
    return (dims[0], dims[1])


def asset_georef(item: Mapping, key: str) -> AssetGeoref | None:
    """What ``item`` (a STAC item dict) says about asset ``key``'s georeferencing, asset-level
    ``proj:*`` fields overriding item-level ones; None when it says nothing."""
    props = item.get("properties") or {}
    asset = (item.get("assets") or {}).get(key) or {}

    def field(name: str) -> object:
        return asset[name] if name in asset else props.get(name)

    if "proj:epsg" in asset or "proj:code" in asset:  # the asset's CRS, in either spelling, wins
        epsg = _declared_epsg(asset.get("proj:epsg")) or _declared_epsg(asset.get("proj:code"))
    else:
        epsg = _declared_epsg(props.get("proj:epsg")) or _declared_epsg(props.get("proj:code"))
    transform = _declared_transform(field("proj:transform"))
    shape = _declared_shape(field("proj:shape"))
    if epsg is None and transform is None and shape is None:
        return None
    return AssetGeoref(f"asset {key!r} of item {item.get('id')!r}", epsg, transform, shape)


#: (file URL without query, AssetGeoref) pairs already checked in this process (one check per file).
_CRS_CHECKED: set[tuple[str, AssetGeoref]] = set()


def check_georef(ds, url: str, expected: AssetGeoref) -> None:  # type: ignore[no-untyped-def]
    """Refuse (InputDataError) an opened file whose CRS, geotransform or shape differ from what
    its STAC item declares (``expected``): its pixels would land in the wrong place. Each file
    is checked once per process (whatever its token)."""
    key = (url.split("?", 1)[0], expected)
    if key in _CRS_CHECKED:
        return
    if expected.epsg is not None:
        _check_crs(ds.crs, url, expected.what, expected.epsg)
    _check_grid(ds.transform, (ds.height, ds.width), url, expected)
    if len(_CRS_CHECKED) > 100_000:
        _CRS_CHECKED.clear()
    _CRS_CHECKED.add(key)


def _check_crs(crs, url: str, what: str, epsg: int) -> None:  # type: ignore[no-untyped-def]
    found = _horizontal_epsg(crs)
    if found == epsg:
        return
    if found is None and crs is not None and _same_crs(crs, epsg):
        return
    found = "no CRS" if crs is None else (f"EPSG:{found}" if isinstance(found, int) else crs.to_string()[:80])
    raise InputDataError(
        f"{what} ({redact(url)}) is in {found}, but its STAC item declares EPSG:{epsg}; "
        "its pixels would land in the wrong place.",
        "fix the item's proj:code/proj:epsg or the file's CRS (gdal_edit.py -a_srs), or drop the item.",
    )


def _fmt_transform(t: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:.12g}" for v in t) + "]"


def _check_grid(transform, shape: tuple[int, int], url: str, expected: AssetGeoref) -> None:  # type: ignore[no-untyped-def]
    """The file's geotransform and shape against the item's (when it declares them)."""
    from affine import Affine

    problems: list[str] = []
    says: list[str] = []
    has: list[str] = []
    if expected.shape is not None and tuple(shape) != expected.shape:
        problems.append("shape")
        says.append(f"proj:shape [{expected.shape[0]}, {expected.shape[1]}]")
    if expected.transform is not None:
        item_tr = Affine(*expected.transform)
        file_tr = Affine(*tuple(transform)[:6])
        rows, cols = expected.shape or tuple(shape)
        corners = [(0.0, 0.0), (float(cols), 0.0), (0.0, float(rows)), (float(cols), float(rows))]
        try:
            inverse = ~file_tr
            off = [inverse @ (item_tr @ p) for p in corners]
            worst = max(max(abs(u - p[0]), abs(v - p[1])) for (u, v), p in zip(off, corners))
        except Exception:  # noqa: BLE001 - a degenerate geotransform cannot match
            off, worst = [], float("inf")
        if not worst <= GEOREF_TOLERANCE_PX:
            problems.append("geotransform")
            says.insert(0, f"proj:transform {_fmt_transform(expected.transform)}")
            if off:
                # where the file's origin is, in its pixels and in CRS units from the item's (+ 0.0: no "-0")
                du, dv = -off[0][0] + 0.0, -off[0][1] + 0.0
                dx, dy = file_tr.c - item_tr.c + 0.0, file_tr.f - item_tr.f + 0.0
                scale = "" if worst <= max(abs(du), abs(dv)) + 1e-3 else (
                    f"; pixel size or rotation differ too: {worst:.3g} px off at a corner")
                has.append(f"geotransform {_fmt_transform(tuple(file_tr)[:6])} (origin off by {dx:+.6g}, {dy:+.6g} "
                           f"in CRS units, i.e. {du:+.3g} columns, {dv:+.3g} rows{scale})")
            else:
                has.append(f"geotransform {_fmt_transform(tuple(transform)[:6])}")
    if not problems:
        return
    has.append(f"shape {shape[0]} x {shape[1]}")
    raise InputDataError(
        f"{expected.what} ({redact(url)}) has {' and '.join(has)}, but its STAC item says {' and '.join(says)}; "
        "its pixels would land in the wrong place.",
        "fix the item's proj:transform/proj:shape or the file's georeferencing (gdal_edit.py -a_ullr), "
        "or drop the item.",
    )


class CrsCheckedReader(AutoParallelRioReader):
    """stackstac's reader, refusing a file whose CRS, geotransform or shape differ from its
    item's declared ones (see :func:`check_georef`)."""

    def __init__(self, *, expected: Mapping[str, AssetGeoref] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.expected = expected or {}

    def _open(self):  # type: ignore[no-untyped-def]
        opened = super()._open()
        expected = self.expected.get(self.url)
        if expected is not None and (self.url.split("?", 1)[0], expected) not in _CRS_CHECKED:
            import rasterio

            with self.gdal_env.open, rasterio.open(self.url) as ds:  # the header is cached: no new request
                check_georef(ds, self.url, expected)
        return opened

    def __getstate__(self):  # type: ignore[no-untyped-def]
        # stackstac's __setstate__ calls __init__(**state), which takes expected back
        return {**super().__getstate__(), "expected": self.expected}


def _horizontal_epsg(crs) -> int | None:  # type: ignore[no-untyped-def]
    """EPSG code of a CRS's horizontal part (compound CRSs like DEMs with a vertical datum)."""
    if crs is None:
        return None
    from pyproj import CRS as ProjCRS

    try:
        pc = ProjCRS.from_wkt(crs.to_wkt())
        if pc.is_compound and pc.sub_crs_list:
            pc = pc.sub_crs_list[0]
        return pc.to_epsg(min_confidence=20)
    except Exception:  # noqa: BLE001 - an unparseable CRS is compared below
        return None


def _same_crs(crs, epsg: int) -> bool:  # type: ignore[no-untyped-def]
    from pyproj import CRS as ProjCRS

    try:
        pc = ProjCRS.from_wkt(crs.to_wkt())
        if pc.is_compound and pc.sub_crs_list:
            pc = pc.sub_crs_list[0]
        return bool(pc.equals(ProjCRS.from_epsg(epsg), ignore_axis_order=True))
    except Exception:  # noqa: BLE001
        return False


def crs_checked_reader(item_dicts: Iterable[Mapping], assets: Iterable[str]):  # type: ignore[no-untyped-def]
    """A stackstac ``reader`` checking each asset's file CRS, geotransform and shape against its
    item's (see :class:`CrsCheckedReader`); items as the dicts passed to ``stackstac.stack``."""
    keys = list(assets)
    expected: dict[str, AssetGeoref] = {}
    for d in item_dicts:
        for key in keys:
            asset = d.get("assets", {}).get(key)
            if not asset or not asset.get("href"):
                continue
            georef = asset_georef(d, key)
            if georef is not None:
                expected[asset["href"]] = georef
    return functools.partial(CrsCheckedReader, expected=expected)
