"""`tfopt cluster MODEL --data DATA.npz --output OUT.keras`: cluster weights, fine-tune, report.

Clusters the kernels (tfopt's defaults: first and last weight layer kept,
k-means centroids, BatchNorm statistics re-estimated), fine-tunes on
x_train / y_train with Adam, strips, and reports on x_test / y_test the
accuracy before, right after clustering and after the fine-tune, parameter
counts, and the unique values of every kernel of the stripped model.
"""

from __future__ import annotations

import os

from absl import flags

from tfopt import _keras
from tfopt._cli import common
from tfopt._cli.common import FLAGS

NAME = "cluster"
HELP = "Cluster weights to K shared values per kernel (--num_clusters), fine-tune, report accuracy and unique values."

flags.DEFINE_integer("num_clusters", 16, "Shared values per clustered kernel (per channel with --cluster_per_channel).")
flags.DEFINE_enum("cluster_init", "kmeans++", ["kmeans++", "linear", "density", "random"], "Centroid initialisation.")
flags.DEFINE_boolean("cluster_per_channel", False, "Cluster each output channel of Conv2D kernels separately.")
flags.DEFINE_boolean("cluster_preserve_sparsity", False, "Keep exact zeros (of a pruned model) at zero.")
flags.DEFINE_float("cluster_learning_rate", 1e-4, "Adam learning rate for the fine-tune.")

DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 64
BATCHNORM_EXAMPLES = 1024


def main(args: list[str]) -> int:
    from tfopt.compress.cluster import cluster, clustering_summary, strip_clustering
    from tfopt.analyze.cluster_report import cluster_report

    run = common.training_run(args, "cluster", default_epochs=DEFAULT_EPOCHS, default_batch_size=DEFAULT_BATCH_SIZE)
    model, epochs, batch_size = run.model, run.epochs, run.batch_size
    x_train, y_train, x_test, y_test = run.x_train, run.y_train, run.x_test, run.y_test
    batchnorm_data = x_train[:BATCHNORM_EXAMPLES]

    clustered = cluster(
        model,
        num_clusters=FLAGS.num_clusters,
        init=FLAGS.cluster_init,
        per_channel=FLAGS.cluster_per_channel,
        preserve_sparsity=FLAGS.cluster_preserve_sparsity,
        include=FLAGS.include,
        exclude=FLAGS.exclude,
        batchnorm_data=batchnorm_data,
    )
    summary = clustering_summary(clustered)
    accuracy_before = common.keras_accuracy(model, x_test, y_test)
    accuracy_clustered = common.keras_accuracy(clustered, x_test, y_test)
    if epochs:
        tf_keras = _keras.keras_module(_keras.TF_KERAS)
        clustered.compile(
            optimizer=tf_keras.optimizers.Adam(FLAGS.cluster_learning_rate),
            loss=common.classification_loss(tf_keras, model, x_train[:64], y_train),
            metrics=["accuracy"],
        )
        clustered.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    final = strip_clustering(clustered, batchnorm_data=batchnorm_data)
    accuracy_after = common.keras_accuracy(final, x_test, y_test)
    common.save_model(final, FLAGS.output)

    names = {layer.name for layer in summary.layers}
    report = cluster_report(final, reference=model, num_clusters=FLAGS.num_clusters)
    result = {
        "model": os.path.abspath(args[0]),
        "num_clusters": FLAGS.num_clusters,
        "init": FLAGS.cluster_init,
        "per_channel": FLAGS.cluster_per_channel,
        "preserve_sparsity": FLAGS.cluster_preserve_sparsity,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": FLAGS.cluster_learning_rate,
        "accuracy_before": accuracy_before,
        "accuracy_clustered_before_finetune": accuracy_clustered,
        "accuracy_after": accuracy_after,
        "params_before": int(model.count_params()),
        "params_after": int(final.count_params()),
        "clustered_params": int(sum(layer.num_weights for layer in summary.layers)),
        "weights_gzip_bytes_before": report.reference_gzip_bytes,
        "weights_gzip_bytes_after": report.gzip_bytes,
        "layers": [
            {**_kernel_dict(k), "clustered": k.name.split("/")[0] in names} for k in report.kernels
        ],
        "skipped": [s.__dict__ for s in summary.skipped],
        "paths": {"output": os.path.abspath(FLAGS.output)},
    }
    if FLAGS.json:
        result["paths"]["json"] = os.path.abspath(FLAGS.json)
        common.write_json(FLAGS.json, result)
    print(
        f"cluster K={FLAGS.num_clusters}: accuracy {accuracy_before:.4f} -> {accuracy_clustered:.4f} (clustered) -> "
        f"{accuracy_after:.4f} (after {epochs} epoch(s)); float32 weights gzip {report.reference_gzip_bytes} -> "
        f"{report.gzip_bytes} bytes"
    )
    for row in result["layers"]:
        mark = "clustered" if row["clustered"] else "kept"
        print(f"  {row['name']:<32} {row['shape']!s:<20} unique {row['num_unique']:>6} ({mark})")
    print(f"wrote {FLAGS.output}" + (f" and {FLAGS.json}" if FLAGS.json else ""))
    return 0


def _kernel_dict(kernel) -> dict:
    return {
        "name": kernel.name,
        "shape": list(kernel.shape),
        "num_unique": kernel.num_unique,
        "max_unique_per_channel": kernel.max_unique_per_channel,
    }
