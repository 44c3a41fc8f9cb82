"""Runs a recipe (a list of config dicts) with `tfopt.apply` alone: the one place optimize reaches the techniques.

A trial's recipe is the `to_dict()` of tfopt configs: structural steps
(`ChannelPruneConfig`, `LowRankConfig`), wrapper steps (`PruneConfig`,
`ClusterConfig`, `QATConfig`), training steps (`FineTuneConfig`, or
`DistillConfig` with the original model as teacher) and a final `PTQConfig`.
Two things are resolved here, on the model as it is at that point, and written
back into the recipe so it replays as it ran: per-layer pruning targets from
measured sensitivity, and the pruning schedule (ramp ending at 2/3 of the
fine-tune that follows).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tfopt.compress.schedules import ramp_end_step
from tfopt.errors import InvalidArgumentError

TRAINING = ("fine_tune", "distill")
MAX_LAYER_DROP = 0.10  # accuracy lost by pruning one layer alone, without training, before it is capped


def sensitivity_targets(model, validation, *, global_sparsity: float | None = None, robust_24: bool = False):
    """Per-layer pruning targets from measured sensitivity (no blanket keep-first/last rule).

    With `global_sparsity`: a dict layer -> sparsity whose weight-weighted mean
    is the global target (big insensitive layers go furthest). With
    `robust_24`: the names of the layers that lose at most half a point at 50%
    sparsity alone (the ones 2:4 may prune).
    """
    from tfopt.compress.sensitivity import prune_sensitivity

    result = prune_sensitivity(model, validation, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98))
    if robust_24:
        index = result.sparsities.index(0.5)
        names = [layer.name for layer in result.layers if layer.drops[index] <= 0.005]
        return names or [max(result.layers, key=lambda layer: layer.num_weights).name]
    # No layer goes past the sparsity at which pruning it alone (no training) cost 10 points: the
    # classifier and other small sensitive layers stay light. When the caps make the global target
    # unreachable, the highest reachable global sparsity below it is used.
    targets = None
    goal = float(global_sparsity)
    while targets is None and goal > 0.05:
        try:
            targets = result.per_layer_targets(goal, max_drop=MAX_LAYER_DROP, max_sparsity=0.98)
        except ValueError:
            goal = round(goal - 0.05, 4)
    if targets is None:
        raise InvalidArgumentError(f"No layer can be pruned within a {MAX_LAYER_DROP:.0%} drop each.")
    return {name: value for name, value in targets.items() if value > 0}


SHARE_POWER = 0.4  # how fast the sparsity falls for smaller layers
SHARE_FLOOR = 0.5  # no weight layer is pruned less than this


def share_targets(model, sparsity: float) -> dict[str, float]:
    """Per-layer pruning targets from weight share: the biggest layer to `sparsity`, smaller ones less.

    A layer with `n` weights (the biggest has `n_max`) keeps `(1 - sparsity) *
    (n_max / n) ** 0.4` of them (at least half pruned): the few weights of a
    classifier are each worth more than those of a wide first layer (the
    Deep Compression shape: about 0.95 / 0.85 / 0.5 on LeNet-300-100).
    """
    from tfopt.compress.kernels import kernel_of

    sizes = {}
    for layer in model.layers:
        kernel = kernel_of(layer)
        if kernel is not None:
            sizes[layer.name] = int(np.prod(kernel.shape))
    if not sizes:
        raise InvalidArgumentError("The model has no Dense / Conv / Embedding layer to prune.")
    biggest = max(sizes.values())
    keep = 1.0 - float(sparsity)
    return {
        name: round(min(float(sparsity), max(SHARE_FLOOR, 1.0 - keep * (biggest / n) ** SHARE_POWER)), 4)
        for name, n in sizes.items()
    }


def weight_layers(model) -> list[str]:
    """Names of the layers with a kernel to compress: every one, not the default that leaves the first and last alone."""
    from tfopt.compress.kernels import kernel_of

    return [layer.name for layer in model.layers if kernel_of(layer) is not None and type(layer).__name__ != "EinsumDense"]


def _schedule(step: dict[str, Any], following: dict[str, Any] | None, num_train: int) -> dict[str, Any]:
    step = dict(step)
    if step.get("end_step") is None and following is not None and step.get("m_by_n") is None:
        epochs = int(following.get("epochs") or 1)
        total = max(1, math.ceil(num_train / int(following.get("batch_size", 64)))) * epochs
        step["end_step"] = ramp_end_step(total)
    return step


def _resolve(recipe: Sequence[dict[str, Any]], model, data) -> list[dict[str, Any]]:
    """Fills in `_allocate` / `_robust_24` prune steps on `model` (the model entering the prune step)."""
    out = []
    validation = (data["x_val"], data["y_val"])
    for index, step in enumerate(recipe):
        step = dict(step)
        if step.get("technique") == "prune":
            if "_share" in step:
                step["target_sparsity"] = share_targets(model, step["_share"])
            if "_allocate" in step:
                step["target_sparsity"] = sensitivity_targets(model, validation, global_sparsity=step["_allocate"])
            if step.get("_robust_24"):
                step["include"] = sensitivity_targets(model, validation, robust_24=True)
            following = next((s for s in recipe[index + 1:] if s.get("technique") in TRAINING), None)
            step = _schedule(step, following, len(data["x_train"]))
        if step.get("technique") == "cluster" and step.get("_every_layer") and step.get("include") is None:
            step["include"] = weight_layers(model)
        out.append({k: v for k, v in step.items() if not k.startswith("_")})
    return out


def run_recipe(
    model,
    recipe: Sequence[dict[str, Any]],
    data: dict[str, np.ndarray],
    *,
    calibration,
    teacher=None,
    allowed_drop: float | None = None,
) -> tuple[Any, bytes, list[dict[str, Any]]]:
    """Applies `recipe` to `model` (never changed) with `tfopt.apply`, and nothing else.

    Returns `(keras_model, tflite_bytes, resolved_recipe)`: the Keras model
    before conversion (stripped; the QAT model for QAT recipes), the .tflite of
    the final `ptq` step, and the recipe as it ran, each step the `to_dict()` of
    its config (with its version), replayable with
    `tfopt.apply(model, *resolved_recipe, data=...)`.
    """
    from tfopt import config as C
    from tfopt._keras import clone_model
    from tfopt.api import apply, strip_for_next_step

    if not recipe or recipe[-1].get("technique") != "ptq":
        raise InvalidArgumentError("A recipe must end with a 'ptq' step (the conversion to .tflite).")
    body, ptq = list(recipe[:-1]), dict(recipe[-1])
    cut = next((i for i, s in enumerate(body) if s.get("technique") == "prune"), len(body))
    teacher = teacher if teacher is not None else model
    first = _resolve(body[:cut], model, data)  # no prune step here: nothing to measure
    current = apply(model, *first, data=data, teacher=teacher) if first else model
    rest = _resolve(body[cut:], current, data)  # sensitivity measured on the model entering the prune step
    current = apply(current, *rest, data=data, teacher=teacher) if rest else current
    current = strip_for_next_step(current)
    if current is model:  # a conversion-only recipe: convert a copy, never the caller's object
        current = clone_model(model)
        current.set_weights(model.get_weights())
    if ptq.get("float_fallback") == "auto":
        ptq["max_accuracy_drop"] = min(99.0, 100.0 * float(allowed_drop)) if allowed_drop else C.PTQConfig.max_accuracy_drop
    result = apply(current, ptq, data=data, calibration=calibration)
    resolved = [C.Config.from_dict(step).to_dict() for step in [*first, *rest, ptq]]
    return current, bytes(result.tflite), resolved
