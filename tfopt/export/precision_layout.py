"""1x1 convolutions written as Dense layers, so that LiteRT runs their 4-bit weights on XNNPACK.

A Conv2D with a 1x1 kernel, stride 1 and no dilation or groups computes, at every
pixel, a matrix product over channels: exactly what a Dense layer on the last
axis computes. LiteRT converts such a Dense layer to FULLY_CONNECTED, whose int4
weights (int8 activations) XNNPACK runs at int8 speed or faster, while an int4
CONV_2D falls back to LiteRT's reference kernels (`bench/bench_precision.py`).
MobileNet-style networks hold most of their weights in 1x1 convolutions, so
this is where 4 bits become free at run time.

`conv1x1_as_dense` builds a new Keras 3 model (the caller's is not touched) with
the same layer names and weights; outputs agree to float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfopt import _keras


def _is_pointwise(layer: Any, keras: Any) -> bool:
    if not isinstance(layer, keras.layers.Conv2D) or isinstance(
        layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Conv2DTranspose)
    ):
        return False
    config = layer.get_config()
    return (
        tuple(config.get("kernel_size", ())) == (1, 1)
        and tuple(config.get("strides", ())) == (1, 1)
        and tuple(config.get("dilation_rate", (1, 1))) == (1, 1)
        and int(config.get("groups", 1)) == 1
        and config.get("data_format", "channels_last") == "channels_last"
    )


def pointwise_conv_names(model: Any) -> list[str]:
    """Names of the Conv2D layers with a 1x1 kernel, stride 1, no dilation or groups (channels last)."""
    if not _keras.is_keras_model(model) or _keras.keras_flavor(model) != _keras.KERAS3:
        return []
    import keras

    return [layer.name for layer in model.layers if _is_pointwise(layer, keras)]


def conv1x1_as_dense(model: Any, names: list[str] | None = None) -> tuple[Any, list[str]]:
    """A copy of `model` whose pointwise Conv2D layers (all, or `names`) are Dense layers with the same weights.

    Returns (new model, names rewritten). Models that are not Keras 3 functional /
    Sequential models, or hold no such layer, come back unchanged with `[]`.

    Example:

    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(8, 1, name="pw")])
    >>> new, done = conv1x1_as_dense(m)
    >>> done, type(new.get_layer("pw")).__name__
    (['pw'], 'Dense')
    >>> x = np.random.rand(2, 4, 4, 3).astype("float32")
    >>> bool(np.allclose(m.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-5))
    True
    """
    targets = set(pointwise_conv_names(model) if names is None else names) & set(pointwise_conv_names(model))
    if not targets:
        return model, []
    import keras

    def clone(layer):
        if layer.name in targets:
            config = layer.get_config()
            return keras.layers.Dense(
                config["filters"], activation=config.get("activation"), use_bias=config.get("use_bias", True),
                name=layer.name, dtype=config.get("dtype"),
            )
        return layer.__class__.from_config(layer.get_config())

    try:
        new = keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError):  # a subclassed model or a layer that cannot be rebuilt from its config
        return model, []
    for old_layer, new_layer in zip(model.layers, new.layers):
        weights = old_layer.get_weights()
        if old_layer.name in targets:
            kernel = weights[0]
            weights = [kernel.reshape(kernel.shape[2], kernel.shape[3])] + weights[1:]
        if weights:
            new_layer.set_weights([np.asarray(w) for w in weights])
    return new, sorted(targets, key=[layer.name for layer in model.layers].index)
