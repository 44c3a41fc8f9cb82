"""The LiteRT Quantizer engine (`litert_quantizer`): recipes applied to a float .tflite.

LiteRT Quantizer rewrites a float flatbuffer directly (no TensorFlow graph).
`run_litert` loads a recipe, keeps chosen ops float, optionally quantizes
FULLY_CONNECTED weights per tensor, calibrates and quantizes. `convert()` in
`tfopt.export.convert` is the public entry point.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from typing import Any, Sequence

import numpy as np

from tfopt import _keras
from tfopt.analyze.flatbuffer import inspect_tflite
from tfopt.errors import InvalidArgumentError, InvalidTypeError
from tfopt.export.calibration import CalibrationData, calibration_data

# Recipe name -> (litert_quantizer.recipe function, needs calibration, one-line description).
RECIPES = {
    "static_wi8_ai8": ("static_wi8_ai8", True, "int8 weights and activations (full integer; fastest on XNNPACK)"),
    "static_wi8_ai16": ("static_wi8_ai16", True, "int8 weights, int16 activations (16x8; accuracy over speed)"),
    "dynamic_wi8_afp32": ("dynamic_wi8_afp32", False, "int8 weights, activations quantized at run time"),
    "dynamic_wi4_afp32": ("dynamic_wi4_afp32", False, "int4 channelwise weights, dynamic activations"),
    "dynamic_wi4b32_afp32": ("dynamic_wi4b32_afp32", False, "int4 weights in blocks of 32, dynamic activations"),
    "dynamic_wi8b32_afp32": ("dynamic_wi8b32_afp32", False, "int8 weights in blocks of 32, dynamic activations"),
    "weight_only_wi8_afp32": ("weight_only_wi8_afp32", False, "int8 weights dequantized to float (size only)"),
    "weight_only_wi4_afp32": ("weight_only_wi4_afp32", False, "int4 weights dequantized to float (size only)"),
}
# tfopt mode names (and the CLI's short names) -> recipe.
MODE_ALIASES = {
    "int8": "static_wi8_ai8",
    "int16x8": "static_wi8_ai16",
    "16x8": "static_wi8_ai16",
    "dynamic": "dynamic_wi8_afp32",
    "int4": "dynamic_wi4_afp32",
}
# Input / output dtype each recipe leaves the model with.
RECIPE_IO = {"static_wi8_ai8": "int8", "static_wi8_ai16": "int16"}
CALIBRATION_METHODS = ("minmax", "moving_average")


def recipe_for(mode: str) -> str:
    """The recipe name for a tfopt mode, a short alias or a recipe name."""
    name = MODE_ALIASES.get(mode, mode)
    if name not in RECIPES:
        raise InvalidArgumentError(
            f"Unknown mode {mode!r} for engine='litert_quantizer'. Expected one of {sorted(MODE_ALIASES)} "
            f"or a recipe name {sorted(RECIPES)}."
        )
    return name


def layer_regex(name: str) -> str:
    """A regex matching the TFLite tensors that a Keras layer named `name` writes.

    TFLite tensor names carry the Keras name scopes, e.g.
    `model_1/conv2_1/convolution` or fused `model_1/relu2_1/Relu;model_1/conv2_1/convolution`
    (Keras 3 export adds `_1` to each scope).

    >>> import re
    >>> bool(re.search(layer_regex("conv2"), "model_1/relu2_1/Relu;model_1/conv2_1/convolution"))
    True
    """
    return rf"(^|[/;]){re.escape(name)}(_\d+)?(/|;|$)"


def rule_patterns(rules: str | Sequence[str] | None) -> list[tuple[str, str]]:
    """(rule as given, regex) for layer names or `"re:<regex>"` rules."""
    if rules is None:
        return []
    items = [rules] if isinstance(rules, str) else list(rules)
    patterns = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidTypeError(
                f"float_fallback items must be layer names or 're:<regex>' strings. Received: {item!r}."
            )
        patterns.append((item, item[3:] if item.startswith("re:") else layer_regex(item)))
    return patterns


def op_outputs(content: bytes) -> list[list[str]]:
    """The output tensor names of every op of the main graph, in execution order."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators:
        names = []
        for index in op.outputs if op.outputs is not None else []:
            raw = graph.tensors[int(index)].name
            names.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        ops.append(names)
    return ops


def op_scope(outputs: Sequence[str]) -> str:
    """An op's scope as LiteRT Quantizer matches it: its output tensor names joined by ';', plus ';'."""
    return ";".join(outputs) + ";"


