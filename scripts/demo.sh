#!/usr/bin/env bash
# The demo: train a CNN on 5,000 real MNIST digits, convert it 4 ways, benchmark each on LiteRT.
# Usage: scripts/demo.sh [--output DIR] [--dataset mnist5k|fashion_mnist|digits]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
if [ "$#" -eq 0 ]; then set -- --output "$ROOT/tfopt_out"; fi
exec "$ROOT/.venv/bin/tfopt" demo "$@"
