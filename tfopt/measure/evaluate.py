"""One evaluation path: a metric of a Keras model or a .tflite on labelled data.

`evaluate(model_or_tflite, data, metric=...)` runs a Keras model in this process
(`model.predict`) and a .tflite on LiteRT in the warm measurement worker (a
child process), then scores the predictions here with a metric from
`tfopt.measure.metrics` or a callable. `benchmark(data=)` accuracy and
`compare` accuracies come from the same functions (`predict_tflite`, `score`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.analyze.flatbuffer import tflite_bytes
from tfopt.errors import InvalidArgumentError, InvalidTypeError
from tfopt.measure import metrics as _metrics


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """A metric of one model on labelled data (see `tfopt.evaluate`)."""

    value: float
    metric: str
    higher_is_better: bool
    num_examples: int
    model: str
    runtime: str
    notes: tuple[str, ...] = ()

    def is_better_than(self, other: EvaluationResult | float) -> bool:
        """True when this value beats `other` (a result or a number) in the metric's direction."""
        theirs = other.value if isinstance(other, EvaluationResult) else float(other)
        return self.value > theirs if self.higher_is_better else self.value < theirs

    def summary(self) -> str:
        """One line, then any notes."""
        direction = "higher" if self.higher_is_better else "lower"
        lines = [f"{self.metric}: {self.value:.4f} ({direction} is better) on {self.num_examples} examples, "
                 f"{self.model} on {self.runtime}"]
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a NaN value becomes None)."""
        out = dataclasses.asdict(self)
        out["value"] = self.value if math.isfinite(self.value) else None
        out["notes"] = list(self.notes)
        return out


def evaluate(
    model_or_tflite: Any,
    data: Any,
    *,
    metric: str | Callable[[Any, Any], float] = "top1",
    higher_is_better: bool | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
    num_threads: int = 1,
    use_xnnpack: bool = True,
    timeout: float = 600.0,
) -> EvaluationResult:
    """Scores a Keras model or a .tflite on labelled data with one metric.

    The same function measures every stage of an optimization: the float Keras
    model, the pruned or QAT model, and the converted .tflite on the runtime
    that will ship it (int8 / uint8 inputs and outputs are (de)quantized with
    their scale and zero point, so an int8-I/O model scores like a float one).
    A .tflite runs on LiteRT in a child process, never in the caller's.

    Args:
        model_or_tflite: a Keras 3 or tf_keras model, or a .tflite (bytes, a
            path, or a `ConversionResult`).
        data: `(x, y)`. `x` is an array, a list of arrays (model-input order) or
            a dict keyed by input name; `y` is an array, or a list / dict with
            one array per model output. A .tflite does not record the Keras
            output order: there a list `y` follows the .tflite's signature
            outputs (sorted by name for converted Keras models); a dict keyed by
            output name means the same thing everywhere.
        metric: `"top1"` (labels as integers or one-hot), `"top5"` or any
            `"top<k>"`, `"mae"`, `"mse"`, `"f1"` (macro), or a callable
            `metric(y_true, y_pred) -> float`. A built-in metric scores the first
            output (with a dict `y`, its first key); a callable gets `y` as given
            and the predictions in the same form (one array, a list or a dict).
            Defaults to `"top1"`.
        higher_is_better: the direction of a callable metric (required then).
            Defaults to `None`.
        batch_size: examples per call to Keras, and per invoke for a .tflite
            with a dynamic batch (a fixed-batch .tflite runs at its own batch).
            Defaults to `32`.
        max_examples: use at most this many examples. Defaults to `None` (all).
        num_threads: LiteRT interpreter threads. Defaults to `1`.
        use_xnnpack: apply XNNPACK on LiteRT. Defaults to `True`.
        timeout: seconds before a LiteRT evaluation is abandoned. Defaults to `600`.

    Returns:
        An `EvaluationResult` (`value`, `metric`, `higher_is_better`,
        `num_examples`, `model`, `runtime`, `notes`; `summary()`, `to_dict()`).

    Raises:
        ValueError: bad data (lengths, NaN, labels out of range) or options.
        TypeError: a model or data of an unsupported kind.
        BenchmarkError: LiteRT could not run the .tflite.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x, y = np.ones((6, 4), "float32"), np.zeros(6, "int64")
    >>> keras_top1 = tfopt.evaluate(model, (x, y)).value
    >>> tfopt.evaluate(tfopt.convert(model), (x, y)).value == keras_top1
    True
    """
    scorer = _metrics.get_metric(metric, higher_is_better=higher_is_better)
    _check_int("batch_size", batch_size, 1)
    _check_int("num_threads", num_threads, 1)
    if max_examples is not None:
        _check_int("max_examples", max_examples, 1)
    if not (isinstance(data, tuple) and len(data) == 2) or data[1] is None:
        raise InvalidArgumentError(
            "evaluate needs labelled data as a tuple (x, y). Received "
            f"{type(data).__name__}{'' if not isinstance(data, tuple) else f' of length {len(data)}'}."
        )
    xs, y = split_data(data, max_examples=max_examples, label="evaluate")
    if _keras.is_keras_model(model_or_tflite):
        outputs, names = predict_keras(model_or_tflite, xs, batch_size=batch_size)
        kind, runtime, notes = f"Keras model {model_or_tflite.name!r}", _keras.keras_flavor(model_or_tflite), []
    elif _is_tflite(model_or_tflite):
        content = tflite_bytes(model_or_tflite)
        raw = predict_tflite(content, xs, batch_size=batch_size, num_threads=num_threads,
                             use_xnnpack=use_xnnpack, timeout=timeout)
        outputs, names, notes = raw["predictions"], raw["output_names"], list(raw["notes"])
        outputs, names = _keras_order(model_or_tflite, outputs, names)
        if len(outputs) > 1 and isinstance(y, (list, tuple)):
            notes.append(f"a list y follows the .tflite's outputs {names}; pass y as a dict keyed by these names "
                         "to be explicit")
        kind, runtime = f"TFLite ({len(content) / 1024:.1f} KB)", "LiteRT" + ("" if use_xnnpack else " (no XNNPACK)")
    else:
        raise InvalidTypeError(
            "evaluate takes a Keras model (Keras 3 or tf_keras) or a .tflite (bytes, path or ConversionResult). "
            f"Received: an object of type {type(model_or_tflite).__name__}."
        )
    value, more = score(scorer, outputs, y, names)
    return EvaluationResult(float(value), scorer.name, scorer.higher_is_better, num_examples(xs), kind, runtime,
                            tuple(notes + more))


# --- the pieces benchmark and compare share --------------------------------------------------------


def split_data(data: Any, *, max_examples: int | None = None, label: str = "evaluate") -> tuple[Any, Any]:
    """`(x, y)` or `x` -> (inputs as a list or dict of arrays, labels or None), checked and cut to max_examples."""
    x, y = data if isinstance(data, tuple) and len(data) == 2 and not np.isscalar(data[0]) else (data, None)
    if isinstance(x, Mapping):
        xs: Any = {str(k): np.asarray(v) for k, v in x.items()}
        arrays = list(xs.values())
    else:
        xs = [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]
        arrays = xs
    if not arrays or any(a.dtype.kind not in "biuf" for a in arrays):
        raise InvalidTypeError(f"{label} data must be numeric arrays; received dtypes {[str(a.dtype) for a in arrays]}.")
    n = len(arrays[0]) if arrays[0].ndim else 0
    if n == 0 or any(a.ndim == 0 or len(a) != n for a in arrays):
        raise InvalidArgumentError(
            f"{label} data must hold the same non-zero number of examples per input; got "
            f"{[len(a) if a.ndim else 0 for a in arrays]}."
        )
    if any(a.dtype.kind == "f" and not np.all(np.isfinite(a)) for a in arrays):
        raise InvalidArgumentError(f"{label} data holds NaN or infinite values; clean or drop those examples first.")
    if y is not None:
        if isinstance(y, (list, tuple)) and not all(np.ndim(e) >= 1 for e in y):
            y = np.asarray(y)  # a plain list of labels, not one array per output
        ys = list(y.values()) if isinstance(y, Mapping) else list(y) if isinstance(y, (list, tuple)) else [y]
        counts = [len(np.asarray(a)) if np.ndim(a) else 0 for a in ys]
        if any(c != n for c in counts):
            shown = counts[0] if len(counts) == 1 else counts
            raise InvalidArgumentError(f"data x holds {n} examples but y holds {shown} labels; they must match.")
    if max_examples is not None:
        xs = {k: v[:max_examples] for k, v in xs.items()} if isinstance(xs, dict) else [a[:max_examples] for a in xs]
        y = _cut(y, max_examples) if y is not None else None
    return xs, y


def _cut(y: Any, n: int) -> Any:
    if isinstance(y, Mapping):
        return {k: np.asarray(v)[:n] for k, v in y.items()}
    if isinstance(y, (list, tuple)):
        return [np.asarray(v)[:n] for v in y]
    return np.asarray(y)[:n]


def num_examples(xs: Any) -> int:
    arrays = list(xs.values()) if isinstance(xs, dict) else xs
    return len(arrays[0])


def predict_keras(model: Any, xs: Any, *, batch_size: int = 32) -> tuple[list[np.ndarray], list[str]]:
    """All outputs of a Keras model (in its output order) and their names."""
    feed = xs if isinstance(xs, dict) else (xs[0] if len(xs) == 1 else xs)
    result = model.predict(feed, batch_size=batch_size, verbose=0)
    names = list(getattr(model, "output_names", None) or [])
    if isinstance(result, Mapping):
        keys = [n for n in names if n in result] or list(result)
        outputs = [result[k] for k in keys]
        names = keys
    else:
        outputs = list(result) if isinstance(result, (list, tuple)) else [result]
    names = names if len(names) == len(outputs) else [f"output_{k}" for k in range(len(outputs))]
    return [np.asarray(a) for a in outputs], names


def predict_tflite(content: bytes, xs: Any, *, batch_size: int = 1, num_threads: int = 1, use_xnnpack: bool = True,
                   timeout: float = 600.0) -> dict[str, Any]:
    """Runs a .tflite on every example in the warm worker: `predictions` (one array per output), names, notes."""
    from tfopt.measure._worker import run_task

    names = list(xs) if isinstance(xs, dict) else None
    arrays = list(xs.values()) if isinstance(xs, dict) else xs
    arrays = [a.astype(np.float32) if a.dtype == np.float64 else a for a in arrays]
    request = {"content": content, "xs": arrays, "input_names": names, "batch_size": batch_size,
               "num_threads": num_threads, "use_xnnpack": bool(use_xnnpack)}
    return run_task("outputs", request, timeout=timeout)


def score(scorer: _metrics.Metric, outputs: list[np.ndarray], y: Any, names: list[str]) -> tuple[float, list[str]]:
    """The metric value of `outputs` against `y`, and notes on how it was applied."""
    if not scorer.builtin:
        if isinstance(y, Mapping):
            missing = [k for k in y if k not in names]
            if missing:
                raise InvalidArgumentError(f"y names outputs {missing} the model does not have; its outputs are {names}.")
            predicted: Any = {k: outputs[names.index(k)] for k in y}
        elif len(outputs) == 1:
            predicted = outputs[0]
        else:
            predicted = list(outputs)
        value = scorer(y, predicted)
        try:
            return float(value), []
        except (TypeError, ValueError):
            raise InvalidTypeError(f"metric {scorer.name!r} must return a number; it returned {type(value).__name__}.") from None
    notes = []
    if isinstance(y, Mapping):
        first = next((n for n in y if n in names), None)
        if first is None:
            raise InvalidArgumentError(f"y names outputs {list(y)}; the model's outputs are {names}.")
        target, predicted = y[first], outputs[names.index(first)]
    else:
        first = names[0]
        target = y[0] if isinstance(y, (list, tuple)) else y
        predicted = outputs[0]
    if len(outputs) > 1:
        notes.append(f"{scorer.name} scores the output {first!r}; pass a callable metric to score the others")
    return scorer(target, predicted), notes


def _keras_order(obj: Any, outputs: list[np.ndarray], names: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """Outputs in the Keras model's order when the object says it (an `output_names` attribute), else as given."""
    keras_names = list(getattr(obj, "output_names", None) or [])
    if len(keras_names) == len(names) > 1 and set(keras_names) == set(names):
        return [outputs[names.index(n)] for n in keras_names], keras_names
    return outputs, names


def _is_tflite(obj: Any) -> bool:
    return isinstance(obj, (bytes, bytearray, memoryview, str)) or hasattr(obj, "__fspath__") or (
        isinstance(getattr(obj, "tflite", None), (bytes, bytearray))
    )


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}. Received: {name}={value!r}.")
