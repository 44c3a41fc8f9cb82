"""Turns a subclassed model into a functional graph QAT can rewrite (both Keras flavours).

`trace_subclassed` calls the model's `call` on a symbolic input: when `call`
only calls layers (and Keras ops), each call is recorded as a node of a
functional model over the same layers, checked to compute the same outputs.
"""

from __future__ import annotations

from typing import Any


from tfopt import _keras
from tfopt.errors import InvalidArgumentError, UnsupportedModelError


def trace_subclassed(model: Any, *, input_shape: tuple[int, ...] | None = None):
    """A functional model over the layers of a subclassed model, traced by calling its `call` symbolically.

    Works when `call` only calls layers (and Keras ops): each layer call is
    recorded as a node of a functional graph that shares the original layers.

    Raises:
        NotImplementedError: the model cannot be traced (the reason is included).
        ValueError: no input shape is known; pass `input_shape`.
    """
    keras = _keras.keras_of(model)
    if input_shape is None:
        inputs = getattr(model, "inputs", None)
        if inputs:
            input_shape = tuple(inputs[0].shape[1:])
    if input_shape is None:
        raise InvalidArgumentError(
            f"Cannot trace subclassed model {model.name!r}: its input shape is unknown. Pass input_shape=(H, W, C)."
        )
    if not model.built:
        model.build((None, *input_shape))
    symbolic = keras.Input(tuple(input_shape), name=f"{model.name}_input")
    try:
        outputs = model.call(symbolic, training=False)
    except TypeError:
        outputs = model.call(symbolic)
    except Exception as err:  # noqa: BLE001 - any failure means "cannot be traced"
        raise UnsupportedModelError(f"subclassed model {model.name!r} could not be traced symbolically: {err}") from err
    traced = keras.Model(symbolic, outputs, name=f"{model.name}_traced")
    _keras.check_same_outputs(model, traced, input_shape=input_shape)
    return traced


