"""Unstructured and m:n (2:4) magnitude pruning: Keras 3 in, Keras 3 out; tf_keras in, tf_keras out.

`prune` wraps each selected layer of a Keras 3 model in `PruneWrapper`
(`tfopt.compress.prune_layer`), a native Keras 3 layer whose masks and step
counter are layer variables: the model trains under a plain `model.fit` with
your own Keras 3 optimizer objects and callbacks, a `tf.GradientTape` loop or a
`tf.distribute` strategy, and saves and loads with `model.save` /
`keras.models.load_model`. tf_keras models go through tfmot instead
(`tfopt._legacy.prune`) and come back as tf_keras. `strip_pruning` returns a
plain model with the zeros in place; `pruning_summary` lists what is pruned, how
sparse it is now, and which layers were skipped and why.

The schedule maths lives in `tfopt.compress.schedules` (plain numpy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zipfile
from typing import Any, Mapping

import numpy as np

from tfopt import _keras
from tfopt.compress import schedules
from tfopt.compress import prune_plan, records
from tfopt.compress.prune_layer import PruneWrapper
from tfopt.compress.prune_plan import SkippedLayer, unsupported_reason  # noqa: F401 - re-exported
from tfopt.compress.select import LayerRule
from tfopt.errors import InvalidArgumentError

# Pruned model -> the layers `prune` skipped and why (lost on save; a loaded model lists unwrapped layers).


@dataclasses.dataclass
class LayerSparsity:
    """One pruned layer: its measured sparsity against the schedule's target."""

    name: str
    class_name: str
    num_weights: int
    target_sparsity: float
    sparsity: float
    step: int
    end_step: int


@dataclasses.dataclass
class PruningSummary:
    """What `prune` wrapped, how sparse each layer is now, and what it skipped."""

    layers: list[LayerSparsity]
    skipped: list[SkippedLayer]

    @property
    def sparsity(self) -> float:
        """Sparsity over all pruned weights together."""
        total = sum(layer.num_weights for layer in self.layers)
        zeros = sum(layer.num_weights * layer.sparsity for layer in self.layers)
        return zeros / total if total else 0.0

    @property
    def finished(self) -> bool:
        """True when every layer has run its whole schedule."""
        return all(layer.step >= layer.end_step for layer in self.layers)

    def summary(self) -> str:
        lines = [f"{'layer':<32} {'class':<18} {'weights':>9} {'target':>7} {'now':>7} {'step':>11}"]
        for l in self.layers:
            lines.append(
                f"{l.name:<32} {l.class_name:<18} {l.num_weights:>9} {l.target_sparsity:>7.3f} "
                f"{l.sparsity:>7.3f} {l.step:>5}/{l.end_step:<5}"
            )
        lines.append(f"pruned weights: {sum(l.num_weights for l in self.layers)}, sparsity {self.sparsity:.3f}")
        for s in self.skipped:
            lines.append(f"skipped {s.name} ({s.class_name}): {s.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "sparsity": self.sparsity,
            "finished": self.finished,
            "layers": [dataclasses.asdict(l) for l in self.layers],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
        }



