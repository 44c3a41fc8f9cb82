"""Post-training quantization and conversion to LiteRT (.tflite): the one entry point, `convert`.

Modes: `float32`, `float16` (weights), `dynamic` (int8 weights, float activations),
`int8` (full integer, calibrated) and `int16x8` (int16 activations, int8 weights).
Two engines do the work: the TensorFlow Lite converter (`engine="converter"`)
and LiteRT Quantizer (`engine="litert_quantizer"`), which rewrites the float
.tflite with a recipe. Keras models are traced with a fixed batch of 1 (what
phones and microcontrollers run), with a `serving_default` signature whose input
and output names are the model's own, so they stay stable across conversions.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings as _warnings_module
from typing import Any, Sequence

from tfopt import _keras
from tfopt._io import atomic_write
from tfopt.analyze.flatbuffer import TFLiteInspection, inspect_tflite, tflite_bytes
from tfopt.errors import InvalidArgumentError, InvalidTypeError
from tfopt.export import _converter, _fallback, _litert
from tfopt.export.calibration import CalibrationData, calibration_data
from tfopt.export.precision import LayerPrecisionConfig, layer_precision_config

CONVERT_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
MODE_ALIASES = {"16x8": "int16x8"}
ENGINES = ("converter", "litert_quantizer")
_IO_TYPES = {
    "float32": ("float32",),
    "float16": ("float32",),
    "dynamic": ("float32",),
    "int8": ("float32", "int8", "uint8"),
    "int16x8": ("float32", "int16"),
}


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """A converted model: the flatbuffer bytes and what the conversion really did.

    `bytes(result)` or `result.tflite` gives the flatbuffer; pass the result itself
    to `tfopt.benchmark` or `tfopt.inspect_tflite`.

    Attributes:
        tflite: the flatbuffer bytes.
        mode: the mode asked for (`"int8"`, ...; a recipe name for other LiteRT Quantizer recipes).
        inspection: the flatbuffer inspection (op precision, float ops left, inputs and outputs).
        path: where the .tflite was written, or `None`.
        warnings: what the user should know (ops left in float, undelegated ops, ...).
        xnnpack: the XNNPACK delegation check, or `None` when not checked.
        engine: `"converter"` or `"litert_quantizer"`.
        recipe: the LiteRT Quantizer recipe used, or `None`.
        float_fallback: output tensor names of the ops kept in float on purpose.
        fallback_search: with `float_fallback="auto"`, the record of the search
            (criterion, float and fully quantized scores, steps, most sensitive ops).
        layer_precision: with `layer_precision=...`: `"map"` (layer -> precision),
            `"chosen"` (that map as a `LayerPrecisionConfig.to_dict()`, which
            `layer_precision=LayerPrecisionConfig.from_dict(...)` converts again),
            `"layers"` (per layer: precision requested, precision written in the
            flatbuffer, whether XNNPACK runs it), `"config"` and, for `"auto"`,
            `"search"` (every measurement, on validation data).
    """

    tflite: bytes = dataclasses.field(repr=False)
    mode: str
    inspection: TFLiteInspection = dataclasses.field(repr=False)
    path: str | None = None
    warnings: tuple[str, ...] = ()
    xnnpack: Any = None  # DelegateCoverage, or None when not checked
    engine: str = "converter"
    recipe: str | None = None
    float_fallback: tuple[str, ...] = ()
    fallback_search: dict | None = dataclasses.field(default=None, repr=False)
    layer_precision: dict | None = dataclasses.field(default=None, repr=False)

    def __bytes__(self) -> bytes:
        return self.tflite

    @property
    def size_bytes(self) -> int:
        """Size of the flatbuffer."""
        return len(self.tflite)

    def save(self, path: str | os.PathLike) -> str:
        """Writes the .tflite atomically and returns the path."""
        return atomic_write(path, self.tflite)

    def summary(self) -> str:
        """What the conversion produced."""
        engine = self.engine + (f" ({self.recipe})" if self.recipe else "")
        lines = [
            f"mode {self.mode}, engine {engine}: {self.size_bytes / 1024:.1f} KB"
            + (f" -> {self.path}" if self.path else "")
        ]
        lines.append(self.inspection.summary())
        if self.float_fallback:
            lines.append(f"  kept float on purpose: {', '.join(self.float_fallback)}")
        search = self.fallback_search
        if search:
            lines.append(
                f"  float fallback search ({search['criterion']}): float {search['reference']:.4f}, fully quantized "
                f"{search['fully_quantized']:.4f}, final {search['final']:.4f} "
                f"(tolerance {search['max_accuracy_drop']:g} points{'' if search['met'] else ', NOT met'})"
            )
        if self.layer_precision:
            from tfopt.export.precision_report import summary_lines

            lines.extend(summary_lines(self.layer_precision))
        if self.xnnpack is not None:
            lines.append("  " + self.xnnpack.summary())
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the bytes)."""
        return {
            "mode": self.mode,
            "engine": self.engine,
            "recipe": self.recipe,
            "size_bytes": self.size_bytes,
            "path": self.path,
            "warnings": list(self.warnings),
            "float_fallback": list(self.float_fallback),
            "fallback_search": self.fallback_search,
            "layer_precision": self.layer_precision,
            "inspection": self.inspection.to_dict(),
            "xnnpack": self.xnnpack.to_dict() if self.xnnpack is not None else None,
        }


