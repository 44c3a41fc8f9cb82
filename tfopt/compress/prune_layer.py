"""`PruneWrapper`: magnitude pruning as a native Keras 3 layer (TensorFlow backend).

The wrapper holds its whole state in layer variables: one 0/1 mask per pruned
weight (non-trainable) and the schedule's step counter (non-trainable int64);
the schedule itself is in `get_config`. Each call with `training=True` advances
the step by one and, on the schedule's update steps, recomputes the masks from
the current weights, so a plain `model.fit`, a `tf.GradientTape` loop or a
distribution strategy prune the model correctly without any callback. The
inner layer always computes with `weight * mask` (through `keras.StatelessScope`),
so masked weights get zero gradient and never reach the output.

The class is registered as `tfopt>PruneWrapper`: `keras.models.load_model`
finds it in any process that imported `tfopt` (which imports this module once
Keras is loaded), with no scope.
"""

from __future__ import annotations

import keras
from keras import ops

from tfopt.compress.records import CarriesRecord

# Weight names that are pruned (kernels, not biases; SeparableConv: the pointwise kernel only).
PRUNED_WEIGHT_NAMES = ("kernel", "pointwise_kernel", "recurrent_kernel", "embeddings")


def prunable_weights(layer) -> list:
    """The variables of `layer` that pruning masks: `get_prunable_weights()` if defined, else its kernels."""
    custom = getattr(layer, "get_prunable_weights", None)
    if callable(custom):
        return list(custom())
    return [w for w in layer.trainable_weights if w.name.split("/")[-1] in PRUNED_WEIGHT_NAMES and len(w.shape) >= 2]


def magnitude_mask(weights, sparsity):
    """Graph version of `schedules.magnitude_mask`: keeps the round(size * (1 - s)) largest |w| (ties kept)."""
    magnitude = ops.abs(weights)
    flat = ops.sort(ops.reshape(magnitude, (-1,)))
    size = int(flat.shape[0])
    keep = ops.maximum(ops.cast(ops.round(size * (1.0 - sparsity)), "int32"), 1)
    threshold = ops.take(flat, size - keep)
    return ops.cast(magnitude >= threshold, weights.dtype)