def prune(
    model: Any,
    *,
    target_sparsity: float | Mapping[str, float] = 0.8,
    schedule: str = "polynomial",
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int | None = None,
    include: LayerRule = None,
    exclude: LayerRule = None,
    m_by_n: tuple[int, int] | None = None,
):
    """Wraps a model for magnitude pruning; train it with your own `fit` or training loop.

    Each selected layer's kernel is pruned to `target_sparsity` by magnitude,
    following the schedule, while you fine-tune. No callback is needed: the
    step counter and masks live in the layers. A Keras 3 model comes back as a
    Keras 3 model (compile it with `keras.optimizers` objects, use
    `keras.callbacks`, save it as `.keras`); a tf_keras model is wrapped with
    tfmot and comes back as tf_keras. Then call `strip_pruning` (or
    `tfopt.strip`) for a plain model with the zeros in place.

    The step advances once per call with `training=True`: once per batch in
    `fit`, and in a custom `tf.GradientTape` loop once per
    `model(x, training=True)`. Masks apply to every call, training or not.

    By default (`include=None`) every Conv/Dense-like layer is pruned except the
    first and the last weight layer (small and the most sensitive), when the
    model has at least three. Layers that cannot be pruned (DepthwiseConv2D,
    normalization, nested models, custom layers without
    `get_prunable_weights()`) stay dense and are listed by `pruning_summary`.
    A built subclassed model is traced into a functional model first (its
    `call` run on a `keras.Input`).

    Args:
        model: a built Keras 3 or tf_keras model: functional, Sequential, or
            subclassed with one input of known shape. Not modified.
        target_sparsity: fraction of zeros in each pruned kernel, in [0, 1); or
            a dict layer name -> sparsity (per-layer targets, e.g. from
            `SensitivityResult.per_layer_targets`), which prunes exactly the
            layers named with a target above 0. Defaults to `0.8`.
        schedule: `"polynomial"` (cubic ramp from 0 to the target between
            `begin_step` and `end_step`) or `"constant"` (the target from
            `begin_step` on). Defaults to `"polynomial"`.
        begin_step: training step (batch) of the first mask update; 0 and 1
            both mean the first batch. Defaults to `0`.
        end_step: step of the last mask update of the ramp. For good accuracy
            at high sparsity use about 2/3 of your fine-tuning steps. Defaults
            to `None`: `begin_step + 200`, a short ramp that ends inside the
            first epoch of most fine-tunes (constant schedule: no end).
        frequency: steps between mask updates. Defaults to `None`: a divisor of
            the ramp giving about 10 updates, so the last update lands exactly
            on `end_step` (constant schedule: 100; its first update already
            reaches the target).
        include: layers to prune: a name, `"re:<regex>"`, a list of those, or a
            callable `layer -> bool`. Defaults to `None` (see above).
        exclude: layers never to prune, same forms. Defaults to `None`.
        m_by_n: `(m, n)` for m zeros in every n consecutive input weights,
            e.g. `(2, 4)`; Conv2D and Dense only; the mask is set at the first
            step and kept (the schedule does not apply). Defaults to `None`.

    Returns:
        A new, uncompiled model with pruning wrappers, in the caller's Keras flavour.

    Raises:
        ValueError: for out-of-range options, a rule matching no layer, a
            `frequency` longer than the ramp, or no layer left to prune.
        TypeError: `model` is not a Keras model, or a target is not a number.
        NotImplementedError: for a subclassed model that cannot be traced.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.prune import prune, strip_pruning
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    >>> p = prune(m, target_sparsity=0.5, end_step=2, include=["re:dense.*"])
    >>> p.compile(keras.optimizers.SGD(0.01), "mse")
    >>> _ = p.fit(np.ones((8, 8)), np.ones((8, 2)), epochs=2, verbose=0)
    >>> float(np.mean(strip_pruning(p).layers[0].get_weights()[0] == 0))
    0.5
    """
    targets = prune_plan.check_targets(target_sparsity)
    m_by_n = prune_plan.check_m_by_n(m_by_n, targets)
    made: dict[float, schedules.PruningSchedule] = {}

    def schedule_for(target: float) -> schedules.PruningSchedule:
        if target not in made:
            made[target] = schedules.make_schedule(
                target, schedule, begin_step=begin_step, end_step=end_step, frequency=frequency, m_by_n=m_by_n
            )
        return made[target]

    schedule_for(targets if isinstance(targets, float) else max(targets.values()))  # validates before any copy
    flavor = _keras.keras_flavor(model)
    if flavor == _keras.TF_KERAS:
        from tfopt._legacy import prune as legacy

        work = legacy.working_copy(model)
    else:
        work = _keras.clone_model(prune_plan.as_functional(model))
    chosen, skipped = prune_plan.select_layers(work, include, exclude, m_by_n, targets if isinstance(targets, dict) else None)
    if not chosen:
        raise InvalidArgumentError(
            f"No layer of {model.name!r} can be pruned with these options; skipped: "
            + "; ".join(f"{s.name}: {s.reason}" for s in skipped)
            + ". Pass include= to choose layers, or check that the model has Conv/Dense layers."
        )
    plan = {name: schedule_for(targets[name] if isinstance(targets, dict) else targets) for name in chosen}
    if flavor == _keras.TF_KERAS:
        pruned = legacy.wrap(work, {name: spec.to_dict() for name, spec in plan.items()}, m_by_n=m_by_n)
    else:
        import keras

        def wrap(layer):
            spec = plan.get(layer.name)
            if spec is None:
                return layer
            options = spec.to_dict()
            return PruneWrapper(layer, schedule=options.pop("kind"), m_by_n=m_by_n, **options)

        pruned = keras.models.clone_model(work, clone_function=wrap)
    records.attach(_wrappers(pruned), "prune", {"skipped": [dataclasses.asdict(s) for s in skipped]})
    return pruned


