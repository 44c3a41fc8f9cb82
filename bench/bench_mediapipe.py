"""`tfopt.benchmark` on real-world .tflite files from another project: the models inside MediaPipe's wheel.

The mediapipe 0.10.14 wheel on PyPI ships 14 production .tflite models (face / palm / pose detection,
face / hand / pose / iris landmarks, selfie segmentation; float16 weights, custom ops, sparse weights).
This script fetches the wheel with `pip download` (a package registry, so it works offline-from-the-web),
extracts the models into a cache folder, and benchmarks each with XNNPACK: the ones LiteRT can run are
timed; the others must come back with a clear explanation and never crash this process.

    .venv/bin/python bench/bench_mediapipe.py [--cache ~/.cache/tfopt-mediapipe] [--num_runs 30]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfopt  # noqa: E402
from tfopt._io import write_json  # noqa: E402

WHEEL = "mediapipe==0.10.14"


def fetch_models(cache: str) -> list[str]:
    models = sorted(glob.glob(os.path.join(cache, "models", "*.tflite")))
    if models:
        return models
    os.makedirs(cache, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache, WHEEL], check=True
    )
    (wheel,) = glob.glob(os.path.join(cache, "mediapipe-*.whl"))
    os.makedirs(os.path.join(cache, "models"), exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".tflite"):
                target = os.path.join(cache, "models", os.path.basename(name))
                with archive.open(name) as src, open(target, "wb") as dst:
                    dst.write(src.read())
    return sorted(glob.glob(os.path.join(cache, "models", "*.tflite")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/tfopt-mediapipe"))
    parser.add_argument("--num_runs", type=int, default=30)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_mediapipe.json"))
    args = parser.parse_args()
    rows = []
    for path in fetch_models(args.cache):
        name = os.path.basename(path)
        row = {"model": name, "size_bytes": os.path.getsize(path)}
        try:
            info = tfopt.inspect_tflite(path)
            row.update(
                ops=len(info.ops),
                precision=info.precision_counts,
                custom_ops=info.custom_ops,
                inputs=[(t.name, list(t.shape), t.dtype) for t in info.inputs],
            )
        except ValueError as err:
            row["inspect_error"] = str(err)
        try:
            result = tfopt.benchmark(path, num_runs=args.num_runs, warmup_runs=5)
            row.update(
                status="benchmarked",
                latency_ms_median=result.latency_ms_median,
                latency_ms_p90=result.latency_ms_p90,
                xnnpack=f"{result.xnnpack_delegated_ops}/{result.xnnpack_total_ops}",
                peak_rss_mb=result.peak_rss_mb,
                notes=list(result.notes),
            )
        except tfopt.BenchmarkError as err:
            row.update(status="explained", reason=str(err))
        rows.append(row)
        detail = (
            f"{row['latency_ms_median']:.2f} ms, XNNPACK {row['xnnpack']}"
            if row["status"] == "benchmarked"
            else row["reason"][:110]
        )
        print(f"{name:<44} {row['size_bytes'] / 1024:8.1f} KB  {row['status']:<11} {detail}", flush=True)
    summary = {
        "total": len(rows),
        "benchmarked": sum(r["status"] == "benchmarked" for r in rows),
        "explained": sum(r["status"] == "explained" for r in rows),
        "crashed_caller": 0,  # reaching this line is the proof
    }
    print(summary)
    write_json(args.output, {"provenance": stamp(script=__file__), "source": WHEEL, "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
