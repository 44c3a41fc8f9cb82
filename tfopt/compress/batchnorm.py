"""Re-estimates BatchNorm moving statistics after the kernels of a model changed.

Clustering, pruning or low-rank factorisation change what each convolution
outputs, but BatchNorm keeps the mean and variance of the old activations; a
short fine-tune with momentum 0.99 only partly catches up. These functions
recompute the statistics as a plain average over a few batches of data (in
training mode, Dropout off, no weight update). Works on Keras 3 and tf_keras
models, including models wrapped by tfmot.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.errors import InvalidArgumentError, InvalidTypeError

_NORMS = ("BatchNormalization", "SyncBatchNormalization")
_DROPOUT = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")


def reestimate_batchnorm(model: Any, data: Any, *, batch_size: int = 64, num_batches: int | None = None):
    """A copy of `model` whose BatchNorm moving statistics are recomputed on `data`.

    After clustering, pruning or any change of the kernels, the stored
    statistics describe the old activations; a momentum-averaged fine-tune
    only partly catches up. This runs the data through the model in training
    mode (Dropout off, no weight update) with each BatchNorm's momentum set so
    the statistics become the plain average over the batches.

    Args:
        model: a Keras 3 or tf_keras model. Not modified.
        data: inputs: an array, a list of arrays (multi-input), or a batched
            `tf.data.Dataset` yielding inputs or `(inputs, labels)`.
        batch_size: batch size when `data` is arrays. Defaults to `64`.
        num_batches: use at most this many batches. Defaults to `None` (all).

    Returns:
        A new model of the same flavour.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.batchnorm import reestimate_batchnorm
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    >>> x = np.full((8, 4), 3.0, "float32")
    >>> float(reestimate_batchnorm(m, x).layers[0].moving_mean.numpy()[0])
    3.0
    """
    copy = _keras.clone_model(model)
    reestimate_inplace(copy, data, batch_size=batch_size, num_batches=num_batches)
    return copy


def reestimate_inplace(model, data: Any, *, batch_size: int = 64, num_batches: int | None = None) -> None:
    """Like `reestimate_batchnorm` but changes `model` itself (for models tfopt just built)."""
    layers = list(_all_layers(model))
    norms = [l for l in layers if type(l).__name__ in _NORMS]
    if not norms:
        return
    dropouts = [l for l in layers if type(l).__name__ in _DROPOUT]
    saved = [(l, l.momentum) for l in norms] + [(l, l.rate) for l in dropouts]
    try:
        for l in dropouts:
            l.rate = 0.0
        for index, batch in enumerate(_batches(data, batch_size, num_batches)):
            for l in norms:
                l.momentum = index / (index + 1.0)  # running average: batch n gets weight 1/n
            model(batch, training=True)
    finally:
        for layer, value in saved:
            if type(layer).__name__ in _DROPOUT:
                layer.rate = value
            else:
                layer.momentum = value


def _batches(data: Any, batch_size: int, num_batches: int | None):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}.")
    if hasattr(data, "element_spec") and hasattr(data, "take"):  # tf.data.Dataset
        iterator = (element[0] if isinstance(element, tuple) else element for element in data)
    elif isinstance(data, np.ndarray) or (isinstance(data, (list, tuple)) and all(isinstance(a, np.ndarray) for a in data)):
        arrays = [data] if isinstance(data, np.ndarray) else list(data)
        count = len(arrays[0])
        iterator = (
            arrays[0][i : i + batch_size] if len(arrays) == 1 else [a[i : i + batch_size] for a in arrays]
            for i in range(0, count, batch_size)
        )
    else:
        raise InvalidTypeError(
            "BatchNorm data must be a numpy array, a list of arrays (one per input) or a batched tf.data.Dataset. "
            f"Received: an object of type {type(data).__name__}."
        )
    for index, batch in enumerate(iterator):
        if num_batches is not None and index >= num_batches:
            return
        yield batch


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layer"):
            yield layer.layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