def has_wrappers(model: Any) -> bool:
    """True when `model` carries pruning wrappers (tfopt's Keras 3 `PruneWrapper` or tfmot's).

    >>> import keras
    >>> has_wrappers(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    False
    """
    return bool(_wrappers(model))


def strip_pruning(model: Any, *, batchnorm_data: Any = None):
    """Removes the pruning wrappers: a plain Keras model with the zeros in place.

    Works on the model `prune` returned and on one loaded from a file in
    another process. The masks are applied to the kernels explicitly, so the
    zeros are there even if the last optimizer step moved masked weights. The
    result is in the wrapped model's flavour (Keras 3 or tf_keras) and not
    compiled (the optimizer state belonged to the wrapped model): compile it
    again before further training, and note that training it without masks
    lets the zeros grow back. Warns when a layer has not finished its schedule.

    Pass `batchnorm_data` (a few thousand training inputs) to recompute the
    BatchNorm moving statistics for the pruned kernels: with BatchNorm's
    default momentum (0.99) a short fine-tune leaves them describing the dense
    model, which costs accuracy at evaluation (measured in docs/pruning.md).

    Args:
        model: a model returned by `prune` (or loaded from its saved file). Not modified.
        batchnorm_data: inputs (array, list of arrays, or a batched `tf.data.Dataset`)
            to re-estimate BatchNorm statistics from (see
            `tfopt.compress.batchnorm.reestimate_batchnorm`). Defaults to `None` (kept as trained).

    Returns:
        A new model without wrappers.

    Raises:
        ValueError: if the model has no pruning wrappers.

    Example:

    >>> import keras, warnings
    >>> from tfopt.compress.prune import prune, strip_pruning
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    >>> warnings.simplefilter("ignore")
    >>> [type(layer).__name__ for layer in strip_pruning(prune(m, include="re:dense.*")).layers]
    ['Dense']
    """
    if not has_wrappers(model):
        raise InvalidArgumentError(
            f"Model {getattr(model, 'name', model)!r} has no pruning wrappers. Pass the model returned by "
            "tfopt.prune (or loaded from the file it was saved to)."
        )
    late = [l for l in pruning_summary(model).layers if l.step < l.end_step]
    if late:
        warnings.warn(
            f"{len(late)} pruned layer(s) have not finished their schedule (e.g. {late[0].name!r} at step "
            f"{late[0].step} of {late[0].end_step}, sparsity {late[0].sparsity:.3f} instead of "
            f"{late[0].target_sparsity:.3f}). Train longer or pass a smaller end_step to prune().",
            stacklevel=2,
        )
    if _keras.keras_flavor(model) == _keras.TF_KERAS:
        from tfopt._legacy import prune as legacy

        plain = legacy.strip(model)
    else:
        plain = _strip_keras3(model)
    if batchnorm_data is not None:
        from tfopt.compress.batchnorm import reestimate_inplace

        reestimate_inplace(plain, batchnorm_data)
    return plain


