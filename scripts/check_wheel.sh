#!/usr/bin/env bash
# Builds tfopt's wheel, installs it into a fresh virtual environment outside the repository, and runs
# `tfopt --version` and `tfopt demo` from there: the check that `pip install` gives a stranger a working tfopt.
# Usage: scripts/check_wheel.sh [extra `tfopt demo` flags]
#   PYTHON=python3.12 picks the interpreter (default python3.11, else python3).
#   CONSTRAINTS=FILE pins the install (default constraints/ci.txt, checked on Python 3.11 and 3.12;
#   CONSTRAINTS= with an empty value lets pip resolve freely, e.g. on Python 3.10, where the 3.11 pins do not resolve).
# The wheel gets the core dependencies plus [demo]; no [legacy], no [all].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" --version >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ]; then echo "check_wheel: no python3 found" >&2; exit 1; fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tfopt-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

echo "[check_wheel] building the wheel with $($PY --version)"
# Build from a copy of the sources, so the build leaves no build/ or egg-info behind in the repository.
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
   | grep -z -E '^(tfopt/|setup\.cfg$|pyproject\.toml$|README\.md$|LICENSE$)' \
   | xargs -0 cp --parents -t "$WORK/src")
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/tfopt-*.whl)"
echo "[check_wheel] built $(basename "$WHEEL")"

echo "[check_wheel] installing it into a fresh venv in $WORK/venv"
"$PY" -m venv "$WORK/venv"
CONSTRAINTS="${CONSTRAINTS-$ROOT/constraints/ci.txt}"
"$WORK/venv/bin/python" -m pip install --quiet ${CONSTRAINTS:+-c "$CONSTRAINTS"} "${WHEEL}[demo]"

cd "$WORK"  # out of the repository: the installed wheel is imported, never the source tree
"$WORK/venv/bin/python" - <<'PY'
import importlib.metadata, importlib.util, tfopt
where = tfopt.__file__
assert "site-packages" in where, f"imported tfopt from {where}, not from the installed wheel"
assert importlib.metadata.version("tfopt") == tfopt.__version__, (importlib.metadata.version("tfopt"), tfopt.__version__)
for module in ("tf_keras", "tensorflow_model_optimization"):
    assert importlib.util.find_spec(module) is None, f"{module} was installed without the [legacy] extra"
print(f"[check_wheel] tfopt {tfopt.__version__} imported from {where}")
PY
version="$("$WORK/venv/bin/tfopt" --version)"
echo "[check_wheel] tfopt --version: $version"
[ "$version" = "tfopt $("$WORK/venv/bin/python" -c 'import tfopt; print(tfopt.__version__)')" ]
"$WORK/venv/bin/tfopt" demo --output "$WORK/demo" "$@"
for f in report.json report.md; do
  [ -s "$WORK/demo/$f" ] || { echo "check_wheel: tfopt demo wrote no $f" >&2; exit 1; }
done
echo "[check_wheel] ok in $((SECONDS - start)) s: wheel built, installed outside the repository, tfopt --version and tfopt demo ran"
