#!/usr/bin/env bash
# Creates and fills .venv at the repo root if it is missing or out of date (sourced by demo.sh / test.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ]; then echo "tfopt: no python3 found; install Python 3.11" >&2; exit 1; fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[tfopt] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.tfopt-installed"
WANT="$(cat "$ROOT/setup.cfg" "$ROOT/constraints/ci.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[tfopt] installing tfopt and its dependencies into $VENV (first run takes a minute or two)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints/ci.txt" -e "$ROOT[all,test]"
  echo "$WANT" > "$STAMP"
fi
# The notebooks run on a kernel that lives inside .venv under a tfopt-specific name, so the user's own
# Jupyter kernels (~/.local/share/jupyter, e.g. their "python3") are never touched. Jupyter finds it
# through JUPYTER_PATH=$VENV/share/jupyter, or by itself when started from this .venv. IPYTHONDIR keeps
# IPython from creating ~/.ipython while it installs the kernel.
IPYTHONDIR="$VENV/share/ipython" "$VENV/bin/python" -m ipykernel install --prefix "$VENV" --name tfopt-venv --display-name "Python 3 (tfopt .venv)" >/dev/null 2>&1
