#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, in about 3-4 minutes (each step bounded; the
# whole under 5), from the repository root:
#
#   bash tests/benchmarks/gpu_check.sh            # SLIDEWATCH_PYTHON=/path/python to choose one
#
# 1. a Python with CUDA torch: $SLIDEWATCH_PYTHON, else .venv, else python3, when its torch
#    sees the GPU; otherwise .venv-gpu is made (torch from the CUDA wheel index $TORCH_INDEX,
#    default cu128, at the pyproject pin; the other pins from pyproject.toml, torch left alone)
# 2. the CUDA tests (tests/models/test_device.py: Predictor in bf16/fp16 autocast, batch sized
#    from free memory, the risk stage on the GPU vs the CPU; they skip cleanly without CUDA)
# 3. the inference benchmark on the GPU: bare forward passes (batch sweep, bf16 vs fp32),
#    chunk in memory (predict_window) and Zarr to Zarr (predict_dataset → to_zarr), in km²/s
#    (1 px = 10 m × 10 m) with the GPU's utilisation sampled by nvidia-smi during each, and
#    tests/benchmarks/bench_inference.py (processed/bare ratio, memory) with GPU-sized options.
# Prints, asserts nothing but the tests; exit status: that of the tests.
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
step() { echo; echo "== $* ($(( $(date +%s) - START )) s)"; }

has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

step "1. Python with CUDA torch"
nvidia-smi -L || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
PY=""
for candidate in "${SLIDEWATCH_PYTHON:-}" .venv/bin/python python3; do
    if [ -n "$candidate" ] && has_cuda "$candidate"; then PY=$candidate; break; fi
done
if [ -z "$PY" ]; then
    echo "no Python here has CUDA torch: making .venv-gpu from the pins"
    python3 -m venv .venv-gpu && PY=.venv-gpu/bin/python
    TORCH_PIN=$($PY - <<'EOF'
import tomllib
ml = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["ml"]
print(next(p for p in ml if p.startswith("torch==")))
EOF
)
    timeout 150 $PY -m pip install -q "$TORCH_PIN" --index-url "$TORCH_INDEX" || { echo "torch install failed"; exit 1; }
fi
# every other pin of pyproject.toml (torch stays the CUDA one installed above)
$PY - <<'EOF' > /tmp/slidewatch-gpu-pins.txt
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = p["dependencies"] + p["optional-dependencies"]["ml"] + p["optional-dependencies"]["test"]
print("\n".join(x for x in pins if not x.startswith("torch")))
EOF
if ! $PY -c 'import distributed, zarr, rioxarray, stackstac, safetensors, pytest, typer, prefect' 2>/dev/null; then
    timeout 150 $PY -m pip install -q -r /tmp/slidewatch-gpu-pins.txt || echo "some pins failed to install (see above)"
fi
$PY - <<'EOF'
import torch
print(f"torch {torch.__version__} CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.mem_get_info()[0] / 2**30:.0f} GiB free")
EOF

step "2. CUDA tests"
PYTHONPATH=. timeout 150 $PY -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/models/test_device.py -rs
TESTS=$?

step "3. inference benchmark on the GPU"
PYTHONPATH=. timeout 120 $PY - <<'EOF'
"""Bare forward batch sweep, chunk in memory and Zarr to Zarr on the GPU, km²/s and utilisation."""
import subprocess
import tempfile
import time

import numpy as np
import torch
import xarray as xr

from models.checkpoint import CheckpointMetadata
from models.data import NormStats
from models.networks import DEFAULT_CHANNELS, EnhancedUNet
from models.predictor import Predictor
from pipeline.core.config import INFERENCE_TILE
from pipeline.predict.inference import PredictionStats, predict_dataset, predict_window

KM2_PER_PX = 1e-4  # 10 m × 10 m
TILE, SIDE = INFERENCE_TILE, 4096  # the library's inference tile
MEANS, STDS = (20.0, 800.0, 0.5, -0.3, 0.4, -0.1, 0.4), (10.0, 200.0, 0.2, 0.1, 0.1, 0.1, 0.2)


class Utilisation:
    """nvidia-smi's GPU utilisation (%) sampled every 100 ms while the block runs."""

    def __enter__(self):
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-lms", "100", "-i", "0"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        vals = [float(v) for v in out.split() if v.strip().replace(".", "").isdigit()]
        self.mean = float(np.mean(vals[1:])) if len(vals) > 1 else float("nan")


torch.manual_seed(0)
model = EnhancedUNet(DEFAULT_CHANNELS)  # the default network of `slidewatch train`
meta = CheckpointMetadata(architecture="EnhancedUNet", hyperparameters=model.config(),
                          channels=DEFAULT_CHANNELS, normalisation=NormStats(MEANS, STDS))
