"""Metrics for `tfopt.evaluate`: plain functions of arrays, no runtime, no Keras.

Each built-in metric takes `(y_true, y_pred)` for one output, checks that the
labels make sense for it (a metric on invalid labels is an error, never a
number), and returns a float. `get_metric` turns a name or a callable into a
`Metric` that also says whether higher is better.

Built-ins: `"top1"` (argmax accuracy; labels as integers or one-hot),
`"top5"` / `"top<k>"` (the label among the k highest scores), `"mae"`, `"mse"`,
`"f1"` (macro F1 over the classes that occur in the labels or predictions).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from tfopt.errors import InvalidArgumentError, InvalidTypeError

BUILTIN_METRICS = ("top1", "top5", "top<k>", "mae", "mse", "f1")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric function with its name and direction."""

    name: str
    fn: Callable[[Any, Any], float]
    higher_is_better: bool
    builtin: bool = True

    def __call__(self, y_true: Any, y_pred: Any) -> float:
        return self.fn(y_true, y_pred)


def class_scores(y_pred: Any, metric: str) -> np.ndarray:
    """Predictions as a (num_examples, num_classes) float array."""
    scores = np.asarray(y_pred)
    if scores.ndim == 0 or len(scores) == 0:
        raise InvalidArgumentError(f"{metric} needs predictions for at least one example; received shape {scores.shape}.")
    scores = scores.reshape(len(scores), -1)
    if scores.shape[1] < 2:
        raise InvalidArgumentError(
            f"{metric} needs class scores, but the model's output holds a single value per example. "
            "Use metric='mae' or 'mse' for a regressor, or pass a callable metric (e.g. a thresholded accuracy)."
        )
    return scores


def class_labels(y_true: Any, num_classes: int, metric: str) -> np.ndarray:
    """Integer labels in [0, num_classes) from integer labels or one-hot rows; anything else is an error."""
    labels = np.asarray(y_true)
    if labels.dtype.kind not in "biuf":
        raise InvalidTypeError(f"{metric} needs numeric labels; received dtype {labels.dtype}.")
    if labels.ndim >= 2 and labels.shape[-1] == num_classes and num_classes > 1:
        labels = labels.reshape(len(labels), num_classes).argmax(axis=-1)
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] != 1:
        raise InvalidArgumentError(
            f"{metric} needs one integer label (or one one-hot row of {num_classes}) per example; "
            f"received labels of shape {np.asarray(y_true).shape}."
        )
    labels = labels[:, 0]
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InvalidArgumentError(f"{metric} needs integer class labels; received non-integer values such as {labels[labels != np.round(labels)][:3]}.")
        labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if np.any(bad):
        raise InvalidArgumentError(
            f"{metric}: labels must be in [0, {num_classes}) for a model with {num_classes} output classes; "
            f"received {np.unique(labels[bad])[:5].tolist()}. Check that the labels belong to this model."
        )
    return labels.astype(np.int64)


def top_k_accuracy(y_true: Any, y_pred: Any, k: int = 1) -> float:
    """Fraction of examples whose label is among the `k` highest scores (k=1: argmax accuracy).

    >>> top_k_accuracy([0, 1], [[0.9, 0.1], [0.8, 0.2]])
    0.5
    """
    name = f"top{k}"
    scores = class_scores(y_pred, name)
    labels = _same_length(class_labels(y_true, scores.shape[1], name), scores, name)
    if k == 1:
        return float(np.mean(scores.argmax(axis=-1) == labels))
    if k >= scores.shape[1]:
        return 1.0
    top = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def f1_macro(y_true: Any, y_pred: Any) -> float:
    """Macro-averaged F1 of argmax predictions over the classes present in the labels or predictions.

    >>> round(f1_macro([0, 0, 1, 1], [[1, 0], [1, 0], [1, 0], [0, 1]]), 4)
    0.7333
    """
    scores = class_scores(y_pred, "f1")
    labels = _same_length(class_labels(y_true, scores.shape[1], "f1"), scores, "f1")
    predicted = scores.argmax(axis=-1)
    values = []
    for c in np.union1d(labels, predicted):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        values.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(values))


