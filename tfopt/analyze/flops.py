"""Pure arithmetic of model cost: MACs, output sizes and byte counts.

Plain functions of integers and shapes, with no Keras or TensorFlow import, so
they are testable on their own and reusable by anything that knows a layer's
shapes. `tfopt.profile` applies them to Keras layers and TFLite operators.

Conventions (the ones most papers and profilers use):

- A MAC is one multiply-accumulate. FLOPs are `2 * MACs`; bias additions,
  activations, normalisation and pooling are not MACs. They are counted apart as
  `other_ops` (one operation per element touched) where a formula is known.
- Shapes exclude nothing: callers pass the full output shape including batch,
  or a per-example shape times `batch`.
- Convolutions count every output position once, whatever the padding (a padded
  border still costs a full kernel window, as on real hardware).

>>> conv_macs(output_spatial=(19, 19), kernel_size=(7, 7), in_channels=9, filters=64)
10188864
"""

from __future__ import annotations

import math
import re
from typing import Sequence
from tfopt.errors import InvalidArgumentError

# Bytes per element of the storage formats tfopt reports.
DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "int4": 0.5,
}


def num_elements(shape: Sequence[int | None]) -> int:
    """Number of elements of a shape; `None` dimensions are an error.

    >>> num_elements((2, 3, 4))
    24
    """
    total = 1
    for dim in shape:
        if dim is None or dim < 0:
            raise InvalidArgumentError(
                f"Cannot count the elements of shape {tuple(shape)}: it has an unknown dimension. "
                "Build the model with a fixed input shape (e.g. keras.Input((224, 224, 3)))."
            )
        total *= int(dim)
    return total


