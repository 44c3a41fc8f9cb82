"""The Keras 3 side of `tfopt.qat`: wrap, copy weights, strip, summarize."""

from __future__ import annotations

import warnings

import keras

from tfopt import _keras
from tfopt.compress import qat_graph, qat_layers, qat_prepare
from tfopt.compress.qat_report import FloatLayer, QATSummary
from tfopt.compress.select import layer_predicate
from tfopt.errors import InvalidArgumentError

_QAT_TYPES = qat_layers.QAT_LAYERS


def _all_layers(model) -> list:
    """The model's layers with nested models' layers, depth first."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def has_qat_layers(model) -> bool:
    """True when a Keras 3 model holds tfopt QAT layers."""
    return any(isinstance(layer, _QAT_TYPES) for layer in _all_layers(model))


def _functional(model, input_shape):
    """(a functional model that reads the source layers, rewrites). Never touches the caller's layers' graph."""
    kind = type(model).__name__
    if kind == "Functional":
        return model, []
    if kind == "Sequential":
        if not model.inputs:
            raise InvalidArgumentError(
                f"Sequential model {model.name!r} has no input shape; build it with keras.Input first."
            )
        clone = _keras.clone_model(model)
        return qat_graph.to_functional(clone), ["Sequential model rebuilt as a functional model"]
    traced = qat_prepare.trace_subclassed(model, input_shape=input_shape)
    return traced, [f"subclassed model {model.name!r} traced into a functional graph"]


def qat_keras3(model, *, exclude, preserve, input_shape, ema_decay):
    """Returns (QAT Keras 3 model, QATSummary-ready plan dict)."""
    wrapped = [layer.name for layer in _all_layers(model) if isinstance(layer, keras.layers.Wrapper)]
    if any(isinstance(layer, _QAT_TYPES) for layer in _all_layers(model)):
        raise InvalidArgumentError(f"Model {model.name!r} is already prepared for QAT; train it as it is.")
    if wrapped:
        raise InvalidArgumentError(
            f"qat() received a model with training wrappers ({', '.join(wrapped[:5])}); strip them first with "
            "tfopt.strip(model), then pass preserve='sparsity' / 'clusters' to keep what they did."
        )
    work, rewrites = _functional(model, input_shape)
    skip = layer_predicate(exclude, _all_layers(work), "exclude") or (lambda layer: False)
    new, plan = qat_graph.build(work, skip=skip, preserve=preserve, ema_decay=ema_decay)
    for source, target in plan.pairs:
        if source is None or not source.weights:
            continue
        inner = target.layer if isinstance(target, keras.layers.Wrapper) else target
        weight_map = plan.weight_maps.get(id(target), lambda values: values)
        inner.set_weights(weight_map(source.get_weights()))
    for layer in new.layers:
        if isinstance(layer, qat_layers.QuantizeWrapper):
            layer.initialize_preserved()
    if not plan.quantized:
        raise InvalidArgumentError(
            f"No layer of {model.name!r} can be quantized; kept float: {[name for name, _, _ in plan.kept_float]}."
        )
    rewrites += [f"{fold} (BatchNormalization folded)" for fold in plan.folded]
    rewrites += plan.replaced
    if plan.float32_from:
        policies = ", ".join(sorted(plan.float32_from))
        rewrites.append(f"layers under {policies} compute in float32 (fake quantization needs float32)")
        warnings.warn(f"tfopt.qat: the QAT model computes in float32; its source layers used {policies}. "
                      "int8 steps cannot be simulated in float16 / bfloat16, and the int8 converter needs float32.",
                      stacklevel=3)
    rewrites += [f"nested model {name!r} inlined" for name in plan.inlined]
    summary = QATSummary(
        flavor=_keras.KERAS3, quantized=tuple(plan.quantized),
        kept_float=tuple(FloatLayer(*item) for item in plan.kept_float), rewrites=tuple(rewrites), preserve=preserve,
    )
    return new, summary


def _uninitialized(model) -> int:
    count = 0
    for layer in model.layers:
        quantizers = [layer] if isinstance(layer, qat_layers.ActivationQuantizer) else [
            q for q in (getattr(layer, "output_quantizer", None), getattr(layer, "mid_quantizer", None),
                        getattr(layer, "pre_activation_quantizer", None)) if q is not None]
        count += sum(1 for q in quantizers if q.built and q.fixed_range is None
                     and float(keras.ops.convert_to_numpy(q.initialized)) == 0.0)
    return count


def summary_of(model, plan, summary_class, float_class):
    """The session's summary (ranges refreshed), or one rebuilt from the layers of a loaded model."""
    import dataclasses

    if plan is not None:
        return dataclasses.replace(plan, uninitialized_ranges=_uninitialized(model))
    quantized, kept = [], []
    targets = {layer.name[: -len("_quant")] for layer in model.layers if isinstance(layer, qat_layers.ActivationQuantizer)}
    for layer in model.layers:
        kind = type(layer).__name__
        computes = isinstance(layer, _QAT_TYPES) and not isinstance(layer, qat_layers.ActivationQuantizer)
        if computes or layer.name in targets:
            quantized.append(layer.name)
        elif not isinstance(layer, qat_layers.ActivationQuantizer) and kind not in qat_graph._PASS and kind != "InputLayer":
            kept.append(float_class(layer.name, kind, "kept float (summary rebuilt from a loaded model)"))
    preserve = None
    wrappers = [layer for layer in model.layers if isinstance(layer, qat_layers.QuantizeWrapper)]
    sparsity = any(w.preserve_sparsity for w in wrappers)
    clusters = any(w.cluster_counts for w in wrappers)
    if sparsity or clusters:
        preserve = "sparsity_clusters" if sparsity and clusters else ("sparsity" if sparsity else "clusters")
    return summary_class(_keras.KERAS3, tuple(quantized), tuple(kept), (), preserve, _uninitialized(model))


