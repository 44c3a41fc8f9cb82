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

from tfopt._cli import common, supervise, training

NAME = "cluster"
HELP = "Cluster weights to K shared values per kernel (--num_clusters), fine-tune, report accuracy and unique values."

INITS = ["kmeans++", "linear", "density", "random"]


def define_flags(fv: flags.FlagValues) -> None:
    common.define_training_flags(fv, epochs=2, batch_size=64, learning_rate=1e-4)
    training.define_progress_flags(fv)
    common.define_alias(fv, "cluster_learning_rate", "learning_rate")
    flags.DEFINE_integer("num_clusters", 16, "Shared values per clustered kernel (per channel with --per_channel).",
                         lower_bound=2, upper_bound=65536, flag_values=fv)
    flags.DEFINE_enum("init", "kmeans++", INITS, "Centroid initialisation.", flag_values=fv)
    common.define_alias(fv, "cluster_init", "init")
    flags.DEFINE_boolean("per_channel", False, "Cluster each output channel of Conv2D kernels separately.",
                         flag_values=fv)
    common.define_alias(fv, "cluster_per_channel", "per_channel")
    flags.DEFINE_boolean("preserve_sparsity", False, "Keep exact zeros (of a pruned model) at zero.", flag_values=fv)
    common.define_alias(fv, "cluster_preserve_sparsity", "preserve_sparsity")


BATCHNORM_EXAMPLES = 1024


def main(args: list[str], fv: flags.FlagValues) -> int:
    return supervise.run(NAME, args, fv, _work, outputs=(fv.output, fv.json),
                         check=lambda: training.check_call(args, fv, NAME))


def _work(args: list[str], fv: flags.FlagValues) -> int:
    from tfopt.compress.cluster import cluster, clustering_summary, strip_clustering
    from tfopt.analyze.cluster_report import cluster_report

    run = training.training_run(args, fv, NAME)
    model, epochs, batch_size = run.model, run.epochs, run.batch_size
    x_train, y_train, x_test, y_test = run.x_train, run.y_train, run.x_test, run.y_test
    batchnorm_data = x_train[:BATCHNORM_EXAMPLES]

    supervise.stage("clustering the weights", model=model)
    clustered = cluster(
        model,
        num_clusters=fv.num_clusters,
        init=fv.init,
        per_channel=fv.per_channel,
        preserve_sparsity=fv.preserve_sparsity,
        include=run.include,
        exclude=run.exclude,
        batchnorm_data=batchnorm_data,
    )
    summary = clustering_summary(clustered)
    accuracy_before = training.keras_accuracy(model, x_test, y_test)
    accuracy_clustered = training.keras_accuracy(clustered, x_test, y_test)
    keras = training.keras_of(clustered)
    clustered.compile(
        optimizer=keras.optimizers.Adam(fv.learning_rate),
        loss=training.classification_loss(keras, model, x_train[:64], y_train),
        metrics=["accuracy"],
    )
    training.fit(clustered, x_train, y_train, fv, epochs=epochs, batch_size=batch_size)
    supervise.stage("stripping, evaluating and saving the clustered model", model=clustered)
    final = strip_clustering(clustered, batchnorm_data=batchnorm_data)
    accuracy_after = training.keras_accuracy(final, x_test, y_test)
    common.save_model(final, fv.output)

    names = {layer.name for layer in summary.layers}
    report = cluster_report(final, reference=model, num_clusters=fv.num_clusters)
    result = {
        "model": os.path.abspath(args[0]),
        "num_clusters": fv.num_clusters,
        "init": fv.init,
        "per_channel": fv.per_channel,
        "preserve_sparsity": fv.preserve_sparsity,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": fv.learning_rate,
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
        "paths": training.report_paths(fv),
    }
    if fv.json:
        common.write_json(fv.json, result)
    print(
        f"cluster K={fv.num_clusters}: accuracy {accuracy_before:.4f} -> {accuracy_clustered:.4f} (clustered) -> "
        f"{accuracy_after:.4f} (after {epochs} epoch(s)); float32 weights gzip {report.reference_gzip_bytes} -> "
        f"{report.gzip_bytes} bytes"
    )
    for row in result["layers"]:
        mark = "clustered" if row["clustered"] else "kept"
        print(f"  {row['name']:<32} {row['shape']!s:<20} unique {row['num_unique']:>6} ({mark})")
    print(f"wrote {fv.output}" + (f" and {common.shown_path(fv.json)}" if fv.json else ""))
    return 0


def _kernel_dict(kernel) -> dict:
    return {
        "name": kernel.name,
        "shape": list(kernel.shape),
        "num_unique": kernel.num_unique,
        "max_unique_per_channel": kernel.max_unique_per_channel,
    }
