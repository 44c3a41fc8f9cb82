"""Float fallback: keep chosen ops of a quantized model in float, or let tfopt choose them.

Rules (Keras layer names or `"re:<regex>"`) are matched against the ops of the
float .tflite. In `"auto"` mode the model is quantized fully, then - while it
loses more than the tolerance against the float .tflite - the op that adds the
most quantization error (measured with `tfopt.compare`, tensor by tensor) is
kept float and the model quantized again. Pure ranking maths in
`rank_by_error_added`; the runtime work happens in `tfopt.measure.parity`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from tfopt.analyze.flatbuffer import COMPUTE_OPS, inspect_tflite
from tfopt.errors import InvalidArgumentError, UnsupportedModelError
from tfopt.export._litert import map_output_layer, op_outputs, op_scope, rule_patterns
from tfopt.export.calibration import CalibrationData

_IDEAL_INT8_SNR_DB = 50.0

Ops = list  # a list of ops, each the list of its output tensor names


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


def resolve_rules(rules: str | Sequence[str], float_content: bytes, keras_model: Any = None) -> Ops:
    """The ops of the float .tflite that the rules keep float; every rule must match an op."""
    if keras_model is not None:
        rules = map_output_layer(keras_model, float_content, rules)
    ops = op_outputs(float_content)
    scopes = [op_scope(outs) for outs in ops]
    chosen: Ops = []
    for rule, pattern in rule_patterns(rules):
        matched = [outs for outs, scope in zip(ops, scopes) if re.search(pattern, scope)]
        if not matched:
            raise InvalidArgumentError(
                f"float_fallback rule {rule!r} matched no op of the .tflite. Op output names: {scopes[:12]}"
                + (" ..." if len(scopes) > 12 else "")
                + ". Use a Keras layer name or 're:<regex>'."
            )
        chosen.extend(outs for outs in matched if outs not in chosen)
    return chosen


def _compute_op_names(content: bytes) -> set[str]:
    inspection = inspect_tflite(content)
    outputs = op_outputs(content)
    names: set[str] = set()
    for op in inspection.ops:
        if op.subgraph == 0 and op.name in COMPUTE_OPS and op.index < len(outputs):
            names.update(outputs[op.index])
    return names


def _examples(calibration: CalibrationData, count: int) -> list[np.ndarray]:
    return [a[:count] for a in calibration.as_arrays()]


def auto_fallback(
    float_content: bytes,
    quantize: Callable[[Ops], bytes],
    base: Ops,
    *,
    calibration: CalibrationData,
    validation: Any,
    max_accuracy_drop: float,
    max_float_ops: int,
    num_examples: int = 32,
) -> tuple[bytes, Ops, dict]:
    """Quantizes with `base` ops float, then keeps the most sensitive ops float until within tolerance.

    `max_accuracy_drop` is in points (0.5 = half a point of top-1).

    The criterion is the top-1 accuracy on `validation=(x, y)` when given,
    otherwise the top-1 agreement with the float .tflite on the calibration
    examples. Returns (flatbuffer, ops kept float, a record of the search).
    """
    from tfopt.measure.parity import compare

    if validation is not None:
        x, y = validation
        data, criterion = (x, np.asarray(y)), "accuracy"
    else:
        data, criterion = _examples(calibration, len(calibration)), "top1_agreement"

    def score(content: bytes) -> tuple[float, float]:
        parity = compare(float_content, content, data, max_examples=None, localize=False)
        if parity.top1_agreement is None:
            raise UnsupportedModelError(
                "float_fallback='auto' measures top-1 accuracy, and this model's first output holds one value per "
                "example. Name the layers to keep float instead: float_fallback=['layer_name', ...]."
            )
        if criterion == "accuracy":
            return parity.reference_accuracy, parity.candidate_accuracy
        return 1.0, parity.top1_agreement

    tolerance = max_accuracy_drop / 100.0
    kept: Ops = list(base)
    current = quantize(kept)
    reference, full = score(current)
    value = full
    steps = [{"kept_float": [op_scope(o) for o in kept], criterion: value}]
    sensitivity: list[tuple[str, float]] = []
    if reference - value > tolerance:
        sample = _examples(calibration, num_examples)
        parity = compare(float_content, current, sample, max_examples=num_examples, localize=True,
                         num_localize_examples=num_examples)
        compute = _compute_op_names(current)
        layers = [layer for layer in parity.layers if layer.name in compute]
        sensitivity = rank_by_error_added([layer.name for layer in layers], [layer.snr_db for layer in layers])
        by_name = {name: outs for outs in op_outputs(float_content) for name in outs}
        # Ops whose quantized output could not be matched by name (e.g. the model output behind a DEQUANTIZE)
        # come last, latest first.
        float_compute = _compute_op_names(float_content)
        unranked = [outs[0] for outs in reversed(op_outputs(float_content))
                    if outs and outs[0] in float_compute and not any(n in dict(sensitivity) for n in outs)]
        for name in [n for n, _ in sensitivity] + unranked:
            if len(kept) - len(base) >= max_float_ops:
                break
            outs = by_name.get(name, [name])
            if outs in kept:
                continue
            try:
                candidate = quantize(kept + [outs])
            except InvalidArgumentError:  # this engine cannot keep that op float (e.g. the converter's output op)
                continue
            kept.append(outs)
            current = candidate
            value = score(current)[1]
            steps.append({"kept_float": [op_scope(o) for o in kept], criterion: value})
            if reference - value <= tolerance:
                break
    record = {
        "criterion": criterion,
        "reference": reference,
        "fully_quantized": full,
        "final": value,
        "max_accuracy_drop": float(max_accuracy_drop),
        "met": bool(reference - value <= tolerance),
        "steps": steps,
        "sensitivity": [[name, float(loss)] for name, loss in sensitivity[:10]],
    }
    return current, kept, record
