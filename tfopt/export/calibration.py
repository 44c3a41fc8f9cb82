"""Representative (calibration) data for post-training quantization, from the user's own data.

`calibration_data` accepts what users actually hold - numpy arrays, a
`tf.data.Dataset` (batched or not, `(x, y)` pairs or `x` alone), a Python
generator or iterable, a Keras `PyDataset` - for single- and multi-input models
(a list, or a dict keyed by input name). It draws `num_samples` examples spread
over the whole data with one streaming pass (reservoir sampling), so a dataset
larger than memory works, then checks and casts them against the model inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.errors import InvalidArgumentError, InvalidTypeError


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Name, per-example shape (None for unknown dims) and dtype of one model input."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


def model_input_specs(model: Any) -> list[InputSpec]:
    """The input specs of a Keras model (Keras 3 or tf_keras), batch dimension dropped."""
    _keras.keras_flavor(model)
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise InvalidArgumentError(
            f"Model {getattr(model, 'name', model)!r} has no defined inputs (a subclassed model that was never "
            "called?). Build it first, e.g. model(np.zeros((1, ...))) or keras.Input in a functional model."
        )
    specs = []
    for tensor in inputs:
        name = tensor.name.split(":")[0]
        dtype = getattr(tensor.dtype, "name", tensor.dtype)
        specs.append(InputSpec(name=name, shape=tuple(tensor.shape[1:]), dtype=str(dtype)))
    return specs


class CalibrationData:
    """A fixed sample of model inputs for quantization, drawn from the user's data.

    Iterating yields one example at a time as a list of arrays (one per model
    input, each with a leading batch dimension of 1), which is the form the
    TFLite converter's `representative_dataset` expects; call the object to get
    such a generator. `as_signature_inputs()` gives the dict form LiteRT
    Quantizer wants. Build it with `tfopt.calibration_data`.
    """

    def __init__(self, samples: list[list[np.ndarray]], specs: list[InputSpec], *, num_seen: int):
        self._samples = samples
        self.specs = specs
        self.num_seen = num_seen

    @property
    def num_samples(self) -> int:
        """Number of examples held."""
        return len(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        for example in self._samples:
            yield [array[np.newaxis, ...] for array in example]

    def __call__(self) -> Iterator[list[np.ndarray]]:
        return iter(self)

    def as_arrays(self) -> list[np.ndarray]:
        """All examples stacked: one array per model input, shape (num_samples, ...)."""
        return [np.stack([example[i] for example in self._samples]) for i in range(len(self.specs))]

    def as_signature_inputs(self) -> list[dict[str, np.ndarray]]:
        """Examples as dicts keyed by input name (batch of 1 each), for LiteRT Quantizer."""
        return [{spec.name: array for spec, array in zip(self.specs, example)} for example in self]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{s.name}: {s.shape} {s.dtype}" for s in self.specs)
        return f"CalibrationData(num_samples={self.num_samples}, drawn from {self.num_seen} examples; {shapes})"


def calibration_data(
    data: Any,
    *,
    model: Any = None,
    num_samples: int = 200,
    seed: int = 0,
) -> CalibrationData:
    """Builds the representative dataset that post-training quantization needs.

    Use it to feed `tfopt.convert(..., mode="int8" | "int16x8")`. The examples are
    drawn uniformly over all of `data` in a single streaming pass, so they are not
    just the first batch, and a dataset larger than memory works.

    Args:
        data: numpy array(s) (examples along the first axis; a list/tuple or a dict
            by input name for multi-input models; an `(x, y)` tuple also works), a
            `tf.data.Dataset` (batched or not, elements `x` or `(x, y[, w])`), a Keras
            `PyDataset`, or any Python iterable / generator of such elements.
        model: the Keras model to calibrate for. Used to check shapes, cast to the
            input dtypes, tell batches from single examples and order multi-input
            dicts. Strongly recommended. Defaults to `None` (arrays are taken as
            examples along the first axis, stream elements as single examples
            unless a `tf.data.Dataset` is batched).
        num_samples: how many examples to keep (100-500 is typical). Defaults to `200`.
        seed: seed for the sampling. Defaults to `0`.

    Returns:
        A `CalibrationData`: iterate it or pass it as `calibration=` to `tfopt.convert`.

    Raises:
        ValueError: empty data, shapes that do not match the model, NaN or inf values,
            or a non-positive `num_samples`.
        TypeError: data of an unsupported type or a non-numeric dtype.

    Example:

    >>> import numpy as np, keras, tfopt
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> calib = tfopt.calibration_data(np.random.rand(1000, 8, 8, 1), model=model, num_samples=50)
    >>> len(calib), next(iter(calib))[0].shape
    (50, (1, 8, 8, 1))
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise InvalidArgumentError(f"num_samples must be a positive integer. Received: num_samples={num_samples!r}.")
    specs = model_input_specs(model) if model is not None else None
    rng = np.random.default_rng(seed)
    reservoir: list[list[np.ndarray]] = []
    seen = 0
    for example in _examples(data, specs):
        if seen < num_samples:
            reservoir.append(example)
        else:
            slot = rng.integers(0, seen + 1)
            if slot < num_samples:
                reservoir[slot] = example
        seen += 1
    if seen == 0:
        raise InvalidArgumentError(
            f"calibration data is empty: received {_describe(data)} that yielded no examples. "
            "Pass at least one example (100-500 drawn from your training data is typical)."
        )
    if specs is None:
        specs = [
            InputSpec(name=f"input_{i}", shape=tuple(a.shape), dtype=str(a.dtype)) for i, a in enumerate(reservoir[0])
        ]
    samples = [_check_example(example, specs, index) for index, example in enumerate(reservoir)]
    return CalibrationData(samples, specs, num_seen=seen)


