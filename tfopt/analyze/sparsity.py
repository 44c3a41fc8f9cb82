"""Sparsity found in the weights of a .tflite: zeros per tensor, sparse encoding, m:n patterns.

Reads the flatbuffer with LiteRT's schema; quantized weights count as zero when
they equal their zero point. Used to check that pruning survives conversion.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from tfopt.analyze import flatbuffer as fb
from tfopt.analyze import weights as schedules
from tfopt.errors import InvalidArgumentError

_WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1, "CONV_3D": 1}
_TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


@dataclasses.dataclass
class TensorSparsity:
    """Sparsity of one weight tensor in a .tflite file."""

    name: str
    op: str
    shape: list[int]
    dtype: str
    sparsity: float
    sparse_encoded: bool
    m_by_n_holds: bool | None


@dataclasses.dataclass
class TFLiteSparsity:
    """Per-weight sparsity found in a .tflite flatbuffer (see `tflite_sparsity`)."""

    tensors: list[TensorSparsity]
    m_by_n: tuple[int, int] | None

    def summary(self) -> str:
        lines = [f"{'tensor':<48} {'op':<18} {'dtype':<8} {'sparsity':>8} {'encoded':>8} {'m:n':>5}"]
        for t in self.tensors:
            mn = "-" if t.m_by_n_holds is None else ("yes" if t.m_by_n_holds else "NO")
            lines.append(f"{t.name[-48:]:<48} {t.op:<18} {t.dtype:<8} {t.sparsity:>8.3f} {str(t.sparse_encoded):>8} {mn:>5}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"m_by_n": list(self.m_by_n) if self.m_by_n else None, "tensors": [dataclasses.asdict(t) for t in self.tensors]}


def tflite_sparsity(tflite: Any, *, m_by_n: tuple[int, int] | None = None) -> TFLiteSparsity:
    """Reports the fraction of zeros in each weight of a .tflite (conv, depthwise, fully connected).

    Quantized weights count as zero when they equal their zero point. Weights
    stored with LiteRT's sparse encoding (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`,
    fed through a DENSIFY op) are measured from their stored values. With
    `m_by_n`, also checks the m:n pattern along the input-channel (last) axis.

    Args:
        tflite: the flatbuffer bytes, a path to a .tflite file, or a `ConversionResult`.
        m_by_n: `(m, n)` pattern to check, e.g. `(2, 4)`. Defaults to `None`.

    Returns:
        A `TFLiteSparsity` with one entry per weight tensor.

    Raises:
        InvalidArgumentError: "not a valid .tflite ..." for bytes that are not a well-formed model,
            or `m_by_n` that is not a pair of ints.

    Example:

    >>> import keras, tfopt
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    >>> tfopt.tflite_sparsity(tfopt.convert(m)).tensors[0].sparsity
    1.0
    """
    model = fb.read_model(tflite)
    if m_by_n is not None:
        if (not isinstance(m_by_n, (tuple, list)) or len(m_by_n) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in m_by_n)):
            raise InvalidArgumentError(f"m_by_n must be a pair of ints such as (2, 4). Received: m_by_n={m_by_n!r}.")
    found = []
    for graph in model.subgraphs:
        producers = {out: op for op in graph.operators for out in op.outputs}
        for op in graph.operators:
            name = fb.op_name(model, op.opcodeIndex)
            if name not in _WEIGHT_OPS or len(op.inputs) <= _WEIGHT_OPS[name] or op.inputs[_WEIGHT_OPS[name]] < 0:
                continue
            index = op.inputs[_WEIGHT_OPS[name]]
            producer = producers.get(index)
            if producer is not None and producer.inputs and producer.inputs[0] >= 0:
                index = producer.inputs[0]  # DENSIFY (sparse storage) or DEQUANTIZE (float16) in front of the op
            tensor = graph.tensors[index]
            data = fb.buffer_bytes(model, tensor)
            if data is None or tensor.type not in _TFLITE_DTYPES:
                continue
            dtype = np.dtype(_TFLITE_DTYPES[tensor.type])
            if data.size % dtype.itemsize:
                raise InvalidArgumentError(
                    f"not a valid .tflite: weight {fb.decode_name(tensor.name)!r} holds {data.size} bytes, not a "
                    f"whole number of {dtype.name} values. Pass a .tflite written by the TFLite converter."
                )
            values = data.view(dtype)
            shape = list(tensor.shape)
            size = math.prod(shape)
            zero = 0
            quant = tensor.quantization
            if quant is not None and quant.zeroPoint is not None and len(quant.zeroPoint) == 1:
                zero = int(quant.zeroPoint[0])
            encoded = tensor.sparsity is not None
            if encoded:
                sparsity = 1.0 - float(np.count_nonzero(values != zero)) / size if size > 0 else 0.0
                holds = None
            else:
                if size != values.size:
                    raise InvalidArgumentError(
                        f"not a valid .tflite: weight {fb.decode_name(tensor.name)!r} has shape {shape} "
                        f"({size} values) but its buffer holds {values.size}. Pass a .tflite written by the TFLite "
                        "converter."
                    )
                dense = values.reshape(shape)
                sparsity = schedules.sparsity_of(dense.astype(np.int64) - zero if dense.dtype.kind == "i" else dense)
                holds = None
                if m_by_n and name != "DEPTHWISE_CONV_2D" and dense.ndim >= 1 and dense.size:
                    holds = schedules.m_by_n_holds(dense != zero, *m_by_n, axis=-1)
            found.append(TensorSparsity(fb.decode_name(tensor.name), name, shape, dtype.name, sparsity, encoded, holds))
    return TFLiteSparsity(tensors=found, m_by_n=tuple(m_by_n) if m_by_n else None)
