"""Deprecated: `quantize_tflite` is `tfopt.convert(..., engine="litert_quantizer")`.

The LiteRT Quantizer engine itself lives in `tfopt.export._litert`; the recipe
table and `layer_regex` stay importable from here.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from tfopt.export._litert import CALIBRATION_METHODS, MODE_ALIASES, RECIPES, layer_regex, map_output_layer
from tfopt.export.convert import ConversionResult, _convert

__all__ = ["quantize_tflite", "RECIPES", "MODE_ALIASES", "CALIBRATION_METHODS", "layer_regex", "map_output_layer"]


def quantize_tflite(
    model: Any,
    *,
    recipe: str = "static_wi8_ai8",
    calibration: Any = None,
    exclude: str | Sequence[str] | None = None,
    calibration_method: str = "minmax",
    output: str | None = None,
) -> ConversionResult:
    """Deprecated alias of `tfopt.convert(model, mode=recipe, engine="litert_quantizer", float_fallback=exclude)`.

    Args:
        model: a float .tflite (bytes, path or `ConversionResult`), or a Keras model.
        recipe: a LiteRT Quantizer recipe name or alias (`"int8"`, `"16x8"`, `"int4"`).
            Defaults to `"static_wi8_ai8"`.
        calibration: representative inputs for `static_*` recipes. Defaults to `None`.
        exclude: layers / ops kept float (names or `"re:<regex>"`). Defaults to `None`.
        calibration_method: `"minmax"` or `"moving_average"`. Defaults to `"minmax"`.
        output: also write the .tflite here. Defaults to `None`.

    Returns:
        A `ConversionResult` (`engine="litert_quantizer"`, `recipe` set).

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> x = np.random.rand(50, 8).astype("float32")
    >>> quantize_tflite(model, calibration=x).recipe  # doctest: +SKIP
    'static_wi8_ai8'
    """
    warnings.warn(
        "quantize_tflite is deprecated; use tfopt.convert(model, mode=..., engine='litert_quantizer', "
        "float_fallback=...).",
        DeprecationWarning,
        stacklevel=2,
    )
    return _convert(
        model, mode=recipe, engine="litert_quantizer", calibration=calibration, float_fallback=exclude,
        per_channel_dense=True, input_type=None, output_type=None, output=output, sparse=False,
        check_delegation=False, safe_mode=True, validation=None, max_accuracy_drop=None,
        calibration_method=calibration_method,
    )