# --- element parsing -------------------------------------------------------------------------


def _describe(data: Any) -> str:
    if isinstance(data, np.ndarray):
        return f"an array of shape {data.shape} and dtype {data.dtype}"
    return f"an object of type {type(data).__name__}"


def _is_tf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def _is_pydataset(data: Any) -> bool:
    return any(k.__name__ == "PyDataset" for k in type(data).__mro__) and hasattr(data, "__getitem__")


def _examples(data: Any, specs: list[InputSpec] | None) -> Iterator[list[np.ndarray]]:
    """Yields single examples, each a list of arrays in model-input order."""
    if data is None:
        raise InvalidTypeError("calibration data is None. Pass numpy arrays, a tf.data.Dataset, a PyDataset or a generator.")
    if isinstance(data, (str, bytes)):
        raise InvalidTypeError(
            f"calibration data must be arrays or a dataset, not a {type(data).__name__} ({data!r:.60}). "
            "To use a saved .npz, load it first: np.load(path)['x_train']."
        )
    if _is_tf_dataset(data):
        batched = _dataset_is_batched(data, specs)
        for element in data.as_numpy_iterator():
            yield from _split(_inputs_of(element, specs), specs, batched=batched)
        return
    if _is_pydataset(data):
        for index in range(len(data)):
            yield from _split(_inputs_of(data[index], specs), specs, batched=True)
        return
    if isinstance(data, np.ndarray) or (isinstance(data, (tuple, list, Mapping)) and _all_arrays(data)):
        yield from _split(_inputs_of(data, specs), specs, batched=True)
        return
    if isinstance(data, Iterable):
        for element in data:
            yield from _split(_inputs_of(element, specs), specs, batched=None)
        return
    raise InvalidTypeError(
        f"Unsupported calibration data: {_describe(data)}. Expected numpy arrays, a tf.data.Dataset, "
        "a keras.utils.PyDataset, or a generator / iterable of arrays or (x, y) pairs."
    )


def _all_arrays(data: Any) -> bool:
    values = data.values() if isinstance(data, Mapping) else data
    return all(isinstance(v, np.ndarray) or _all_arrays_nested(v) for v in values)


def _all_arrays_nested(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, np.ndarray) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(v, np.ndarray) for v in value.values())
    return False


def _dataset_is_batched(dataset: Any, specs: list[InputSpec] | None) -> bool:
    import tensorflow as tf

    flat = [s for s in tf.nest.flatten(dataset.element_spec) if hasattr(s, "shape")]
    if not flat:
        return False
    first = flat[0]
    if specs is not None:
        return first.shape.rank is not None and first.shape.rank == len(specs[0].shape) + 1
    return first.shape.rank is not None and first.shape.rank >= 1 and first.shape[0] is None