pred = Predictor(model, meta, device="cuda")
fp32 = Predictor(EnhancedUNet(DEFAULT_CHANNELS), meta, device="cuda", amp=False)
auto = pred.batch_for(TILE)
print(f"{pred.device_label}; batch_for({TILE}) = {auto} (from free memory)")


def bare(p, batch, seconds=3.0):
    x = torch.zeros((batch, 7, TILE, TILE), device="cuda")
    cast = torch.autocast("cuda", dtype=p._autocast) if p._autocast is not None else torch.autocast("cuda", enabled=False)
    with torch.inference_mode(), cast:
        p.model(x); torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        with Utilisation() as u:
            while time.perf_counter() - t0 < seconds:
                p.model(x); n += batch
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return n * TILE * TILE / dt / 1e6, u.mean


print(f"\nbare forward, {TILE}² tiles (model pixels, overlap not counted):")
print(f"{'precision':>9} {'batch':>6} {'Mpx/s':>8} {'km²/s':>8} {'GPU %':>6}")
sweep = {}
for batch in sorted({b for b in (4, 8, 16, 32, 64) if b <= auto} | {auto}):  # what fits
    sweep[batch], util = bare(pred, batch)
    print(f"{pred.precision:>9} {batch:>6} {sweep[batch]:8.1f} {sweep[batch] * 1e6 * KM2_PER_PX:8.0f} {util:6.0f}")
best = max(sweep.values())
b16 = min(auto, 16)
mpx32, util32 = bare(fp32, b16)
print(f"{'float32':>9} {b16:>6} {mpx32:8.1f} {mpx32 * 1e6 * KM2_PER_PX:8.0f} {util32:6.0f}")
print(f"{pred.precision}/float32 at batch {b16}: {sweep[b16] / mpx32:.2f} (goal >= 1.5); "
      f"batch {auto} (auto)/best of the sweep: {sweep[auto] / best:.2f} (goal >= 0.9)")

rng = np.random.default_rng(0)
x = (rng.standard_normal((7, SIDE, SIDE), dtype=np.float32) * np.array(STDS, np.float32)[:, None, None]
     + np.array(MEANS, np.float32)[:, None, None])
stats = PredictionStats()
predict_window(x[:, :2048, :2048], pred, tile=TILE, batch_size=auto)  # warm-up (cuDNN autotune, edge shapes)
t0 = time.perf_counter()
with Utilisation() as u:
    predict_window(x, pred, tile=TILE, batch_size=auto, stats=stats)
dt = time.perf_counter() - t0
mem_km2 = SIDE * SIDE * KM2_PER_PX / dt
print(f"\nchunk in memory: {SIDE}² px ({SIDE * SIDE * KM2_PER_PX:.0f} km²) in {dt:.2f} s = {mem_km2:.0f} km²/s, "
      f"overlap factor {stats.overlap_factor:.2f}, GPU {u.mean:.0f} %; processed/bare "
      f"{stats.pixels_processed / dt / 1e6 / best:.2f} (goal >= 0.8)")

with tempfile.TemporaryDirectory() as tmp:
    ds = xr.Dataset({c: (("y", "x"), x[i]) for i, c in enumerate(DEFAULT_CHANNELS)},
                    coords={"y": np.arange(SIDE) * -10.0, "x": np.arange(SIDE) * 10.0})
    ds.chunk(1024).to_zarr(f"{tmp}/in.zarr", mode="w", consolidated=False)
    src = xr.open_zarr(f"{tmp}/in.zarr", chunks=None, consolidated=False)
    stats = PredictionStats()
    t0 = time.perf_counter()
    with Utilisation() as u:
        out = predict_dataset(src, pred, chunks=1024, tile=TILE, batch_size=auto, stats=stats)
        import dask
        with dask.config.set(scheduler="threads", num_workers=4):
            out.to_dataset().to_zarr(f"{tmp}/out.zarr", mode="w", consolidated=False)
    dt = time.perf_counter() - t0
zz_km2 = SIDE * SIDE * KM2_PER_PX / dt
print(f"Zarr to Zarr (chunks 1024, 4 threads): {dt:.2f} s = {zz_km2:.0f} km²/s, GPU {u.mean:.0f} %; "
      f"Zarr/in-memory {zz_km2 / mem_km2:.2f} (goal >= 0.7)")
EOF

step "3b. bench_inference.py on the GPU (Zarr to Zarr, processed/bare, peak RSS)"
PYTHONPATH=. timeout 75 $PY tests/benchmarks/bench_inference.py --sizes 1024 2048 --chunk 1024 \
    --batch 16 --threads 4 --repeats 1 || echo "bench_inference.py stopped (time limit or error)"

step "done: tests exit $TESTS"
exit $TESTS
