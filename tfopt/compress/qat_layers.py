"""Keras 3 layers for quantization-aware training in the TFLite int8 scheme.

`ActivationQuantizer` fake-quantizes a tensor per tensor and asymmetrically
(8 bits, full range) with a moving min/max held in non-trainable variables:
the first training batch sets the range, later batches move it by an
exponential moving average, and inference (and conversion) uses it frozen.

`QuantizeWrapper` wraps a built-in weighted layer (Dense, Conv1D/2D,
DepthwiseConv2D, SeparableConv1D/2D, Conv2DTranspose) and computes it from
fake-quantized weights: per output channel, symmetric, narrow range
(-127..127, zero point 0), the scheme LiteRT's int8 kernels use. A
BatchNormalization that directly follows the layer is folded into the kernel
and bias with its moving statistics, so training sees the weights the
converter will store; in training the output is still normalized with the
batch's statistics (as in float training and tfmot), and the moving
statistics follow the batches. The kernel can keep the zeros of a pruned
model (`preserve_sparsity`) or the shared values of a clustered one
(`cluster_counts`: the centroids train, the assignments stay fixed).

Both layers use public Keras 3 APIs only, keep all their state in layer
variables (saved with `model.save`), and are registered under the `tfopt`
package, so `keras.models.load_model` finds them once `tfopt.compress.qat_layers`
is imported. The TensorFlow backend turns `keras.quantizers.fake_quant_with_min_max_vars`
into `tf.quantization.fake_quant_*` ops, which the TFLite converter reads.
"""

from __future__ import annotations

import keras
from keras import ops

from tfopt.compress.records import CarriesRecord

NUM_BITS = 8
EMA_DECAY = 0.99
# Every QAT layer computes in float32, whatever the global dtype policy (mixed precision cannot hold int8 steps).
QAT_DTYPE = "float32"
_EPSILON = 1e-8
# The weighted layers computed by QuantizeWrapper, by class name: the kernels it fake-quantizes.
KERNELS = {
    "Dense": ("kernel",),
    "Conv1D": ("kernel",),
    "Conv2D": ("kernel",),
    "DepthwiseConv2D": ("kernel",),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
    "Conv2DTranspose": ("kernel",),
}


# Activations whose LiteRT int8 kernel writes a fixed output scale whatever the data (LOGISTIC and SOFTMAX:
# 1/256 with zero point -128; TANH: 1/128 with zero point 0): Keras rounds to the same grid.
FIXED_RANGES = {"sigmoid": (0.0, 255.0 / 256.0), "softmax": (0.0, 255.0 / 256.0), "tanh": (-1.0, 127.0 / 128.0)}
# Activations the converter fuses into the op before them (one rounding, after the activation).
FUSED_ACTIVATIONS = {None, "linear", "relu", "relu6"}
# Activations LiteRT runs as more than one int8 kernel: swish (silu) is LOGISTIC then MUL.
TWO_KERNEL_ACTIVATIONS = ("silu", "swish")


def _fake_quant(x, low, high):
    return keras.quantizers.fake_quant_with_min_max_vars(x, low, high, num_bits=NUM_BITS, narrow_range=False)


def activation_name(function) -> str | None:
    """The name of an activation function (`None` for none)."""
    if function is None:
        return None
    return getattr(function, "__name__", None) or str(function)


def apply_activation(function, x):
    """Applies an activation as LiteRT's int8 kernels do: swish (silu) runs as LOGISTIC, rounded to its fixed
    1/256 grid, then MUL; every other activation is one kernel."""
    if activation_name(function) in TWO_KERNEL_ACTIVATIONS:
        return x * _fake_quant(ops.sigmoid(x), *FIXED_RANGES["sigmoid"])
    return function(x)


def quantize_weight(kernel, axis: int | None = -1):
    """Fake-quantizes a kernel per channel along `axis` (per tensor for `None`): symmetric, narrow range, 8 bits."""
    # The bound follows the kernel but passes no gradient (straight-through on the values only).
    if axis is None:
        bound = ops.stop_gradient(ops.maximum(ops.max(ops.abs(kernel)), _EPSILON))
        return keras.quantizers.fake_quant_with_min_max_vars(kernel, -bound, bound, num_bits=NUM_BITS, narrow_range=True)
    rank = len(kernel.shape)
    axis = axis % rank
    reduce_axes = tuple(i for i in range(rank) if i != axis)
    bound = ops.stop_gradient(ops.maximum(ops.max(ops.abs(kernel), axis=reduce_axes), _EPSILON))
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel, -bound, bound, num_bits=NUM_BITS, narrow_range=True, axis=axis
    )


