"""Subprocess driver for the inference crash test (not a test module).

    python tests/reliability/crashrisk.py ARGS.pkl HANG_AFTER

Loads ``(run_dir, grid, lsi_path, checkpoint)`` from the pickle, runs the risk stage
(``flows.stages.risk.write_risk``) and, after HANG_AFTER freshly written tiles, prints a
``hang`` line and sleeps (bounded) so the parent can SIGKILL it at a known point.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1])]


def main() -> int:
    run_dir, grid, lsi_path, checkpoint = pickle.loads(Path(sys.argv[1]).read_bytes())
    hang_after = int(sys.argv[2])

    from flows.stages.risk import write_risk
    from models.predictor import Predictor

    written = 0

    def on_event(kind: str, info: dict) -> None:
        nonlocal written
        print(json.dumps({"kind": kind, **info}, default=str), flush=True)
        if kind == "tile" and not info["skipped"]:
            written += 1
            if written == hang_after:
                print(json.dumps({"kind": "hang", "pid": os.getpid()}), flush=True)
                time.sleep(60)
                os._exit(3)

    import torch

    torch.set_num_threads(1)  # as the parent test: the same reduction order, bit-identical tiles
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    write_risk(run_dir, [(grid, lsi_path)], predictor, region="tiny", tile=32, on_event=on_event)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
