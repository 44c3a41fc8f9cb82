"""Deprecated: `quantize_selective` is `tfopt.convert(..., float_fallback="auto" | [names])`.

Selective precision quantizes everything except the few ops that cost the
accuracy. The search itself lives in `tfopt.export._fallback`; `SelectiveResult`
and `rank_by_error_added` stay importable from here.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import numpy as np

from tfopt.errors import InvalidArgumentError
from tfopt.export._fallback import rank_by_error_added
from tfopt.export.convert import ConversionResult, _convert

__all__ = ["quantize_selective", "SelectiveResult", "rank_by_error_added"]


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
    """Deprecated alias of `tfopt.convert(model, engine="litert_quantizer", float_fallback="auto", validation=...)`.

    With `validation=(x, y)` the most sensitive ops are kept float until the
    validation accuracy is within `max_accuracy_drop` of the float model; with
    `exclude=` alone only the named layers are kept float.

    Returns:
        A `SelectiveResult`; `.result` is the `ConversionResult`.

    Example:

    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    >>> x = np.random.rand(64, 8).astype("float32"); y = np.argmax(m.predict(x, verbose=0), -1)
    >>> r = quantize_selective(m, calibration=x, validation=(x, y), max_accuracy_drop=0.0)  # doctest: +SKIP
    """
    warnings.warn(
        "quantize_selective is deprecated; use tfopt.convert(model, mode='int8', engine='litert_quantizer', "
        "calibration=..., float_fallback='auto' or [layer names], validation=(x, y)).",
        DeprecationWarning,
        stacklevel=2,
    )
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) or not 0 <= max_accuracy_drop < 1:
        raise InvalidArgumentError(
            f"max_accuracy_drop is a fraction in [0, 1) (0.005 = half a point). Received: max_accuracy_drop={max_accuracy_drop!r}."
        )
    options = dict(
        mode=recipe, engine="litert_quantizer", calibration=calibration, per_channel_dense=True, input_type=None,
        output_type=None, output=None, sparse=False, check_delegation=False, safe_mode=True,
    )
    if validation is None:
        result = _convert(model, float_fallback=exclude, validation=None, max_accuracy_drop=None, **options)
        return SelectiveResult(result, result.float_fallback, None, None, None, float(max_accuracy_drop))
    result = _convert(model, float_fallback="auto", validation=validation, max_float_ops=max_float_ops,
                      base_rules=exclude, max_accuracy_drop=100.0 * max_accuracy_drop, **options)
    search = result.fallback_search
    return SelectiveResult(
        result=result,
        kept_float=result.float_fallback,
        float_accuracy=search["reference"],
        quantized_accuracy=search["final"],
        fully_quantized_accuracy=search["fully_quantized"],
        max_accuracy_drop=float(max_accuracy_drop),
        sensitivity=tuple((name, loss) for name, loss in search["sensitivity"]),
        steps=tuple({"kept_float": s["kept_float"], "accuracy": s["accuracy"]} for s in search["steps"]),
    )