@keras.saving.register_keras_serializable(package="tfopt")
class ActivationQuantizer(CarriesRecord, keras.layers.Layer):
    """Fake-quantizes its input per tensor (int8, asymmetric) with a moving min/max.

    Args:
        ema_decay: weight of the old range in the moving average. Defaults to `0.99`.
        fixed_range: `(min, max)` for a tensor whose int8 scale the runtime fixes
            (the output of a sigmoid, tanh or softmax): no moving range, no state.
            Defaults to `None`.
        **kwargs: base layer arguments (`name`, ...).
    """

    def __init__(self, ema_decay: float = EMA_DECAY, fixed_range: tuple[float, float] | None = None, **kwargs):
        kwargs.setdefault("dtype", QAT_DTYPE)
        super().__init__(**kwargs)
        self.ema_decay = float(ema_decay)
        self.fixed_range = tuple(float(v) for v in fixed_range) if fixed_range is not None else None

    def build(self, input_shape=None):
        if self.fixed_range is not None:
            self.built = True
            return
        def variable(name, value):
            return self.add_weight(
                name=name, shape=(), initializer=keras.initializers.Constant(value), trainable=False,
                aggregation="mean", autocast=False,
            )

        self.range_min = variable("range_min", -6.0)
        self.range_max = variable("range_max", 6.0)
        self.initialized = variable("initialized", 0.0)  # 0 until the first training batch sets the range
        self.built = True

    def call(self, inputs, training=None):
        if self.fixed_range is not None:
            return _fake_quant(inputs, *self.fixed_range)
        if training:
            # The range is a statistic, not a parameter: no gradient flows through it (as in tfmot), which
            # also keeps the backward graph small (tracing the train step dominates short fine-tunes).
            x = ops.stop_gradient(ops.cast(inputs, "float32"))
            batch_min = ops.minimum(ops.min(x), 0.0)
            batch_max = ops.maximum(ops.max(x), 0.0)
            keep = self.initialized * self.ema_decay  # 0 on the first batch: the batch sets the range
            low = keep * self.range_min + (1.0 - keep) * batch_min
            high = keep * self.range_max + (1.0 - keep) * batch_max
            self.range_min.assign(low)
            self.range_max.assign(high)
            self.initialized.assign(1.0)
        else:
            low, high = self.range_min, self.range_max
        return _fake_quant(inputs, low, high)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "ema_decay": self.ema_decay}
        if self.fixed_range is not None:
            config["fixed_range"] = list(self.fixed_range)
        return config