def map_output_layer(keras_model: Any, tflite: Any, rules: str | Sequence[str] | None):
    """Rewrites a rule naming a single-output model's last layer into its output tensor's scope.

    The output tensor of a converted Keras model is named after the signature
    (`StatefulPartitionedCall:0`), not after the layer that writes it.
    """
    if rules is None or len(keras_model.outputs) != 1:
        return rules
    items = [rules] if isinstance(rules, str) else list(rules)
    output_tensor = inspect_tflite(tflite).outputs[0].name
    last = keras_model.layers[-1].name
    return [f"re:^{re.escape(output_tensor)};$" if item == last else item for item in items]


def _signature_calibration(content: bytes, calibration: Any) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration examples keyed by the .tflite's signature and its input names."""
    signatures = inspect_tflite(content).signatures
    if len(signatures) != 1:
        raise InvalidArgumentError(
            f"engine='litert_quantizer' needs a .tflite with exactly one signature; this one has {list(signatures)}. "
            "Convert the model with tfopt.convert, which writes a 'serving_default' signature."
        )
    key, signature = next(iter(signatures.items()))
    names = list(signature["inputs"])
    shapes = _signature_input_shapes(content, key, names)
    if not isinstance(calibration, CalibrationData):
        calibration = calibration_data(calibration)
    if len(calibration.specs) != len(names):
        raise InvalidArgumentError(
            f"the .tflite takes {len(names)} inputs {names}, but the calibration data holds {len(calibration.specs)}."
        )
    spec_names = [s.name for s in calibration.specs]
    order = [spec_names.index(n) for n in names] if set(spec_names) == set(names) else list(range(len(names)))
    examples = []
    for example in calibration:
        feed = {}
        for name, j in zip(names, order):
            shape, dtype = shapes[name]
            array = example[j]
            if array.size != int(np.prod(shape)):
                raise InvalidArgumentError(
                    f"calibration examples for input {name!r} have shape {array.shape}; the .tflite expects {shape}."
                )
            feed[name] = array.reshape(shape).astype(dtype)
        examples.append(feed)
    return {key: examples}


