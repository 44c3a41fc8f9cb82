"""Which layers `tfopt.compress.prune` prunes, and the checks on its options (no training here).

`select_layers` applies the default (first and last weight layer stay dense),
`include=` / `exclude=`, per-layer targets and what each layer type supports,
and lists every skipped layer with its reason. `as_functional` traces a built
Keras 3 subclassed model into a functional one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from tfopt.compress import schedules
from tfopt.compress.prune_layer import prunable_weights
from tfopt.compress.kernels import KERNEL_LAYERS
from tfopt.compress.select import LayerRule, layer_predicate
from tfopt.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError

# Keras 3 layer classes that `PruneWrapper` prunes: the shared table (SeparableConv: the pointwise kernel).
_PRUNABLE_KERAS3 = set(KERNEL_LAYERS)
_M_BY_N_LAYERS = {"Conv2D", "Dense"}
_REASONS = {
    "DepthwiseConv2D": "depthwise kernels are not pruned (few weights, very sensitive)",
    "DepthwiseConv1D": "depthwise kernels are not pruned (few weights, very sensitive)",
    "BatchNormalization": "normalization parameters are not pruned",
    "LayerNormalization": "normalization parameters are not pruned",
    "GroupNormalization": "normalization parameters are not pruned",
    "Normalization": "preprocessing statistics are not pruned",
    "Keras3Layer": "Keras 3 layer or op without a tf_keras equivalent, run as is (kept dense)",
}

@dataclasses.dataclass
class SkippedLayer:
    """A layer with weights that is left dense, and why."""

    name: str
    class_name: str
    reason: str


def as_functional(model: Any):
    """A Keras 3 functional model computing what a subclassed model computes (same layer objects)."""
    if not _is_subclassed(model):
        return model
    import keras

    alternative = (
        "Build it with the functional API (keras.Input -> layers -> keras.Model), or call the model once on "
        "a batch of the right shape before passing it."
    )
    build = model.get_build_config() if model.built else None
    shape = (build or {}).get("input_shape")
    if not isinstance(shape, (list, tuple)) or not shape or isinstance(shape[0], (list, tuple, dict)):
        raise UnsupportedModelError(
            f"Cannot trace subclassed model {model.name!r} ({type(model).__name__}) into a functional graph: "
            f"it needs one input of known shape (build config: {build!r}). {alternative}"
        )
    try:
        inputs = keras.Input(tuple(shape[1:]))
        return keras.Model(inputs, model.call(inputs), name=model.name)
    except Exception as err:  # noqa: BLE001 - user code: any failure means "not traceable", with its reason
        raise UnsupportedModelError(
            f"Cannot trace subclassed model {model.name!r} ({type(model).__name__}) into a functional graph: "
            f"{type(err).__name__}: {err}. {alternative}"
        ) from err


def _is_subclassed(model: Any) -> bool:
    return type(model).__name__ not in ("Functional", "Sequential") and not getattr(model, "inputs", None)


def check_m_by_n(m_by_n: Any, targets: float | dict):
    if m_by_n is None:
        return None
    if not (isinstance(m_by_n, (tuple, list)) and len(m_by_n) == 2):
        raise InvalidArgumentError(f"m_by_n must be a pair (m, n) such as (2, 4). Received: m_by_n={m_by_n!r}.")
    schedules.m_by_n_mask(np.zeros((m_by_n[1], 1)), *m_by_n)  # validates m, n
    if isinstance(targets, dict):
        raise InvalidArgumentError(
            "m_by_n sets m/n sparsity in every pruned layer; pass a single target_sparsity with it, not a dict."
        )
    return (int(m_by_n[0]), int(m_by_n[1]))


def check_targets(target_sparsity: Any) -> float | dict:
    if isinstance(target_sparsity, Mapping):
        if not target_sparsity:
            raise InvalidArgumentError("target_sparsity is an empty dict; give at least one layer name -> sparsity.")
        targets = {}
        for name, value in target_sparsity.items():
            if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise InvalidTypeError(
                    f"target_sparsity dict must map layer names to numbers. Received: {name!r}: {value!r}."
                )
            if not 0.0 <= float(value) < 1.0:
                raise InvalidArgumentError(f"target_sparsity for {name!r} must be in [0, 1). Received: {value!r}.")
            targets[name] = float(value)
        return targets
    if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float, np.floating)) or not (
        0.0 <= target_sparsity < 1.0
    ):
        raise InvalidArgumentError(f"target_sparsity must be a number in [0, 1). Received: target_sparsity={target_sparsity!r}.")
    return float(target_sparsity)


def select_layers(model, include: LayerRule, exclude: LayerRule, m_by_n, targets: dict | None = None) -> tuple[set, list]:
    layers = [layer for layer in model.layers if layer.weights]
    include_rule = layer_predicate(include, model.layers, "include")
    exclude_rule = layer_predicate(exclude, model.layers, "exclude")
    if targets is not None:
        unknown = sorted(set(targets) - {layer.name for layer in model.layers})
        if unknown:
            raise InvalidArgumentError(f"target_sparsity names unknown layers {unknown}. Layers: {_names(model)}.")
    supported = [layer for layer in layers if unsupported_reason(layer) is None]
    protected = (
        {supported[0].name, supported[-1].name} if include is None and targets is None and len(supported) >= 3 else set()
    )
    chosen, skipped = set(), []
    for layer in layers:
        reason = unsupported_reason(layer)
        if reason is None and targets is not None and targets.get(layer.name, 0.0) == 0.0:
            reason = "no target in target_sparsity" if layer.name not in targets else "target_sparsity 0"
        if reason is None and include_rule is not None and not include_rule(layer):
            reason = "not matched by include"
        if reason is None and exclude_rule is not None and exclude_rule(layer):
            reason = "matched by exclude"
        if reason is None and layer.name in protected:
            reason = "first/last weight layer, kept dense by default (pass include= to prune it)"
        if reason is None and m_by_n is not None and type(layer).__name__ not in _M_BY_N_LAYERS:
            reason = "m:n sparsity applies to Conv2D and Dense only"
        if reason is None:
            chosen.add(layer.name)
        else:
            skipped.append(SkippedLayer(layer.name, type(layer).__name__, reason))
    return chosen, skipped


def unsupported_reason(layer) -> str | None:
    """Why `layer` (Keras 3 or tf_keras) cannot be pruned, or None when it can."""
    name = type(layer).__name__
    module = type(layer).__module__
    if module.startswith("tf_keras."):
        from tfopt._legacy.prune import PRUNABLE

        if hasattr(layer, "get_prunable_weights") or name in PRUNABLE:
            return None
    elif hasattr(layer, "get_prunable_weights"):
        return None
    elif name in _PRUNABLE_KERAS3 and module.startswith("keras.") and prunable_weights(layer):
        return None
    if hasattr(layer, "layers"):
        return "nested model: prune it separately"
    if name in _REASONS:
        return _REASONS[name]
    if module.startswith(("keras.", "tf_keras.")):
        return f"{name} is not supported by pruning"
    return "custom layer: define get_prunable_weights() returning the weights to prune"


def _names(model) -> str:
    names = [layer.name for layer in model.layers]
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