def output_quantizer_for(activation, ema_decay: float, name: str) -> ActivationQuantizer:
    """The quantizer of an activation's output: the runtime's fixed grid, or a moving range."""
    return ActivationQuantizer(ema_decay, fixed_range=FIXED_RANGES.get(activation_name(activation)), name=name)


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizedActivation(CarriesRecord, keras.layers.Layer):
    """An `Activation` layer computed with the roundings of LiteRT's int8 kernels, its output quantized.

    Sigmoid, tanh and softmax round to the runtime's fixed output grid; swish
    also rounds its inner sigmoid (LiteRT runs it as LOGISTIC then MUL);
    other activations get a moving range. `tfopt.strip` turns it back into
    `keras.layers.Activation`.

    Args:
        activation: the activation (name or function).
        ema_decay: see `ActivationQuantizer`. Defaults to `0.99`.
        **kwargs: base layer arguments (`name`, ...).
    """

    def __init__(self, activation, ema_decay: float = EMA_DECAY, **kwargs):
        kwargs.setdefault("dtype", QAT_DTYPE)
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.ema_decay = float(ema_decay)
        self.output_quantizer = output_quantizer_for(self.activation, self.ema_decay, "output_quantizer")

    def build(self, input_shape=None):
        if not self.output_quantizer.built:
            self.output_quantizer.build()
        self.built = True

    def call(self, inputs, training=None):
        return self.output_quantizer(apply_activation(self.activation, inputs), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "activation": keras.activations.serialize(self.activation),
                "ema_decay": self.ema_decay}


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizeWrapper(CarriesRecord, keras.layers.Wrapper):
    """Runs a weighted layer on fake-quantized (optionally BatchNorm-folded) weights.

    Args:
        layer: a built-in Dense, Conv1D, Conv2D, DepthwiseConv2D, SeparableConv1D,
            SeparableConv2D or Conv2DTranspose layer (channels last).
        batchnorm: a BatchNormalization layer on the last axis to fold in, or `None`.
        quantize_output: fake-quantize the output (after the layer's activation);
            `False` when a ReLU that the converter fuses follows. Defaults to `True`.
        preserve_sparsity: keep the zeros the kernels hold when wrapped. Defaults to `False`.
        cluster_counts: `{kernel name: number of shared values}` for kernels whose
            values stay shared (clustered): only the values train. Defaults to `None`.
        ema_decay: see `ActivationQuantizer`. Defaults to `0.99`.
        batchnorm_statistics: `"batch"` normalizes with each training batch's
            statistics (the kernel is still quantized folded with the moving
            ones, and the output rescaled), as float training and tfmot do;
            `"moving"` freezes the moving statistics. Inference always uses the
            moving statistics. Defaults to `"batch"`.
    """

    def __init__(self, layer, batchnorm=None, quantize_output: bool = True, preserve_sparsity: bool = False,
                 cluster_counts: dict | None = None, ema_decay: float = EMA_DECAY, batchnorm_statistics: str = "batch",
                 **kwargs):
        if isinstance(batchnorm, dict):
            batchnorm = keras.saving.deserialize_keras_object(batchnorm)
        kwargs.setdefault("dtype", QAT_DTYPE)
        super().__init__(layer, **kwargs)
        self.kind = type(layer).__name__
        self.batchnorm = batchnorm
        self.quantize_output = bool(quantize_output)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.cluster_counts = {str(k): int(v) for k, v in (cluster_counts or {}).items()}
        self.ema_decay = float(ema_decay)
        if batchnorm_statistics not in ("batch", "moving"):
            raise ValueError(f"batchnorm_statistics must be 'batch' or 'moving'; received {batchnorm_statistics!r}.")
        self.batchnorm_statistics = batchnorm_statistics
        activation = getattr(layer, "activation", None)
        self.output_quantizer = output_quantizer_for(activation, ema_decay, "output_quantizer") if quantize_output else None
        # LiteRT rounds the kernel's output before an activation it cannot fuse (sigmoid, swish, tanh, ...).
        fused = activation_name(activation) in FUSED_ACTIVATIONS
        self.pre_activation_quantizer = None if fused else ActivationQuantizer(ema_decay, name="pre_activation_quantizer")
        separable = self.kind.startswith("SeparableConv")
        self.mid_quantizer = ActivationQuantizer(ema_decay, name="mid_quantizer") if separable else None

    # --- building ---------------------------------------------------------------------------

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.batchnorm is not None and not self.batchnorm.built:
            self.batchnorm.build(output_shape)
        self.masks, self.centroids, self.assignments = {}, {}, {}
        for name in KERNELS[self.kind]:
            kernel = getattr(self.layer, name)
            if self.preserve_sparsity:
                self.masks[name] = self.add_weight(name=f"{name}_mask", shape=kernel.shape, initializer="ones",
                                                   trainable=False, autocast=False)
            if name in self.cluster_counts:
                self.centroids[name] = self.add_weight(name=f"{name}_centroids", shape=(self.cluster_counts[name],),
                                                       initializer="zeros", trainable=True)
                self.assignments[name] = self.add_weight(name=f"{name}_assignments", shape=kernel.shape,
                                                         initializer="zeros", dtype="int32", trainable=False)
                kernel.trainable = False  # the centroids train instead
        for quantizer in (self.mid_quantizer, self.pre_activation_quantizer, self.output_quantizer):
            if quantizer is not None and not quantizer.built:
                quantizer.build()
        self.built = True

    def initialize_preserved(self) -> None:
        """Reads the masks / centroids / assignments from the current kernels (call after setting weights)."""
        for name in KERNELS[self.kind]:
            kernel = ops.convert_to_numpy(getattr(self.layer, name))
            if name in self.masks:
                self.masks[name].assign((kernel != 0).astype("float32"))
            if name in self.centroids:
                import numpy as np

                values, index = np.unique(kernel, return_inverse=True)
                count = self.cluster_counts[name]
                padded = np.zeros((count,), "float32")
                padded[: len(values)] = values[:count]
                self.centroids[name].assign(padded)
                self.assignments[name].assign(np.minimum(index.reshape(kernel.shape), count - 1).astype("int32"))

    # --- the computation --------------------------------------------------------------------

    def effective_kernel(self, name: str):
        """The float kernel the layer trains with: shared values, then the sparsity mask."""
        kernel = getattr(self.layer, name)
        if name in self.centroids:
            kernel = ops.take(self.centroids[name], self.assignments[name])
        if name in self.masks:
            kernel = kernel * self.masks[name]
        return kernel

    def folded(self):
        """Kernels and bias with the BatchNormalization folded in (float, before fake-quant)."""
        names = KERNELS[self.kind]
        kernels = {name: self.effective_kernel(name) for name in names}
        bias = self.layer.bias if self.layer.use_bias else None
        if self.batchnorm is None:
            return kernels, bias
        bn = self.batchnorm
        factor = ops.rsqrt(bn.moving_variance + bn.epsilon)
        if bn.scale:
            factor = factor * bn.gamma
        shift = -bn.moving_mean * factor
        if bias is not None:
            shift = shift + bias * factor
        if bn.center:
            shift = shift + bn.beta
        last = names[-1]
        kernel = kernels[last]
        if self.kind == "Conv2DTranspose":
            kernels[last] = kernel * ops.expand_dims(factor, -1)
        elif self.kind == "DepthwiseConv2D":
            kernels[last] = kernel * ops.reshape(factor, tuple(kernel.shape[-2:]))
        else:
            kernels[last] = kernel * factor
        return kernels, shift

    def _quantized(self, name: str, kernel):
        if self.kind in ("Conv2DTranspose", "Dense"):
            # Per tensor (as tfmot does): the converter transposes these kernels, and a per-channel
            # fake-quant on the transposed axis fails to convert ("mismatched quantized axes").
            return quantize_weight(kernel, axis=None)
        if name == "depthwise_kernel" or self.kind == "DepthwiseConv2D":
            shape = tuple(kernel.shape)
            flat = ops.reshape(kernel, shape[:-2] + (shape[-2] * shape[-1],))
            return ops.reshape(quantize_weight(flat, axis=-1), shape)
        return quantize_weight(kernel, axis=-1)

    def _linear(self, x, kernels: dict, training):
        """The layer's convolution / matmul on `kernels` (1-D layers as 2-D ones), without bias."""
        layer, kind = self.layer, self.kind
        one_d = kind in ("Conv1D", "SeparableConv1D")
        if one_d:
            if layer.padding == "causal":
                left = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
                x = ops.pad(x, ((0, 0), (left, 0), (0, 0)))
            x = ops.expand_dims(x, 1)
        padding = "valid" if getattr(layer, "padding", None) == "causal" else getattr(layer, "padding", None)
        strides = (1, layer.strides[0]) if one_d else getattr(layer, "strides", None)
        dilation = (1, layer.dilation_rate[0]) if one_d else getattr(layer, "dilation_rate", None)
        if kind == "Dense":
            y = ops.matmul(x, kernels["kernel"])
        elif kind in ("Conv1D", "Conv2D"):
            y = ops.conv(x, kernels["kernel"], strides=strides, padding=padding, dilation_rate=dilation)
        elif kind == "DepthwiseConv2D":
            y = ops.depthwise_conv(x, kernels["kernel"], strides=strides, padding=padding, dilation_rate=dilation)
        elif kind.startswith("SeparableConv"):
            mid = ops.depthwise_conv(x, kernels["depthwise_kernel"], strides=strides, padding=padding,
                                     dilation_rate=dilation)
            mid = self.mid_quantizer(mid, training=training)
            y = ops.conv(mid, kernels["pointwise_kernel"], strides=1, padding="valid")
        else:  # Conv2DTranspose
            y = ops.conv_transpose(x, kernels["kernel"], strides=strides, padding=padding,
                                   output_padding=layer.output_padding, dilation_rate=dilation)
        return ops.squeeze(y, 1) if one_d else y

    def _expanded(self, kernels: dict) -> dict:
        # 1-D kernels are expanded *before* fake-quant: the converter cannot follow a per-channel fake-quant
        # through the backend's own ExpandDims.
        if self.kind in ("Conv1D", "SeparableConv1D"):
            return {name: ops.expand_dims(k, 0) for name, k in kernels.items()}
        return kernels

    def call(self, inputs, training=None):
        kernels, bias = self.folded()
        q = {name: self._quantized(name, k) for name, k in self._expanded(kernels).items()}
        y = self._linear(inputs, q, training)
        if (training and self.batchnorm is not None and self.batchnorm_statistics == "batch"
                and not self.kind.startswith("SeparableConv")):
            y = self._batch_corrected(inputs, y, training)
        elif bias is not None:
            y = y + bias
        if self.pre_activation_quantizer is not None:
            y = self.pre_activation_quantizer(y, training=training)
        if self.layer.activation is not None:
            y = apply_activation(self.layer.activation, y)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, training=training)
        return y

    def _batch_corrected(self, inputs, y, training):
        """Training with the batch's statistics: `y` (computed from the kernel folded with the moving
        statistics, as stored) is rescaled to the batch's standard deviation, the batch's mean goes into the
        bias, and the moving statistics follow the batch."""
        bn = self.batchnorm
        raw = self._linear(inputs, self._expanded({n: self.effective_kernel(n) for n in KERNELS[self.kind]}), training)
        if self.layer.use_bias:
            raw = raw + self.layer.bias
        axes = tuple(range(len(raw.shape) - 1))
        mean, variance = ops.moments(raw, axes=axes)
        batch_std = ops.sqrt(variance + bn.epsilon)
        moving_std = ops.sqrt(bn.moving_variance + bn.epsilon)
        gamma = bn.gamma if bn.scale else 1.0
        shift = -mean * gamma / batch_std
        if self.layer.use_bias:
            shift = shift + self.layer.bias * gamma / batch_std
        if bn.center:
            shift = shift + bn.beta
        momentum = bn.momentum
        bn.moving_mean.assign(momentum * bn.moving_mean + (1.0 - momentum) * ops.stop_gradient(mean))
        bn.moving_variance.assign(momentum * bn.moving_variance + (1.0 - momentum) * ops.stop_gradient(variance))
        return y * (moving_std / batch_std) + shift

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            batchnorm=keras.saving.serialize_keras_object(self.batchnorm) if self.batchnorm is not None else None,
            quantize_output=self.quantize_output,
            preserve_sparsity=self.preserve_sparsity,
            cluster_counts=dict(self.cluster_counts),
            ema_decay=self.ema_decay,
            batchnorm_statistics=self.batchnorm_statistics,
        )
        return config