def convert(
    model: Any,
    *,
    mode: str | None = None,
    engine: str | None = None,
    calibration: Any = None,
    float_fallback: str | Sequence[str] | None = None,
    layer_precision: Any = None,
    per_channel_dense: bool = True,
    input_type: str | None = None,
    output_type: str | None = None,
    output: str | os.PathLike | None = None,
    sparse: bool = False,
    check_delegation: bool = True,
    safe_mode: bool = True,
    validation: tuple[Any, Any] | None = None,
    max_accuracy_drop: float | None = None,
    max_size_kb: float | None = None,
    max_accuracy_drop_fraction: float | None = None,
) -> ConversionResult:
    """Converts a model to a LiteRT (.tflite) flatbuffer, quantizing it after training, and reports what got quantized.

    The one entry point for post-training quantization. Use `float16` to halve
    the file, `dynamic` for int8 weights without calibration, `int8` for
    full-integer models (fastest under XNNPACK on CPUs, and what microcontrollers
    need: pass `input_type="int8", output_type="int8"`), and `int16x8` when int8
    activations lose too much accuracy. A model trained with quantization-aware
    training (it holds fake-quant ops, e.g. from `tfopt.qat`) converts to int8
    from its own ranges, without calibration data.

    Args:
        model: a Keras 3 or tf_keras model, a `.keras` / `.h5` file path, or a
            SavedModel folder; with `engine="litert_quantizer"` also a float
            .tflite (bytes, path or `ConversionResult`).
        mode: `"float32"`, `"float16"`, `"dynamic"`, `"int8"` or `"int16x8"`
            (`"16x8"` is accepted). With `engine="litert_quantizer"` also any
            recipe name of `tfopt.export.quantizer.RECIPES` or `"int4"`. With
            `layer_precision`, the precision of the layers it does not name
            (`"int8"` or `"int16x8"`). Defaults to `None`: `"float32"`, or
            `"int8"` with `layer_precision`.
        engine: `"converter"` (the TensorFlow Lite converter) or
            `"litert_quantizer"` (LiteRT Quantizer recipes applied to the float
            .tflite; `pip install litert-quantizer`). Defaults to `None`:
            `"converter"`, or `"litert_quantizer"` with `layer_precision` (the
            only engine that writes per-layer precisions).
        calibration: representative data for `int8` / `int16x8`: a
            `tfopt.CalibrationData`, or anything `tfopt.calibration_data` accepts
            (then 200 examples are drawn). Optional for a model with fake-quant
            ops. Defaults to `None`.
        float_fallback: ops to keep in float in a quantized model: a list of Keras
            layer names or `"re:<regex>"` rules (searched in each op's output
            tensor names; every rule must match an op), or `"auto"`: quantize
            everything, then keep the ops that add the most quantization error
            float, one at a time, until the model is within `max_accuracy_drop`
            of the float .tflite. Needs calibration data. The special case
            `layer_precision={name: "float32", ...}` of `layer_precision`.
            Defaults to `None`.
        layer_precision: the precision of each Keras layer with weights
            (Conv2D, DepthwiseConv2D, Dense): `"int4"` (4-bit weights, int8
            activations), `"int8"`, `"int16x8"`, `"float16"` or `"float32"`.
            Give a dict `{rule: precision}` (a rule is a layer name or
            `"re:<regex>"` matched in full; the first matching rule wins; every
            rule must match), the text `"fc1=int4,re:conv.*=int8,default=int8"`,
            a `tfopt.export.precision.LayerPrecisionConfig`, or `"auto"`: tfopt
            measures each layer at 4 bits on `validation` data (accuracy, output
            noise, bytes and XNNPACK latency) and picks the smallest model within
            `max_accuracy_drop` and / or `max_size_kb` and within 1.25x the
            latency of uniform int8, checks it on LiteRT, and raises
            `InfeasibleBoundError` (naming the nearest map) when no map meets the
            bounds. The result's `layer_precision` says what was written and
            which layers XNNPACK does not run. Needs calibration data and the
            Keras model. Defaults to `None`.: quantize Dense (FULLY_CONNECTED) weights with one scale
            per output channel. `False` uses one scale per tensor, as the MLPerf
            Tiny reference models do: a smaller file and a much smaller TFLite
            Micro arena, sometimes at some accuracy. Defaults to `True`.
        input_type: dtype of the model input: `"float32"`, or `"int8"` / `"uint8"`
            (mode `int8`), `"int16"` (mode `int16x8`). Defaults to `None`: float32
            with the converter; LiteRT Quantizer's static recipes always give
            integer inputs and outputs (int8, or int16 for int16x8).
        output_type: dtype of the model output, same choices. Defaults to `None`.
        output: also write the .tflite here (atomically). Defaults to `None`.
        sparse: store mostly-zero weights in LiteRT's sparse encoding
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`; fed through DENSIFY ops;
            converter engine). It shrinks the raw file of a pruned model but may
            compress worse under gzip than dense storage, and XNNPACK runs sparse
            kernels only on some ARM CPUs. Defaults to `False`.
        check_delegation: load the result in LiteRT with XNNPACK (in a child
            process) and report which ops the delegate takes. Defaults to `True`.
        safe_mode: when `model` is a file, refuse to deserialize Python lambdas so
            loading cannot run arbitrary code. Defaults to `True`.
        validation: `(x, y)` labelled data the model was not trained on, for
            `float_fallback="auto"` (the tolerance then applies to top-1
            accuracy; without it, to the top-1 agreement with the float model on
            the calibration data) and `layer_precision="auto"` (required).
            Defaults to `None`.
        max_accuracy_drop: the allowed top-1 loss against the float .tflite in
            points (0.5 = half a point) for `float_fallback="auto"` and
            `layer_precision="auto"`. Defaults to `None`: 0.5 points for
            `float_fallback="auto"`; `layer_precision="auto"` uses only the
            bounds given.
        max_size_kb: with `layer_precision="auto"`, the largest flatbuffer in KB
            (1024 bytes). Defaults to `None`.
        max_accuracy_drop_fraction: deprecated spelling of the tolerance as a
            fraction (0.005 = half a point); it warns with the value in points.
            Defaults to `None`.

    Returns:
        A `ConversionResult` holding the bytes, the flatbuffer inspection (op
        precision, float ops left), the ops kept float and any warnings.

    Raises:
        ValueError: unknown mode, engine or type, missing calibration data, a
            float_fallback or layer_precision rule matching nothing, a model the
            converter rejects (the converter's reason is included), or
            (`InfeasibleBoundError`) bounds no layer map meets.
        TypeError: `model` is not a Keras model or a path.
        ImportError: `engine="litert_quantizer"` without `litert-quantizer` installed.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> x = np.random.rand(50, 8).astype("float32")
    >>> result = tfopt.convert(model, mode="int8", calibration=x)
    >>> result.inspection.precision_counts
    {'int8': 1}
    >>> tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=x).inspection.inputs[0].dtype
    'INT8'
    >>> mixed = tfopt.convert(model, layer_precision={"re:dense.*": "int4"}, calibration=x)
    >>> mixed.inspection.precision_counts
    {'int4': 1}
    """
    max_accuracy_drop = _points(max_accuracy_drop, max_accuracy_drop_fraction)
    return _convert(
        model, mode=mode, engine=engine, calibration=calibration, float_fallback=float_fallback,
        per_channel_dense=per_channel_dense, input_type=input_type, output_type=output_type, output=output,
        sparse=sparse, check_delegation=check_delegation, safe_mode=safe_mode, validation=validation,
        max_accuracy_drop=max_accuracy_drop, layer_precision=layer_precision, max_size_kb=max_size_kb,
    )


