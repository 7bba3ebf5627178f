# Every target sets itself up: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segserve-installed
ARTIFACTS ?= artifacts
REPOSITORY ?= build/model_repository/embedded
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bench gpu-check load lint clean repository

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU torch wheel first and pinned, so no dependency can pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# Meta's reference SAM 2 package: no deps (it would pull torchvision), no CUDA build.
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-deps --no-build-isolation sam2==1.1.0
	$(PY) -c "import segserve.api"
	touch $@

setup: $(STAMP)

demo: setup
	$(PY) -m segserve.demo --artifacts $(ARTIFACTS) --repository $(REPOSITORY) --out out

# CI (`.ci/run`) runs `make test`: everything but the `slow` tests (real-size and official-architecture
# models). `make test-all` runs those too.
test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Real-size random-weight models, each compared side by side with its PyTorch reference in one run.
bench: setup
	$(PY) benchmarks/sam2_image.py --out out/bench_sam2_image.json
	$(PY) benchmarks/automatic_masks.py --out out/bench_automatic_masks.json
	$(PY) benchmarks/mask2former.py --out out/bench_mask2former.json
	$(PY) benchmarks/text_to_mask.py --out out/bench_text_to_mask.json
	$(PY) benchmarks/video.py --out out/bench_video.json
	$(PY) benchmarks/concurrency.py --out out/bench_concurrency.json

# On a machine with an NVIDIA GPU: TensorRT (the fleet image's version, `gpu` extra) and CuPy, every
# engine built from real-size random weights and parity-gated, the `gpu` tests, and the engine vs
# ONNX Runtime vs PyTorch benchmark. Stops with what is missing (exit 2) before installing anything
# without a GPU.
GPU_ARTIFACTS ?= artifacts-gpu
gpu-check: setup
	@command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { \
	  echo "make gpu-check: no NVIDIA GPU here (nvidia-smi finds none); run it on a GPU machine" >&2; exit 2; }
	$(PY) -m pip install -q -e '.[gpu]'
	$(PY) benchmarks/gpu.py --check
	$(PY) -m segserve.cli export --families sam2,sam2_video,mask2former,grounding_dino --random-size real \
	  --out $(GPU_ARTIFACTS) --tensorrt --trt-timing-cache $(GPU_ARTIFACTS)/timing.cache
	SEGSERVE_GPU_ARTIFACTS=$(GPU_ARTIFACTS) $(PY) -m pytest -q -m gpu tests/test_engines.py
	$(PY) benchmarks/gpu.py --artifacts $(GPU_ARTIFACTS) --out out/bench_gpu.json

# Locust over gRPC against the embedded stack; the soak: make load LOAD_ARGS="--run-time 10m"
LOAD_ARGS ?=
load: setup
	$(PY) loadtests/run.py --users 8 --run-time 60s --artifacts $(ARTIFACTS) --repository $(REPOSITORY) $(LOAD_ARGS)

# The readable model repository (model_repository/{embedded,fleet}: configs and model.py, no graphs),
# rendered by build-repo's own code from the recorded default-checkpoint signatures; commit the result.
# tests/test_readable_repository.py fails while it differs.
repository: setup
	$(PY) -m segserve.repository.readable

lint: setup
	$(VENV)/bin/ruff check segserve tests benchmarks loadtests

clean:
	rm -rf $(ARTIFACTS) $(GPU_ARTIFACTS) out build .pytest_cache
