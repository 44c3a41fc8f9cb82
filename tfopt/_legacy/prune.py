"""Magnitude pruning of tf_keras (Keras 2) models with tfmot: tf_keras in, tf_keras out.

`tfopt.compress.prune` validates the options, picks the layers and resolves the
schedules (plain values); this module only maps them onto tfmot: it wraps the
chosen layers with `prune_low_magnitude`, starts the step counters at 0 (so no
`UpdatePruningStep` callback is needed), and strips, loads and describes the
wrapped models. Keras 3 models never come here (they get `PruneWrapper`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tfopt import _keras
from tfopt._legacy import bridge, import_tfmot, tf_keras_module

# tf_keras layer classes whose kernels tfmot prunes (its registry).
PRUNABLE = {
    "Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Conv3DTranspose", "SeparableConv1D", "SeparableConv2D",
    "Dense", "Embedding", "LocallyConnected1D", "LocallyConnected2D", "MultiHeadAttention",
    "LSTM", "GRU", "SimpleRNN",
}


def working_copy(model: Any):
    """A functional copy of a tf_keras model (subclassed models are traced first); the caller's is untouched."""
    return _keras.clone_model(bridge.as_functional(model))


def tfmot_schedule(spec: Mapping[str, Any]):
    """The tfmot schedule object for a resolved schedule (`PruningSchedule.to_dict()`)."""
    sparsity = import_tfmot().sparsity.keras
    if spec["kind"] == "constant":
        return sparsity.ConstantSparsity(
            float(spec["target_sparsity"]), begin_step=spec["begin_step"], end_step=spec["end_step"],
            frequency=spec["frequency"],
        )
    return sparsity.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(spec["target_sparsity"]), begin_step=spec["begin_step"],
        end_step=spec["end_step"], frequency=spec["frequency"],
    )


def wrap(model: Any, schedules: Mapping[str, Mapping[str, Any]], *, m_by_n=None):
    """Wraps the layers named in `schedules` (name -> schedule dict) with tfmot's `prune_low_magnitude`."""
    tfmot = import_tfmot()
    tf_keras = tf_keras_module()
    made: dict = {}

    def wrap_layer(layer):
        spec = schedules.get(layer.name)
        if spec is None:
            return layer
        key = tuple(sorted(spec.items()))
        schedule = made.setdefault(key, tfmot_schedule(spec))
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer, pruning_schedule=schedule, sparsity_m_by_n=tuple(m_by_n) if m_by_n else None
        )

    pruned = tf_keras.models.clone_model(model, clone_function=wrap_layer)
    for wrapper in wrappers(pruned):
        # tfmot starts at -1 and relies on UpdatePruningStep to set 0; the wrapper
        # then counts its own steps. Starting at 0 makes the callback unnecessary.
        wrapper.pruning_step.assign(0)
    return pruned


def is_wrapper(layer: Any) -> bool:
    """True for tfmot's `PruneLowMagnitude` wrapper."""
    return hasattr(layer, "pruning_vars") and hasattr(layer, "pruning_step") and hasattr(layer, "layer")


def wrappers(model: Any) -> list:
    return [layer for layer in model.layers if is_wrapper(layer)]


def layer_states(model: Any) -> list[dict]:
    """Per wrapper: name, class, number of masked weights, target, measured sparsity, step and last update step."""
    states = []
    for wrapper in wrappers(model):
        config = wrapper.pruning_schedule.get_config()["config"]
        target = config.get("final_sparsity", config.get("target_sparsity", 0.0))
        end = config["end_step"] if config["end_step"] >= 0 else config["begin_step"]
        masks = [mask.numpy() for _, mask, _ in wrapper.pruning_vars]
        size = int(sum(m.size for m in masks))
        zeros = float(sum(np.sum(m == 0) for m in masks))
        states.append(
            dict(
                name=wrapper.layer.name, class_name=type(wrapper.layer).__name__, num_weights=size,
                target_sparsity=float(target), sparsity=zeros / size if size else 0.0,
                step=int(wrapper.pruning_step.numpy()), end_step=int(end),
            )
        )
    return states


def strip(model: Any):
    """A plain tf_keras model: wrappers removed, every pruned weight multiplied by its mask."""
    tf_keras = tf_keras_module()
    by_name = {(l.layer.name if is_wrapper(l) else l.name): l for l in model.layers}

    def unwrap(layer):
        inner = layer.layer if is_wrapper(layer) else layer
        return inner.__class__.from_config(inner.get_config())

    bridge.register_wrapper()
    plain = tf_keras.models.clone_model(model, clone_function=unwrap)
    for layer in plain.layers:
        source = by_name.get(layer.name)
        if source is None or not layer.weights:
            continue
        values = source.get_weights()
        if is_wrapper(source):
            inner_weights = source.layer.weights
            for weight, mask, _ in source.pruning_vars:
                index = next(i for i, w in enumerate(inner_weights) if w is weight)
                values[index] = values[index] * mask.numpy()
        layer.set_weights(values)
    return plain


def load(path: str):
    """Loads a pruned tf_keras model file (`.keras` or `.h5`) inside tfmot's `prune_scope()`."""
    tfmot = import_tfmot()
    bridge.register_wrapper()
    with tfmot.sparsity.keras.prune_scope():  # the file's configs are checked before tf_keras runs anything
        return _keras.load_model(path)

