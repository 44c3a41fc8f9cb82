#!/usr/bin/env bash
# The documentation site: docs/*.md plus an API reference generated from the docstrings of every name in
# tfopt.__all__ (tools/docs_hooks.py), built with MkDocs + mkdocstrings, warnings as errors.
# Usage: scripts/docs.sh [extra `mkdocs build` args, e.g. --site-dir DIR]   (default output: site/)
# Preview while writing: .venv/bin/python -m mkdocs serve
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
DOCS_STAMP="$VENV/.tfopt-docs-installed"
DOCS_WANT="$(cat "$ROOT/constraints/ci.txt" "$ROOT/constraints/docs.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$DOCS_STAMP" ] || [ "$(cat "$DOCS_STAMP")" != "$DOCS_WANT" ]; then
  echo "[tfopt] installing the docs tools (MkDocs, mkdocstrings) into $VENV"
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints/ci.txt" -c "$ROOT/constraints/docs.txt" \
    mkdocs "mkdocstrings[python]" mkdocstrings-python ruff
  echo "$DOCS_WANT" > "$DOCS_STAMP"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$VENV/bin/python" -m mkdocs build --strict "$@"
