"""TFLite Micro export of the demo's int8 model, checked on the real TFLite Micro interpreter.

Trains the demo CNN on real MNIST digits (mnist5k), converts it to full int8 with
int8 input and output, runs `tfopt.export_micro` on the 1,000 test digits, and
checks issue 6's first two "done when" items:
- TFLite Micro's outputs equal LiteRT's within 1 quantization step on real inputs,
  and the arena size is reported;
- a float32 model with ops TFLite Micro lacks gets a clear list and fixes, not a crash.
Also records TFLite Micro's top-1 accuracy against LiteRT's and Keras'.

    .venv/bin/python bench/bench_micro.py [--epochs 5] [--num_samples 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import tfopt
from tfopt._io import write_json


def unsupported_model():
    """A float32 head with REDUCE_PROD, SIGN, ATAN2 and TOPK_V2 (none has a TFLite Micro kernel)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32)])
    def head(x):
        y = tf.math.atan2(x, x + 1.0) + tf.math.sign(x) * tf.math.reduce_prod(x)
        values, _ = tf.math.top_k(y, k=4)
        return tf.math.cumsum(values, axis=1)

    return tf.lite.TFLiteConverter.from_concrete_functions(
        [head.get_concrete_function()], head
    ).convert()


def main() -> int:
    from tfopt.demo import train_cnn
    from tfopt.export.micro import export_micro

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(__file__), "results", "bench_micro.json"),
    )
    args = parser.parse_args()
    start = time.perf_counter()
    from tfopt.datasets import load_dataset

    data = load_dataset("mnist5k")
    model, keras_accuracy = train_cnn(data, epochs=args.epochs)
    calibration = tfopt.calibration_data(data.x_train, model=model, num_samples=300)
    int8 = tfopt.convert(
        model,
        mode="int8",
        calibration=calibration,
        input_type="int8",
        output_type="int8",
    )
    folder = tempfile.mkdtemp(prefix="tfopt-micro-")
    t0 = time.perf_counter()
    result = export_micro(
        int8, folder, name="demo_cnn", data=data.x_test, num_samples=args.num_samples
    )
    check_seconds = time.perf_counter() - t0
    print(result.summary())
    litert = tfopt.benchmark(
        int8,
        data=(data.x_test[: args.num_samples], data.y_test[: args.num_samples]),
        num_runs=20,
    )
    bad = export_micro(
        unsupported_model(), os.path.join(folder, "bad"), name="bad_head"
    )
    print("\n" + bad.summary())
    checks = {
        "int8_runs_in_tflite_micro": result.ok,
        "max_diff_le_1_step": result.max_abs_diff_vs_litert is not None
        and result.max_abs_diff_vs_litert <= 1,
        "arena_reported": bool(result.arena_bytes),
        "unsupported_listed_with_fixes": (not bad.ok)
        and all(u.fix for u in bad.unsupported_ops)
        and len(bad.unsupported_ops) >= 3,
    }
    payload = {
        "micro": result.to_dict(),
        "unsupported_example": bad.to_dict(),
        "keras_accuracy": keras_accuracy,
        "litert_int8_accuracy": litert.accuracy,
        "litert_int8_latency_ms_median": litert.latency_ms_median,
        "micro_check_seconds": check_seconds,
        "epochs": args.epochs,
        "checks": checks,
        "seconds": time.perf_counter() - start,
    }
    print(
        f"\nKeras accuracy {keras_accuracy:.4f}; LiteRT int8 accuracy {litert.accuracy:.4f} "
        f"on {litert.num_examples} test digits; TFLite Micro check took {check_seconds:.1f} s"
    )
    print("checks:", checks)
    payload["provenance"] = stamp(script=__file__)
    write_json(args.output, payload)
    print(f"wrote {args.output}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