def _inputs_of(element: Any, specs: list[InputSpec] | None) -> list[np.ndarray]:
    """Takes the model inputs out of an element: x, (x, y), (x, y, w), list or dict of inputs."""
    n_inputs = len(specs) if specs is not None else None
    if isinstance(element, Mapping):
        return _from_dict(element, specs)
    if isinstance(element, (tuple, list)):
        if n_inputs is not None and n_inputs > 1 and len(element) == n_inputs and _matches(element, specs):
            return [np.asarray(v) for v in element]
        if not element:
            raise InvalidArgumentError("an element of the calibration data is an empty tuple/list; expected x or (x, y).")
        first = element[0]
        if isinstance(first, Mapping):
            return _from_dict(first, specs)
        if isinstance(first, (tuple, list)):
            return [np.asarray(v) for v in first]
        if n_inputs is None and len(element) > 1 and all(np.ndim(v) == np.ndim(first) for v in element[1:]):
            pass  # ambiguous without a model: treat as (x, y)
        return [np.asarray(first)]
    return [np.asarray(element)]


def _from_dict(element: Mapping, specs: list[InputSpec] | None) -> list[np.ndarray]:
    if specs is None:
        return [np.asarray(v) for v in element.values()]
    missing = [s.name for s in specs if s.name not in element]
    if missing:
        raise InvalidArgumentError(
            f"calibration data dict has keys {sorted(element)}, but the model's inputs are "
            f"{[s.name for s in specs]} (missing {missing}). Key the dict by the model's input names."
        )
    return [np.asarray(element[s.name]) for s in specs]


def _matches(element: Any, specs: list[InputSpec]) -> bool:
    for value, spec in zip(element, specs):
        rank = np.ndim(value)
        if rank not in (len(spec.shape), len(spec.shape) + 1):
            return False
    return True


def _split(inputs: list[np.ndarray], specs: list[InputSpec] | None, *, batched: bool | None):
    """Yields single examples from arrays that hold a batch (or one example)."""
    if specs is not None and len(inputs) != len(specs):
        raise InvalidArgumentError(
            f"the model has {len(specs)} inputs {[s.name for s in specs]}, but a calibration element holds "
            f"{len(inputs)} array(s). Pass a list (in input order) or a dict keyed by input name."
        )
    for array in inputs:
        if array.dtype.kind not in "biuf":
            raise InvalidTypeError(
                f"calibration data must be numeric; received an array of dtype {array.dtype} and shape {array.shape}. "
                "Decode or preprocess it into numbers first."
            )
    if batched is None:  # a stream element: batch or single example, decided by rank
        batched = specs is not None and np.ndim(inputs[0]) == len(specs[0].shape) + 1
    if not batched:
        yield inputs
        return
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in inputs}
    if -1 in sizes:
        raise InvalidArgumentError("calibration arrays must hold examples along the first axis; received a scalar.")
    if len(sizes) != 1:
        raise InvalidArgumentError(
            f"calibration arrays hold different numbers of examples: {sorted(sizes)}. "
            "Every input must have the same length along its first axis."
        )
    for i in range(sizes.pop()):
        yield [a[i] for a in inputs]


def _check_example(example: list[np.ndarray], specs: list[InputSpec], index: int) -> list[np.ndarray]:
    checked = []
    for array, spec in zip(example, specs):
        shape = tuple(array.shape)
        expected = spec.shape
        if len(shape) != len(expected) or any(e is not None and e != s for s, e in zip(shape, expected)):
            raise InvalidArgumentError(
                f"calibration example {index} for input {spec.name!r} has shape {shape}, but the model expects "
                f"(batch, {', '.join('?' if d is None else str(d) for d in expected)}) - i.e. one example of shape "
                f"{tuple('?' if d is None else d for d in expected)}. Reshape your data (e.g. x[..., None] to add a "
                "channel axis) to match the model's input."
            )
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise InvalidArgumentError(
                f"calibration example {index} for input {spec.name!r} holds {bad} NaN or inf value(s). "
                "Quantization ranges would be meaningless: clean or drop those examples."
            )
        checked.append(array.astype(spec.dtype, copy=False) if spec.dtype != str(array.dtype) else array)
    return checked
