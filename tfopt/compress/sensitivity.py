"""Per-layer pruning sensitivity, and per-layer sparsity targets that meet a global budget.

`prune_sensitivity` prunes each prunable layer alone, by magnitude and without
training, to several sparsities, and measures the accuracy drop on real
validation data. `SensitivityResult.per_layer_targets` turns those curves into
one target per layer whose parameter-weighted average meets a global sparsity,
pruning large insensitive layers harder and protecting sensitive ones. The
allocation itself is `allocate_sparsity`, a plain numpy function.

>>> import numpy as np
>>> from tfopt.compress.sensitivity import allocate_sparsity
>>> allocate_sparsity([100, 1000], [0.5, 0.9], [[0.0, 0.30], [0.0, 0.01]], global_sparsity=0.8).round(2).tolist()
[0.5, 0.83]
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any, Sequence

import numpy as np

from tfopt import _keras
from tfopt.compress import schedules
from tfopt.compress.select import layer_predicate
from tfopt.errors import InvalidArgumentError

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
# Weights pruning masks in each prunable layer, by variable name.
_PRUNED_WEIGHT_NAMES = ("kernel", "pointwise_kernel", "recurrent_kernel", "embeddings")
# Resolution of the allocation (sparsity steps).
_STEP = 0.005


@dataclasses.dataclass
class LayerSensitivity:
    """Accuracy of the model when this layer alone is pruned to each sparsity."""

    name: str
    class_name: str
    num_weights: int
    accuracies: list[float]
    drops: list[float]


@dataclasses.dataclass
class SensitivityResult:
    """Sensitivity curves of every prunable layer (see `prune_sensitivity`)."""

    baseline_accuracy: float
    sparsities: list[float]
    layers: list[LayerSensitivity]
    num_examples: int

    def per_layer_targets(
        self, global_sparsity: float = 0.8, *, max_drop: float | None = None, max_sparsity: float | None = None
    ) -> dict[str, float]:
        """Per-layer sparsity targets whose parameter-weighted average is `global_sparsity`.

        Layers are pruned in the order of the least measured accuracy loss per
        weight removed, so large insensitive layers go furthest and small
        sensitive ones (often the first conv and the classifier) stay light.

        Args:
            global_sparsity: fraction of zeros over all measured layers together.
                Defaults to `0.8`.
            max_drop: no layer goes past the sparsity at which pruning it alone
                cost more than this accuracy (a fraction: `0.01` is one point).
                Defaults to `None` (no such cap).
            max_sparsity: no layer goes past this sparsity. Defaults to `None`:
                the largest measured sparsity (no extrapolation).

        Returns:
            A dict layer name -> target sparsity, to pass as `prune(model, target_sparsity=...)`.

        Raises:
            ValueError: if the caps make `global_sparsity` unreachable (the
                message gives the highest reachable value).
        """
        targets = allocate_sparsity(
            [l.num_weights for l in self.layers],
            self.sparsities,
            [l.drops for l in self.layers],
            global_sparsity=global_sparsity,
            max_drop=max_drop,
            max_sparsity=max_sparsity,
        )
        return {l.name: float(round(t, 4)) for l, t in zip(self.layers, targets)}

    def summary(self) -> str:
        """A table of accuracy drops (points) per layer and sparsity."""
        head = "".join(f"{s:>8.2f}" for s in self.sparsities)
        lines = [
            f"baseline accuracy {self.baseline_accuracy:.4f} on {self.num_examples} examples; "
            "drop in points when each layer alone is pruned (no training):",
            f"{'layer':<32} {'class':<16} {'weights':>9}{head}",
        ]
        for l in self.layers:
            row = "".join(f"{100 * d:>8.2f}" for d in l.drops)
            lines.append(f"{l.name[:32]:<32} {l.class_name[:16]:<16} {l.num_weights:>9}{row}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def prune_sensitivity(
    model: Any,
    data: tuple[Any, Any],
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    include: Any = None,
    exclude: Any = None,
    batchnorm_data: Any = None,
    batch_size: int = 256,
) -> SensitivityResult:
    """Measures the accuracy drop when each prunable layer alone is magnitude-pruned.

    For every layer `tfopt.prune` can prune (Conv/Dense-like; DepthwiseConv2D,
    normalization and custom layers are left out), the smallest-magnitude
    weights of its kernel are zeroed in a copy of the model, with no training,
    and top-1 accuracy is measured on real validation data. Use the result to
    choose per-layer targets (`per_layer_targets`) before pruning with
    fine-tuning: curves without training overstate the final loss, but they
    rank layers well.

    Args:
        model: a built Keras 3 or tf_keras model with a class-score output. Not modified.
        data: `(x_val, y_val)`, with integer labels (or one-hot). A few hundred
            to a few thousand real examples.
        sparsities: the sparsities to try, each in (0, 1). Defaults to
            `(0.5, 0.7, 0.8, 0.9, 0.95)`.
        include: layers to measure: a name, `"re:<regex>"`, a list of those, or
            a callable `layer -> bool`. Defaults to `None` (every prunable
            layer, the first and last included).
        exclude: layers to leave out, same forms. Defaults to `None`.
        batchnorm_data: inputs to re-estimate BatchNorm statistics from after
            each layer is pruned (and for the baseline), so the drop measures the
            lost weights and not stale statistics; recommended for models with
            BatchNorm. Defaults to `None` (statistics kept as trained).
        batch_size: evaluation batch size. Defaults to `256`.

    Returns:
        A `SensitivityResult`.

    Raises:
        ValueError: bad sparsities or data, or no prunable layer selected.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.sensitivity import prune_sensitivity
    >>> keras.utils.set_random_seed(0)
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a"), keras.layers.Dense(3, name="b")])
    >>> x = np.random.rand(64, 8).astype("float32"); y = np.argmax(m.predict(x, verbose=0), -1)
    >>> result = prune_sensitivity(m, (x, y), sparsities=(0.5, 0.9))
    >>> [layer.name for layer in result.layers], result.baseline_accuracy
    (['a', 'b'], 1.0)
    """
    from tfopt.compress.prune_plan import unsupported_reason

    grid = _check_sparsities(sparsities)
    x, labels = _check_data(data)
    work = _keras.clone_model(model)
    include_rule, exclude_rule = layer_predicate(include, work.layers, "include"), layer_predicate(exclude, work.layers, "exclude")
    chosen = [
        layer
        for layer in work.layers
        if layer.weights
        and unsupported_reason(layer) is None
        and (include_rule is None or include_rule(layer))
        and (exclude_rule is None or not exclude_rule(layer))
        and _pruned_indices(layer)
    ]
    if not chosen:
        raise InvalidArgumentError(
            f"No prunable layer selected in {model.name!r} (Conv/Dense-like layers; include={include!r}, "
            f"exclude={exclude!r}). Check the layer names with model.summary()."
        )
    predict = _predictor(work, batch_size)
    saved = work.get_weights()

    def measure() -> float:
        if batchnorm_data is not None:
            from tfopt.compress.batchnorm import reestimate_inplace

            reestimate_inplace(work, batchnorm_data, batch_size=batch_size)
        return _accuracy(predict(x), labels)

    baseline = measure()
    layers = []
    for layer in chosen:
        work.set_weights(saved)
        original = layer.get_weights()
        indices = _pruned_indices(layer)
        accuracies = []
        for sparsity in grid:
            values = list(original)
            for i in indices:
                values[i] = original[i] * schedules.magnitude_mask(original[i], sparsity)
            work.set_weights(saved)
            layer.set_weights(values)
            accuracies.append(measure())
        work.set_weights(saved)
        layers.append(
            LayerSensitivity(
                name=layer.name,
                class_name=type(layer).__name__,
                num_weights=int(sum(original[i].size for i in indices)),
                accuracies=accuracies,
                drops=[baseline - a for a in accuracies],
            )
        )
    return SensitivityResult(baseline_accuracy=baseline, sparsities=list(grid), layers=layers, num_examples=len(labels))


def allocate_sparsity(
    num_weights: Sequence[int],
    sparsities: Sequence[float],
    drops: Sequence[Sequence[float]],
    *,
    global_sparsity: float,
    max_drop: float | None = None,
    max_sparsity: float | None = None,
) -> np.ndarray:
    """Per-layer sparsities meeting a parameter-weighted global sparsity at the least predicted loss.

    Each layer's drop curve is made monotone (running maximum: measurement
    noise must not make more pruning look free), starts at 0 drop for 0
    sparsity and is interpolated linearly. Sparsity is then handed out in small
    steps, each to the layer whose next step costs the least drop per weight
    zeroed (ties go to the least pruned layer, so equally robust layers end
    equal), until the weighted average reaches `global_sparsity`; the last step
    is trimmed to land on it exactly.

    Args:
        num_weights: prunable weights per layer.
        sparsities: the measured sparsities, increasing, in (0, 1).
        drops: per layer, the accuracy drop at each of `sparsities`.
        global_sparsity: the weighted average to reach, in [0, 1).
        max_drop: cap each layer where its drop first exceeds this. Defaults to `None`.
        max_sparsity: cap every layer here. Defaults to `None` (the largest measured sparsity).

    Returns:
        A float array of per-layer sparsities.

    Raises:
        ValueError: for inconsistent shapes or an unreachable `global_sparsity`.

    >>> allocate_sparsity([10, 10], [0.5, 0.9], [[0.0, 0.0], [0.0, 0.0]], global_sparsity=0.6).tolist()
    [0.6, 0.6]
    """
    sizes = np.asarray(num_weights, dtype=np.float64)
    grid = np.asarray(sparsities, dtype=np.float64)
    curves = np.asarray(drops, dtype=np.float64)
    if curves.ndim != 2 or curves.shape != (len(sizes), len(grid)) or len(grid) == 0:
        raise InvalidArgumentError(
            f"drops must hold one row of {len(grid)} values per layer ({len(sizes)} layers). "
            f"Received shape {curves.shape}."
        )
    if np.any(np.diff(grid) <= 0) or grid[0] <= 0 or grid[-1] >= 1:
        raise InvalidArgumentError(f"sparsities must increase strictly inside (0, 1). Received: {grid.tolist()}.")
    if not 0.0 <= global_sparsity < 1.0:
        raise InvalidArgumentError(f"global_sparsity must be in [0, 1). Received: global_sparsity={global_sparsity!r}.")
    if np.any(sizes <= 0):
        raise InvalidArgumentError(f"num_weights must be positive. Received: {sizes.astype(int).tolist()}.")
    top = float(grid[-1] if max_sparsity is None else max_sparsity)
    if not 0.0 <= top < 1.0:
        raise InvalidArgumentError(f"max_sparsity must be in [0, 1). Received: max_sparsity={max_sparsity!r}.")
    xs = np.concatenate([[0.0], grid])
    monotone = np.maximum.accumulate(np.concatenate([np.zeros((len(sizes), 1)), curves], axis=1), axis=1)
    caps = np.full(len(sizes), top)
    if max_drop is not None:
        for i, row in enumerate(monotone):
            over = np.nonzero(row > max_drop + 1e-12)[0]
            if len(over):  # the last measured sparsity within the budget
                caps[i] = min(caps[i], xs[over[0] - 1])
    reachable = float(np.dot(sizes, caps) / sizes.sum())
    if global_sparsity > reachable + 1e-9:
        raise InvalidArgumentError(
            f"global_sparsity={global_sparsity} is not reachable: with max_drop={max_drop} and max_sparsity={top} "
            f"the layers reach at most {reachable:.3f}. Raise max_drop or max_sparsity, or lower global_sparsity."
        )
    current = np.zeros(len(sizes))
    needed = global_sparsity * sizes.sum()

    def step_cost(i: int) -> tuple[float, float, int] | None:
        nxt = min(current[i] + _STEP, caps[i])
        if nxt <= current[i] + 1e-12:
            return None
        delta = np.interp(nxt, xs, monotone[i]) - np.interp(current[i], xs, monotone[i])
        return (round(float(delta / (sizes[i] * (nxt - current[i]))), 15), float(current[i]), i)

    heap = [c for c in (step_cost(i) for i in range(len(sizes))) if c is not None]
    heapq.heapify(heap)
    while heap and np.dot(sizes, current) < needed - 1e-9:
        _, _, i = heapq.heappop(heap)
        nxt = min(current[i] + _STEP, caps[i])
        excess = np.dot(sizes, current) + sizes[i] * (nxt - current[i]) - needed
        current[i] = nxt - max(excess, 0.0) / sizes[i]
        cost = step_cost(i)
        if cost is not None:
            heapq.heappush(heap, cost)
    return np.round(current, 6)


def _pruned_indices(layer) -> list[int]:
    """Indexes in `layer.get_weights()` of the weights pruning masks (kernels, not biases or depthwise)."""
    names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
    return [i for i, n in enumerate(names) if n in _PRUNED_WEIGHT_NAMES]


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    try:
        grid = sorted(float(s) for s in sparsities)
    except TypeError as err:
        raise InvalidArgumentError(f"sparsities must be a sequence of numbers. Received: {sparsities!r}.") from err
    if not grid or grid[0] <= 0.0 or grid[-1] >= 1.0 or len(set(grid)) != len(grid):
        raise InvalidArgumentError(f"sparsities must be distinct numbers in (0, 1). Received: sparsities={sparsities!r}.")
    return grid


def _check_data(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise InvalidArgumentError(f"data must be a pair (x_val, y_val) of arrays. Received: {type(data).__name__}.")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=-1)
    y = y.reshape(-1)
    if len(x) != len(y) or len(y) == 0:
        raise InvalidArgumentError(f"x_val and y_val must hold the same number (> 0) of examples. Received: {len(x)} and {len(y)}.")
    return x, y.astype(np.int64)


def _predictor(model, batch_size: int):
    import tensorflow as tf

    call = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)

    def predict(x: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(x), batch_size):
            out = call(tf.convert_to_tensor(x[start : start + batch_size]))
            out = out[0] if isinstance(out, (list, tuple)) else out
            outputs.append(np.asarray(out))
        return np.concatenate(outputs)

    return predict


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise InvalidArgumentError(
            f"prune_sensitivity needs a model whose first output holds class scores (batch, classes). "
            f"Received output shape {scores.shape}."
        )
    return float(np.mean(np.argmax(scores, axis=-1) == labels))
