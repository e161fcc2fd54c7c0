#!/usr/bin/env bash
# Set up memloc with its test extras, then lint, type-check and run the test suite (CPU only, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
source scripts/env.sh
"$PY" -m ruff check .
"$PY" -m ruff format --check .
PYTHON="$PY" bash scripts/typecheck.sh
"$PY" -m pytest -q "$@"
