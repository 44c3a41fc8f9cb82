"""Unstructured and m:n (2:4) magnitude pruning on tfmot, for Keras 3 and tf_keras models.

`prune` returns a tf_keras model whose prunable layers are wrapped by tfmot's
`PruneLowMagnitude`; it trains correctly under a plain `model.fit` (no
`UpdatePruningStep` callback needed: the wrappers start at step 0 and count
their own steps). `strip` returns a plain model with the zeros in place, in
the Keras flavour the caller gave to `prune`. `pruning_summary` lists what is
pruned, how sparse it is now, and which layers were skipped and why.

The schedule maths lives in `tfopt.compress.schedules` (plain numpy).
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from typing import Any, Mapping

import numpy as np

from tfopt import _keras
from tfopt._legacy import bridge
from tfopt.compress import schedules
from tfopt.compress.select import LayerRule, layer_predicate
from tfopt.errors import InvalidArgumentError, InvalidTypeError


# tf_keras layer classes whose kernels tfmot prunes (its registry).
_PRUNABLE = {
    "Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Conv3DTranspose", "SeparableConv1D", "SeparableConv2D",
    "Dense", "Embedding", "LocallyConnected1D", "LocallyConnected2D", "MultiHeadAttention",
    "LSTM", "GRU", "SimpleRNN",
}
_M_BY_N_LAYERS = {"Conv2D", "Dense"}
_REASONS = {
    "DepthwiseConv2D": "tfmot does not prune depthwise kernels (few weights, very sensitive)",
    "BatchNormalization": "normalization parameters are not pruned",
    "LayerNormalization": "normalization parameters are not pruned",
    "Normalization": "preprocessing statistics are not pruned",
    "Keras3Layer": "Keras 3 layer or op without a tf_keras equivalent, run as is (kept dense)",
}
# Pruned model -> what `strip` and `pruning_summary` need to know (flavour given, skipped layers).
_PLANS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


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
class SkippedLayer:
    """A layer with weights that is left dense, and why."""

    name: str
    class_name: str
    reason: str


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
    """Wraps a model for magnitude pruning; train it with a plain `model.fit`.

    Each selected layer's kernel is pruned to `target_sparsity` by magnitude,
    following the schedule, while you fine-tune. No callback is needed. The
    result is a tf_keras model (tfmot only speaks tf_keras; a Keras 3 model is
    converted with identical weights): compile it with string identifiers
    (`"adam"`, `"sparse_categorical_crossentropy"`) or `tf_keras` objects,
    train it, then call `strip` to get a plain model back in your flavour.

    By default (`include=None`) every Conv/Dense-like layer is pruned except the
    first and the last weight layer (small and the most sensitive), when the
    model has at least three. Layers tfmot cannot prune (DepthwiseConv2D,
    custom layers, Rescaling, TFOpLambda, Keras 3 ops, ...) stay dense and are
    listed by `pruning_summary`. A subclassed model is traced into a functional
    model first (see `tfopt._legacy.bridge.as_functional`); `strip` then
    returns that functional model.

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
            on `end_step`.
        include: layers to prune: a name, `"re:<regex>"`, a list of those, or a
            callable `layer -> bool`. Defaults to `None` (see above).
        exclude: layers never to prune, same forms. Defaults to `None`.
        m_by_n: `(m, n)` for m zeros in every n consecutive input weights,
            e.g. `(2, 4)`; Conv2D and Dense only; the mask is set at the first
            step and kept (the schedule does not apply). Defaults to `None`.

    Returns:
        A new, uncompiled tf_keras model with pruning wrappers.

    Raises:
        ValueError: for out-of-range options, a rule matching no layer, a
            `frequency` longer than the ramp, or no layer left to prune.
        NotImplementedError: for a subclassed model that cannot be traced.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.prune import prune, strip
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    >>> p = prune(m, target_sparsity=0.5, end_step=2, include=["re:dense.*"])
    >>> p.compile("sgd", "mse"); _ = p.fit(np.ones((8, 8)), np.ones((8, 2)), epochs=2, verbose=0)
    >>> float(np.mean(strip(p).layers[0].get_weights()[0] == 0))
    0.5
    """
    targets = _check_targets(target_sparsity)
    if schedule not in schedules.SCHEDULES:
        raise InvalidArgumentError(f"schedule must be one of {schedules.SCHEDULES}. Received: schedule={schedule!r}.")
    if m_by_n is not None:
        if not (isinstance(m_by_n, (tuple, list)) and len(m_by_n) == 2):
            raise InvalidArgumentError(f"m_by_n must be a pair (m, n) such as (2, 4). Received: m_by_n={m_by_n!r}.")
        schedules.m_by_n_mask(np.zeros((m_by_n[1], 1)), *m_by_n)  # validates m, n
        if isinstance(targets, dict):
            raise InvalidArgumentError("m_by_n sets 50% in every pruned layer; pass a single target_sparsity with it, not a dict.")
    flavor = _keras.keras_flavor(model)
    source = bridge.as_functional(model)
    tfmot = _keras.import_tfmot()
    make = lambda target: _make_schedule(  # noqa: E731
        tfmot, target, schedule, begin_step, end_step, frequency, m_by_n
    )
    default_schedule = make(targets if isinstance(targets, float) else max(targets.values()))
    work = bridge.to_tf_keras(source) if flavor == _keras.KERAS3 else _keras.clone_model(source)

    chosen, skipped = _select_layers(work, include, exclude, m_by_n, targets if isinstance(targets, dict) else None)
    if not chosen:
        raise InvalidArgumentError(
            f"No layer of {model.name!r} can be pruned with these options; skipped: "
            + "; ".join(f"{s.name}: {s.reason}" for s in skipped)
            + ". Pass include= to choose layers, or check that the model has Conv/Dense layers."
        )

    by_target: dict = {}

    def wrap(layer):
        if layer.name not in chosen:
            return layer
        if isinstance(targets, dict):
            target = targets[layer.name]
            layer_schedule = by_target.setdefault(target, make(target))
        else:
            layer_schedule = default_schedule
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer, pruning_schedule=layer_schedule, sparsity_m_by_n=tuple(m_by_n) if m_by_n else None
        )

    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    pruned = tf_keras.models.clone_model(work, clone_function=wrap)
    for wrapper in _wrappers(pruned):
        # tfmot starts at -1 and relies on UpdatePruningStep to set 0; the wrapper
        # then counts its own steps. Starting at 0 makes the callback unnecessary.
        wrapper.pruning_step.assign(0)
    # `strip` rebuilds a Keras 3 model from the (traced) original's architecture, so Keras 3 ops and
    # custom layers come back as themselves.
    _PLANS[pruned] = {"flavor": flavor, "skipped": skipped, "template": source if flavor == _keras.KERAS3 else None}
    return pruned


def strip(model: Any, *, flavor: str | None = None, batchnorm_data: Any = None):
    """Removes the pruning wrappers: a plain Keras model with the zeros in place.

    The masks are applied to the kernels explicitly, so the zeros are there even
    if the last optimizer step moved masked weights. The returned model is not
    compiled (the optimizer state belonged to the wrapped model): compile it
    again before further training, and note that training it without masks
    lets the zeros grow back. Warns when a layer has not finished its schedule.

    Pass `batchnorm_data` (a few thousand training inputs) to recompute the
    BatchNorm moving statistics for the pruned kernels: with BatchNorm's
    default momentum (0.99) a short fine-tune leaves them describing the dense
    model, which costs accuracy at evaluation (measured in docs/pruning.md).

    Args:
        model: a model returned by `prune` (or loaded with `load_pruned`). Not modified.
        flavor: `"keras3"` or `"tf_keras"`. Defaults to `None`: the flavour of the
            model given to `prune` (tf_keras when unknown, e.g. after loading).
        batchnorm_data: inputs (array, list of arrays, or a batched `tf.data.Dataset`)
            to re-estimate BatchNorm statistics from (see
            `tfopt.compress.batchnorm.reestimate_batchnorm`). Defaults to `None` (kept as trained).

    Returns:
        A new model without wrappers.

    Raises:
        ValueError: if the model has no pruning wrappers.

    Example:

    >>> import keras
    >>> from tfopt.compress.prune import prune, strip
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    >>> import warnings; warnings.simplefilter("ignore")
    >>> type(strip(prune(m, include="re:dense.*"))).__module__.split(".")[0]
    'keras'
    """
    wrappers = _wrappers(model)
    if not wrappers:
        raise InvalidArgumentError(
            f"Model {model.name!r} has no pruning wrappers. Pass the model returned by tfopt.prune "
            "(or one loaded with load_pruned)."
        )
    target = flavor or _PLANS.get(model, {}).get("flavor", _keras.TF_KERAS)
    if target not in (_keras.KERAS3, _keras.TF_KERAS):
        raise InvalidArgumentError(f"flavor must be 'keras3' or 'tf_keras'. Received: flavor={flavor!r}.")
    summary = pruning_summary(model)
    late = [l for l in summary.layers if l.step < l.end_step]
    if late:
        warnings.warn(
            f"{len(late)} pruned layer(s) have not finished their schedule (e.g. {late[0].name!r} at step "
            f"{late[0].step} of {late[0].end_step}, sparsity {late[0].sparsity:.3f} instead of "
            f"{late[0].target_sparsity:.3f}). Train longer or pass a smaller end_step to prune().",
            stacklevel=2,
        )
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    by_name = {(l.layer.name if _is_wrapper(l) else l.name): l for l in model.layers}

    def unwrap(layer):
        inner = layer.layer if _is_wrapper(layer) else layer
        return inner.__class__.from_config(inner.get_config())

    bridge.register_wrapper()
    plain = tf_keras.models.clone_model(model, clone_function=unwrap)
    for layer in plain.layers:
        source = by_name.get(layer.name)
        if source is None or not layer.weights:
            continue
        values = source.get_weights()
        if _is_wrapper(source):
            inner_weights = source.layer.weights
            for weight, mask, _ in source.pruning_vars:
                index = next(i for i, w in enumerate(inner_weights) if w is weight)
                values[index] = values[index] * mask.numpy()
        layer.set_weights(values)
    if target == _keras.KERAS3:
        template = _PLANS.get(model, {}).get("template")
        if template is None:
            plain = bridge.to_keras3(plain)
        else:
            rebuilt = _keras.keras_module(_keras.KERAS3).models.clone_model(template)
            bridge.copy_weights(plain, rebuilt)
            plain = rebuilt
    if batchnorm_data is not None:
        from tfopt.compress.batchnorm import reestimate_inplace

        reestimate_inplace(plain, batchnorm_data)
    return plain


def pruning_summary(model: Any) -> PruningSummary:
    """Per-layer measured sparsity, target and step of a pruned model, and the skipped layers.

    Example:

    >>> import keras
    >>> from tfopt.compress.prune import prune, pruning_summary
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    >>> pruning_summary(prune(m, include="re:dense.*")).layers[0].step
    0
    """
    layers = []
    for wrapper in _wrappers(model):
        config = wrapper.pruning_schedule.get_config()["config"]
        target = config.get("final_sparsity", config.get("target_sparsity", 0.0))
        end = config["end_step"] if config["end_step"] >= 0 else config["begin_step"]
        masks = [mask.numpy() for _, mask, _ in wrapper.pruning_vars]
        size = int(sum(m.size for m in masks))
        zeros = float(sum(np.sum(m == 0) for m in masks))
        layers.append(
            LayerSparsity(
                name=wrapper.layer.name,
                class_name=type(wrapper.layer).__name__,
                num_weights=size,
                target_sparsity=float(target),
                sparsity=zeros / size if size else 0.0,
                step=int(wrapper.pruning_step.numpy()),
                end_step=int(end),
            )
        )
    skipped = _PLANS.get(model, {}).get("skipped")
    if skipped is None:
        skipped = [
            SkippedLayer(l.name, type(l).__name__, "not wrapped for pruning")
            for l in model.layers
            if l.weights and not _is_wrapper(l)
        ]
    return PruningSummary(layers=layers, skipped=list(skipped))


def load_pruned(path: str):
    """Loads a pruned tf_keras model saved with `model.save(path)` (`.keras` or `.h5`).

    Training can continue with a plain `fit`: the step count is saved with the
    model. (tfmot does not save the `m_by_n` option: save 2:4 models after
    fine-tuning, or strip them first.)

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> layers = [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.keras")
    >>> tfopt.prune(keras.Sequential(layers), target_sparsity=0.5, include=["hidden"]).save(path)
    >>> len(tfopt.pruning_summary(tfopt.load_pruned(path)).layers)
    1
    """
    tfmot = _keras.import_tfmot()
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    bridge.register_wrapper()
    with tfmot.sparsity.keras.prune_scope():
        return tf_keras.models.load_model(path)


def sparsity_logger(log_dir: str | None = None):
    """An optional tf_keras callback logging each pruned layer's sparsity at each epoch end.

    Adds `sparsity/<layer>` entries to the epoch logs (printed by `fit`, kept in
    `History`) and, with `log_dir`, writes them as TensorBoard scalars. It is
    never needed for correctness.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> layers = [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    >>> pruned = tfopt.prune(keras.Sequential(layers), target_sparsity=0.5, end_step=4, include=["hidden"])
    >>> pruned.compile("adam", "mse")
    >>> history = pruned.fit(np.ones((32, 8)), np.ones((32, 4)), epochs=1, batch_size=8,
    ...                      callbacks=[tfopt.sparsity_logger()], verbose=0)
    >>> "sparsity/hidden" in history.history
    True
    """
    import tensorflow as tf

    tf_keras = _keras.keras_module(_keras.TF_KERAS)

    class SparsityLogger(tf_keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None

        def on_epoch_end(self, epoch, logs=None):
            summary = pruning_summary(self.model)
            for layer in summary.layers:
                if logs is not None:
                    logs[f"sparsity/{layer.name}"] = layer.sparsity
                if self._writer is not None:
                    with self._writer.as_default():
                        tf.summary.scalar(f"sparsity/{layer.name}", layer.sparsity, step=epoch)

    return SparsityLogger()


def _make_schedule(tfmot, target, schedule, begin_step, end_step, frequency, m_by_n):
    for name, value in (("begin_step", begin_step), ("end_step", end_step), ("frequency", frequency)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
            raise InvalidArgumentError(f"{name} must be a non-negative integer or None. Received: {name}={value!r}.")
    sparsity = tfmot.sparsity.keras
    begin = max(int(begin_step), 1)  # tfmot's first training step is 1
    if m_by_n is not None:
        # tfmot sets m:n masks once, at step 1. This schedule only matters after a reload
        # (tfmot does not save m_by_n): it never fires again, so the pattern survives.
        return sparsity.ConstantSparsity(m_by_n[0] / m_by_n[1], begin_step=1, end_step=1, frequency=1)
    if schedule == "constant":
        end = -1 if end_step is None else max(int(end_step), begin)
        return sparsity.ConstantSparsity(float(target), begin_step=begin, end_step=end, frequency=frequency or 100)
    end = begin + schedules.DEFAULT_RAMP_STEPS if end_step is None else int(end_step)
    if end < begin:
        raise InvalidArgumentError(f"end_step must be >= begin_step. Received: begin_step={begin_step}, end_step={end_step}.")
    span = end - begin
    if span == 0:  # a one-step ramp; tfmot's PolynomialDecay would divide by zero
        return sparsity.ConstantSparsity(float(target), begin_step=begin, end_step=end, frequency=1)
    if frequency is None:
        frequency = schedules.choose_frequency(begin, end)
    elif frequency > span:
        raise InvalidArgumentError(
            f"frequency={frequency} is longer than the pruning ramp ({begin}..{end}): the target sparsity would "
            f"never be reached. Use frequency <= {span}, or leave frequency=None to choose one."
        )
    elif span % frequency:
        new_end = begin + -(-span // frequency) * frequency
        warnings.warn(
            f"end_step={end} is not begin_step + a multiple of frequency={frequency}; the last mask update "
            f"would miss the target. Using end_step={new_end}.",
            stacklevel=3,
        )
        end = new_end
    return sparsity.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(target), begin_step=begin, end_step=end, frequency=int(frequency)
    )


def _check_targets(target_sparsity: Any) -> float | dict:
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


def _select_layers(model, include: LayerRule, exclude: LayerRule, m_by_n, targets: dict | None = None) -> tuple[set, list]:
    layers = [layer for layer in model.layers if layer.weights]
    include_rule = layer_predicate(include, model.layers, "include")
    exclude_rule = layer_predicate(exclude, model.layers, "exclude")
    if targets is not None:
        unknown = sorted(set(targets) - {layer.name for layer in model.layers})
        if unknown:
            raise InvalidArgumentError(f"target_sparsity names unknown layers {unknown}. Layers: {_names(model)}.")
    supported = [layer for layer in layers if _unsupported_reason(layer) is None]
    protected = (
        {supported[0].name, supported[-1].name} if include is None and targets is None and len(supported) >= 3 else set()
    )
    chosen, skipped = set(), []
    for layer in layers:
        reason = _unsupported_reason(layer)
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


def _unsupported_reason(layer) -> str | None:
    name = type(layer).__name__
    if hasattr(layer, "get_prunable_weights"):
        return None
    if name in _PRUNABLE and type(layer).__module__.startswith(("tf_keras.", "keras.")):
        return None
    if hasattr(layer, "layers"):
        return "nested model: prune it separately"
    return _REASONS.get(name, "layer type not supported by tfmot pruning (custom layers can define get_prunable_weights)")




def _names(model) -> str:
    names = [layer.name for layer in model.layers]
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def _is_wrapper(layer) -> bool:
    return hasattr(layer, "pruning_vars") and hasattr(layer, "pruning_step") and hasattr(layer, "layer")


def _wrappers(model) -> list:
    return [layer for layer in model.layers if _is_wrapper(layer)]