strip = strip_pruning  # the name this module used before `tfopt.strip` dispatched here


def pruning_summary(model: Any) -> PruningSummary:
    """Per-layer measured sparsity, target and step of a pruned model, and the skipped layers.

    Example:

    >>> import keras
    >>> from tfopt.compress.prune import prune, pruning_summary
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    >>> pruning_summary(prune(m, include="re:dense.*")).layers[0].step
    0
    """
    if _keras.keras_flavor(model) == _keras.TF_KERAS:
        from tfopt._legacy import prune as legacy

        layers = [LayerSparsity(**state) for state in legacy.layer_states(model)]
    else:
        layers = [_layer_sparsity(wrapper) for wrapper in _wrappers(model)]
    record = records.read(model, "prune")
    skipped = None if record is None else [SkippedLayer(**row) for row in record["skipped"]]
    if skipped is None:
        skipped = [
            SkippedLayer(l.name, type(l).__name__, "not wrapped for pruning")
            for l in model.layers
            if l.weights and not _is_wrapper(l)
        ]
    return PruningSummary(layers=layers, skipped=list(skipped))


def load_pruned(path: str | os.PathLike):
    """Loads a pruned model saved with `model.save(path)`, in the flavour it was saved from.

    A Keras 3 file is `keras.models.load_model(path)` (the same works directly
    in any process that imported `tfopt`); a tf_keras file is loaded inside
    tfmot's `prune_scope()`. Training continues with a plain `fit` from the
    saved step. (tfmot does not save the `m_by_n` option: save tf_keras 2:4
    models after fine-tuning, or strip them first. Keras 3 saves it.)

    Raises:
        FileNotFoundError: the file does not exist.

    Example:

    >>> import keras, os, tempfile
    >>> from tfopt.compress.prune import load_pruned, prune, pruning_summary
    >>> layers = [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.keras")
    >>> prune(keras.Sequential(layers), target_sparsity=0.5, include=["hidden"]).save(path)
    >>> [layer.name for layer in pruning_summary(load_pruned(path)).layers]
    ['hidden']
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _missing(path)
    if _saved_by_tf_keras(path):
        from tfopt._legacy import prune as legacy

        return legacy.load(path)
    try:
        return _keras.load_model(path)  # safe: the file's configs are checked before Keras runs anything
    except (ValueError, TypeError) as err:
        if path.endswith(".keras"):
            raise
        from tfopt._legacy import prune as legacy

        try:
            return legacy.load(path)
        except Exception:  # noqa: BLE001 - report the Keras 3 error, the likelier one
            raise err from None


def sparsity_logger(log_dir: str | None = None, *, flavor: str = _keras.KERAS3):
    """An optional callback logging each pruned layer's sparsity at each epoch end.

    Adds `sparsity/<layer>` entries to the epoch logs (printed by `fit`, kept in
    `History`) and, with `log_dir`, writes them as TensorBoard scalars. It is
    never needed for correctness.

    Args:
        log_dir: TensorBoard folder. Defaults to `None` (logs only).
        flavor: `"keras3"` for a `keras.callbacks.Callback`, `"tf_keras"` for a
            tf_keras model's `fit`. Defaults to `"keras3"`.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.prune import prune, sparsity_logger
    >>> layers = [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    >>> pruned = prune(keras.Sequential(layers), target_sparsity=0.5, end_step=4, include=["hidden"])
    >>> pruned.compile(keras.optimizers.Adam(), "mse")
    >>> history = pruned.fit(np.ones((32, 8)), np.ones((32, 4)), epochs=1, batch_size=8,
    ...                      callbacks=[sparsity_logger()], verbose=0)
    >>> history.history["sparsity/hidden"]
    [0.5]
    """
    summarize = lambda m: {l.name: l.sparsity for l in pruning_summary(m).layers}  # noqa: E731
    if flavor not in (_keras.KERAS3, _keras.TF_KERAS):
        raise InvalidArgumentError(f"flavor must be 'keras3' or 'tf_keras'. Received: flavor={flavor!r}.")
    callbacks = _keras.keras_module(flavor).callbacks  # the same logger for both flavours' fit
    import tensorflow as tf

    class SparsityLogger(callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None

        def on_epoch_end(self, epoch, logs=None):
            for name, sparsity in summarize(self.model).items():
                if logs is not None:
                    logs[f"sparsity/{name}"] = sparsity
                if self._writer is not None:
                    with self._writer.as_default():
                        tf.summary.scalar(f"sparsity/{name}", sparsity, step=epoch)

    return SparsityLogger()


# ------------------------------------------------------------------ helpers
def _layer_sparsity(wrapper: PruneWrapper) -> LayerSparsity:
    masks = [mask.numpy() for mask in wrapper.masks]
    size = int(sum(m.size for m in masks))
    zeros = float(sum(np.sum(m == 0) for m in masks))
    target = wrapper.target_sparsity if wrapper.m_by_n is None else wrapper.m_by_n[0] / wrapper.m_by_n[1]
    return LayerSparsity(
        name=wrapper.layer.name, class_name=type(wrapper.layer).__name__, num_weights=size,
        target_sparsity=float(target), sparsity=zeros / size if size else 0.0,
        step=int(wrapper.pruning_step.numpy()),
        end_step=wrapper.end_step if wrapper.end_step >= 0 else wrapper.begin_step,
    )


def _strip_keras3(model: Any):
    import keras

    def unwrap(layer):
        inner = layer.layer if isinstance(layer, PruneWrapper) else layer
        return inner.__class__.from_config(inner.get_config())

    by_name = {(l.layer.name if isinstance(l, PruneWrapper) else l.name): l for l in model.layers}
    plain = keras.models.clone_model(model, clone_function=unwrap)
    for layer in plain.layers:
        source = by_name.get(layer.name)
        if source is None or not layer.weights:
            continue
        layer.set_weights(source.masked_weights() if isinstance(source, PruneWrapper) else source.get_weights())
    return plain


def _saved_by_tf_keras(path: str) -> bool:
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        try:
            metadata = json.loads(archive.read("metadata.json"))
        except (KeyError, ValueError):
            return False
    return str(metadata.get("keras_version", "3")).startswith("2.")


def _missing(path: str):
    from tfopt.errors import MissingFileError

    return MissingFileError(f"Model file not found: {path!r}. Pass the path the pruned model was saved to.")


def _is_wrapper(layer) -> bool:
    if isinstance(layer, PruneWrapper):
        return True
    return hasattr(layer, "pruning_vars") and hasattr(layer, "pruning_step") and hasattr(layer, "layer")


def _wrappers(model) -> list:
    return [layer for layer in getattr(model, "layers", []) if _is_wrapper(layer)]


def handle(model: Any, config: Any, context: Any):
    """`tfopt.apply`'s handler for a `PruneConfig`.

    A polynomial ramp without `end_step` that a training step follows in the
    recipe ends after two thirds of that training, so the rest recovers at the
    target sparsity.
    """
    end_step = config.end_step
    if end_step is None and config.schedule == "polynomial" and not config.m_by_n and context.train_steps_after:
        end_step = schedules.ramp_end_step(context.train_steps_after, begin_step=config.begin_step)
    return prune(
        model, target_sparsity=config.target_sparsity, schedule=config.schedule, begin_step=config.begin_step,
        end_step=end_step, frequency=config.frequency, include=config.include, exclude=config.exclude,
        m_by_n=config.m_by_n,
    )
