"""Network faults while reading the cube's COGs over HTTP (a local fault-injecting server).

Every run either completes with a store identical to a fault-free run from local files, or
fails with a clear SlidewatchError naming the URL (no token) and leaves the partial store
and its ledger for a resume, never a store that looks complete.
"""

from __future__ import annotations

import logging
import time

import pytest

import pipeline.acquire.cube
import pipeline.store.tiles
from faultserver import FaultPlan
from pipeline.core.errors import CatalogError, SlidewatchError
from pipeline.acquire.gdal import build_gdal_env, clear_http_cache, gdal_options
from runkit import HttpRun, assert_same_store, ledger_tiles, store_attrs

#: Attributes that name the STAC API (a different local port per test) or derive from it.
URL_ATTRS = {"stac_url", "slidewatch_fingerprint"}


@pytest.fixture(autouse=True)
def fast_network(monkeypatch):  # type: ignore[no-untyped-def]
    """GDAL timeouts/retries short enough for a test (through the env override hook)."""
    monkeypatch.setenv("SLIDEWATCH_GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("SLIDEWATCH_GDAL_HTTP_RETRY_DELAY", "0.1")
    monkeypatch.setenv("SLIDEWATCH_GDAL_HTTP_MAX_RETRY", "3")
    monkeypatch.setattr(pipeline.acquire.cube, "gdal_env", build_gdal_env)
    monkeypatch.setattr(pipeline.store.tiles, "TILE_RETRY_DELAY_S", 0.05)
    clear_http_cache()
    yield
    clear_http_cache()


def test_gdal_settings_env_override_hook(caplog):  # type: ignore[no-untyped-def]
    opts = gdal_options({"SLIDEWATCH_GDAL_HTTP_TIMEOUT": "7", "SLIDEWATCH_GDAL_HTTP_RETRY_DELAY": "0.25"})
    assert opts["GDAL_HTTP_TIMEOUT"] == 7 and opts["GDAL_HTTP_RETRY_DELAY"] == 0.25
    assert gdal_options({})["GDAL_HTTP_TIMEOUT"] == 60 and gdal_options({})["GDAL_HTTP_MAX_RETRY"] == 5
    with caplog.at_level(logging.WARNING):
        bad = gdal_options({"SLIDEWATCH_GDAL_HTTP_TIMEOUT": "soon", "SLIDEWATCH_GDAL_HTTP_MAX_RETRY": "-1"})
    assert bad["GDAL_HTTP_TIMEOUT"] == 60 and bad["GDAL_HTTP_MAX_RETRY"] == 5
    assert "SLIDEWATCH_GDAL_HTTP_TIMEOUT" in caplog.text and "SLIDEWATCH_GDAL_HTTP_MAX_RETRY" in caplog.text
    assert build_gdal_env({"SLIDEWATCH_GDAL_HTTP_TIMEOUT": "3"}).always.options["GDAL_HTTP_TIMEOUT"] == 3


def test_fault_free_http_run_equals_local_run(tiny, tmp_path):  # type: ignore[no-untyped-def]
    cogs, items, ref = tiny.cogs, tiny.items, tiny.ref
    with HttpRun(cogs, items, FaultPlan(require_token=True)) as r:
        res = r.run(tmp_path)
        assert r.server.count(status=403) == 0
        assert all("token=1" in q.query for q in r.server.log if q.status in (200, 206))
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)
    saved = (res.run_dir / "items" / "utm48n" / "sentinel-2-l2a.json").read_text()
    assert "127.0.0.1" in saved and "token=" not in saved  # hrefs kept, tokens stripped


def test_5xx_errors_are_retried_by_gdal(tiny, tmp_path):  # type: ignore[no-untyped-def]
    cogs, items, ref = tiny.cogs, tiny.items, tiny.ref
    events: list = []
    with HttpRun(cogs, items, FaultPlan(seed=5, error_rate=0.3, error_repeats=2, error_status=503)) as r:
        res = r.run(tmp_path, events=events)
        assert r.server.count(fault="error") >= 5  # faults really were injected ...
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)  # ... and healed
    assert store_attrs(res.zones[0].cube_path)["slidewatch_complete"] is True