def _points(max_accuracy_drop: Any, fraction: Any) -> float | None:
    """The tolerance in points; the deprecated fraction spelling warns with the new value."""
    if fraction is None:
        return max_accuracy_drop
    if max_accuracy_drop is not None:
        raise InvalidArgumentError(
            "Pass max_accuracy_drop (points) or the deprecated max_accuracy_drop_fraction, not both. Received: "
            f"max_accuracy_drop={max_accuracy_drop!r}, max_accuracy_drop_fraction={fraction!r}."
        )
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InvalidArgumentError(
            f"max_accuracy_drop_fraction is a fraction in [0, 1). Received: max_accuracy_drop_fraction={fraction!r}."
        )
    points = round(100.0 * fraction, 10)
    _warnings_module.warn(
        f"max_accuracy_drop_fraction is deprecated: tolerances are in points. Pass max_accuracy_drop={points:g} "
        f"(points) for max_accuracy_drop_fraction={fraction:g}.",
        DeprecationWarning,
        stacklevel=3,
    )
    return points


def _check_options(mode, engine, float_fallback, input_type, output_type, max_accuracy_drop, validation, sparse,
                   per_channel_dense=True):
    """Validates the options; returns (mode, recipe or None, input_type, output_type)."""
    if engine not in ENGINES:
        raise InvalidArgumentError(f"engine must be one of {ENGINES}. Received: engine={engine!r}.")
    if not isinstance(mode, str):
        raise InvalidTypeError(f"mode must be a string. Received: mode={mode!r}.")
    mode = MODE_ALIASES.get(mode, mode)
    recipe = None
    if engine == "litert_quantizer":
        if mode == "float16":
            raise InvalidArgumentError("LiteRT Quantizer has no float16 recipe; use engine='converter' for mode='float16'.")
        if sparse:
            raise InvalidArgumentError("sparse=True is a converter option; use engine='converter'.")
        if mode != "float32":
            recipe = _litert.recipe_for(mode)
            mode = next((m for m, r in _litert.MODE_ALIASES.items() if r == recipe and m in CONVERT_MODES), recipe)
    elif mode not in CONVERT_MODES:
        raise InvalidArgumentError(
            f"Unknown mode {mode!r}. Expected one of {CONVERT_MODES} (or '16x8'); LiteRT Quantizer recipes such as "
            "'int4' need engine='litert_quantizer'."
        )
    natural = _litert.RECIPE_IO.get(recipe, "float32") if engine == "litert_quantizer" else "float32"
    allowed = (natural,) if engine == "litert_quantizer" else _IO_TYPES[mode]
    types = []
    for label, value in (("input_type", input_type), ("output_type", output_type)):
        value = natural if value is None else value
        if value not in allowed:
            hint = (" LiteRT Quantizer's static recipes give integer inputs and outputs; use engine='converter' "
                    "for float ones." if engine == "litert_quantizer" else "")
            raise InvalidArgumentError(
                f"{label}={value!r} is not available with mode={mode!r}, engine={engine!r}; expected one of {allowed}.{hint}"
            )
        types.append(value)
    if float_fallback is not None:
        if mode in ("float32", "float16"):
            raise InvalidArgumentError(f"float_fallback keeps ops of a quantized model float; mode={mode!r} quantizes nothing.")
        if isinstance(float_fallback, str) and float_fallback != "auto" and not float_fallback.startswith("re:"):
            float_fallback = [float_fallback]
    if float_fallback is not None and engine == "converter" and (
        not per_channel_dense or types[0] != "float32" or types[1] != "float32"
    ):
        # The converter keeps ops float through its QuantizationDebugger, which re-quantizes with per-channel
        # Dense weights and float inputs / outputs whatever the converter was told.
        raise InvalidArgumentError(
            "float_fallback with engine='converter' gives float inputs and outputs and per-channel Dense weights; "
            f"received input_type={types[0]!r}, output_type={types[1]!r}, per_channel_dense={per_channel_dense}. "
            "Use engine='litert_quantizer' for those together."
        )
    if validation is not None and float_fallback != "auto":
        raise InvalidArgumentError("validation= is only used by float_fallback='auto' and layer_precision='auto'.")
    if max_accuracy_drop is not None and (
        isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float))
        or not 0 <= max_accuracy_drop < 100
    ):
        raise InvalidArgumentError(
            f"max_accuracy_drop is in points, in [0, 100) (0.5 = half a point). Received: "
            f"max_accuracy_drop={max_accuracy_drop!r}."
        )
    return mode, recipe, types[0], types[1], float_fallback


