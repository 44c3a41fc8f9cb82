"""The walking skeleton's numbers, from one run: float32 / float16 / dynamic / int8 on LiteRT + XNNPACK.

Prints the comparison table and writes bench/results/bench_demo.json with the checks of issue 2:
int8 size <= 0.30x float32, int8 median latency <= 0.7x float32, int8 accuracy within 1.0 point of Keras.

    .venv/bin/python bench/bench_demo.py [--dataset mnist5k|fashion_mnist] [--num_runs 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfopt  # noqa: E402
from tfopt._io import write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--num_runs", type=int, default=300)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_demo.json"))
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tfopt-bench-demo-")
    from tfopt.demo import run_demo

    result = run_demo(folder, dataset=args.dataset, num_runs=args.num_runs, verbose=False)
    report = result.report
    print(report.summary())
    int8, f32 = report.row("int8"), report.row("float32")
    checks = {
        "int8_size_ratio_le_0.30": int8.size_ratio <= 0.30,
        "int8_latency_ratio_le_0.70": int8.latency_ms_median / f32.latency_ms_median <= 0.70,
        "int8_accuracy_within_1pt": abs(int8.accuracy_drop) <= 0.01,
    }
    print("\nchecks:", checks)
    write_json(args.output, {"provenance": stamp(script=__file__), **result.to_dict(), "checks": checks,
                             "dataset": args.dataset})
    print(f"wrote {args.output}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
