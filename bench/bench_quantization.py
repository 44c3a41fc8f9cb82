"""Quantization on real data: PTQ (converter and LiteRT Quantizer recipes) and QAT on MNIST 5k.

Trains a small Keras 3 CNN on 4,000 real MNIST digits, then measures on the
1,000 test digits, for each variant: accuracy of the .tflite on LiteRT, size,
latency (XNNPACK on, 1 thread) and parity against the Keras model. Checks the
issue's "done when": PTQ int8 within 0.5 point of float, QAT int8 within 0.3
point, QAT Keras model and its .tflite agreeing on >= 99% of top-1 predictions,
and pruning-preserving QAT keeping >= 0.79 sparsity in the int8 .tflite.

    python bench/bench_quantization.py [--epochs 6] [--output bench/results/bench_quantization.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

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


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--qat_epochs", type=int, default=2)
    parser.add_argument("--num_runs", type=int, default=200)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_quantization.json"))
    args = parser.parse_args()

    import keras
    import tf_keras

    from tfopt.compress.prune import prune, strip
    from tfopt.compress.qat import qat_summary, quantize
    from tfopt.datasets import load_dataset
    from tfopt.measure.benchmark import benchmark
    from tfopt.export.calibration import calibration_data
    from tfopt.export.convert import convert
    from tfopt.measure.parity import compare
    from tfopt.export.quantizer import quantize_tflite
    from tfopt.analyze.sparsity import tflite_sparsity

    start = time.perf_counter()
    data = load_dataset("mnist5k")
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    model = build_cnn(keras)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    float_keras = accuracy(model, x_test, y_test)
    print(f"float Keras accuracy: {100 * float_keras:.2f}%")
    calibration = calibration_data(x_train, model=model, num_samples=300)
    float_tflite = convert(model, mode="float32")

    variants = {
        "float32": float_tflite,
        "float16 (converter)": convert(model, mode="float16"),
        "dynamic (converter)": convert(model, mode="dynamic"),
        "int8 (converter)": convert(model, mode="int8", calibration=calibration),
        "int16x8 (converter)": convert(model, mode="int16x8", calibration=calibration),
    }
    for recipe in ("static_wi8_ai8", "static_wi8_ai16", "dynamic_wi8_afp32", "dynamic_wi4_afp32",
                   "dynamic_wi4b32_afp32", "weight_only_wi8_afp32"):
        variants[f"{recipe} (LiteRT Quantizer)"] = quantize_tflite(float_tflite, recipe=recipe, calibration=calibration)

    # QAT on the Keras 3 model: plain fit on the returned tf_keras model.
    qat = quantize(model)
    qat.compile(tf_keras.optimizers.Adam(1e-4), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    qat.fit(x_train, y_train, epochs=args.qat_epochs, batch_size=64, verbose=0)
    qat_keras = accuracy(qat, x_test, y_test)
    qat_tflite = convert(qat, mode="int8", calibration=calibration_data(x_train, model=qat, num_samples=300))
    variants["int8 (QAT)"] = qat_tflite
    qat_parity = compare(qat, qat_tflite, (x_test, y_test), localize=False)
    print(qat_summary(qat).summary())
    print(qat_parity.summary())

    rows = []
    for name, result in variants.items():
        bench = benchmark(result, data=(x_test, y_test), num_runs=args.num_runs, warmup_runs=20)
        parity = compare(model if name != "int8 (QAT)" else qat, result, x_test[:300], localize=False)
        rows.append(
            {
                "variant": name,
                "size_kb": result.size_bytes / 1024,
                "accuracy": bench.accuracy,
                "drop_points": 100 * (float_keras - bench.accuracy),
                "latency_ms": bench.latency_ms_median,
                "xnnpack_delegated": f"{bench.xnnpack_delegated_ops}/{bench.xnnpack_total_ops}",
                "precision": result.inspection.precision_counts,
                "top1_agreement": parity.top1_agreement,
                "output_snr_db": parity.outputs[0].snr_db,
            }
        )
    print(f"\n{'variant':<38} {'KB':>7} {'acc %':>7} {'drop':>6} {'ms':>7} {'xnnpack':>8} {'agree %':>8} {'SNR dB':>7}  precision")
    for r in rows:
        print(f"{r['variant']:<38} {r['size_kb']:7.1f} {100 * r['accuracy']:7.2f} {r['drop_points']:6.2f} {r['latency_ms']:7.3f} "
              f"{r['xnnpack_delegated']:>8} {100 * r['top1_agreement']:8.2f} {r['output_snr_db']:7.1f}  {r['precision']}")

    # Pruning-preserving QAT on an 80%-pruned copy.
    pruned = prune(model, target_sparsity=0.8, end_step=120)
    pruned.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    stripped = strip(pruned)
    pqat = quantize(stripped, preserve="sparsity")
    pqat.compile(tf_keras.optimizers.Adam(1e-4), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pqat.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    pqat_tflite = convert(pqat, mode="int8", calibration=calibration_data(x_train, model=pqat, num_samples=300))
    sparsity = tflite_sparsity(pqat_tflite)
    pruned_names = {"conv2", "fc1"}  # prune() keeps the first and last weight layers dense
    pruned_tensors = [t for t in sparsity.tensors if any(n in t.name for n in pruned_names)]
    total = sum(int(np.prod(t.shape)) for t in pruned_tensors)
    pqat_sparsity = sum(t.sparsity * int(np.prod(t.shape)) for t in pruned_tensors) / max(total, 1)
    pqat_accuracy = benchmark(pqat_tflite, data=(x_test, y_test), num_runs=5).accuracy
    print(f"\npruning-preserving QAT: int8 .tflite sparsity of the pruned kernels {pqat_sparsity:.3f}, accuracy {100 * pqat_accuracy:.2f}%")
    print(sparsity.summary())

    by = {r["variant"]: r for r in rows}
    done = {
        "float_keras_accuracy": float_keras,
        "ptq_int8_converter_drop_points": by["int8 (converter)"]["drop_points"],
        "ptq_int8_litert_quantizer_drop_points": by["static_wi8_ai8 (LiteRT Quantizer)"]["drop_points"],
        "qat_keras_accuracy": qat_keras,
        "qat_int8_drop_points": by["int8 (QAT)"]["drop_points"],
        "qat_keras_vs_tflite_top1_agreement": qat_parity.top1_agreement,
        "pqat_int8_sparsity": pqat_sparsity,
        "pqat_int8_accuracy": pqat_accuracy,
    }
    done["pass"] = {
        "ptq_within_0.5": done["ptq_int8_converter_drop_points"] <= 0.5 and done["ptq_int8_litert_quantizer_drop_points"] <= 0.5,
        "qat_within_0.3": done["qat_int8_drop_points"] <= 0.3,
        "qat_agreement_99": done["qat_keras_vs_tflite_top1_agreement"] >= 0.99,
        "pqat_sparsity_0.79": pqat_sparsity >= 0.79,
    }
    print("\ndone when:", json.dumps(done, indent=1))
    payload = {"rows": rows, "done_when": done, "qat": qat_summary(qat).to_dict(), "seconds": time.perf_counter() - start}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(payload, handle, indent=1, default=str)
    print(f"wrote {args.output} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
