"""First contact with Planetary Computer (issue 14, items 1-2), against a local stand-in
that serves the real recorded responses (:mod:`tests.pipeline.acquire.fakepc`):

* ``--sar auto|rtc|grd|none``: sentinel-1-rtc needs an account; anonymous users get 401/403
  from the SAS token endpoint. ``auto`` checks once and falls back to GRD with a note,
  ``rtc`` fails with one line naming the account and the fix, never "network";
* searches retry 429/5xx/timeouts with backoff, page through every result, and refuse
  (naming ``--max-items``) above the limit instead of dropping items.
"""

from __future__ import annotations

import inspect
from datetime import date

import pytest

from pipeline.acquire.catalog import StacApiSource, search_inputs
from pipeline.acquire.items import PlanetaryComputerSigner, register_signer
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.errors import CatalogError, SlidewatchError
from tests.pipeline.acquire.fakepc import RTC_ACCOUNT, FakePC

WINDOW = TimeWindow(date(2024, 4, 1), date(2024, 4, 30))
BBOX = (13.0, 30.0, 18.0, 35.0)
FAST = {"backoff": 0.01}  # the retry policy of production, with short sleeps


@pytest.fixture
def fake_pc(shared_fixtures, monkeypatch):  # type: ignore[no-untyped-def]
    """A started FakePC whose STAC API is signed like Planetary Computer's, with the SDK's
    token endpoint pointed at it and no subscription key."""
    import planetary_computer
    from planetary_computer.settings import Settings

    with FakePC(shared_fixtures) as pc:
        monkeypatch.setenv("PC_SDK_SAS_URL", pc.sas_url)
        monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "")
        Settings.get.cache_clear()
        planetary_computer.sas.TOKEN_CACHE.clear()
        register_signer(pc.url, PlanetaryComputerSigner())
        try:
            yield pc
        finally:
            register_signer(pc.url, None)
            Settings.get.cache_clear()
            planetary_computer.sas.TOKEN_CACHE.clear()


def _rtc_token_requests(pc: FakePC) -> int:
    return len(pc.requests("GET", f"/api/sas/v1/token/{RTC_ACCOUNT}/"))


@pytest.mark.parametrize("status", [401, 403])
def test_auto_falls_back_to_grd_when_rtc_needs_an_account(fake_pc, status):  # type: ignore[no-untyped-def]
    fake_pc.token_status = status
    src = StacApiSource.open(fake_pc.url, **FAST)
    zones = [search_inputs(src, BBOX, WINDOW, CubeConfig(sar="auto")) for _ in range(2)]  # two zones
    for got in zones:
        assert got.s1_collection == "sentinel-1-grd" and got.s1_history
        why = [n for n in got.notes if "sentinel-1-rtc" in n]
        assert len(why) == 1, got.notes
        assert "account" in why[0] and "PC_SDK_SUBSCRIPTION_KEY" in why[0] and f"HTTP {status}" in why[0]
        assert "sentinel-1-grd" in why[0] and "network" not in why[0].lower() and "\n" not in why[0]
    assert "sentinel-1-rtc" not in fake_pc.searched()  # never searched, never signed
    assert _rtc_token_requests(fake_pc) == 1  # checked once per source, before searching


@pytest.mark.parametrize("status", [401, 403])
def test_explicit_rtc_without_access_is_one_clear_line(fake_pc, status):  # type: ignore[no-untyped-def]
    fake_pc.token_status = status
    src = StacApiSource.open(fake_pc.url, **FAST)
    with pytest.raises(CatalogError) as err:
        search_inputs(src, BBOX, WINDOW, CubeConfig(sar="rtc"))
    msg = str(err.value)
    assert "sentinel-1-rtc" in msg and "account" in msg and f"HTTP {status}" in msg
    assert "PC_SDK_SUBSCRIPTION_KEY" in msg and "--sar grd" in msg and "Fix:" in msg
    assert "network" not in msg.lower() and "\n" not in msg
    assert fake_pc.searched() == []  # refused before any search