# --- strip ------------------------------------------------------------------------------------------


def strip_keras3(model):
    """A plain float Keras 3 model: wrappers replaced by their layers (BatchNorm unfolded), quantizers removed."""
    pairs = []

    def clone(op):
        if not isinstance(op, keras.layers.Layer):
            return op
        if isinstance(op, qat_layers.ActivationQuantizer):
            return op
        if isinstance(op, qat_layers.QuantizedActivation):
            return keras.layers.Activation(op.activation, name=op.name)
        if isinstance(op, qat_layers.AffineQuantizeWrapper):
            new = type(op.layer).from_config(op.layer.get_config())
            pairs.append((op.layer, new, None))
            return new
        if isinstance(op, qat_layers.QuantizeWrapper):
            inner = type(op.layer).from_config(op.layer.get_config())
            bn = type(op.batchnorm).from_config(op.batchnorm.get_config()) if op.batchnorm is not None else None
            pairs.append((op, inner, bn))
            return (inner, bn)
        new = type(op).from_config(op.get_config())
        pairs.append((op, new, None))
        return new

    def call(op, *args, **kwargs):
        if isinstance(op, qat_layers.ActivationQuantizer):
            return args[0]
        if isinstance(op, tuple):
            inner, bn = op
            out = inner(*args, **kwargs)
            return bn(out) if bn is not None else out
        return op(*args, **kwargs)

    plain = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for source, new, bn in pairs:
        if isinstance(source, qat_layers.QuantizeWrapper):
            weights = []
            for variable in source.layer.weights:
                name = variable.path.split("/")[-1]
                if name in qat_layers.KERNELS[source.kind]:
                    weights.append(keras.ops.convert_to_numpy(source.effective_kernel(name)))
                else:
                    weights.append(keras.ops.convert_to_numpy(variable))
            new.set_weights(weights)
            if bn is not None:
                bn.set_weights(source.batchnorm.get_weights())
        elif source.weights:
            new.set_weights(source.get_weights())
    return plain