@keras.saving.register_keras_serializable(package="tfopt")
class AffineQuantizeWrapper(CarriesRecord, keras.layers.Wrapper):
    """Runs a `Normalization` or an offset `Rescaling` as LiteRT's two int8 kernels, rounding between them.

    LiteRT computes `(x - mean) / std` as SUB then MUL, and `x * scale + offset`
    as MUL then ADD; the tensor between the two kernels is int8 with a range of
    its own (here a moving range), and the output another.

    Args:
        layer: a `keras.layers.Normalization` or `keras.layers.Rescaling`.
        ema_decay: see `ActivationQuantizer`. Defaults to `0.99`.
        **kwargs: base layer arguments (`name`, ...).
    """

    def __init__(self, layer, ema_decay: float = EMA_DECAY, **kwargs):
        kwargs.setdefault("dtype", QAT_DTYPE)
        super().__init__(layer, **kwargs)
        self.kind = type(layer).__name__
        if self.kind not in ("Normalization", "Rescaling"):
            raise ValueError(f"AffineQuantizeWrapper wraps Normalization or Rescaling; received {self.kind}.")
        self.ema_decay = float(ema_decay)
        self.mid_quantizer = ActivationQuantizer(ema_decay, name="mid_quantizer")
        self.output_quantizer = ActivationQuantizer(ema_decay, name="output_quantizer")

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        for quantizer in (self.mid_quantizer, self.output_quantizer):
            if not quantizer.built:
                quantizer.build()
        self.built = True

    def call(self, inputs, training=None):
        layer = self.layer
        x = ops.cast(inputs, "float32")
        if self.kind == "Rescaling":
            mid = self.mid_quantizer(x * ops.cast(layer.scale, "float32"), training=training)
            y = mid + ops.cast(layer.offset, "float32")
        else:
            std = ops.maximum(ops.sqrt(layer.variance), keras.config.epsilon())
            if layer.invert:
                y = self.mid_quantizer(x * std, training=training) + layer.mean
            else:
                y = self.mid_quantizer(x - layer.mean, training=training) / std
        return self.output_quantizer(y, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay}


# Every layer type the QAT graph adds (for telling a QAT model from a float one).
QAT_LAYERS = (QuantizeWrapper, ActivationQuantizer, QuantizedActivation, AffineQuantizeWrapper)
