"""Shared test helpers: where ../shared/fixtures is, skipping cleanly when it is absent."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real third-party fixtures not found at {SHARED_FIXTURES} (../shared/fixtures beside the repo)")
    return SHARED_FIXTURES
