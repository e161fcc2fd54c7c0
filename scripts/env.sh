# Sourced by the set-up, demo and test scripts: sets PY to the Python memloc lives in.
#   - $PYTHON when set;
#   - the active virtual environment, when one is active;
#   - the project's .venv, when an earlier set-up made one;
#   - python3 itself when pip may install into it (pyenv, conda, a user build);
#   - otherwise (Debian's and Ubuntu's system Python refuse pip installs as
#     "externally-managed-environment") a new project venv in .venv.
# Run from the repository root.

_memloc_externally_managed() {
  "$1" - <<'PY'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if not in_venv and os.path.exists(marker) else 1)
PY
}

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY=$VIRTUAL_ENV/bin/python
elif [ -x .venv/bin/python ]; then
  PY=$PWD/.venv/bin/python
else
  PY=$(command -v python3 || true)
  if [ -z "$PY" ]; then
    echo "setup: no python3 on PATH; install Python 3.10 or newer" >&2
    exit 1
  fi
  if _memloc_externally_managed "$PY" || ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "setup: $PY does not take pip installs; making a project environment in .venv" >&2
    "$PY" -m venv .venv || {
      echo "setup: could not make .venv; install python3-venv (apt-get install python3-venv) and rerun" >&2
      exit 1
    }
    PY=$PWD/.venv/bin/python
  fi
fi
export PY