def conv_output_length(length: int, kernel: int, stride: int = 1, padding: str = "valid", dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis (Keras semantics).

    >>> conv_output_length(25, 7, padding="valid"), conv_output_length(224, 3, 2, "same")
    (19, 112)
    """
    padding = padding.lower()
    effective = (kernel - 1) * dilation + 1
    if padding == "same":
        return math.ceil(length / stride)
    if padding == "valid":
        return math.ceil((length - effective + 1) / stride)
    if padding == "full":
        return math.ceil((length + effective - 1) / stride)
    if padding == "causal":
        return math.ceil(length / stride)
    raise InvalidArgumentError(f"padding must be 'valid', 'same', 'full' or 'causal'. Received: padding={padding!r}.")


def conv_macs(
    *,
    output_spatial: Sequence[int],
    kernel_size: Sequence[int],
    in_channels: int,
    filters: int,
    groups: int = 1,
    batch: int = 1,
) -> int:
    """MACs of a (grouped) 1D/2D/3D convolution.

    Each output position of each filter reads `prod(kernel_size) * in_channels / groups` inputs.

    >>> conv_macs(output_spatial=(19, 19), kernel_size=(7, 7), in_channels=9, filters=64)
    10188864
    """
    if in_channels % groups:
        raise InvalidArgumentError(f"in_channels={in_channels} is not divisible by groups={groups}.")
    window = num_elements(kernel_size) * (in_channels // groups)
    return batch * num_elements(output_spatial) * filters * window


def conv_transpose_macs(
    *, input_spatial: Sequence[int], kernel_size: Sequence[int], in_channels: int, filters: int, batch: int = 1
) -> int:
    """MACs of a transposed convolution: every input value is scattered through the whole kernel.

    >>> conv_transpose_macs(input_spatial=(4, 4), kernel_size=(3, 3), in_channels=2, filters=5)
    1440
    """
    return batch * num_elements(input_spatial) * in_channels * num_elements(kernel_size) * filters


def depthwise_conv_macs(
    *, output_spatial: Sequence[int], kernel_size: Sequence[int], in_channels: int, depth_multiplier: int = 1, batch: int = 1
) -> int:
    """MACs of a depthwise convolution (one kernel per input channel and multiplier).

    >>> depthwise_conv_macs(output_spatial=(112, 112), kernel_size=(3, 3), in_channels=32)
    3612672
    """
    return batch * num_elements(output_spatial) * in_channels * depth_multiplier * num_elements(kernel_size)


def separable_conv_macs(
    *,
    output_spatial: Sequence[int],
    kernel_size: Sequence[int],
    in_channels: int,
    filters: int,
    depth_multiplier: int = 1,
    batch: int = 1,
) -> int:
    """MACs of a separable convolution: depthwise then a 1x1 pointwise at the output resolution.

    >>> separable_conv_macs(output_spatial=(10, 10), kernel_size=(3, 3), in_channels=8, filters=16)
    20000
    """
    depthwise = depthwise_conv_macs(
        output_spatial=output_spatial, kernel_size=kernel_size, in_channels=in_channels,
        depth_multiplier=depth_multiplier, batch=batch,
    )
    pointwise = batch * num_elements(output_spatial) * in_channels * depth_multiplier * filters
    return depthwise + pointwise


def dense_macs(*, in_features: int, units: int, positions: int = 1, batch: int = 1) -> int:
    """MACs of a dense (fully connected) layer applied at `positions` positions (1 for a 2D input).

    >>> dense_macs(in_features=784, units=300)
    235200
    """
    return batch * positions * in_features * units


def rnn_macs(*, timesteps: int, in_features: int, units: int, gates: int = 1, batch: int = 1) -> int:
    """MACs of a recurrent layer: `gates` input and recurrent matrix products per step.

    `gates` is 1 for SimpleRNN, 3 for GRU and 4 for LSTM.

    >>> rnn_macs(timesteps=10, in_features=8, units=16, gates=4)
    15360
    """
    return batch * timesteps * gates * (in_features * units + units * units)


def matmul_macs(*, output_shape: Sequence[int], inner: int) -> int:
    """MACs of a (batched) matrix product: one inner product of length `inner` per output element.

    >>> matmul_macs(output_shape=(2, 3, 5), inner=4)
    120
    """
    return num_elements(output_shape) * inner


def einsum_macs(equation: str, *shapes: Sequence[int]) -> int:
    """MACs of an einsum product of operands: the product of the sizes of all distinct indices.

    >>> einsum_macs("abc,cd->abd", (2, 3, 4), (4, 5))
    120
    """
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    if len(inputs) != len(shapes):
        raise InvalidArgumentError(f"Equation {equation!r} has {len(inputs)} operands; received {len(shapes)} shapes.")
    sizes: dict[str, int] = {}
    for spec, shape in zip(inputs, shapes):
        if "..." in spec:
            named = spec.replace("...", "")
            extra = len(shape) - len(named)
            head = spec.index("...")
            spec = spec[:head] + "".join(f"#{i}" for i in range(extra)) + spec[head + 3:]
            letters = re.findall(r"#\d+|[a-zA-Z]", spec)
        else:
            letters = list(spec)
        if len(letters) != len(shape):
            raise InvalidArgumentError(f"Operand {spec!r} of {equation!r} does not match shape {tuple(shape)}.")
        for letter, dim in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(dim))
    return math.prod(sizes.values())


def attention_macs(
    *, query_length: int, key_length: int, query_dim: int, key_dim_in: int, value_dim_in: int,
    num_heads: int, key_dim: int, value_dim: int, output_dim: int, batch: int = 1,
) -> int:
    """MACs of multi-head attention: Q/K/V projections, scores, weighted sum and output projection.

    >>> attention_macs(query_length=4, key_length=4, query_dim=8, key_dim_in=8, value_dim_in=8,
    ...                num_heads=2, key_dim=4, value_dim=4, output_dim=8)
    1280
    """
    projections = (query_length * query_dim + key_length * key_dim_in) * num_heads * key_dim
    projections += key_length * value_dim_in * num_heads * value_dim
    scores = query_length * key_length * num_heads * key_dim
    weighted = query_length * key_length * num_heads * value_dim
    output = query_length * num_heads * value_dim * output_dim
    return batch * (projections + scores + weighted + output)


def pooling_ops(*, output_elements: int, pool_size: Sequence[int]) -> int:
    """Operations of a max / average pooling: one comparison or addition per window element read.

    >>> pooling_ops(output_elements=56 * 56 * 64, pool_size=(3, 3))
    1806336
    """
    return output_elements * num_elements(pool_size)


def weight_bytes(params: int, dtype: str = "float32") -> float:
    """Bytes of `params` weights stored as `dtype` (scales and zero points not counted).

    >>> weight_bytes(3 * 3 * 256 * 512) / 2**20
    4.5
    """
    try:
        return params * DTYPE_BYTES[dtype]
    except KeyError:
        raise InvalidArgumentError(f"Unknown dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}.") from None


def activation_bytes(shape: Sequence[int], dtype: str = "float32") -> float:
    """Bytes of one activation tensor of `shape` (batch included).

    >>> activation_bytes((128, 224, 224, 512)) / 2**30
    12.25
    """
    return weight_bytes(num_elements(shape), dtype)


def peak_live_bytes(sizes: Sequence[float], first_use: Sequence[int], last_use: Sequence[int], steps: int) -> tuple[float, int]:
    """Peak of the summed sizes of tensors alive at each step, and the step where it happens.

    Tensor `i` is alive from step `first_use[i]` (where it is produced; 0 for model inputs)
    through step `last_use[i]` (its last reader; `steps - 1` for model outputs), inclusive:
    at every step the operator's inputs and outputs are held together. No in-place reuse
    is assumed, which is what a plain runtime without memory planning tricks needs.

    >>> peak_live_bytes([4, 8, 2], [0, 1, 2], [1, 2, 2], steps=3)
    (12, 1)
    """
    if not steps:
        return 0, 0
    delta = [0.0] * (steps + 1)
    for size, start, end in zip(sizes, first_use, last_use):
        delta[max(start, 0)] += size
        delta[min(end, steps - 1) + 1] -= size
    peak, where, live = 0, 0, 0.0
    for step in range(steps):
        live += delta[step]
        if live > peak:
            peak, where = live, step
    return (int(peak) if float(peak).is_integer() else peak), where


# --------------------------------------------------------------------------------------------
# Layer and operator tables: which formula applies to which Keras class / TFLite operator.
# Pure functions of shapes and config dicts, so they test without Keras.

# Keras layers / ops (Keras 3 and tf_keras class names) that do no arithmetic.
FREE_KINDS = frozenset("""
InputLayer Flatten Reshape Permute RepeatVector Dropout SpatialDropout1D SpatialDropout2D
SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout ActivityRegularization Masking
Cropping1D Cropping2D Cropping3D ZeroPadding1D ZeroPadding2D ZeroPadding3D Concatenate Identity
Embedding CenterCrop RandomFlip RandomRotation RandomZoom RandomTranslation RandomContrast
RandomCrop RandomBrightness ExpandDims Squeeze Transpose GetItem Cast Stack Slice Split Shape
Tile BroadcastTo Pad StopGradient Flip Roll Repeat ConvertToTensor
""".split())
# Elementwise arithmetic: one op per output element (per extra input for merges).
ELEMENTWISE_KINDS = frozenset("""
Add Subtract Multiply Average Maximum Minimum Divide TrueDivide FloorDivide Power Negative Abs
Sqrt Square Exp Log Clip Where Erf Activation ReLU LeakyReLU PReLU ELU Softmax ThresholdedReLU
Relu Relu6 Sigmoid HardSigmoid HardSilu HardSwish Silu Swish Gelu Tanh Softplus Softsign Elu Selu
LeakyRelu LogSoftmax Rescaling Normalization UpSampling1D UpSampling2D UpSampling3D Resizing
UnitNormalization
""".split())
NORMALIZATION_KINDS = frozenset("BatchNormalization LayerNormalization GroupNormalization RMSNormalization".split())
POOLING_KINDS = frozenset("""
MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D
MaxPool1D MaxPool2D MaxPool3D AvgPool1D AvgPool2D AvgPool3D
""".split())
REDUCE_KINDS = frozenset("""
GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D GlobalMaxPooling1D
GlobalMaxPooling2D GlobalMaxPooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D Mean Sum Max Min
""".split())
# tf_keras TFOpLambda functions (last dotted component) -> the Keras kind with the same cost.
TF_FUNCTION_KINDS = {
    "add": "Add", "add_v2": "Add", "subtract": "Subtract", "multiply": "Multiply", "mul": "Multiply",
    "truediv": "Divide", "divide": "Divide", "maximum": "Maximum", "minimum": "Minimum",
    "relu": "Relu", "relu6": "Relu6", "sigmoid": "Sigmoid", "tanh": "Tanh", "swish": "Silu",
    "silu": "Silu", "gelu": "Gelu", "softmax": "Softmax", "hard_sigmoid": "HardSigmoid",
    "reduce_mean": "Mean", "reduce_sum": "Sum", "reduce_max": "Max", "reshape": "Reshape",
    "transpose": "Transpose", "concat": "Concatenate", "expand_dims": "ExpandDims",
    "squeeze": "Squeeze", "__getitem__": "GetItem", "cast": "Cast", "identity": "Identity",
    "matmul": "Matmul", "pad": "Pad",
}


def _channels_axis(config: dict) -> int:
    return 1 if config.get("data_format") == "channels_first" else -1


def _spatial(shape: tuple, config: dict) -> tuple:
    return tuple(shape[2:]) if _channels_axis(config) == 1 else tuple(shape[1:-1])


def keras_layer_cost(
    kind: str, config: dict, in_shapes: list[tuple], out_shapes: list[tuple], kernel_shape: tuple | None = None
) -> tuple[int | None, int]:
    """`(macs, other_ops)` of one call of a Keras layer, from its class name, config and shapes.

    Shapes include the batch. `macs` is `None` when the kind has no formula here.

    >>> keras_layer_cost("Dense", {"units": 10}, [(32, 100)], [(32, 10)])
    (32000, 0)
    """
    if not in_shapes or not out_shapes or any(s is None for s in in_shapes + out_shapes):
        return None, 0
    x, y = in_shapes[0], out_shapes[0]
    out_elems = sum(num_elements(s) for s in out_shapes)
    if kind in FREE_KINDS:
        return 0, 0
    if kind in ELEMENTWISE_KINDS:
        return 0, out_elems * max(1, len(in_shapes) - 1)
    if kind in NORMALIZATION_KINDS:
        return 0, 2 * out_elems
    if kind in POOLING_KINDS:
        return 0, pooling_ops(output_elements=out_elems, pool_size=config.get("pool_size") or (2,))
    if kind in REDUCE_KINDS:
        return 0, num_elements(x)
    if kind == "Dense":
        return dense_macs(in_features=x[-1], units=y[-1], positions=num_elements(y[:-1])), 0
    if kind == "EinsumDense" and kernel_shape is not None:
        return einsum_macs(config["equation"], x, kernel_shape), 0
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        axis = _channels_axis(config)
        return conv_macs(output_spatial=(y[0],) + _spatial(y, config), kernel_size=config["kernel_size"],
                         in_channels=x[axis], filters=y[axis], groups=config.get("groups", 1)), 0
    if kind in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        axis = _channels_axis(config)
        return conv_transpose_macs(input_spatial=(x[0],) + _spatial(x, config), kernel_size=config["kernel_size"],
                                   in_channels=x[axis], filters=y[axis]), 0
    if kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        axis = _channels_axis(config)
        return depthwise_conv_macs(output_spatial=(y[0],) + _spatial(y, config), kernel_size=config["kernel_size"],
                                   in_channels=x[axis], depth_multiplier=config.get("depth_multiplier", 1)), 0
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        axis = _channels_axis(config)
        return separable_conv_macs(output_spatial=(y[0],) + _spatial(y, config), kernel_size=config["kernel_size"],
                                   in_channels=x[axis], filters=y[axis],
                                   depth_multiplier=config.get("depth_multiplier", 1)), 0
    if kind in ("SimpleRNN", "GRU", "LSTM"):
        gates = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}[kind]
        return rnn_macs(timesteps=x[1], in_features=x[2], units=config["units"], gates=gates, batch=x[0]), 0
    if kind == "Matmul" and len(in_shapes) == 2:
        return matmul_macs(output_shape=y, inner=x[-1]), 0
    if kind == "MultiHeadAttention":
        query = x
        value = in_shapes[1] if len(in_shapes) > 1 else x
        key = in_shapes[2] if len(in_shapes) > 2 else value
        key_dim = config["key_dim"]
        return attention_macs(
            query_length=num_elements(query[1:-1]), key_length=num_elements(value[1:-1]), query_dim=query[-1],
            key_dim_in=key[-1], value_dim_in=value[-1], num_heads=config["num_heads"], key_dim=key_dim,
            value_dim=config.get("value_dim") or key_dim, output_dim=y[-1], batch=query[0],
        ), 0
    return None, 0


# TFLite builtin operators without multiply-accumulates.
TFLITE_FREE_OPS = frozenset("""
RESHAPE SQUEEZE EXPAND_DIMS TRANSPOSE CONCATENATION PAD PADV2 MIRROR_PAD QUANTIZE DEQUANTIZE
STRIDED_SLICE SLICE GATHER GATHER_ND SPLIT SPLIT_V PACK UNPACK SHAPE CAST TILE BROADCAST_TO
SPACE_TO_DEPTH DEPTH_TO_SPACE SPACE_TO_BATCH_ND BATCH_TO_SPACE_ND EMBEDDING_LOOKUP
""".split())
TFLITE_ELEMENTWISE_OPS = frozenset("""
ADD SUB MUL DIV RELU RELU6 RELU_N1_TO_1 RELU_0_TO_1 LOGISTIC TANH HARD_SWISH LEAKY_RELU PRELU ELU
GELU SOFTMAX LOG_SOFTMAX EXP LOG SQRT RSQRT SQUARE ABS NEG MAXIMUM MINIMUM POW SQUARED_DIFFERENCE
RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR L2_NORMALIZATION SELECT SELECT_V2 FLOOR_DIV
""".split())
TFLITE_REDUCE_OPS = frozenset("MEAN SUM REDUCE_MAX REDUCE_MIN REDUCE_PROD".split())


def tflite_op_cost(
    op: str, in_shapes: list[tuple | None], out_shapes: list[tuple], options: dict | None = None
) -> tuple[int | None, int]:
    """`(macs, other_ops)` of one TFLite builtin operator from its name and tensor shapes.

    Shapes are as stored in the flatbuffer (filters `[out, h, w, in]` for CONV_2D,
    `[1, h, w, out]` for DEPTHWISE_CONV_2D, `[units, in]` for FULLY_CONNECTED).

    >>> tflite_op_cost("CONV_2D", [(1, 25, 25, 9), (64, 7, 7, 9), (64,)], [(1, 19, 19, 64)])
    (10188864, 0)
    """
    options = options or {}
    if not out_shapes or out_shapes[0] is None:
        return None, 0
    y = out_shapes[0]
    out_elems = num_elements(y)
    if op in TFLITE_FREE_OPS:
        return 0, 0
    if op in TFLITE_ELEMENTWISE_OPS:
        return 0, out_elems
    if op in TFLITE_REDUCE_OPS:
        return 0, num_elements(in_shapes[0])
    if op in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"):
        return 0, pooling_ops(output_elements=out_elems,
                              pool_size=(options.get("filterHeight", 1), options.get("filterWidth", 1)))
    if op == "CONV_2D":
        return out_elems * num_elements(in_shapes[1][1:]), 0
    if op == "CONV_3D":
        return out_elems * num_elements(in_shapes[1][:-1]), 0
    if op == "DEPTHWISE_CONV_2D":
        return out_elems * num_elements(in_shapes[1][1:3]), 0
    if op == "FULLY_CONNECTED":
        return num_elements(y[:-1]) * num_elements(in_shapes[1]), 0
    if op == "TRANSPOSE_CONV":
        weights, x = in_shapes[1], in_shapes[2]
        return num_elements(x) * num_elements(weights[:-1]), 0
    if op == "BATCH_MATMUL":
        lhs = in_shapes[0]
        inner = lhs[-2] if options.get("adjX") else lhs[-1]
        return matmul_macs(output_shape=y, inner=inner), 0
    return None, 0