def test_timeouts_are_retried(tiny, tmp_path):  # type: ignore[no-untyped-def]
    cogs, items, ref = tiny.cogs, tiny.items, tiny.ref
    with HttpRun(cogs, items, FaultPlan(seed=2, timeout_rate=0.05, stall_s=2.5)) as r:
        res = r.run(tmp_path)
        assert r.server.count(fault="timeout") >= 1
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)


def test_truncated_bodies_are_retried_per_tile(tiny, tmp_path):  # type: ignore[no-untyped-def]
    cogs, items, ref = tiny.cogs, tiny.items, tiny.ref
    events: list = []
    with HttpRun(cogs, items, FaultPlan(seed=4, truncate_rate=0.1)) as r:
        res = r.run(tmp_path, events=events)
        assert r.server.count(fault="truncate") >= 1
    retries = [i for k, i in events if k == "retry"]
    assert retries, "a truncated body must have cost at least one tile retry"
    assert all("token=" not in i["reason"] for i in retries)
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)


def test_expired_token_is_resigned_and_the_tile_retried(tiny, tmp_path):  # type: ignore[no-untyped-def]
    cogs, items, ref = tiny.cogs, tiny.items, tiny.ref
    events: list = []
    with HttpRun(cogs, items, FaultPlan(require_token=True)) as r:
        def expire_after_first_tile(kind, info):  # type: ignore[no-untyped-def]
            if kind == "tile" and sum(1 for k, _ in events if k == "tile") == 1:
                r.server.rotate_token()  # the signer's cached token is now stale

        res = r.run(tmp_path, events=events, on_event=expire_after_first_tile)
        assert r.server.count(fault="expired") >= 1  # 403s were answered ...
        assert r.signer.refreshes >= 1 and r.signer.fetches >= 2  # ... and a fresh token fetched
    assert any(k == "retry" and "403" in i["reason"] for k, i in events)
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)


def test_retry_budget_spent_fails_clearly_keeps_partial_and_resumes(tiny, tmp_path):  # type: ignore[no-untyped-def]
    cogs, items, ref = tiny.cogs, tiny.items, tiny.ref
    events: list = []
    with HttpRun(cogs, items, FaultPlan(require_token=True, always_status=503)) as r:
        def break_after_two_tiles(kind, info):  # type: ignore[no-untyped-def]
            if kind == "tile" and sum(1 for k, _ in events if k == "tile") == 2:
                r.server.plan.always_fail = ("s2/1/B04.tif",)

        with pytest.raises(CatalogError) as err:
            r.run(tmp_path, events=events, on_event=break_after_two_tiles)
        msg = str(err.value)
        assert "s2/1/B04.tif" in msg and "token=" not in msg and "Fix:" in msg
        assert "503" in msg and "rerun the same command" in msg
        assert sum(1 for k, _ in events if k == "retry") == pipeline.store.tiles.TILE_RETRIES
        store = tmp_path / "tiny" / "20240701_20240831" / "cube_utm48n.zarr"
        assert not store.exists()  # never a store that looks complete
        partial = store.with_name(store.name + ".partial")
        assert partial.exists() and store_attrs(partial)["slidewatch_complete"] is False
        kept = ledger_tiles(store)  # the tiles finished before the failure (GDAL's cache may
        assert 2 <= len(kept) < 4  # serve a third one without asking the server)
        assert set(kept) == {i["tile"] for k, i in events if k == "tile"}
        # the network heals: the same command resumes and writes only the missing tiles
        r.server.plan.always_fail = ()
        events.clear()
        res = r.run(tmp_path, events=events)
    skipped = {i["tile"] for k, i in events if k == "tile" and i["skipped"]}
    written = {i["tile"] for k, i in events if k == "tile" and not i["skipped"]}
    assert skipped == set(kept) and len(skipped | written) == 4 and not skipped & written
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)


