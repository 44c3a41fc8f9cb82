"""Fine-tuning as a recipe step: compile with Adam and a loss that matches the labels, then `fit`.

`tfopt.apply` runs it for `FineTuneConfig` (and trains a `Distiller` for
`DistillConfig` with epochs). It works on any Keras model of either flavour,
including models that carry tfopt's training wrappers, which train under a
plain `fit`. The caller of `apply` never sees their own model trained: `apply`
hands this step a copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.errors import InvalidArgumentError


def looks_like_probabilities(outputs: np.ndarray, *, atol: float = 1e-3) -> bool:
    """True when every row is non-negative and sums to 1 (a softmax output).

    >>> looks_like_probabilities(np.array([[0.25, 0.75]]))
    True
    >>> looks_like_probabilities(np.array([[2.0, -1.0]]))
    False
    """
    outputs = np.asarray(outputs, dtype="float64")
    return bool(np.all(outputs >= 0.0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=atol))


def loss_for(model: Any, x_sample: Any, y: np.ndarray):
    """The loss a user would pick for these labels and this model's outputs.

    Integer labels: sparse cross-entropy; one-hot labels: cross-entropy (each
    `from_logits` unless the model ends in a softmax); float targets of the
    output's shape (regression, autoencoders): mean squared error.
    """
    keras = _keras.keras_of(model)
    y = np.asarray(y)
    outputs = np.asarray(model(x_sample, training=False))
    from_logits = not looks_like_probabilities(outputs)
    if y.dtype.kind in "iub":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    if y.ndim == outputs.ndim and y.shape[-1] == outputs.shape[-1] and outputs.shape[-1] > 1:
        rows = y.reshape(-1, y.shape[-1])
        if np.all((rows == 0) | (rows == 1)) and np.all(rows.sum(axis=-1) == 1):
            return keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    if y.ndim == outputs.ndim and y.shape[1:] == outputs.shape[1:]:
        return keras.losses.MeanSquaredError()
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0) and y.ndim == 1:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    raise InvalidArgumentError(
        f"Cannot tell which loss fits labels of shape {y.shape} (dtype {y.dtype}) and outputs of shape "
        f"{outputs.shape}. Expected integer class labels, one-hot labels, or targets shaped like the output. "
        "Compile and fit the model yourself for other tasks."
    )


def _check_data(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2 or data[0] is None or data[1] is None:
        raise InvalidArgumentError("Fine-tuning needs data=(x_train, y_train) arrays.")
    x, y = data
    if len(x) != len(y):
        raise InvalidArgumentError(
            f"x_train and y_train differ in length: {len(x)} vs {len(y)}. Pass one label per example."
        )
    if len(x) == 0:
        raise InvalidArgumentError("x_train is empty: fine-tuning needs at least one example.")
    return x, y


def fine_tune(model: Any, data: Any, *, epochs: int = 2, batch_size: int = 64, learning_rate: float = 1e-3):
    """Compiles `model` with Adam and a matching loss, fits it on `data`, and returns it (trained in place).

    Args:
        model: a Keras 3 or tf_keras model, wrapped by tfopt or not.
        data: `(x_train, y_train)`.
        epochs: passes over the data. Defaults to `2`.
        batch_size: examples per step. Defaults to `64`.
        learning_rate: Adam's learning rate. Defaults to `1e-3`.

    Returns:
        `model`, trained.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(32, 4).astype("float32"), np.arange(32) % 3
    >>> fine_tune(model, (x, y), epochs=1) is model
    True
    """
    x, y = _check_data(data)
    keras = _keras.keras_of(model)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss_for(model, x[:batch_size], y))
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def fit_distiller(distiller: Any, data: Any, *, epochs: int, batch_size: int = 64, learning_rate: float = 1e-3):
    """Compiles a `Distiller` with Adam (its hard-label loss matches the student) and fits it; returns it."""
    x, y = _check_data(data)
    keras = _keras.keras_of(distiller)
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
    distiller.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return distiller


def handle(model: Any, config: Any, context: Any):
    """`tfopt.apply`'s handler for a `FineTuneConfig`: trains `model` in place on the recipe's data."""
    return fine_tune(model, (context.x, context.y), epochs=config.epochs, batch_size=config.batch_size,
                     learning_rate=config.learning_rate)