def test_a_refused_key_is_named_and_never_shown(fake_pc, monkeypatch):  # type: ignore[no-untyped-def]
    from planetary_computer.settings import Settings

    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "s3cret-key")
    Settings.get.cache_clear()
    fake_pc.token_status = 403
    src = StacApiSource.open(fake_pc.url, **FAST)
    with pytest.raises(CatalogError) as err:
        search_inputs(src, BBOX, WINDOW, CubeConfig(sar="rtc"))
    msg = str(err.value)
    assert "refused" in msg and "PC_SDK_SUBSCRIPTION_KEY" in msg and "s3cret" not in msg
    sent = fake_pc.requests("GET", f"/api/sas/v1/token/{RTC_ACCOUNT}/")
    assert sent and sent[0][2]["key"] == "s3cret-key"  # the key went to the token endpoint


def test_auto_uses_rtc_when_the_token_endpoint_grants_it(fake_pc):  # type: ignore[no-untyped-def]
    src = StacApiSource.open(fake_pc.url, **FAST)
    got = search_inputs(src, BBOX, WINDOW, CubeConfig(sar="auto"))
    assert got.s1_collection == "sentinel-1-rtc" and got.s1
    assert "sentinel-1-rtc" in fake_pc.searched() and "sentinel-1-grd" not in fake_pc.searched()
    assert not any("account" in n for n in got.notes)
    # search results were signed with the granted token
    assert "sig=fake" in got.s1[0].assets["vv"].href


def test_grd_and_none_modes(fake_pc):  # type: ignore[no-untyped-def]
    fake_pc.token_status = 403
    src = StacApiSource.open(fake_pc.url, **FAST)
    got = search_inputs(src, BBOX, WINDOW, CubeConfig(sar="grd"))
    assert got.s1_collection == "sentinel-1-grd" and got.s1_history
    assert any("--sar grd" in n for n in got.notes)
    assert _rtc_token_requests(fake_pc) == 0 and "sentinel-1-rtc" not in fake_pc.searched()
    fake_pc.log.clear()
    got = search_inputs(src, BBOX, WINDOW, CubeConfig(sar="none"))
    assert got.s1 == [] and got.s1_history == [] and got.s1_collection == "none"
    assert any("--sar none" in n and "NDMI" in n for n in got.notes)
    assert not any(c.startswith("sentinel-1") for c in fake_pc.searched())
    assert all(not k.startswith("sentinel-1") and k != "none" for k in got.counts())


def test_search_retries_429_then_503_then_succeeds(fake_pc):  # type: ignore[no-untyped-def]
    src = StacApiSource.open(fake_pc.url, **FAST)
    fake_pc.search_faults = [429, 503]
    items = src.search("sentinel-2-l2a", BBOX, None)
    assert len(items) == len(fake_pc.items["sentinel-2-l2a"]) == 283
    assert [r[3] for r in fake_pc.requests("POST")] == [429, 503, 200, 200, 200]


def test_search_retries_a_timeout(fake_pc):  # type: ignore[no-untyped-def]
    src = StacApiSource.open(fake_pc.url, timeout=0.5, **FAST)
    fake_pc.search_faults = [200, "stall"]  # the second page stalls once
    items = src.search("sentinel-2-l2a", BBOX, None)
    assert len(items) == 283
    assert [r[3] for r in fake_pc.requests("POST")] == [200, -1, 200, 200]


def test_persistent_503_names_the_status_not_the_network(fake_pc):  # type: ignore[no-untyped-def]
    src = StacApiSource.open(fake_pc.url, retries=2, **FAST)
    fake_pc.search_faults = [503] * 10
    with pytest.raises(CatalogError) as err:
        src.search("sentinel-2-l2a", BBOX, None)
    msg = str(err.value)
    assert "HTTP 503" in msg and "3 tries" in msg and "sentinel-2-l2a" in msg and "\n" not in msg
    assert len(fake_pc.requests("POST")) == 3