def m_by_n_mask(weights, m: int, n: int):
    """Graph version of `schedules.m_by_n_mask` along the input-channel axis (-2)."""
    moved = ops.moveaxis(ops.abs(weights), -2, -1)
    shape = tuple(int(d) for d in moved.shape)
    length = shape[-1]
    padded_length = -(-length // n) * n
    pad = [[0, 0]] * (len(shape) - 1) + [[0, padded_length - length]]
    blocks = ops.reshape(ops.pad(moved, pad, constant_values=-1.0), shape[:-1] + (padded_length // n, n))
    _, order = ops.top_k(blocks, n - m, sorted=True)
    keep = ops.max(ops.one_hot(order, n), axis=-2)
    keep = ops.reshape(keep, shape[:-1] + (padded_length,))[..., :length]
    return ops.cast(ops.moveaxis(keep, -1, -2), weights.dtype)


@keras.saving.register_keras_serializable(package="tfopt")
class PruneWrapper(CarriesRecord, keras.layers.Wrapper):
    """Prunes the kernel(s) of `layer` by magnitude while it trains.

    Built by `tfopt.prune`; you rarely create it yourself. The step advances
    once per call with `training=True` (one per batch in `fit`; in a custom
    loop, call the model with `training=True` once per step). Calls with
    `training=False` or `None` use the current masks and change nothing.

    Args:
        layer: the Keras 3 layer to prune (Conv/Dense-like, or any layer with
            `get_prunable_weights()`).
        target_sparsity: the schedule's final sparsity, in [0, 1).
        schedule: `"polynomial"` or `"constant"`.
        begin_step: first update step (>= 1).
        end_step: last update step (-1: none, for an open constant schedule).
        frequency: steps between updates.
        m_by_n: `(m, n)` for m zeros in every n input weights instead of
            unstructured masks. Defaults to `None`.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.prune_layer import PruneWrapper
    >>> layer = PruneWrapper(keras.layers.Dense(4), target_sparsity=0.5, schedule="constant",
    ...                      begin_step=1, end_step=1, frequency=1)
    >>> _ = layer(np.ones((2, 8), "float32"), training=True)
    >>> float(np.mean(layer.masks[0].numpy() == 0)), int(layer.pruning_step.numpy())
    (0.5, 1)
    """

    def __init__(
        self,
        layer,
        *,
        target_sparsity: float,
        schedule: str = "polynomial",
        begin_step: int = 1,
        end_step: int = -1,
        frequency: int = 1,
        m_by_n=None,
        **kwargs,
    ):
        kwargs.setdefault("name", f"prune_{layer.name}")
        super().__init__(layer, **kwargs)
        self.target_sparsity = float(target_sparsity)
        self.schedule = str(schedule)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = max(int(frequency), 1)
        self.m_by_n = None if m_by_n is None else (int(m_by_n[0]), int(m_by_n[1]))
        self.masks = []

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.masks = [
            self.add_weight(
                name=f"mask_{i}",
                shape=tuple(weight.shape),
                initializer="ones",
                dtype=weight.dtype,
                trainable=False,
                aggregation="only_first_replica",
            )
            for i, weight in enumerate(prunable_weights(self.layer))
        ]
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), initializer="zeros", dtype="int64", trainable=False,
            aggregation="only_first_replica",
        )
        self.built = True

    # --- schedule in the graph (same maths as tfopt.compress.schedules.PruningSchedule)
    def _sparsity_at(self, step):
        if self.m_by_n is not None:
            return ops.convert_to_tensor(self.m_by_n[0] / self.m_by_n[1], "float64")
        step = ops.cast(step, "float64")
        target = ops.convert_to_tensor(self.target_sparsity, "float64")
        if self.schedule == "constant":
            return ops.where(step >= self.begin_step, target, ops.zeros_like(target))
        span = float(max(self.end_step - self.begin_step, 1))
        progress = ops.clip((step - self.begin_step) / span, 0.0, 1.0)
        return target - target * (1.0 - progress) ** 3

    def _updates_at(self, step):
        after_begin = step >= self.begin_step
        before_end = step <= self.end_step if self.end_step >= 0 else ops.convert_to_tensor(True)
        on_beat = ops.equal(ops.mod(step - self.begin_step, self.frequency), 0)
        return ops.logical_and(ops.logical_and(after_begin, before_end), on_beat)

    def _new_masks(self, step):
        sparsity = self._sparsity_at(step)
        weights = prunable_weights(self.layer)
        if self.m_by_n is not None:
            return [m_by_n_mask(ops.convert_to_tensor(w), *self.m_by_n) for w in weights]
        return [magnitude_mask(ops.convert_to_tensor(w), sparsity) for w in weights]

    def update_masks(self):
        """Advances the step by one and recomputes the masks if the schedule says so (what training calls do)."""
        self.pruning_step.assign_add(ops.convert_to_tensor(1, "int64"))
        step = ops.convert_to_tensor(self.pruning_step)
        current = [ops.convert_to_tensor(mask) for mask in self.masks]
        new = ops.cond(self._updates_at(step), lambda: self._new_masks(step), lambda: current)
        for mask, value in zip(self.masks, new):
            mask.assign(value)

    def call(self, inputs, training=None, **kwargs):
        if training:
            self.update_masks()
        mapping = [(w, ops.multiply(ops.convert_to_tensor(w), ops.cast(m, w.dtype)))
                   for w, m in zip(prunable_weights(self.layer), self.masks)]
        if "training" in _call_arguments(self.layer):
            kwargs["training"] = training
        with keras.StatelessScope(state_mapping=mapping):
            return self.layer(inputs, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(inputs, *args, **kwargs)

    def masked_weights(self) -> list:
        """The inner layer's weights as numpy arrays, each pruned weight multiplied by its mask."""
        masked = {id(w): m for w, m in zip(prunable_weights(self.layer), self.masks)}
        return [
            w.numpy() * masked[id(w)].numpy() if id(w) in masked else w.numpy() for w in self.layer.weights
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            target_sparsity=self.target_sparsity,
            schedule=self.schedule,
            begin_step=self.begin_step,
            end_step=self.end_step,
            frequency=self.frequency,
            m_by_n=None if self.m_by_n is None else list(self.m_by_n),
        )
        return config


def _call_arguments(layer) -> set:
    import inspect

    try:
        return set(inspect.signature(layer.call).parameters)
    except (TypeError, ValueError):
        return set()
