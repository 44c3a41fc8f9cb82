"""Per-call cost of a measurement: a cold child per call (before) vs the warm worker (after) vs a bare loop.

The same work each time - load the .tflite into a LiteRT interpreter, allocate,
one first invoke, `--warmup_runs` warm-up invokes and `--num_runs` timed ones -
done three ways, interleaved round by round on the same machine in one run:

- bare: in this process, `ai_edge_litert.interpreter.Interpreter` directly (the floor);
- before: what `tfopt.benchmark` did until now: a fresh Python child per call
  (`_isolate.run_child` on `tfopt.measure._runner`, request and model in a temp folder);
- after: `tfopt.benchmark` today (the warm measurement worker, one child reused).

Also times `tfopt.evaluate` on a .tflite (top-1 on `--num_examples` real digits)
against a bare in-process prediction loop over the same examples.
Writes bench/results/bench_measure.json.

    .venv/bin/python bench/bench_measure.py [--rounds 20] [--num_runs 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfopt._io import write_json  # noqa: E402


def bare_benchmark(content: bytes, num_runs: int, warmup_runs: int) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    for _ in range(warmup_runs):
        interpreter.invoke()
    times = []
    for _ in range(num_runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        times.append(time.perf_counter_ns() - start)
    float(np.median(times))


def cold_benchmark(content: bytes, num_runs: int, warmup_runs: int) -> None:
    """The previous `tfopt.benchmark`: files in a temp folder, a fresh Python child, JSON back."""
    from tfopt.measure._isolate import run_child
    from tfopt.measure.benchmark import _result

    with tempfile.TemporaryDirectory(prefix="tfopt-bench-") as tmp:
        request = {
            "tflite_path": os.path.join(tmp, "model.tflite"),
            "result_path": os.path.join(tmp, "result.json"),
            "num_threads": 1,
            "num_runs": num_runs,
            "warmup_runs": warmup_runs,
            "use_xnnpack": True,
            "input_shapes": {},
        }
        with open(request["tflite_path"], "wb") as handle:
            handle.write(content)
        raw, peak = run_child("tfopt.measure._runner", request, tmp, timeout=600)
    raw["peak_rss_kb"] = peak
    _result(content, raw, num_threads=1, use_xnnpack=True)


def bare_predict(content: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    hits = 0
    for k in range(len(x)):
        interpreter.set_tensor(inp["index"], x[k : k + 1])
        interpreter.invoke()
        hits += int(interpreter.get_tensor(out["index"]).argmax() == y[k])
    return hits / len(x)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1e3


def models() -> dict[str, bytes]:
    import keras

    from tfopt.demo import build_cnn
    from tfopt.export.convert import convert
    from tfopt.measure.sweep import one_op_model

    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    return {
        "one RELU op [1, 4]": one_op_model(),
        "MLP 64-64-10": convert(mlp).tflite,
        "demo CNN 28x28x1 (random weights)": convert(build_cnn((28, 28, 1), 10)).tflite,
    }


def summarize(samples: dict[str, list[float]]) -> dict[str, float]:
    """Medians, plus the fastest call of each kind (`min_...`: the floor on a quiet moment)."""
    out = {key: statistics.median(values) for key, values in samples.items()}
    out.update({f"min_{key}": min(values) for key, values in samples.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cold_rounds", type=int, default=8)
    parser.add_argument("--num_runs", type=int, default=50)
    parser.add_argument("--warmup_runs", type=int, default=5)
    parser.add_argument("--num_examples", type=int, default=200)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_measure.json"))
    args = parser.parse_args()

    from tfopt.datasets import load_dataset
    from tfopt.demo import train_cnn
    from tfopt.export.convert import convert
    from tfopt.measure.benchmark import benchmark
    from tfopt.measure.evaluate import evaluate

    from tfopt.measure import _worker
    from tfopt.measure import benchmark as benchmark_module

    built = models()
    load_before = os.getloadavg()
    starts = []
    for _ in range(3):
        start = time.perf_counter()
        _worker.run_task("describe", {"content": next(iter(built.values()))}, fresh=True)
        starts.append((time.perf_counter() - start) * 1e3)  # Python start-up and imports, paid once a process
    worker_start_ms = statistics.median(starts)

    def after(content: bytes) -> None:
        benchmark(content, num_runs=args.num_runs, warmup_runs=args.warmup_runs)

    def after_new_model(content: bytes) -> None:
        benchmark_module._GZIP_CACHE.clear()  # as in a search: the gzip size of each candidate is computed once
        after(content)

    rows = []
    for name, content in built.items():
        after(content)
        samples: dict[str, list[float]] = {"bare_ms": [], "after_ms": [], "after_new_model_ms": [], "before_ms": []}
        for r in range(args.rounds):
            samples["bare_ms"].append(timed(bare_benchmark, content, args.num_runs, args.warmup_runs))
            samples["after_ms"].append(timed(after, content))
            samples["after_new_model_ms"].append(timed(after_new_model, content))
            if r < args.cold_rounds:
                samples["before_ms"].append(timed(cold_benchmark, content, args.num_runs, args.warmup_runs))
        med = summarize(samples)
        rows.append({
            "model": name,
            "size_bytes": len(content),
            "task": f"benchmark: load, {args.warmup_runs} warm-up + {args.num_runs} timed invokes",
            **{k: round(v, 3) for k, v in med.items()},
            "before_over_bare": round(med["before_ms"] / med["bare_ms"], 2),
            "after_over_bare": round(med["after_ms"] / med["bare_ms"], 2),
            "after_new_model_over_bare": round(med["after_new_model_ms"] / med["bare_ms"], 2),
            "min_after_over_min_bare": round(med["min_after_ms"] / med["min_bare_ms"], 2),
            "before_over_after": round(med["before_ms"] / med["after_ms"], 1),
            "calls": {k: len(v) for k, v in samples.items()},
        })

    data = load_dataset("digits")
    model, keras_accuracy = train_cnn(data, epochs=3, seed=0)
    tflite = convert(model).tflite
    x, y = data.x_test[: args.num_examples], data.y_test[: args.num_examples]
    evaluate(tflite, (x, y))
    samples = {"bare_ms": [], "after_ms": []}
    values = set()
    for _ in range(args.rounds):
        samples["bare_ms"].append(timed(bare_predict, tflite, x, y))
        start = time.perf_counter()
        values.add(evaluate(tflite, (x, y)).value)
        samples["after_ms"].append((time.perf_counter() - start) * 1e3)
    med = summarize(samples)
    rows.append({
        "model": "demo CNN 8x8x1 trained on digits",
        "size_bytes": len(tflite),
        "task": f"evaluate top-1 on {len(x)} real test digits",
        **{k: round(v, 3) for k, v in med.items()},
        "after_over_bare": round(med["after_ms"] / med["bare_ms"], 2),
        "min_after_over_min_bare": round(med["min_after_ms"] / med["min_bare_ms"], 2),
        "top1": sorted(values),
        "bare_top1": bare_predict(tflite, x, y),
        "calls": {k: len(v) for k, v in samples.items()},
    })

    import ai_edge_litert

    payload = {
        "script": "bench/bench_measure.py",
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown")},
        "note": ("median wall time per call in ms; calls interleaved round by round; 1 interpreter thread, XNNPACK "
                 "on. after = the same model again (its gzip size remembered); after_new_model = gzip -9 size "
                 "computed again, as for each new candidate of a search"),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "worker_start_ms": round(worker_start_ms, 1),
        "rows": rows,
    }
    payload["provenance"] = stamp(script=__file__)
    write_json(args.output, payload)
    head = (f"{'model':<36}{'bare ms':>9}{'before ms':>11}{'after ms':>10}{'new model':>11}"
            f"{'before/bare':>12}{'after/bare':>11}{'new/bare':>10}")
    print(head)
    print("-" * len(head))
    for row in rows:
        before = f"{row['before_ms']:.2f}" if "before_ms" in row else "-"
        ratio = f"{row['before_over_bare']:.1f}x" if "before_over_bare" in row else "-"
        new = f"{row['after_new_model_ms']:.2f}" if "after_new_model_ms" in row else "-"
        new_ratio = f"{row['after_new_model_over_bare']:.2f}x" if "after_new_model_ms" in row else "-"
        print(f"{row['model'][:35]:<36}{row['bare_ms']:>9.2f}{before:>11}{row['after_ms']:>10.2f}{new:>11}"
              f"{ratio:>12}{row['after_over_bare']:>10.2f}x{new_ratio:>10}")
    print(f"worker start (once): {worker_start_ms:.0f} ms; load average {load_before} -> {os.getloadavg()}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