def _regression_pair(y_true: Any, y_pred: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if a.size != b.size or len(a) != len(b):
        raise InvalidArgumentError(
            f"{name} compares targets and predictions value by value; received targets of shape {a.shape} and "
            f"predictions of shape {b.shape}."
        )
    if not np.all(np.isfinite(a)):
        raise InvalidArgumentError(f"{name}: the targets hold NaN or infinite values; clean the data first.")
    return a.reshape(-1), b.reshape(-1)


def mean_absolute_error(y_true: Any, y_pred: Any) -> float:
    """Mean absolute difference between targets and predictions.

    >>> mean_absolute_error([1.0, 2.0], [1.5, 1.0])
    0.75
    """
    a, b = _regression_pair(y_true, y_pred, "mae")
    return float(np.mean(np.abs(a - b)))


def mean_squared_error(y_true: Any, y_pred: Any) -> float:
    """Mean squared difference between targets and predictions.

    >>> mean_squared_error([1.0, 2.0], [1.5, 1.0])
    0.625
    """
    a, b = _regression_pair(y_true, y_pred, "mse")
    return float(np.mean((a - b) ** 2))


def _same_length(labels: np.ndarray, scores: np.ndarray, name: str) -> np.ndarray:
    if len(labels) != len(scores):
        raise InvalidArgumentError(f"{name}: {len(labels)} labels for {len(scores)} predictions; they must match.")
    return labels


def per_example(metric: "Metric", y_true: Any, y_pred: Any) -> np.ndarray | None:
    """Each example's share of a built-in metric whose value is a mean over examples, else None.

    For `top<k>` the 0/1 hit of each example; for `mae` / `mse` each example's
    mean absolute / squared error. Their mean is the metric's value, so two
    models scored on the same examples can be compared pair by pair (a paired
    standard error). `f1` and callables are not means over examples: None.

    >>> per_example(get_metric("top1"), [0, 1], [[0.9, 0.1], [0.8, 0.2]]).tolist()
    [1.0, 0.0]
    """
    if not metric.builtin:
        return None
    match = re.fullmatch(r"top(\d+)", metric.name)
    if match:
        k = int(match.group(1))
        scores = class_scores(y_pred, metric.name)
        labels = _same_length(class_labels(y_true, scores.shape[1], metric.name), scores, metric.name)
        if k == 1:
            return (scores.argmax(axis=-1) == labels).astype(np.float64)
        if k >= scores.shape[1]:
            return np.ones(len(labels))
        top = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
        return np.any(top == labels[:, None], axis=-1).astype(np.float64)
    if metric.name in ("mae", "mse"):
        a, b = _regression_pair(y_true, y_pred, metric.name)
        n = len(np.asarray(y_true))
        error = np.abs(a - b) if metric.name == "mae" else (a - b) ** 2
        return error.reshape(n, -1).mean(axis=1)
    return None


def get_metric(metric: str | Callable[[Any, Any], float], *, higher_is_better: bool | None = None) -> Metric:
    """A `Metric` from a built-in name or a callable `metric(y_true, y_pred) -> float`.

    Args:
        metric: `"top1"`, `"top5"`, `"top<k>"`, `"mae"`, `"mse"`, `"f1"`, or a callable.
        higher_is_better: required for a callable; for a built-in it must match
            (or be `None`). Defaults to `None`.

    >>> get_metric("mae").higher_is_better
    False
    """
    if callable(metric):
        if higher_is_better is None:
            raise InvalidArgumentError(
                "a callable metric needs higher_is_better=True (accuracy-like) or False (error-like); received None."
            )
        name = getattr(metric, "__name__", type(metric).__name__)
        return Metric(name, metric, bool(higher_is_better), builtin=False)
    if not isinstance(metric, str):
        raise InvalidTypeError(f"metric must be a name or a callable; received an object of type {type(metric).__name__}.")
    key = metric.strip().lower()
    match = re.fullmatch(r"top-?(\d+)", key)
    if match and int(match.group(1)) >= 1:
        k = int(match.group(1))
        built = Metric(f"top{k}", lambda t, p, k=k: top_k_accuracy(t, p, k), True)
    elif key in ("mae", "mse", "f1"):
        fn = {"mae": mean_absolute_error, "mse": mean_squared_error, "f1": f1_macro}[key]
        built = Metric(key, fn, key == "f1")
    else:
        raise InvalidArgumentError(
            f"unknown metric {metric!r}. Use one of {', '.join(BUILTIN_METRICS)} (e.g. 'top3'), or pass a callable "
            "metric(y_true, y_pred) -> float with higher_is_better=."
        )
    if higher_is_better is not None and bool(higher_is_better) != built.higher_is_better:
        raise InvalidArgumentError(
            f"metric {built.name!r} is {'higher' if built.higher_is_better else 'lower'}-is-better; received "
            f"higher_is_better={higher_is_better}. Leave it out for a built-in metric."
        )
    return built