def _is_tflite(model: Any) -> bool:
    if isinstance(model, (bytes, bytearray, ConversionResult)):
        return True
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".tflite")


def _convert(
    model, *, mode, engine, calibration, float_fallback, per_channel_dense, input_type, output_type, output,
    sparse, check_delegation, safe_mode, validation, max_accuracy_drop, calibration_method="minmax",
    max_float_ops=8, base_rules=None, layer_precision=None, max_size_kb=None,
) -> ConversionResult:
    if layer_precision is not None:
        return _convert_layers(
            model, mode=mode, engine=engine, calibration=calibration, float_fallback=float_fallback,
            layer_precision=layer_precision, per_channel_dense=per_channel_dense, input_type=input_type,
            output_type=output_type, output=output, sparse=sparse, check_delegation=check_delegation,
            safe_mode=safe_mode, validation=validation, max_accuracy_drop=max_accuracy_drop,
            max_size_kb=max_size_kb, calibration_method=calibration_method,
        )
    if max_size_kb is not None:
        raise InvalidArgumentError("max_size_kb bounds layer_precision='auto'; pass layer_precision='auto'.")
    mode = "float32" if mode is None else mode
    engine = "converter" if engine is None else engine
    if float_fallback == "auto" and max_accuracy_drop is None:
        max_accuracy_drop = 0.5
    mode, recipe, input_type, output_type, float_fallback = _check_options(
        mode, engine, float_fallback, input_type, output_type, max_accuracy_drop, validation, sparse, per_channel_dense
    )
    if isinstance(model, (str, os.PathLike)) and not _is_tflite(model) and not os.path.isdir(model):
        model = _keras.load_model(os.fspath(model), safe_mode=safe_mode)
    keras_model = model if _keras.is_keras_model(model) else None
    if calibration is not None and not isinstance(calibration, CalibrationData):
        calibration = calibration_data(calibration, model=keras_model)
    if _is_tflite(model):
        if engine != "litert_quantizer":
            raise InvalidArgumentError(
                "A .tflite can only be quantized further with engine='litert_quantizer'; the converter needs the "
                "Keras model or SavedModel."
            )
        float_content = tflite_bytes(model)
        counts = inspect_tflite(float_content).precision_counts
        if counts and set(counts) - {"float32"}:
            raise InvalidArgumentError(
                f"engine='litert_quantizer' expects a float32 .tflite; this one already has compute ops at {counts}. "
                "Pass the float model (tfopt.convert(model, mode='float32'))."
            )
    elif engine == "litert_quantizer" or float_fallback is not None:
        float_content, keras_model, _ = _converter.run_converter(
            model, mode="float32", calibration=None, input_type="float32", output_type="float32", sparse=False,
            per_channel_dense=True, safe_mode=safe_mode,
        )
    else:
        float_content = None

    def quantize(float_ops: list) -> bytes:
        if engine == "litert_quantizer":
            if recipe is None:
                return float_content
            scopes = [f"^{re.escape(_litert.op_scope(outs))}$" for outs in float_ops]
            return _litert.run_litert(
                float_content, recipe=recipe, calibration=calibration, float_scopes=scopes,
                calibration_method=calibration_method, per_channel_dense=per_channel_dense,
            )
        content, _, _ = _converter.run_converter(
            keras_model if keras_model is not None else model, mode=mode, calibration=calibration,
            input_type=input_type, output_type=output_type, sparse=sparse, per_channel_dense=per_channel_dense,
            safe_mode=safe_mode, float_nodes=[name for outs in float_ops for name in outs],
        )
        return content

    kept: list = []
    search = None
    if float_fallback == "auto":
        if calibration is None:
            raise InvalidArgumentError("float_fallback='auto' needs calibration data (it measures each op's error on it).")
        base = _fallback.resolve_rules(base_rules, float_content, keras_model) if base_rules else []
        content, kept, search = _fallback.auto_fallback(
            float_content, quantize, base, calibration=calibration, validation=validation,
            max_accuracy_drop=max_accuracy_drop, max_float_ops=max_float_ops,
        )
    else:
        if float_fallback is not None:
            kept = _fallback.resolve_rules(float_fallback, float_content, keras_model)
        content = quantize(kept)
    return _result(content, mode=mode, engine=engine, recipe=recipe, kept=kept, search=search, output=output,
                   check_delegation=check_delegation)