def _signature_input_shapes(content: bytes, key: str, names: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and numpy dtype of each signature input, read from the flatbuffer (nothing is run)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    dtypes = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8", 10: "float64"}
    for signature in model.signatureDefs or []:
        raw_key = signature.signatureKey.decode() if isinstance(signature.signatureKey, bytes) else signature.signatureKey
        if raw_key != key:
            continue
        graph = model.subgraphs[signature.subgraphIndex]
        out = {}
        for item in signature.inputs:
            name = item.name.decode() if isinstance(item.name, bytes) else item.name
            tensor = graph.tensors[item.tensorIndex]
            out[name] = (tuple(int(d) for d in tensor.shape), dtypes.get(int(tensor.type), "float32"))
        if set(out) == set(names):
            return out
    raise InvalidArgumentError(f"signature {key!r} of the .tflite has no inputs {names}.")


def _calibrate(content: bytes, quantizer, data: dict, method: str) -> dict:
    """Activation ranges (QSVs) for the recipe loaded in `quantizer`."""
    if method == "moving_average":
        return quantizer.calibrate(data, num_threads=1)
    calibrator = _keras.optional_import("litert_quantizer.calibrator", "litert-quantizer")
    manager_module = _keras.optional_import("litert_quantizer.recipe_manager", "litert-quantizer")
    qsv_utils = _keras.optional_import("litert_quantizer.utils.qsv_utils", "litert-quantizer")
    manager = manager_module.RecipeManager()
    manager.load_quantization_recipe(quantizer.get_quantization_recipe())
    runner = calibrator.Calibrator(bytearray(content), num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    runner.calibrate(data, manager)
    return runner.get_model_qsvs()


def _recipe(recipes: Any, function_name: str, per_channel_dense: bool) -> list[dict]:
    """The recipe entries; with `per_channel_dense=False`, FULLY_CONNECTED weights get one scale per tensor."""
    entries = copy.deepcopy(list(getattr(recipes, function_name)()))
    if per_channel_dense:
        return entries
    extra = []
    for entry in entries:
        weights = (entry.get("op_config") or {}).get("weight_tensor_config")
        if not weights or weights.get("granularity") != recipes.QuantGranularity.CHANNELWISE:
            continue
        dense = copy.deepcopy(entry)
        dense["operation"] = recipes.TFLOperationName.FULLY_CONNECTED
        dense["op_config"]["weight_tensor_config"]["granularity"] = recipes.QuantGranularity.TENSORWISE
        extra.append(dense)
    return entries + extra


def run_litert(
    content: bytes,
    *,
    recipe: str,
    calibration: Any,
    float_scopes: Sequence[str] = (),
    calibration_method: str = "minmax",
    per_channel_dense: bool = True,
) -> bytes:
    """Quantizes a float .tflite with a LiteRT Quantizer recipe; `float_scopes` are regexes of ops kept float."""
    if calibration_method not in CALIBRATION_METHODS:
        raise InvalidArgumentError(
            f"calibration_method must be one of {CALIBRATION_METHODS}. Received: calibration_method={calibration_method!r}."
        )
    function_name, needs_calibration, _ = RECIPES[recipe]
    if needs_calibration and calibration is None:
        raise InvalidArgumentError(
            f"recipe {recipe!r} quantizes activations and needs calibration data. Pass "
            "calibration=tfopt.calibration_data(x_train, model=model) (100-500 real examples)."
        )
    qz = _keras.optional_import("litert_quantizer.quantizer", "litert-quantizer")
    recipes = _keras.optional_import("litert_quantizer.recipe", "litert-quantizer")
    quantizer = qz.Quantizer(bytearray(content))
    quantizer.load_quantization_recipe(_recipe(recipes, function_name, per_channel_dense))
    for pattern in float_scopes:
        quantizer.update_quantization_recipe(
            pattern, recipes.TFLOperationName.ALL_SUPPORTED, algorithm_key=recipes.AlgorithmName.NO_QUANTIZE
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            qsv = None
            if quantizer.need_calibration:
                qsv = _calibrate(content, quantizer, _signature_calibration(content, calibration), calibration_method)
            result = quantizer.quantize(qsv, enable_progress_report=False)
    except (ValueError, RuntimeError, KeyError) as err:
        raise InvalidArgumentError(f"LiteRT Quantizer could not apply recipe {recipe!r}: {err}") from err
    return bytes(result.quantized_model)


def _layer_recipe(recipes: Any, default: str, overrides: Sequence[tuple[str, str]], per_channel_dense: bool) -> list:
    """A recipe: every supported op at `default` ("int8" / "int16x8"), then each (scope regex, precision) on top.

    Later entries win in LiteRT Quantizer; a precision its policy refuses for an
    op (int4 depthwise convolutions) is skipped there, so the op keeps the default.
    """
    algorithms = recipes.AlgorithmName
    every = recipes.TFLOperationName.ALL_SUPPORTED
    activation_bits = 16 if default == "int16x8" else 8
    manager = _keras.optional_import("litert_quantizer.recipe_manager", "litert-quantizer").RecipeManager()
    manager.load_quantization_recipe(_recipe(recipes, RECIPES[MODE_ALIASES[default]][0], per_channel_dense))
    for pattern, precision in overrides:
        if precision == "float32":
            manager.add_quantization_config(pattern, every, algorithm_key=algorithms.NO_QUANTIZE)
        elif precision == "float16":
            manager.add_weight_only_config(pattern, every, num_bits=16, algorithm_key=algorithms.FLOAT_CASTING)
        elif precision == "int16x8":
            manager.add_static_config(pattern, every, activation_num_bits=16, weight_num_bits=8)
        elif precision == "int8":
            manager.add_static_config(pattern, every, activation_num_bits=8, weight_num_bits=8)
        elif precision == "int4":
            manager.add_static_config(pattern, every, activation_num_bits=activation_bits, weight_num_bits=4)
        else:
            raise InvalidArgumentError(f"Unknown layer precision {precision!r}.")
    return manager.get_quantization_recipe()


def run_litert_layers(
    content: bytes,
    *,
    default: str,
    overrides: Sequence[tuple[str, str]],
    calibration: Any,
    qsv: dict | None = None,
    calibration_method: str = "minmax",
    per_channel_dense: bool = True,
) -> tuple[bytes, dict]:
    """Quantizes a float .tflite at `default` with per-op precisions; returns (flatbuffer, activation ranges).

    `overrides` are (op scope regex, precision) pairs, later ones winning.
    Activation ranges do not depend on the weights' bit width, so the ranges of
    one call (`qsv`) can be passed to the next to skip calibration.
    """
    if calibration is None and qsv is None:
        raise InvalidArgumentError(
            "layer_precision quantizes activations and needs calibration data. Pass "
            "calibration=tfopt.calibration_data(x_train, model=model) (100-500 real examples)."
        )
    qz = _keras.optional_import("litert_quantizer.quantizer", "litert-quantizer")
    recipes = _keras.optional_import("litert_quantizer.recipe", "litert-quantizer")
    quantizer = qz.Quantizer(bytearray(content))
    try:
        quantizer.load_quantization_recipe(_layer_recipe(recipes, default, overrides, per_channel_dense))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if qsv is None:
                qsv = _calibrate(content, quantizer, _signature_calibration(content, calibration), calibration_method)
            result = quantizer.quantize(qsv, enable_progress_report=False)
    except (ValueError, RuntimeError, KeyError) as err:
        raise InvalidArgumentError(f"LiteRT Quantizer could not apply the layer precisions {list(overrides)}: {err}") from err
    return bytes(result.quantized_model), qsv