def test_search_above_the_cap_is_refused(fake_pc):  # type: ignore[no-untyped-def]
    src = StacApiSource.open(fake_pc.url, **FAST)
    with pytest.raises(SlidewatchError) as err:
        src.search("sentinel-2-l2a", BBOX, None, max_items=150)
    msg = str(err.value)
    assert "--max-items" in msg and "150" in msg and "sentinel-2-l2a" in msg and "\n" not in msg
    assert not isinstance(err.value, CatalogError)  # not a network hiccup: flows must not retry it
    assert len(fake_pc.requests("POST")) == 2  # stops paging once the limit is passed
    # the same through the cube's search, with the limit from the config
    with pytest.raises(SlidewatchError, match="--max-items"):
        search_inputs(src, BBOX, WINDOW, CubeConfig(sar="grd", max_items=150))


def test_search_under_the_cap_returns_every_page(fake_pc):  # type: ignore[no-untyped-def]
    src = StacApiSource.open(fake_pc.url, **FAST)
    items = src.search("sentinel-2-l2a", BBOX, None, max_items=283)  # exactly the limit: all kept
    assert [it.id for it in items] == [f["id"] for f in fake_pc.items["sentinel-2-l2a"]]
    assert len(fake_pc.requests("POST")) == 3


def test_non_pc_api_has_no_token_check(fake_pc):  # type: ignore[no-untyped-def]
    """A STAC API without Planetary Computer signing (the demo's): auto = RTC when it has RTC items."""
    register_signer(fake_pc.url, None)
    fake_pc.token_status = 403
    src = StacApiSource.open(fake_pc.url, **FAST)
    got = search_inputs(src, BBOX, WINDOW, CubeConfig(sar="auto"))
    assert got.s1_collection == "sentinel-1-rtc" and _rtc_token_requests(fake_pc) == 0
    assert fake_pc.requests("GET", "/api/sas") == []


def test_config_refuses_unknown_sar_and_limits():
    with pytest.raises(SlidewatchError, match="auto, rtc, grd, none"):
        CubeConfig(sar="sometimes")
    with pytest.raises(SlidewatchError, match="--max-items"):
        CubeConfig(max_items=0)


def test_cli_and_flow_pass_sar_and_max_items(monkeypatch):  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import flows.stages
    from flows.cli import app
    from flows.prefect_flows import regional_run_flow

    seen = {}

    def fake_stage(reg, window, url, out, config, **kw):  # type: ignore[no-untyped-def]
        seen["config"] = config
        return SimpleNamespace(plans=[])

    monkeypatch.setattr(flows.stages, "cube_stage", fake_stage)
    args = ["run", "--region", "demo", "--start", "2024-07-01", "--end", "2024-07-31", "--dry-run"]
    res = CliRunner().invoke(app, [*args, "--sar", "grd", "--max-items", "5000"])
    assert res.exit_code == 0, res.output
    assert seen["config"].sar == "grd" and seen["config"].max_items == 5000
    res = CliRunner().invoke(app, args)
    assert seen["config"].sar == "auto" and seen["config"].max_items == 2000
    res = CliRunner().invoke(app, [*args, "--sar", "sometimes"])
    assert res.exit_code == 2
    params = inspect.signature(regional_run_flow.fn).parameters
    assert params["sar"].default == "auto" and params["max_items"].default == 2000


def test_cli_rtc_without_account_exits_2_with_one_line(fake_pc):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from flows.cli import app

    fake_pc.token_status = 401
    res = CliRunner().invoke(app, ["run", "--region", "demo", "--start", "2024-04-01", "--end", "2024-04-30",
                                   "--stac-url", fake_pc.url, "--sar", "rtc", "--dry-run"])
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error:") and "account" in line and "--sar grd" in line and "network" not in line.lower()
    assert fake_pc.searched() == []


def test_retry_after_is_capped():
    from urllib3 import HTTPResponse

    from pipeline.acquire.catalog import RETRY_AFTER_MAX_S, retry_policy

    policy = retry_policy().new()  # the capped policy survives urllib3's copies between tries
    assert policy.get_retry_after(HTTPResponse(headers={"Retry-After": "3600"}, status=429)) == RETRY_AFTER_MAX_S