def _convert_layers(
    model, *, mode, engine, calibration, float_fallback, layer_precision, per_channel_dense, input_type, output_type,
    output, sparse, check_delegation, safe_mode, validation, max_accuracy_drop, max_size_kb, calibration_method,
) -> ConversionResult:
    """`convert` with `layer_precision`: builds the config and hands it to its handler."""
    from tfopt.export import precision_handler

    if float_fallback is not None:
        raise InvalidArgumentError(
            "Pass float_fallback or layer_precision, not both: float_fallback=['name'] is "
            "layer_precision={'name': 'float32'}."
        )
    if engine not in (None, "litert_quantizer"):
        raise InvalidArgumentError(
            f"layer_precision is written by LiteRT Quantizer; received engine={engine!r}. Leave engine unset or "
            "pass engine='litert_quantizer'."
        )
    mode = MODE_ALIASES.get(mode, mode) if mode is not None else None
    if mode is not None and mode not in ("int8", "int16x8"):
        raise InvalidArgumentError(
            f"With layer_precision, mode is the precision of the layers no rule names: 'int8' or 'int16x8'. "
            f"Received: mode={mode!r}."
        )
    if sparse:
        raise InvalidArgumentError("sparse=True is a converter option; it does not combine with layer_precision.")
    config = layer_precision_config(layer_precision, default=mode or "int8", max_accuracy_drop=max_accuracy_drop,
                                    max_size_kb=max_size_kb)
    if mode is not None and isinstance(layer_precision, LayerPrecisionConfig) and config.default != mode:
        raise InvalidArgumentError(
            f"mode={mode!r} and the LayerPrecisionConfig's default={config.default!r} disagree; pass one of them."
        )
    if validation is not None and not config.auto:
        raise InvalidArgumentError("validation= is used by layer_precision='auto' only.")
    natural = _litert.RECIPE_IO[_litert.MODE_ALIASES[config.default]]
    for label, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in (None, natural):
            raise InvalidArgumentError(
                f"{label}={value!r} is not available with layer_precision (default {config.default}); LiteRT "
                f"Quantizer gives {natural} inputs and outputs."
            )
    if _is_tflite(model):
        raise InvalidArgumentError(
            "layer_precision maps Keras layers to precisions: pass the Keras model (or its .keras / .h5 file)."
        )
    if isinstance(model, (str, os.PathLike)) and not os.path.isdir(model):
        model = _keras.load_model(os.fspath(model), safe_mode=safe_mode)
    keras_model = model if _keras.is_keras_model(model) else None
    if calibration is not None and not isinstance(calibration, CalibrationData):
        calibration = calibration_data(calibration, model=keras_model)
    rewritten: list[str] = []
    if config.pointwise_as_dense and keras_model is not None:
        from tfopt.export.precision_layout import conv1x1_as_dense

        keras_model, rewritten = conv1x1_as_dense(keras_model)
        model = keras_model
    float_content, keras_model, _ = _converter.run_converter(
        model, mode="float32", calibration=None, input_type="float32", output_type="float32", sparse=False,
        per_channel_dense=True, safe_mode=safe_mode,
    )
    content, record = precision_handler.apply_layer_precision(
        config, float_content=float_content, keras_model=keras_model, calibration=calibration,
        validation=validation, per_channel_dense=per_channel_dense, calibration_method=calibration_method,
    )
    record["pointwise_as_dense"] = rewritten
    return _result(content, mode=config.default, engine="litert_quantizer", recipe=None, kept=[], search=None,
                   output=output, check_delegation=check_delegation, precision=record)


