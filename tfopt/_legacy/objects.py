"""The tf_keras classes a saved pruned, clustered or QAT tf_keras model may name (tfmot's wrappers and tfopt's)."""

from __future__ import annotations

from tfopt._legacy import import_tfmot


def tfmot_custom_objects() -> dict:
    """The tfmot wrapper classes (pruning, clustering, QAT) a saved tf_keras model may name, by name."""
    tfmot = import_tfmot()
    from tfopt._legacy import cluster

    objects = dict(cluster.custom_objects())
    for scope in (tfmot.sparsity.keras.prune_scope(), tfmot.quantization.keras.quantize_scope()):
        for mapping in scope.custom_objects:  # the dicts each tfmot scope would install
            objects.update(mapping)
    return objects