def test_permanent_404_is_not_retried(tiny, tmp_path):  # type: ignore[no-untyped-def]
    cogs, items = tiny.cogs, tiny.items
    events: list = []
    with HttpRun(cogs, items, FaultPlan(always_fail=("s1/2/vh.tif",), always_status=404)) as r:
        with pytest.raises(SlidewatchError) as err:
            r.run(tmp_path, events=events)
    msg = str(err.value)
    assert isinstance(err.value, CatalogError) and "404" in msg and "s1/2/vh.tif" in msg and "Fix:" in msg
    assert not any(k == "retry" for k, _ in events)
    assert not list(tmp_path.rglob("cube_utm48n.zarr"))


def test_concurrent_tiles_heal_fail_clearly_and_resume(tiny, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Two write tiles at a time (SLIDEWATCH_TILE_CONCURRENCY=2): 503s heal into the reference
    store; an asset that fails for good stops the run with the asset and a tile named, keeps
    every finished tile, and the same command resumes to the reference store."""
    from flows.dask_context import CONCURRENCY_ENV

    monkeypatch.setenv(CONCURRENCY_ENV, "2")
    cogs, items, ref = tiny.cogs, tiny.items, tiny.ref
    with HttpRun(cogs, items, FaultPlan(seed=7, error_rate=0.3, error_repeats=2, error_status=503)) as r:
        res = r.run(tmp_path / "healed")
        assert r.server.count(fault="error") >= 5
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)

    events: list = []
    with HttpRun(cogs, items, FaultPlan(require_token=True, always_status=503, always_fail=("s2/2/B04.tif",))) as r:
        with pytest.raises(CatalogError) as err:
            r.run(tmp_path / "broken", events=events)
        msg = str(err.value)
        assert "s2/2/B04.tif" in msg and "token=" not in msg and "tile " in msg and "Fix:" in msg
        store = tmp_path / "broken" / "tiny" / "20240701_20240831" / "cube_utm48n.zarr"
        assert not store.exists()
        kept = ledger_tiles(store)
        assert set(kept) == {i["tile"] for k, i in events if k == "tile"} and len(kept) < 4
        r.server.plan.always_fail = ()
        res = r.run(tmp_path / "broken")
    assert_same_store(res.zones[0].cube_path, ref, ignore_attrs=URL_ATTRS)


# ------------------------------------------------------------------ failures of the header read
# GDAL's HEAD answers, the ranged GET of the file's header fails: GDAL's open then says only
# "not recognized as being in a supported file format", and the status has to be found.
HEADER = ("GET",)


def test_permanent_404_on_the_header_is_not_retried_and_named_gone(tiny, tmp_path):  # type: ignore[no-untyped-def]
    events: list = []
    plan = FaultPlan(always_fail=("s2/1/B04.tif",), always_status=404, always_methods=HEADER)
    with HttpRun(tiny.cogs, tiny.items, plan) as r:
        with pytest.raises(CatalogError) as err:
            r.run(tmp_path, events=events)
        heads = sum(1 for q in r.server.log if q.path.endswith("s2/1/B04.tif") and q.method == "HEAD")
    msg = str(err.value)
    assert "404" in msg and "s2/1/B04.tif" in msg and "token=" not in msg and "Fix:" in msg
    assert "gone" in msg and "reprocessed" in msg and "network" not in msg
    assert not any(k == "retry" for k, _ in events)  # permanent: no tile retry ...
    assert heads <= 1  # ... so GDAL never opened it a second time
    assert not list(tmp_path.rglob("cube_utm48n.zarr"))


def test_persistent_403_is_resigned_once_then_names_the_account(tiny, tmp_path):  # type: ignore[no-untyped-def]
    events: list = []
    plan = FaultPlan(always_fail=("s2/1/B04.tif",), always_status=403, always_methods=HEADER)
    with HttpRun(tiny.cogs, tiny.items, plan) as r:
        with pytest.raises(CatalogError) as err:
            r.run(tmp_path, events=events)
        refreshes, fetches = r.signer.refreshes, r.signer.fetches
    msg = str(err.value)
    assert "403" in msg and "s2/1/B04.tif" in msg and "token=" not in msg
    assert "PC_SDK_SUBSCRIPTION_KEY" in msg and "network" not in msg
    retries = [i for k, i in events if k == "retry"]
    assert len(retries) == 1 and "403" in retries[0]["reason"]  # re-signed once, then given up
    assert "after 2 attempts" in msg
    assert refreshes == 1 and fetches == 2  # a fresh token was fetched for that one retry
    assert not list(tmp_path.rglob("cube_utm48n.zarr"))


def test_persistent_503_fails_within_the_retry_time_bound_naming_503(tiny, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from pipeline.acquire.failures import READ_RETRY_ENV

    bound_s = 3.0
    monkeypatch.setenv(READ_RETRY_ENV, str(bound_s))
    monkeypatch.setattr(pipeline.store.tiles, "TILE_RETRIES", 30)  # the time bound, not the count, stops it
    events: list = []
    plan = FaultPlan(always_fail=("s2/1/B04.tif",), always_status=503, always_methods=HEADER)
    with HttpRun(tiny.cogs, tiny.items, plan) as r:
        t0 = time.monotonic()
        with pytest.raises(CatalogError) as err:
            r.run(tmp_path, events=events)
        took = time.monotonic() - t0
    msg = str(err.value)
    assert "503" in msg and "s2/1/B04.tif" in msg and "token=" not in msg and READ_RETRY_ENV in msg
    retries = sum(1 for k, _ in events if k == "retry")
    assert 1 <= retries < 30
    # the bound, plus the first failing attempt and the last one (GDAL's own short retries here)
    assert took < bound_s + 12, f"took {took:.1f} s for a {bound_s} s bound ({retries} retries)"


def test_read_retry_seconds_from_the_environment(caplog):  # type: ignore[no-untyped-def]
    from pipeline.acquire.failures import DEFAULT_READ_RETRY_S, READ_RETRY_ENV, read_retry_seconds

    assert read_retry_seconds({}) == DEFAULT_READ_RETRY_S
    assert read_retry_seconds({READ_RETRY_ENV: "600"}) == 600.0
    assert read_retry_seconds({READ_RETRY_ENV: "0"}) == 0.0  # no retry at all
    with caplog.at_level(logging.WARNING):
        assert read_retry_seconds({READ_RETRY_ENV: "soon"}) == DEFAULT_READ_RETRY_S
        assert read_retry_seconds({READ_RETRY_ENV: "-5"}) == DEFAULT_READ_RETRY_S
    assert READ_RETRY_ENV in caplog.text


def test_read_retry_budget_counts_per_tile_and_foresees_the_next_attempt():  # type: ignore[no-untyped-def]
    from pipeline.acquire.failures import ReadFailure, ReadRetryBudget

    now = [0.0]
    budget = ReadRetryBudget(60, clock=lambda: now[0])
    busy = ReadFailure("http://x/a.tif", 503, "HTTP response code: 503", True)
    assert budget.stop(busy, "t1", pause_s=2) is None  # first failure at t=0: retry after 2 s
    now[0] = 22.0  # that retry took 20 s and failed again
    assert budget.stop(busy, "t1", pause_s=4) is None  # 22 + 4 + 20 = 46 <= 60
    now[0] = 44.0  # it took 18 s
    assert budget.stop(busy, "t1", pause_s=8) == "time"  # 44 + 8 + 20 (the longest) > 60: it would end late
    assert budget.stop(busy, "t2", pause_s=2) is None  # another tile has its own clock
    assert budget.elapsed_s("t1") == 44.0 and budget.elapsed_s("t2") == 0.0
    denied = ReadFailure("http://x/a.tif", 403, "HTTP response code: 403", True)
    assert budget.stop(denied, "t3") is None  # re-signed once ...
    assert budget.stop(denied, "t3") == "resigned"  # ... a fresh token refused too: stop
    assert ReadRetryBudget(0, clock=lambda: now[0]).stop(busy, "t4", pause_s=0.1) == "time"  # 0: no retries
