"""Shared fixtures of the reliability tests: one tiny region and one fault-free reference run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pystac
import pytest

from runkit import dump_items, load_item_dir, run_tiny
from tests.tinyregion import make_tiny_region


@dataclass(frozen=True)
class Tiny:
    cogs: Path  #: the region's COGs (served over HTTP by the network tests)
    items: dict[str, list[pystac.Item]]  #: items with local-file hrefs
    item_dir: Path  #: the same items saved for subprocesses (runkit.load_item_dir)
    ref: Path  #: the cube store of an uninterrupted, fault-free run from local files


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("reliability")
    items = make_tiny_region(root / "cogs", seed=11)
    item_dir = dump_items(items, root / "items")
    ref = run_tiny(load_item_dir(item_dir), root / "ref").zones[0].cube_path
    return Tiny(root / "cogs", items, item_dir, ref)
