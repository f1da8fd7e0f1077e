# `make test` and `make demo` bootstrap everything from a bare Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-installed
# CPU wheel on this kind of machine; a looser torch spec pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE ?= disabled

.PHONY: setup test test-fast demo bench clean lint gpu-check gpu-check-bundle

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile deploy/install.sh
	$(PYTHON) -m venv $(VENV)
	# pip, torch, the project, the default model's GGUF: the same steps as deploy/Dockerfile
	TORCH_SPEC='$(TORCH_SPEC)' bash deploy/install.sh $(PY) -e '.[dev]'
	# Debian's chromium for the search page's browser test: only when missing and only as root;
	# setup never fails on it (the test skips and says why)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  echo "note: chromium not installed (needs root and apt-get); the browser test will skip"; }
	touch $(STAMP)

# Test processes (pytest-xdist): most of the suite's time is new processes importing torch,
# transformers and Ray, and one test file leaves a quarter of 2 cores idle; two files at a time
# fill them (each process has its own local Ray). `--dist loadfile` keeps a file's tests, and
# its module fixtures, in one process. TEST_WORKERS=0 runs in one process (debugging).
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadfile

# lint first (seconds), then every test but the GPU ones
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not gpu" $(PARALLEL) --durations=15 $(PYTEST_ARGS)

# the fast subset: no real default model, no multi-worker Ray Train
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" $(PARALLEL) $(PYTEST_ARGS)

# ruff (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, import order, pyupgrade
lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) jobs/demo.py

bench: $(STAMP)
	$(PY) benchmarks/bench_encode.py

# The GPU check (docs/gpu.md): with this venv when there is one, else the machine's python3
# (a lent GPU machine has torch, transformers and peft but no venv of ours).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_OUT ?= out/gpu_check
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --out $(GPU_OUT) $(GPU_CHECK_ARGS)

# gpu_bundle/: the default tokenizer's files and the wheels a GPU machine lacks, to carry there
gpu-check-bundle: $(STAMP)
	$(PY) benchmarks/gpu_check.py --bundle gpu_bundle

clean:
	rm -rf $(VENV) .pytest_cache demo_out
