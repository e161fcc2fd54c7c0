#!/usr/bin/env bash
# Set up memloc, then run `memloc demo` (options pass through: bash scripts/demo.sh --no-lm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cd "$OLDPWD"
exec "$PY" -m memloc.cli.app demo "$@"
