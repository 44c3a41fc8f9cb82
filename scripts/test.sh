#!/usr/bin/env bash
# The test suite (unit tests, end-to-end on real data, and the Colab notebooks), slow runs excluded.
# Usage: scripts/test.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL=2
# --dist loadgroup: tests marked xdist_group("jupyter_kernel") (the notebooks, and the check that reinstalls
# the kernel) share one worker, so the kernel is never reinstalled while a notebook starts it.
exec "$ROOT/.venv/bin/python" -m pytest -m "not slow" -n 2 --dist loadgroup -p no:cacheprovider "$@"
