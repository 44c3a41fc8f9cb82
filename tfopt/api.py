"""Verbs that span techniques: `strip` removes whatever training wrappers a model carries."""

from __future__ import annotations

from typing import Any
from tfopt.errors import InvalidArgumentError


def strip(model: Any, *, flavor: str | None = None, batchnorm_data: Any = None):
    """Removes tfopt's training wrappers (pruning, clustering, or both): a plain Keras model again.

    Use it after fine-tuning a model returned by `tfopt.prune` or `tfopt.cluster`,
    before converting or saving it for deployment. The zeros (pruning) and shared
    values (clustering) are written into the kernels. The result is not compiled:
    compile it again before any further training.

    Args:
        model: a model returned by `tfopt.prune` / `tfopt.cluster` (or loaded with
            `tfopt.load_pruned` / `tfopt.load_clustered`). Not modified.
        flavor: `"keras3"` or `"tf_keras"` for the returned model. Defaults to `None`:
            the flavour of the model that was given to `prune` / `cluster`.
        batchnorm_data: inputs used to re-estimate BatchNorm statistics of clustered
            models after stripping. Defaults to `None` (statistics kept).

    Returns:
        A new Keras model without wrappers.

    Raises:
        ValueError: the model carries no pruning or clustering wrappers.

    Example:

    >>> import keras, warnings, tfopt
    >>> warnings.simplefilter("ignore")
    >>> layers = [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    >>> pruned = tfopt.prune(keras.Sequential(layers), target_sparsity=0.5, include=["hidden"])
    >>> plain = tfopt.strip(pruned)
    >>> [layer.name for layer in plain.layers]
    ['hidden', 'out']
    """
    from tfopt.compress import cluster, prune

    if cluster._cluster_wrappers(model):
        return cluster.strip_clustering(model, flavor=flavor, batchnorm_data=batchnorm_data)
    if prune._wrappers(model):
        return prune.strip(model, flavor=flavor, batchnorm_data=batchnorm_data)
    raise InvalidArgumentError(
        f"Model {getattr(model, 'name', model)!r} carries no pruning or clustering wrappers, so there is nothing "
        "to strip. Pass the model returned by tfopt.prune or tfopt.cluster (QAT models are converted as they are)."
    )
