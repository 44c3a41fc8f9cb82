"""Turns a subclassed model into a functional graph QAT can rewrite (both Keras flavours).

`trace_subclassed` calls the model's `call` on a symbolic input: when `call`
only calls layers (and Keras ops), each call is recorded as a node of a
functional model over the same layers, checked to compute the same outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
    _check_same(model, traced, input_shape=input_shape)
    return traced


def _check_same(a: Any, b: Any, *, input_shape: tuple[int, ...] | None = None, atol: float = 1e-4) -> None:
    rng = np.random.default_rng(0)
    shapes = [input_shape] if input_shape is not None else [tuple(int(d or 1) for d in t.shape[1:]) for t in a.inputs]
    xs = [rng.random((2, *s), dtype=np.float32) for s in shapes]
    feed = xs[0] if len(xs) == 1 else xs
    out_a, out_b = a(feed, training=False), b(feed, training=False)
    flat_a = [np.asarray(v) for v in (out_a if isinstance(out_a, (list, tuple)) else [out_a])]
    flat_b = [np.asarray(v) for v in (out_b if isinstance(out_b, (list, tuple)) else [out_b])]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(flat_a, flat_b))
    scale = max(float(np.max(np.abs(x))) for x in flat_a)
    if len(flat_a) != len(flat_b) or not np.isfinite(diff) or diff > atol * max(1.0, scale):
        raise InvalidArgumentError(f"The prepared model's outputs differ from {a.name!r} by up to {diff:.3g}; please report this model.")
