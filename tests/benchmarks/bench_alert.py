"""Alert to map on the demo region: wall time and bytes read, cold (nothing on disk) vs warm
(the period's cube, rain-free LSI and susceptibility on disk; a new event's rain), side by
side in one process.

Run: ``python tests/benchmarks/bench_alert.py [OUT]`` after ``make demo`` (it needs the demo
region's data and its trained model in ``data/demo``); a few minutes on 2 cores.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from typer.testing import CliRunner  # noqa: E402

from flows.cli import app  # noqa: E402
from pipeline.demo import LocalStacServer  # noqa: E402
from pipeline.demo.generate import ensure_demo_data  # noqa: E402


def rchar() -> int:
    """Bytes this process has read so far (files and sockets; Linux /proc)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench_alert_"))
    shutil.rmtree(out, ignore_errors=True)
    ckpt = REPO / "data/demo/model/model.safetensors"
    if not ckpt.is_file():
        print("no demo model: run `make demo` first", file=sys.stderr)
        return 2
    layout, _ = ensure_demo_data(REPO / "data/demo")
    rows = []
    with LocalStacServer([*layout.collection_files(), *layout.item_files()]) as url:
        for label, (p, d) in (("cold (first alert)", (2.0, 1.0)), ("warm (next alert, other rain)", (4.0, 2.0))):
            r0, t0 = rchar(), time.perf_counter()
            res = CliRunner().invoke(app, ["run", "--region", "demo", "--start", "2024-07-01", "--end", "2024-08-31",
                                           "--stac-url", url, "--out", str(out), "--rain-intensity", str(p),
                                           "--rain-duration", str(d), "--checkpoint", str(ckpt)],
                                     env={"SLIDEWATCH_DASK_ADDRESS": "threads"})
            if res.exit_code != 0:
                print(res.output, file=sys.stderr)
                return 1
            rows.append((label, time.perf_counter() - t0, rchar() - r0))
    for label, dt, db in rows:
        print(f"{label:32s} {dt:7.1f} s  {db / 1e6:8.1f} MB read")
    print(f"warm / cold: time {rows[1][1] / rows[0][1]:.2f}, bytes {rows[1][2] / rows[0][2]:.2f}")
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
