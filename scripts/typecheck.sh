#!/usr/bin/env bash
# Type-check memloc.core, memloc.locate and memloc.edit with mypy (settings in pyproject.toml).
# The folders core/, locate/, edit/ become memloc.* only through setuptools' package-dir,
# which mypy cannot follow; build/typecheck/memloc/ links them under their import names.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p build/typecheck/memloc
for part in core locate edit cli; do
  ln -sfn "$PWD/$part" "build/typecheck/memloc/$part"
done
"$PY" -m mypy -p memloc.core -p memloc.locate -p memloc.edit "$@"
