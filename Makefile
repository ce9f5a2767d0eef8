# slidewatch: the two commands a new user needs are `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench gpu-check clean-demo

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11 or run 'make PY=python3 ...'"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 (CPU build); an unpinned torch would pull several GB of CUDA wheels.
	$(BIN)/pip install --quiet -e ".[ml,test]"
	touch $(STAMP)

install: $(STAMP)

## Set everything up and run the main job on the embedded demo region.
demo: $(STAMP)
	$(BIN)/slidewatch demo

## Run the test suite (offline; reads ../shared/fixtures when present).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Benchmarks: print figures side by side (no assertions on time).
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_cube.py
	$(BIN)/python tests/benchmarks/bench_lsi.py
	-$(BIN)/python tests/benchmarks/bench_models.py
	$(BIN)/python tests/benchmarks/bench_inference.py
	$(BIN)/python tests/benchmarks/bench_grd.py
	$(BIN)/python tests/benchmarks/bench_tiles.py
	-$(BIN)/python tests/benchmarks/bench_alert.py

## On a machine with an NVIDIA GPU: the CUDA tests and the GPU inference benchmark (< 5 min).
gpu-check:
	bash tests/benchmarks/gpu_check.sh

clean-demo:
	rm -rf data/demo out/demo