def _result(content, *, mode, engine, recipe, kept, search, output, check_delegation, precision=None) -> ConversionResult:
    inspection = inspect_tflite(content)
    warnings = _warnings(mode, inspection, expected_float=bool(kept) or precision is not None)
    coverage = None
    if check_delegation:
        from tfopt.measure.benchmark import BenchmarkError, xnnpack_coverage

        try:
            coverage = xnnpack_coverage(content)
        except BenchmarkError as err:
            warnings.append(f"LiteRT could not load the converted model to check XNNPACK coverage: {err}")
        if coverage is not None and not coverage.fully_delegated:
            warnings.append(
                f"XNNPACK takes {coverage.delegated_ops} of {coverage.total_ops} ops; "
                f"{', '.join(coverage.undelegated[:6])} run on LiteRT's reference kernels."
            )
    if search is not None and not search["met"]:
        warnings.append(
            f"float_fallback='auto' kept {len(kept)} op(s) float and still loses "
            f"{100 * (search['reference'] - search['final']):.2f} points ({search['criterion']}), more than "
            f"max_accuracy_drop={search['max_accuracy_drop']:g} points."
        )
    layer_record = None
    if precision is not None:
        from tfopt.export.precision_report import layer_record as _layer_record

        layer_record, layer_warnings = _layer_record(content, precision, coverage)
        warnings.extend(layer_warnings)
    path = atomic_write(output, content) if output is not None else None
    return ConversionResult(
        tflite=content, mode=mode, inspection=inspection, path=path, warnings=tuple(warnings),
        xnnpack=coverage, engine=engine, recipe=recipe,
        float_fallback=tuple(_litert.op_scope(outs)[:-1] for outs in kept), fallback_search=search,
        layer_precision=layer_record,
    )


def _warnings(mode: str, inspection: TFLiteInspection, *, expected_float: bool = False) -> list[str]:
    warnings = []
    if mode in ("int8", "int16x8", "dynamic") and inspection.float_compute_ops and not expected_float:
        ops = ", ".join(f"{op.name}#{op.index}" for op in inspection.float_compute_ops[:8])
        warnings.append(
            f"{len(inspection.float_compute_ops)} compute op(s) stayed in float in mode {mode!r}: {ops}. "
            "They run at float speed; check the converter log, or keep them float on purpose with float_fallback."
        )
    if mode in ("dynamic", "dynamic_wi4_afp32") and (
        inspection.precision_counts.get("hybrid") or inspection.precision_counts.get("hybrid-int4")
    ):
        warnings.append(
            "dynamic-range (hybrid) ops may not be delegated to XNNPACK and can run slower than float32 on CPU; "
            "measure with tfopt.benchmark, and prefer mode='int8' with calibration data for speed."
        )
    return warnings
