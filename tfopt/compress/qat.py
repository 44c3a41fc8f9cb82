"""Quantization-aware training (QAT): Keras 3 in, Keras 3 out, then a full-int8 .tflite.

`qat(model)` returns a new Keras 3 model that trains with fake-quantized weights
and activations in LiteRT's int8 scheme (per-channel symmetric weights,
per-tensor asymmetric activations with a moving min/max, Conv+BatchNorm folded).
It is a plain `keras.Model`: compile it with `keras.optimizers` objects, train it
with `fit` (any Keras 3 callbacks), a `tf.GradientTape` loop or under a
`tf.distribute` strategy, save it as `.keras` and load it with
`keras.models.load_model` after `import tfopt`. Then
`tfopt.convert(qat_model, mode="int8", calibration=...)` gives a full-int8
.tflite that follows the trained ranges.

tf_keras (Keras 2) models keep going through tfmot (`tfopt._legacy.qat`) and
come back as tf_keras. The graph rules live in `qat_graph`, the layers in
`qat_layers`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from tfopt import _keras
from tfopt.compress import records
from tfopt.compress.qat_report import FloatLayer, QATSummary
from tfopt.compress.select import LayerRule, layer_predicate
from tfopt.errors import InvalidArgumentError, InvalidTypeError

PRESERVE = (None, "sparsity", "clusters", "sparsity_clusters")


def _normalize_preserve(preserve: Any) -> str | None:
    if isinstance(preserve, (list, tuple, set, frozenset)):
        items = set(preserve)
        if items == {"sparsity", "clusters"}:
            return "sparsity_clusters"
        if len(items) == 1:
            preserve = items.pop()
    if preserve not in PRESERVE:
        raise InvalidArgumentError(
            f"preserve must be one of {PRESERVE} (or ('sparsity', 'clusters')). Received: preserve={preserve!r}."
        )
    return preserve


def qat(
    model: Any,
    *,
    exclude: LayerRule = None,
    preserve: Any = None,
    input_shape: tuple[int, ...] | None = None,
    ema_decay: float = 0.99,
):
    """Prepares a model for quantization-aware training (int8) that trains with your own Keras code.

    Use it when post-training int8 loses too much accuracy: fine-tune the
    returned model for an epoch or two at a low learning rate, then convert it
    with `tfopt.convert(qat_model, mode="int8", calibration=...)`. The first
    training batch sets each activation range; later batches move it by a
    moving average, and inference uses it frozen. BatchNormalization layers
    that directly follow a Conv/Dense are folded into it with their moving
    statistics, which stay frozen during QAT (fine-tuning practice; the
    layer's gamma and beta still train).

    A Keras 3 model gives a Keras 3 model: compile it with
    `keras.optimizers.Adam(1e-4)`, train it with `fit` and Keras callbacks, a
    `tf.GradientTape` loop or under `tf.distribute.MirroredStrategy`, save it
    as `.keras` and load it with `keras.models.load_model` after `import tfopt`.
    A tf_keras model goes through tfmot and comes back as tf_keras.

    Args:
        model: a Keras 3 or tf_keras model: functional, Sequential, or
            subclassed (traced into a functional graph when its `call` only
            calls layers). Nested models are inlined. Not modified.
        exclude: layers to keep float: names, `"re:<regex>"`, or a callable on
            the layer. Each rule must match a layer. Defaults to `None`.
        preserve: `"sparsity"` keeps the zeros of a pruned (stripped) model
            (PQAT), `"clusters"` keeps the shared values of a clustered one:
            only the values train, the assignments stay (CQAT), and
            `"sparsity_clusters"` (or `("sparsity", "clusters")`) keeps both
            (PCQAT). Defaults to `None`.
        input_shape: input shape (without batch) of a subclassed model that was
            never called. Defaults to `None`.
        ema_decay: weight of the old activation range in its moving average
            (Keras 3 path). Defaults to `0.99`.

    Returns:
        A new, uncompiled model of the same Keras flavour; `qat_summary(model)`
        lists what was quantized and what was kept float, with reasons.

    Raises:
        ValueError: a rule matching no layer, an unknown `preserve`, a model
            that still carries pruning / clustering wrappers, or no layer that
            can be quantized.
        TypeError: `model` is not a Keras model.
        NotImplementedError: a subclassed model that cannot be traced.

    Example:

    >>> import keras, numpy as np
    >>> from tfopt.compress.qat import qat, qat_summary
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Rescaling(0.5, name="scale"), keras.layers.Dense(4, name="fc")])
    >>> q = qat(m)
    >>> q.compile(keras.optimizers.Adam(1e-3), "mse"); _ = q.fit(np.ones((8, 8)), np.ones((8, 4)), verbose=0)
    >>> sorted(qat_summary(q).quantized)
    ['fc', 'scale']
    """
    preserve = _normalize_preserve(preserve)
    if not 0.0 <= float(ema_decay) < 1.0:
        raise InvalidArgumentError(f"ema_decay must be in [0, 1). Received: ema_decay={ema_decay!r}.")
    flavor = _keras.keras_flavor(model)
    if flavor == _keras.TF_KERAS:
        return _qat_tf_keras(model, exclude=exclude, preserve=preserve, input_shape=input_shape)
    from tfopt.compress import qat_native

    result, plan = qat_native.qat_keras3(model, exclude=exclude, preserve=preserve, input_shape=input_shape,
                                         ema_decay=float(ema_decay))
    _record(result, plan)
    return result


def quantize(model: Any, **kwargs: Any):
    """Deprecated alias of `qat` (the old name); use `tfopt.qat`."""
    warnings.warn("tfopt.quantize is deprecated; use tfopt.qat (same arguments).", DeprecationWarning, stacklevel=2)
    return qat(model, **kwargs)


def _qat_tf_keras(model: Any, *, exclude: LayerRule, preserve: str | None, input_shape):
    from tfopt._legacy import qat as legacy
    from tfopt.compress import qat_prepare

    rewrites = []
    work = model
    if type(model).__name__ not in ("Functional", "Model", "Sequential"):
        work = qat_prepare.trace_subclassed(model, input_shape=input_shape)
        rewrites.append(f"subclassed model {model.name!r} traced into a functional graph")
    if preserve == "sparsity_clusters":
        raise InvalidArgumentError(
            "preserve='sparsity_clusters' (PCQAT) is available for Keras 3 models only; tfmot offers "
            "preserve='sparsity' or 'clusters' for tf_keras models."
        )
    prepared = legacy.prepare(work)
    rewrites.extend(prepared.rewrites)
    skip = layer_predicate(exclude, prepared.model.layers, "exclude")
    result, plan = legacy.quantize_tf_keras(prepared.model, skip=skip, preserve=preserve)
    _record(result, QATSummary(
        flavor=_keras.TF_KERAS,
        quantized=tuple(plan["quantized"]),
        kept_float=tuple(FloatLayer(*item) for item in plan["kept_float"]),
        rewrites=tuple(rewrites) + tuple(f"left as is: {op}" for op in prepared.untouched_ops),
        preserve=preserve,
    ))
    return result


_QAT_CLASS_NAMES = ("QuantizeWrapperV2", "QuantizeWrapper", "QuantizeLayer", "ActivationQuantizer",
                    "QuantizedActivation", "AffineQuantizeWrapper")


def _record(model: Any, summary: QATSummary) -> None:
    """Keeps what `qat` did on the model (and in its saved file): see `tfopt.compress.records`."""
    layers = [layer for layer in model.layers if type(layer).__name__ in _QAT_CLASS_NAMES]
    records.attach(layers, "qat", dataclasses.asdict(summary))


def _recorded(model: Any) -> QATSummary | None:
    record = records.read(model, "qat")
    if record is None:
        return None
    record = dict(record, kept_float=tuple(FloatLayer(**row) for row in record["kept_float"]))
    return QATSummary(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def has_wrappers(model: Any) -> bool:
    """True when `model` carries tfopt QAT layers (Keras 3) or tfmot quantize wrappers (tf_keras).

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> has_wrappers(model), has_wrappers(tfopt.compress.qat.qat(model))
    (False, True)
    """
    if not _keras.is_keras_model(model):
        return False
    if _keras.keras_flavor(model) == _keras.TF_KERAS:
        return any(type(layer).__name__ in ("QuantizeWrapperV2", "QuantizeWrapper", "QuantizeLayer") for layer in model.layers)
    from tfopt.compress import qat_native

    return qat_native.has_qat_layers(model)


def strip_qat(model: Any, *, batchnorm_data: Any = None):
    """A plain float Keras 3 model from a QAT model: wrappers and fake-quant removed.

    The result has the source model's layers (nested models stay inlined), each
    BatchNormalization back as its own layer after its Conv/Dense (not folded),
    and the float weights the QAT model trained: kept zeros and shared values
    included, not rounded to int8. Use it to keep training in float or to
    export elsewhere; to deploy the QAT result, convert the QAT model itself
    (its trained ranges go into the .tflite).

    Args:
        model: a Keras 3 model from `qat` (or loaded from its `.keras` file).
        batchnorm_data: accepted for a uniform `strip` interface; unused.
            Defaults to `None`.

    Returns:
        A new Keras 3 model, uncompiled.

    Raises:
        ValueError: `model` carries no QAT layers.
        NotImplementedError: a tf_keras (tfmot) QAT model; tfmot has no strip.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> [type(layer).__name__ for layer in strip_qat(tfopt.compress.qat.qat(model)).layers]
    ['InputLayer', 'Dense']
    """
    del batchnorm_data
    if not has_wrappers(model):
        raise InvalidArgumentError(
            f"Model {getattr(model, 'name', model)!r} carries no QAT layers; nothing to strip. Pass a model from tfopt.qat."
        )
    if _keras.keras_flavor(model) == _keras.TF_KERAS:
        from tfopt.errors import UnsupportedModelError

        raise UnsupportedModelError(
            "tfmot QAT models (tf_keras) cannot be stripped back to float; convert them with "
            "tfopt.convert(model, mode='int8', ...), or run QAT on a Keras 3 model."
        )
    from tfopt.compress import qat_native

    return qat_native.strip_keras3(model)


def qat_summary(model: Any) -> QATSummary:
    """What `qat` fake-quantized, kept float (with reasons) and rewrote.

    Works on a model returned by `qat` in this session and on a Keras 3 QAT
    model loaded from a file (then rebuilt from its layers, without the
    rewrites).

    Raises:
        ValueError: the model carries no QAT layers.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> qat_summary(tfopt.compress.qat.qat(model)).quantized
    ('fc',)
    """
    if not _keras.is_keras_model(model):
        raise InvalidTypeError(f"qat_summary() expects a Keras model. Received: {type(model).__name__}.")
    plan = _recorded(model)
    flavor = _keras.keras_flavor(model)
    if flavor == _keras.KERAS3 and has_wrappers(model):
        from tfopt.compress import qat_native

        return qat_native.summary_of(model, plan, QATSummary, FloatLayer)
    if plan is None:
        raise InvalidArgumentError(
            f"Model {model.name!r} carries no QAT layers (or is a tf_keras model not made by tfopt.qat in this "
            "session); no summary is recorded. Pass a model from tfopt.qat."
        )
    return plan


def handle(model: Any, config: Any, context: Any):  # noqa: ARG001 - QAT reads no data
    """`tfopt.apply`'s handler for a `QATConfig`."""
    return qat(model, exclude=config.exclude, preserve=config.preserve, input_shape=config.input_shape,
               ema_decay=config.ema_decay)
