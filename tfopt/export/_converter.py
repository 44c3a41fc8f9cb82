"""The TFLite converter engine: trace a Keras model with batch 1, set the converter up, convert.

`convert()` in `tfopt.export.convert` is the public entry point; this module
holds what only the TensorFlow Lite converter needs: tracing, the representative
dataset, per-tensor Dense weights, models that already carry fake-quant ops
(quantization-aware training) and the float fallback of chosen ops.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from typing import Any, Sequence

from tfopt import _keras
from tfopt.analyze.flatbuffer import inspect_tflite
from tfopt.errors import InvalidArgumentError, InvalidTypeError
from tfopt.export.calibration import CalibrationData, calibration_data

FAKE_QUANT_OPS = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel", "FakeQuantWithMinMaxArgs")


def make_converter(model: Any, *, safe_mode: bool):
    """Returns (converter, keras_model or None, temporary folder to remove or None)."""
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
            "convert() expects a Keras model, a .keras / .h5 path or a SavedModel folder "
            "(or, with engine='litert_quantizer', a float .tflite). "
            f"Received: an object of type {type(model).__name__}."
        )
    converter, scratch = keras_converter(model)
    return converter, model, scratch


def _serving_function(model: Any):
    """(serve function, input specs) tracing `model` with batch 1 and outputs named after the model's."""
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

    return serve, specs


def keras_converter(model: Any):  # -> (converter, temporary folder to remove or None)
    """Traces the model with batch 1 under a `serving_default` signature named after its inputs and outputs.

    Keras 3 models go through Keras' own SavedModel export (`keras.export.ExportArchive`),
    which the calibrator can run; tf_keras models through a concrete function.
    """
    import tensorflow as tf

    serve, specs = _serving_function(model)
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


def has_fake_quant(model: Any) -> bool:
    """True when the model's forward pass holds fake-quant ops (a quantization-aware trained model).

    Such a model carries its own ranges (tfopt's Keras 3 QAT wrappers, tfmot's
    QAT, or any layer calling `keras.quantizers.fake_quant_with_min_max_vars`),
    so the converter needs no calibration data. Read from the traced graph, so
    no technique module has to be imported.
    """
    import tensorflow as tf

    if model is None:
        return False
    serve, specs = _serving_function(model)
    graph_def = tf.function(serve, input_signature=specs, autograph=False).get_concrete_function().graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return bool(ops & set(FAKE_QUANT_OPS))


def representative(calibration: Any, model: Any, mode: str):
    """The converter's `representative_dataset` for `calibration` (checked against the model's inputs)."""
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
    if len(calibration.specs) == 1 or model is None:
        return calibration
    if _keras.keras_flavor(model) == _keras.KERAS3:
        # Dict samples are matched to the SavedModel signature by input name.
        return lambda: iter(calibration.as_signature_inputs())
    # tf_keras, several inputs: the calibrator takes a list in the flatbuffer's input
    # order, which need not be the model's, so learn it from a float conversion.
    float_inputs = inspect_tflite(keras_converter(model)[0].convert()).inputs
    names = [s.name for s in calibration.specs]
    order = []
    for tensor in float_inputs:
        matches = [i for i, n in enumerate(names) if tensor.name in (n, f"serving_default_{n}:0")]
        if len(matches) != 1:
            raise InvalidArgumentError(f"Cannot match TFLite input {tensor.name!r} to the model inputs {names}.")
        order.append(matches[0])
    return lambda: ([example[i] for i in order] for example in calibration)


def first_lines(err: Exception, limit: int = 6) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return " | ".join(lines[:limit]) or type(err).__name__


def run_converter(
    model: Any,
    *,
    mode: str,
    calibration: Any,
    input_type: str,
    output_type: str,
    sparse: bool,
    per_channel_dense: bool,
    safe_mode: bool,
    float_nodes: Sequence[str] = (),
) -> tuple[bytes, Any, list[str]]:
    """Converts with the TFLite converter; returns (flatbuffer, the Keras model or None, notes)."""
    import tensorflow as tf

    converter, keras_model, scratch = make_converter(model, safe_mode=safe_mode)
    notes: list[str] = []
    try:
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if sparse:
            converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if not per_channel_dense:
            # The converter has no public switch for per-tensor Dense (FULLY_CONNECTED) weights;
            # this attribute is the one place tfopt sets a private converter option.
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if mode in ("int8", "int16x8"):
            if calibration is None:
                if not has_fake_quant(keras_model):
                    raise InvalidArgumentError(
                        f"mode={mode!r} needs calibration data to set activation ranges. Pass "
                        "calibration=tfopt.calibration_data(x_train, model=model) (100-500 real examples). "
                        "Only a quantization-aware trained model (with fake-quant ops) converts without it."
                    )
                notes.append("ranges taken from the model's fake-quant ops (quantization-aware training)")
            else:
                converter.representative_dataset = representative(calibration, keras_model, mode)
            if mode == "int8":
                if calibration is not None:  # a fake-quant model: the converter's QAT path, which refuses INT8-only
                    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            else:
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                ]
            dtypes = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}
            converter.inference_input_type = dtypes[input_type]
            converter.inference_output_type = dtypes[output_type]
        elif calibration is not None:
            raise InvalidArgumentError(
                f"calibration data is only used by modes 'int8' and 'int16x8'; received it with mode={mode!r}."
            )
        try:
            if float_nodes:
                content = _convert_keeping_float(converter, list(float_nodes))
            else:
                content = converter.convert()
        except InvalidArgumentError:
            raise
        except Exception as err:  # noqa: BLE001 - the converter raises many types; keep its reason
            raise InvalidArgumentError(
                f"The TFLite converter rejected the model in mode {mode!r}: {first_lines(err)}"
            ) from err
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return content, keras_model, notes


def _convert_keeping_float(converter: Any, nodes: list[str]) -> bytes:
    """Full-integer conversion with the named ops left in float.

    Uses the converter's own selective quantization (`QuantizationDebugger` with
    `denylisted_nodes`, the documented way to keep chosen ops float).
    """
    import tensorflow as tf

    if converter.representative_dataset is None:
        raise InvalidArgumentError(
            "float_fallback with engine='converter' needs calibration data (the converter re-calibrates the "
            "model around the ops kept float)."
        )
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=converter.representative_dataset, debug_options=options
        )
        try:
            return bytes(debugger.get_nondebug_quantized_model())
        except (ValueError, RuntimeError) as err:
            raise InvalidArgumentError(
                f"The TFLite converter could not keep {nodes} in float ({first_lines(err, 2)}). The converter "
                "cannot keep the model's output op float; use engine='litert_quantizer' for that."
            ) from err
