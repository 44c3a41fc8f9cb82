"""Quantization-aware training (QAT) on tfmot, for the models people actually have.

`quantize(model)` returns a tf_keras model with tfmot's 8-bit fake-quantization
wrappers that trains with a plain `model.compile(...)` / `model.fit(...)`; then
`tfopt.convert(qat_model, mode="int8", calibration=...)` gives a full-int8
.tflite. Keras 3 models are rebuilt as tf_keras first (`bridge.to_tf_keras`),
subclassed models are traced into a functional graph, and the preparer
(`qat_prepare`) rewrites what tfmot refuses. Layers tfmot still cannot quantize
are left without fake-quant during training (never failing the whole model) and
listed by `qat_summary`: the converter quantizes them post-training from the
calibration data, so the .tflite stays full int8.

`preserve="sparsity"` / `"clusters"` uses tfmot's collaborative schemes so the
zeros of a pruned model or the centroids of a clustered one survive QAT.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from typing import Any

from tfopt import _keras
from tfopt._legacy import bridge
from tfopt.compress import qat_prepare
from tfopt.compress.select import LayerRule, layer_predicate
from tfopt.errors import InvalidArgumentError

PRESERVE = (None, "sparsity", "clusters")
_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")
_REASONS = {
    "InputLayer": None,
    "Rescaling": "tfmot has no quantizer for Rescaling (preprocessing, or a rewritten x*a+b op); quantized post-training at conversion",
    "Normalization": "preprocessing (Normalization) kept float in training; quantized post-training at conversion",
    "Conv1D": "tfmot has no Conv1D quantizer; quantized post-training at conversion",
    "TFOpLambda": "TF op tfmot cannot wrap; quantized post-training at conversion",
    "BatchNormalization": "BatchNormalization not directly after a Conv2D/DepthwiseConv2D/Dense",
}
_PLANS: "weakref.WeakKeyDictionary[Any, QATSummary]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class FloatLayer:
    """A layer trained without fake-quantization, and why."""

    name: str
    class_name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class QATSummary:
    """What `quantize` did: the layers with fake-quant, those left float (with reasons), the rewrites."""

    flavor: str
    quantized: tuple[str, ...]
    kept_float: tuple[FloatLayer, ...]
    rewrites: tuple[str, ...]
    preserve: str | None = None

    def summary(self) -> str:
        """A readable report."""
        lines = [f"QAT: {len(self.quantized)} layers fake-quantized, {len(self.kept_float)} kept float in training"
                 + (f", preserving {self.preserve}" if self.preserve else "")]
        lines.extend(f"  rewrite: {r}" for r in self.rewrites)
        lines.extend(f"  float: {f.name} ({f.class_name}): {f.reason}" for f in self.kept_float)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def quantize(
    model: Any,
    *,
    exclude: LayerRule = None,
    preserve: str | None = None,
    input_shape: tuple[int, ...] | None = None,
):
    """Prepares a model for quantization-aware training with a plain `model.fit`.

    Use it when post-training int8 loses too much accuracy: fine-tune the
    returned model for an epoch or two at a low learning rate, then convert it
    with `tfopt.convert(qat_model, mode="int8", calibration=...)`.

    What comes back is always a **tf_keras** model (tfmot only speaks tf_keras),
    also for a Keras 3 input: compile it with `tf_keras` optimizers and losses
    (`tf_keras.optimizers.Adam(1e-4)`, `tf_keras.losses.SparseCategoricalCrossentropy(...)`)
    or with string names (`"adam"`), and train it with your own `fit`; no callback
    is needed. Save it with `model.save("m.h5")` and reload with `load_qat` (the `.keras` format
    fails to reload tfmot wrappers).

    Args:
        model: a Keras 3 or tf_keras model: functional, Sequential, or
            subclassed (traced into a functional graph when its `call` only
            calls layers). Not modified.
        exclude: layers to train without fake-quant: names, `"re:<regex>"`, or a
            callable on the layer. Each rule must match a layer. Defaults to `None`.
        preserve: `"sparsity"` to keep the zeros of a pruned (and stripped) model,
            `"clusters"` to keep the shared values of a clustered model.
            Defaults to `None`.
        input_shape: input shape (without batch) of a subclassed model that was
            never called. Defaults to `None`.

    Returns:
        A new, uncompiled tf_keras model; `qat_summary(model)` lists what was
        quantized and what was kept float, with reasons.

    Raises:
        ValueError: a rule matching no layer, an unknown `preserve`, or no layer
            that can be quantized.
        NotImplementedError: a subclassed model that cannot be traced.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.qat import quantize, qat_summary
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Rescaling(0.5), keras.layers.Dense(4)])
    >>> q = quantize(m)
    >>> q.compile("adam", "mse"); _ = q.fit(np.ones((8, 8)), np.ones((8, 4)), verbose=0)
    >>> [f.class_name for f in qat_summary(q).kept_float]
    ['Rescaling']
    """
    if preserve not in PRESERVE:
        raise InvalidArgumentError(f"preserve must be one of {PRESERVE}. Received: preserve={preserve!r}.")
    flavor = _keras.keras_flavor(model)
    tfmot = _keras.import_tfmot()
    rewrites: list[str] = []
    work = model
    if type(model).__name__ not in qat_prepare._MODEL_CLASSES:
        work = qat_prepare.trace_subclassed(model, input_shape=input_shape)
        rewrites.append(f"subclassed model {model.name!r} traced into a functional graph")
    if _keras.keras_flavor(work) == _keras.KERAS3:
        work, op_rewrites = qat_prepare.rewrite_keras3_ops(work)
        rewrites.extend(op_rewrites)
        work = bridge.to_tf_keras(work)
    if any(hasattr(layer, "pruning_vars") for layer in work.layers):
        raise InvalidArgumentError("quantize() received a model with pruning wrappers; strip it first with tfopt.strip(pruned).")
    prepared = qat_prepare.prepare(work)  # always a new model: the caller's is never touched
    rewrites.extend(prepared.rewrites)
    work = prepared.model
    chosen, kept = _select(work, exclude)
    scheme = _scheme(tfmot, preserve)
    qat = None
    for _ in range(len(chosen) + 1):
        try:
            qat = _apply(tfmot, work, chosen, scheme)
            break
        except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as err:
            culprit = _culprit(err, chosen)
            if culprit is None:
                raise InvalidArgumentError(
                    f"tfmot could not quantize model {model.name!r}: {err}. Keep layers float with exclude=[...]."
                ) from err
            chosen.discard(culprit)
            layer = work.get_layer(culprit)
            kept.append(FloatLayer(culprit, type(layer).__name__, f"tfmot refused it ({str(err).splitlines()[0][:120]})"))
    if qat is None or not chosen:
        raise InvalidArgumentError(f"No layer of {model.name!r} can be quantized; kept float: {[f.name for f in kept]}.")
    order = {layer.name: i for i, layer in enumerate(work.layers)}
    _PLANS[qat] = QATSummary(
        flavor=flavor,
        quantized=tuple(sorted(chosen, key=order.get)),
        kept_float=tuple(sorted(kept, key=lambda f: order.get(f.name, 0))),
        rewrites=tuple(rewrites) + tuple(f"left as is: {op}" for op in prepared.untouched_ops),
        preserve=preserve,
    )
    return qat


def qat_summary(model: Any) -> QATSummary:
    """What `quantize` fake-quantized, kept float (with reasons) and rewrote, for a model it returned.

    Raises:
        ValueError: the model did not come from `quantize` in this session.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> summary = tfopt.qat_summary(tfopt.quantize(model))
    >>> isinstance(summary.summary(), str)
    True
    """
    plan = _PLANS.get(model)
    if plan is None:
        raise InvalidArgumentError(f"Model {model.name!r} was not returned by tfopt.quantize in this session; no summary is recorded.")
    return plan


def load_qat(path: str):
    """Loads a QAT model saved with `model.save(path)` as `.h5` (tfmot wrappers do not reload from `.keras`).

    Training can continue with a plain `fit`.

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> path = os.path.join(tempfile.mkdtemp(), "qat.h5")
    >>> tfopt.quantize(model).save(path)
    >>> tfopt.load_qat(path).output_shape
    (None, 4)
    """
    tfmot = _keras.import_tfmot()
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    with tfmot.quantization.keras.quantize_scope():
        return tf_keras.models.load_model(path)


# --- helpers ------------------------------------------------------------------------------------


def _scheme(tfmot, preserve: str | None):
    if preserve == "sparsity":
        return tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    if preserve == "clusters":
        return tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme()
    return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()


def _apply(tfmot, model, chosen: set, scheme):
    tf_keras = _keras.keras_module(_keras.TF_KERAS)
    api = tfmot.quantization.keras

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        return api.quantize_annotate_layer(clone) if layer.name in chosen else clone

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with api.quantize_scope():
        return api.quantize_apply(annotated, scheme)


def _culprit(err: Exception, chosen: set) -> str | None:
    text = str(err)
    hits = [name for name in chosen if re.search(rf"(^|[^\w]){re.escape(name)}([^\w]|$)", text)]
    return max(hits, key=len) if hits else None


def _supported(layer, registry) -> bool:
    try:
        return bool(registry.supports(layer))
    except (ValueError, TypeError, AttributeError):
        return False


def _registry(tfmot):
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # tfmot has no public path
        default_8bit_quantize_registry,
    )

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def _inbound_names(model) -> dict[str, list[str]]:
    config = model.get_config()
    result = {}
    for layer in config["layers"]:
        names = []
        for node in layer.get("inbound_nodes") or []:
            for entry in qat_prepare._node_entries(node):
                names.append(entry[0])
        result[layer["name"]] = names
    return result


def _select(model, exclude: LayerRule) -> tuple[set, list]:
    tfmot = _keras.import_tfmot()
    registry = _registry(tfmot)
    rule = layer_predicate(exclude, model.layers, "exclude")
    inbound = _inbound_names(model)
    consumers: dict[str, int] = {}
    for names in inbound.values():
        for name in names:
            consumers[name] = consumers.get(name, 0) + 1
    chosen, kept = set(), []
    for layer in model.layers:
        class_name = type(layer).__name__
        if class_name == "InputLayer":
            continue
        reason = None
        if rule is not None and rule(layer):
            reason = "matched by exclude"
        elif class_name == "BatchNormalization":
            parents = inbound.get(layer.name, [])
            ok = len(parents) == 1 and type(model.get_layer(parents[0])).__name__ in _FOLDABLE and consumers.get(parents[0]) == 1
            reason = None if ok else _REASONS["BatchNormalization"] + "; it is folded into a multiply-add at conversion"
        elif not _supported(layer, registry):
            if not layer.weights and class_name in ("Reshape", "Flatten", "Dropout", "ZeroPadding2D", "Cropping2D"):
                continue  # shape-only layers need no quantizer
            reason = _REASONS.get(class_name) or f"tfmot's 8-bit scheme does not support {class_name}; quantized post-training at conversion"
        if reason is None:
            chosen.add(layer.name)
        else:
            kept.append(FloatLayer(layer.name, class_name, reason))
    return chosen, kept

