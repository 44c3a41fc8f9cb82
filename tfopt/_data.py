"""Checks on data before any work: one clear line instead of NaN models, zero accuracies or tracebacks.

Pure numpy. Every check raises `InvalidArgumentError` with what was received,
what was expected and how to fix it. Call `check_arrays` where data enters
(the CLI's `--data`, the dataset loaders, training and evaluation entry points)
and `check_int` for counts such as epochs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tfopt.errors import InvalidArgumentError, InvalidTypeError

TASKS = ("classification", "regression", None)


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Returns `value` as an int, or raises when it is not an integer in `[minimum, maximum]`.

    >>> check_int("epochs", 3)
    3
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{name} must be an integer. Received: {name}={value!r} ({type(value).__name__}).")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InvalidArgumentError(f"{name} must be an integer {bound}. Received: {name}={value}.")
    return int(value)


def check_arrays(
    x: Any,
    y: Any = None,
    *,
    name: str = "data",
    num_classes: int | None = None,
    input_shape: Sequence[int | None] | None = None,
    task: str | None = "classification",
) -> tuple[Any, np.ndarray | None]:
    """Checks examples (and labels) before they reach training, conversion or measurement.

    Refuses: non-numeric or empty `x`; NaN or infinite values in `x` or `y`; `x`
    and `y` of different lengths; per-example shapes that differ from the
    model's input shape. For `task="classification"`: string labels, float
    labels that are not whole numbers, negative labels, labels `>= num_classes`,
    and one-hot / probability rows of the wrong width or outside [0, 1].

    Args:
        x: an array, or a list / dict of arrays for a multi-input model.
        y: labels (class indices, one-hot rows, or regression targets). Defaults to `None`.
        name: what the data is called in messages, e.g. `"--data x_train"`. Defaults to `"data"`.
        num_classes: classes the model predicts (its output width). Defaults to `None` (not checked).
        input_shape: the model's input shape, with or without the batch dimension
            (`model.input_shape` works; `None` entries match any size); a list of
            shapes for a multi-input model. Defaults to `None` (not checked).
        task: `"classification"`, `"regression"` or `None` (labels only checked for
            NaN/inf and length). Defaults to `"classification"`.

    Returns:
        `(x, y)` as numpy arrays (`x` keeps its list / dict structure).

    Raises:
        InvalidArgumentError: one line naming the problem, what was expected and how to fix it.
        InvalidTypeError: when `x` or `y` cannot be read as numeric arrays.

    Example:

    >>> import numpy as np
    >>> x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 1, 5])
    >>> try:
    ...     check_arrays(x, y, num_classes=3)
    ... except ValueError as err:
    ...     print(str(err)[:58])
    data y: 1 label(s) >= num_classes=3 (largest 5, at index 3
    """
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {TASKS}. Received: task={task!r}.")
    if isinstance(x, dict):
        keys = list(x)
        arrays = [_numeric(x[k], f"{name} x[{k!r}]") for k in keys]
    elif isinstance(x, (list, tuple)) and x and all(_is_array_like(a) for a in x) and not _is_nested_numbers(x):
        keys = list(range(len(x)))
        arrays = [_numeric(a, f"{name} x[{i}]") for i, a in enumerate(x)]
    else:
        keys = None
        arrays = [_numeric(x, f"{name} x")]
    labels = [f"{name} x" if keys is None else f"{name} x[{k!r}]" for k in (keys or [None])]
    for array, label in zip(arrays, labels):
        _check_examples(array, label)
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise InvalidArgumentError(
            f"{name}: the model inputs hold different numbers of examples {[len(a) for a in arrays]}. "
            "Expected the same count in every input; pass matching arrays."
        )
    if input_shape is not None:
        shapes = list(input_shape) if _is_shape_list(input_shape) else [input_shape]
        if len(shapes) != len(arrays):
            raise InvalidArgumentError(
                f"{name}: {len(arrays)} array(s) were given. Expected {len(shapes)}, one per model input; "
                "pass a list with one array per input."
            )
        for array, shape, label in zip(arrays, shapes, labels):
            _check_shape(array, shape, label)
    checked_y = None
    if y is not None:
        checked_y = _check_labels(y, len(arrays[0]), name=name, num_classes=num_classes, task=task)
    checked_x = arrays[0] if keys is None else (dict(zip(keys, arrays)) if isinstance(x, dict) else arrays)
    return checked_x, checked_y


def _is_array_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__array__")


def _is_nested_numbers(value: Any) -> bool:
    return all(isinstance(v, (list, tuple)) for v in value)


def _is_shape_list(shape: Any) -> bool:
    return isinstance(shape, (list, tuple)) and len(shape) > 0 and all(
        isinstance(s, (list, tuple)) or s is None for s in shape
    ) and any(isinstance(s, (list, tuple)) for s in shape)


def _numeric(value: Any, label: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise InvalidTypeError(
            f"{label} cannot be read as an array ({err}). Expected a numeric numpy array of equal-sized examples."
        ) from err
    if array.dtype.kind not in "biuf":
        raise InvalidArgumentError(
            f"{label} has dtype {array.dtype} ({_kind_name(array)}). Expected numbers (float or int); "
            "convert it first, e.g. x.astype('float32')."
        )
    return array


def _kind_name(array: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers", "M": "dates",
            "m": "time deltas", "V": "raw records"}.get(array.dtype.kind, array.dtype.kind)


def _check_examples(array: np.ndarray, label: str) -> None:
    if array.ndim == 0:
        raise InvalidArgumentError(f"{label} is a single number {array.item()!r}. Expected an array of examples "
                                   "with the batch on the first axis.")
    if len(array) == 0 or array.size == 0:
        raise InvalidArgumentError(f"{label} is empty (shape {array.shape}). Expected at least one example; "
                                   "check the file or the slice that produced it.")
    _check_finite(array, label)


def _check_finite(array: np.ndarray, label: str) -> None:
    if array.dtype.kind != "f":
        return
    bad = ~np.isfinite(array)
    count = int(np.count_nonzero(bad))
    if count:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = first[0] if len(first) == 1 else first
        raise InvalidArgumentError(
            f"{label} holds {count} NaN or infinite value(s) (first at index {where}). Expected finite numbers; "
            "drop or impute those examples before training (e.g. keep rows where np.isfinite(x).all(axis=1))."
        )


def _check_shape(array: np.ndarray, shape: Sequence[int | None] | None, label: str) -> None:
    if shape is None:
        return
    shape = tuple(None if d is None or (isinstance(d, (int, np.integer)) and d < 0) else int(d) for d in shape)
    if len(shape) == array.ndim or (len(shape) == array.ndim + 1 and shape[0] is None):
        shape = shape[1:]  # given with the batch dimension (model.input_shape)
    got = tuple(array.shape[1:])
    if len(got) != len(shape) or any(want is not None and want != have for want, have in zip(shape, got)):
        expected = "(" + ", ".join("N" if d is None else str(d) for d in (None,) + shape) + ")"
        raise InvalidArgumentError(
            f"{label} has shape {tuple(array.shape)}. Expected {expected}, the model's input shape for N examples; "
            "reshape or resize the data (e.g. add a channel axis with x[..., None])."
        )


def _check_labels(y: Any, count: int, *, name: str, num_classes: int | None, task: str | None) -> np.ndarray:
    label = f"{name} y"
    raw = np.asarray(y) if not isinstance(y, np.ndarray) else y
    if raw.dtype.kind in "USO":
        raise InvalidArgumentError(
            f"{label} holds {_kind_name(raw)} (e.g. {raw.reshape(-1)[0]!r}). Expected "
            + ("integer class indices 0..num_classes-1; map names to indices first, e.g. "
               "np.unique(y, return_inverse=True)[1]." if task == "classification" else "numbers.")
        )
    labels = _numeric(raw, label)
    if labels.ndim == 0:
        raise InvalidArgumentError(f"{label} is a single number. Expected one label per example.")
    if len(labels) != count:
        raise InvalidArgumentError(
            f"{name}: x holds {count} example(s) but y holds {len(labels)} label(s). Expected one label per "
            "example; pass x and y of the same length."
        )
    _check_finite(labels, label)
    if task != "classification":
        return labels
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, minimum=1)
    if labels.ndim > 1 and labels.shape[-1] > 1:  # one-hot or probability rows
        if num_classes is not None and labels.shape[-1] != num_classes:
            raise InvalidArgumentError(
                f"{label} has one-hot rows of width {labels.shape[-1]} but the model predicts {num_classes} "
                "classes. Expected rows of width num_classes, or integer class indices."
            )
        if labels.min() < 0 or labels.max() > 1:
            raise InvalidArgumentError(
                f"{label} has rows of width {labels.shape[-1]} with values in [{labels.min()}, {labels.max()}]. "
                "Expected one-hot or probability rows in [0, 1], or integer class indices."
            )
        return labels
    flat = labels.reshape(-1)
    if flat.dtype.kind == "f" and not np.all(flat == np.floor(flat)):
        index = int(np.flatnonzero(flat != np.floor(flat))[0])
        raise InvalidArgumentError(
            f"{label} holds non-integer labels (e.g. {flat[index]} at index {index}). Expected integer class "
            "indices for classification; pass task='regression' for continuous targets."
        )
    if flat.dtype.kind == "b":
        flat = flat.astype(np.int64)
    if flat.min() < 0:
        index = int(np.argmin(flat))
        raise InvalidArgumentError(
            f"{label} holds negative label(s) (e.g. {flat[index]} at index {index}). Expected class indices "
            "0..num_classes-1; shift or remap the labels."
        )
    if num_classes is not None and flat.max() >= num_classes:
        over = np.flatnonzero(flat >= num_classes)
        raise InvalidArgumentError(
            f"{label}: {len(over)} label(s) >= num_classes={num_classes} (largest {flat.max()}, at index {int(over[0])})."
            f" Expected class indices 0..{num_classes - 1}; check the labels or the model's output width."
        )
    return labels


def split_rules(text: str) -> list[str]:
    """'a,re:conv_{1,2},b' -> ['a', 're:conv_{1,2}', 'b']: commas inside (), [], {} or escaped (\\,) stay."""
    parts, current, depth, i = [], [], 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            current.append(",")
            i += 2
            continue
        if char == "\\" and i + 1 < len(text):
            current.extend(text[i : i + 2])
            i += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]
