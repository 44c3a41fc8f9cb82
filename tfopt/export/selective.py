"""Selective precision: quantize everything except the few ops that cost the accuracy.

`quantize_selective` quantizes a model with a LiteRT Quantizer recipe and, if
the .tflite loses more than `max_accuracy_drop` on validation data, measures
each op's quantization error on calibration data (the SNR each op loses,
comparing the float and quantized .tflite tensor by tensor), then keeps the
most sensitive ops in float one at a time until the accuracy is back within
tolerance. Named layers can also be kept float up front with `exclude=`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import numpy as np

from tfopt import _keras
from tfopt.export.calibration import CalibrationData, calibration_data
from tfopt.export.convert import ConversionResult, convert
from tfopt.analyze.flatbuffer import COMPUTE_OPS, tflite_bytes
from tfopt.measure.parity import _TFLiteRunner, compare
from tfopt.export.quantizer import map_output_layer, quantize_tflite
from tfopt.errors import InvalidArgumentError


_IDEAL_INT8_SNR_DB = 50.0


def rank_by_error_added(names: Sequence[str], snrs: Sequence[float]) -> list[tuple[str, float]]:
    """Orders ops (given in execution order with their output SNR in dB) by the SNR each one loses.

    The loss of op i is `snr[i-1] - snr[i]`; the first op is measured against
    50 dB, about the SNR of an ideal 8-bit quantizer on a full-range signal
    (6.02 * 8 + 1.76 dB). Infinite SNRs count as 100 dB. Error that accumulates
    from earlier ops is thus not blamed on later ones. Largest loss first.

    >>> rank_by_error_added(["a", "b", "c"], [40.0, 38.0, 20.0])[0]
    ('c', 18.0)
    """
    capped = [min(100.0, s) if not math.isnan(s) else 0.0 for s in snrs]
    losses = [(names[i], (_IDEAL_INT8_SNR_DB if i == 0 else capped[i - 1]) - capped[i]) for i in range(len(names))]
    return sorted(losses, key=lambda item: -item[1])


@dataclasses.dataclass(frozen=True)
class SelectiveResult:
    """The quantized model, which ops stayed float and why, and the accuracies on validation data."""

    result: ConversionResult = dataclasses.field(repr=False)
    kept_float: tuple[str, ...]
    float_accuracy: float | None
    quantized_accuracy: float | None
    fully_quantized_accuracy: float | None
    max_accuracy_drop: float
    sensitivity: tuple[tuple[str, float], ...] = ()
    steps: tuple[dict, ...] = ()

    @property
    def tflite(self) -> bytes:
        """The flatbuffer bytes."""
        return self.result.tflite

    def summary(self) -> str:
        """A readable report."""
        lines = [f"selective quantization ({self.result.mode}): {len(self.kept_float)} op(s) kept float"]
        if self.float_accuracy is not None:
            lines.append(
                f"  accuracy: float {100 * self.float_accuracy:.2f}%, fully quantized {100 * self.fully_quantized_accuracy:.2f}%, "
                f"selective {100 * self.quantized_accuracy:.2f}% (tolerance {100 * self.max_accuracy_drop:.2f} points)"
            )
        lines.extend(f"  float: {name}" for name in self.kept_float)
        if self.sensitivity:
            lines.append("  most sensitive ops (SNR lost, dB):")
            lines.extend(f"    {name[:70]:<70} {loss:6.1f}" for name, loss in self.sensitivity[:5])
        lines.append(f"  {self.result.size_bytes / 1024:.1f} KB, compute ops {self.result.inspection.precision_counts}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the bytes)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "result"}
        out["result"] = self.result.to_dict()
        return out


def _accuracy(content: bytes, x: np.ndarray, y: np.ndarray) -> float:
    outputs = _TFLiteRunner(content).outputs([x])[0]
    labels = np.argmax(y, -1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1)
    return float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), -1) == labels))


def _compute_op_outputs(content: bytes) -> set[str]:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    names = set()
    for op in graph.operators:
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) in COMPUTE_OPS:
            for index in op.outputs if op.outputs is not None else []:
                raw = graph.tensors[int(index)].name
                names.add(raw.decode() if isinstance(raw, bytes) else str(raw))
    return names


def quantize_selective(
    model: Any,
    *,
    calibration: Any,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    max_accuracy_drop: float = 0.005,
    exclude: str | Sequence[str] | None = None,
    recipe: str = "static_wi8_ai8",
    max_float_ops: int = 8,
    num_sensitivity_examples: int = 32,
) -> SelectiveResult:
    """Quantizes a model, keeping in float only the ops needed to stay within an accuracy tolerance.

    Use it when full int8 loses too much accuracy but you still want most of the
    model in integer. Pass `exclude=` to keep layers float by name; pass
    `validation=(x, y)` to let it choose: it ranks ops by the SNR each one loses on
    calibration data and keeps the worst ones float, one at a time, until the
    validation accuracy is within `max_accuracy_drop` of the float model.

    Args:
        model: a Keras model or a float .tflite (bytes, path, `ConversionResult`).
        calibration: representative inputs (`tfopt.CalibrationData` or arrays).
        validation: `(x, y)` labelled data for the automatic mode. Defaults to `None`
            (only `exclude` is applied).
        max_accuracy_drop: tolerated accuracy loss as a fraction (0.005 = half a
            point). Defaults to `0.005`.
        exclude: layers / ops kept float from the start (names or `"re:<regex>"`,
            see `quantize_tflite`). Defaults to `None`.
        recipe: a LiteRT Quantizer recipe name or alias. Defaults to `"static_wi8_ai8"`.
        max_float_ops: stop after keeping this many ops float. Defaults to `8`.
        num_sensitivity_examples: calibration examples used to measure each op's
            error. Defaults to `32`.

    Returns:
        A `SelectiveResult`; `.result` is the `ConversionResult`, `.kept_float` the
        tensor names of the ops left in float.

    Raises:
        ValueError: a negative tolerance, or an exclude rule matching nothing.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    >>> x = np.random.rand(64, 8).astype("float32"); y = np.argmax(m.predict(x, verbose=0), -1)
    >>> r = tfopt.quantize_selective(m, calibration=x, validation=(x, y), max_accuracy_drop=0.0)
    >>> r.quantized_accuracy >= r.float_accuracy
    True
    """
    if not isinstance(max_accuracy_drop, (int, float)) or max_accuracy_drop < 0 or max_accuracy_drop >= 1:
        raise InvalidArgumentError(
            f"max_accuracy_drop is a fraction in [0, 1) (0.005 = half a point). Received: max_accuracy_drop={max_accuracy_drop!r}."
        )
    if _keras.is_keras_model(model):
        if not isinstance(calibration, CalibrationData):
            calibration = calibration_data(calibration, model=model)
        keras_model, model = model, convert(model, mode="float32")
        exclude = map_output_layer(keras_model, model, exclude)
    float_content = tflite_bytes(model)
    if not isinstance(calibration, CalibrationData):
        calibration = calibration_data(calibration)
    base_exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    current = quantize_tflite(float_content, recipe=recipe, calibration=calibration, exclude=base_exclude or None)
    if validation is None:
        return SelectiveResult(current, tuple(base_exclude), None, None, None, float(max_accuracy_drop))
    x_val, y_val = (np.asarray(a) for a in validation)
    float_accuracy = _accuracy(float_content, x_val, y_val)
    full_accuracy = accuracy = _accuracy(current.tflite, x_val, y_val)
    steps = [{"kept_float": list(base_exclude), "accuracy": accuracy}]
    sensitivity: list[tuple[str, float]] = []
    kept: list[str] = []
    if float_accuracy - accuracy > max_accuracy_drop:
        sample = calibration.as_arrays()
        sample = [a[:num_sensitivity_examples] for a in sample]
        parity = compare(float_content, current, sample, max_examples=num_sensitivity_examples)
        compute = _compute_op_outputs(current.tflite)
        layers = [l for l in parity.layers if l.name in compute]
        sensitivity = rank_by_error_added([l.name for l in layers], [l.snr_db for l in layers])
        for name, _ in sensitivity[:max_float_ops]:
            kept.append(name)
            rules = base_exclude + [f"re:^{re.escape(n)};$" for n in kept]
            current = quantize_tflite(float_content, recipe=recipe, calibration=calibration, exclude=rules)
            accuracy = _accuracy(current.tflite, x_val, y_val)
            steps.append({"kept_float": list(base_exclude) + list(kept), "accuracy": accuracy})
            if float_accuracy - accuracy <= max_accuracy_drop:
                break
    return SelectiveResult(
        result=current,
        kept_float=tuple(base_exclude) + tuple(kept),
        float_accuracy=float_accuracy,
        quantized_accuracy=accuracy,
        fully_quantized_accuracy=full_accuracy,
        max_accuracy_drop=float(max_accuracy_drop),
        sensitivity=tuple(sensitivity),
        steps=tuple(steps),
    )
