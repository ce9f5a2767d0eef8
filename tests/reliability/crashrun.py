"""Subprocess driver for the crash/resume and concurrency tests (not a test module).

    python tests/reliability/crashrun.py ITEMS_DIR OUT [--hang-after N] [--hang-where tile|ledger]

Runs the tiny region (items saved by ``runkit.dump_items``) into OUT with ``cube_stage``
and prints one JSON line per progress event (flushed). With ``--hang-after N`` it stops
dead after N tiles, so the parent can SIGKILL it at a known point:

* ``tile``: after the N-th tile is written and recorded in the ledger;
* ``ledger``: after the (N+1)-th tile's pixels are written but *before* the ledger records
  it (a crash in the middle of a tile).

The hang is a bounded sleep (``--hang-s``), so an orphan never lives long.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("items")
    ap.add_argument("out")
    ap.add_argument("--hang-after", type=int, default=None)
    ap.add_argument("--hang-where", choices=["tile", "ledger"], default="tile")
    ap.add_argument("--hang-s", type=float, default=60.0)
    args = ap.parse_args()

    import pipeline.store.tiles
    from runkit import load_item_dir, run_tiny

    def hang(why: str) -> None:
        print(json.dumps({"kind": "hang", "why": why, "pid": os.getpid()}), flush=True)
        time.sleep(args.hang_s)
        print(json.dumps({"kind": "hang_timeout"}), flush=True)
        os._exit(3)

    written = 0

    def on_event(kind: str, info: dict) -> None:
        nonlocal written
        print(json.dumps({"kind": kind, **{k: v for k, v in info.items() if k != "counts"}}, default=str), flush=True)
        if kind == "tile" and not info["skipped"]:
            written += 1
            if args.hang_where == "tile" and written == args.hang_after:
                hang("after tile")

    if args.hang_after is not None and args.hang_where == "ledger":
        original = pipeline.store.tiles.TileStore._write_ledger
        calls = {"n": 0}

        def slow_ledger(self, tiles):  # type: ignore[no-untyped-def]
            tiles = set(tiles)
            if tiles:  # a tile's record (the empty ledger of prepare() does not count)
                calls["n"] += 1
                if calls["n"] == args.hang_after + 1:
                    hang("tile pixels written, ledger not yet")
            original(self, tiles)

        pipeline.store.tiles.TileStore._write_ledger = slow_ledger  # type: ignore[method-assign]

    res = run_tiny(load_item_dir(Path(args.items)), Path(args.out), on_event=on_event)
    print(json.dumps({"kind": "done", "path": str(res.zones[0].cube_path)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
