"""Keras model (Keras 3 or tf_keras), SavedModel or model file -> .tflite, and what really got quantized.

Modes: `float32`, `float16` (weights), `dynamic` (int8 weights, float activations),
`int8` (full integer, calibrated) and `int16x8` (int16 activations, int8 weights).
Keras models are traced with a fixed batch of 1 (what phones and microcontrollers
run), with a `serving_default` signature whose input and output names are the
model's own, so they stay stable across conversions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any

from tfopt import _keras
from tfopt._io import atomic_write
from tfopt.export.calibration import CalibrationData, calibration_data
from tfopt.analyze.flatbuffer import TFLiteInspection, inspect_tflite
from tfopt.errors import InvalidArgumentError, InvalidTypeError

CONVERT_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
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
    """

    tflite: bytes = dataclasses.field(repr=False)
    mode: str
    inspection: TFLiteInspection = dataclasses.field(repr=False)
    path: str | None = None
    warnings: tuple[str, ...] = ()
    xnnpack: Any = None  # DelegateCoverage, or None when not checked

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
        lines = [f"mode {self.mode}: {self.size_bytes / 1024:.1f} KB" + (f" -> {self.path}" if self.path else "")]
        lines.append(self.inspection.summary())
        if self.xnnpack is not None:
            lines.append("  " + self.xnnpack.summary())
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the bytes)."""
        return {
            "mode": self.mode,
            "size_bytes": self.size_bytes,
            "path": self.path,
            "warnings": list(self.warnings),
            "inspection": self.inspection.to_dict(),
            "xnnpack": self.xnnpack.to_dict() if self.xnnpack is not None else None,
        }


def convert(
    model: Any,
    *,
    mode: str = "float32",
    calibration: Any = None,
    input_type: str = "float32",
    output_type: str = "float32",
    output: str | os.PathLike | None = None,
    sparse: bool = False,
    check_delegation: bool = True,
    safe_mode: bool = True,
) -> ConversionResult:
    """Converts a model to a LiteRT (.tflite) flatbuffer and reports what got quantized.

    Use `float16` to halve the file, `dynamic` for int8 weights without calibration,
    `int8` for full-integer models (fastest under XNNPACK on CPUs, and what
    microcontrollers need: pass `input_type="int8", output_type="int8"`), and
    `int16x8` when int8 activations lose too much accuracy.

    Args:
        model: a Keras 3 or tf_keras model, a `.keras` / `.h5` file path, or a
            SavedModel folder.
        mode: one of `"float32"`, `"float16"`, `"dynamic"`, `"int8"`, `"int16x8"`.
            Defaults to `"float32"`.
        calibration: representative data for `int8` / `int16x8`: a
            `tfopt.CalibrationData`, or anything `tfopt.calibration_data` accepts
            (then 200 examples are drawn). Defaults to `None`.
        input_type: dtype of the model input: `"float32"`, or `"int8"` / `"uint8"`
            (mode `int8`), `"int16"` (mode `int16x8`). Defaults to `"float32"`.
        output_type: dtype of the model output, same choices. Defaults to `"float32"`.
        output: also write the .tflite here (atomically). Defaults to `None`.
        sparse: store mostly-zero weights in LiteRT's sparse encoding
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`; fed through DENSIFY ops). It
            shrinks the raw file of a pruned model, but compresses worse than dense
            storage (measured on a pruned CNN: 40.6 -> 28.5 KB raw, 13.6 -> 18.5 KB
            gzip), and XNNPACK runs sparse kernels only on some ARM CPUs. Defaults to `False`.
        check_delegation: load the result in LiteRT with XNNPACK (in a child
            process) and report which ops the delegate takes. Defaults to `True`.
        safe_mode: when `model` is a file, refuse to deserialize Python lambdas so
            loading cannot run arbitrary code. Defaults to `True`.

    Returns:
        A `ConversionResult` holding the bytes, the flatbuffer inspection (op
        precision, float ops left) and any warnings.

    Raises:
        ValueError: unknown mode or type, missing calibration data, or a model the
            converter rejects (the converter's reason is included).
        TypeError: `model` is not a Keras model or a path.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> result = tfopt.convert(model, mode="int8", calibration=np.random.rand(50, 8).astype("float32"))
    >>> result.inspection.precision_counts
    {'int8': 1}
    """
    if mode not in CONVERT_MODES:
        raise InvalidArgumentError(f"Unknown mode {mode!r}. Expected one of {CONVERT_MODES}.")
    for label, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in _IO_TYPES[mode]:
            raise InvalidArgumentError(
                f"{label}={value!r} is not available with mode={mode!r}; expected one of {_IO_TYPES[mode]}."
            )
    import tensorflow as tf

    converter, keras_model, scratch = _make_converter(model, safe_mode=safe_mode)
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in ("int8", "int16x8"):
        converter.representative_dataset = _representative(calibration, keras_model, mode)
        if mode == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        dtypes = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}
        converter.inference_input_type = dtypes[input_type]
        converter.inference_output_type = dtypes[output_type]
    elif calibration is not None:
        raise InvalidArgumentError(f"calibration data is only used by modes 'int8' and 'int16x8'; received it with mode={mode!r}.")
    try:
        content = converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many types; keep its reason
        raise InvalidArgumentError(f"The TFLite converter rejected the model in mode {mode!r}: {_first_lines(err)}") from err
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    inspection = inspect_tflite(content)
    warnings = _warnings(mode, inspection)
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
    path = atomic_write(output, content) if output is not None else None
    return ConversionResult(
        tflite=content, mode=mode, inspection=inspection, path=path, warnings=tuple(warnings), xnnpack=coverage
    )


def _first_lines(err: Exception, limit: int = 6) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return " | ".join(lines[:limit]) or type(err).__name__


def _make_converter(model: Any, *, safe_mode: bool):
    """Returns (converter, keras_model or None, temporary folder or None)."""
    import tensorflow as tf

    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if os.path.isdir(path):
            if not os.path.exists(os.path.join(path, "saved_model.pb")):
                raise InvalidArgumentError(f"{path!r} is a folder without saved_model.pb; expected a SavedModel folder.")
            return tf.lite.TFLiteConverter.from_saved_model(path), None, None
        model = _keras.load_model(path, safe_mode=safe_mode)
    elif not _keras.is_keras_model(model):
        raise InvalidTypeError(
            "convert() expects a Keras model, a .keras / .h5 path or a SavedModel folder. "
            f"Received: an object of type {type(model).__name__}."
        )
    converter, scratch = _keras_converter(model)
    return converter, model, scratch


def _keras_converter(model: Any):  # -> (converter, temporary folder to remove or None)
    """Traces the model with batch 1 under a `serving_default` signature named after its inputs and outputs.

    Keras 3 models go through Keras' own SavedModel export (`keras.export.ExportArchive`),
    which the calibrator can run; tf_keras models through a concrete function.
    """
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise InvalidArgumentError(
            f"Model {model.name!r} has no defined inputs. Call it once on real data (or build it with keras.Input) "
            "before converting."
        )
    names = [t.name.split(":")[0] for t in inputs]
    specs = [
        tf.TensorSpec((1, *tuple(t.shape[1:])), getattr(t.dtype, "name", t.dtype), name=name)
        for name, t in zip(names, inputs)
    ]
    output_names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    single = len(inputs) == 1

    def serve(*features):
        result = model(features[0] if single else list(features), training=False)
        if isinstance(result, dict):
            return result
        flat = result if isinstance(result, (list, tuple)) else [result]
        return {name: value for name, value in zip(output_names, flat)}

    if _keras.keras_flavor(model) == _keras.KERAS3:
        import keras

        folder = tempfile.mkdtemp(prefix="tfopt-export-")
        try:
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("serving_default", serve, input_signature=specs)
            archive.write_out(folder, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return converter, folder
    traced = tf.function(serve, input_signature=specs, autograph=False)
    return tf.lite.TFLiteConverter.from_concrete_functions([traced.get_concrete_function()], model), None


def _representative(calibration: Any, model: Any, mode: str):
    if calibration is None:
        raise InvalidArgumentError(
            f"mode={mode!r} needs calibration data to set activation ranges. Pass "
            "calibration=tfopt.calibration_data(x_train, model=model) (100-500 real examples)."
        )
    if not isinstance(calibration, CalibrationData):
        calibration = calibration_data(calibration, model=model)
    elif model is not None:
        expected = [tuple(t.shape[1:]) for t in model.inputs]
        held = [tuple(s.shape) for s in calibration.specs]
        if len(expected) != len(held) or any(
            len(e) != len(h) or any(a is not None and b is not None and a != b for a, b in zip(e, h))
            for e, h in zip(expected, held)
        ):
            raise InvalidArgumentError(
                f"calibration data holds examples of shapes {held}, but the model's inputs are {expected}. "
                "Build it with tfopt.calibration_data(data, model=model)."
            )
    if len(calibration.specs) == 1:
        return calibration
    if _keras.keras_flavor(model) == _keras.KERAS3:
        # Dict samples are matched to the SavedModel signature by input name.
        return lambda: iter(calibration.as_signature_inputs())
    # tf_keras, several inputs: the calibrator takes a list in the flatbuffer's input
    # order, which need not be the model's, so learn it from a float conversion.
    float_inputs = inspect_tflite(_keras_converter(model)[0].convert()).inputs
    names = [s.name for s in calibration.specs]
    order = []
    for tensor in float_inputs:
        matches = [i for i, n in enumerate(names) if tensor.name in (n, f"serving_default_{n}:0")]
        if len(matches) != 1:
            raise InvalidArgumentError(f"Cannot match TFLite input {tensor.name!r} to the model inputs {names}.")
        order.append(matches[0])
    return lambda: ([example[i] for i in order] for example in calibration)


def _warnings(mode: str, inspection: TFLiteInspection) -> list[str]:
    warnings = []
    if mode in ("int8", "int16x8", "dynamic") and inspection.float_compute_ops:
        ops = ", ".join(f"{op.name}#{op.index}" for op in inspection.float_compute_ops[:8])
        warnings.append(
            f"{len(inspection.float_compute_ops)} compute op(s) stayed in float in mode {mode!r}: {ops}. "
            "They run at float speed; check the converter log, or keep them float on purpose."
        )
    if mode == "dynamic" and inspection.precision_counts.get("hybrid"):
        warnings.append(
            "dynamic-range (hybrid) ops may not be delegated to XNNPACK and can run slower than float32 on CPU; "
            "measure with tfopt.benchmark, and prefer mode='int8' with calibration data for speed."
        )
    return warnings
