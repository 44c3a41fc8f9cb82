"""Sparsity found in the weights of a .tflite: zeros per tensor, sparse encoding, m:n patterns.

Reads the flatbuffer with LiteRT's schema; quantized weights count as zero when
they equal their zero point. Used to check that pruning survives conversion.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.analyze import weights as schedules
from tfopt.analyze.flatbuffer import tflite_bytes

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

    Example:

    >>> import keras, tfopt
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    >>> tfopt.tflite_sparsity(tfopt.convert(m)).tensors[0].sparsity
    1.0
    """
    tflite = tflite_bytes(tflite)
    flatbuffer_utils = _keras.optional_import("ai_edge_litert.tools.flatbuffer_utils", "ai-edge-litert")
    schema = _keras.optional_import("ai_edge_litert.schema_py_generated", "ai-edge-litert")
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    found = []
    for graph in model.subgraphs:
        producers = {out: op for op in graph.operators for out in (op.outputs if op.outputs is not None else [])}
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            if name not in _WEIGHT_OPS or op.inputs is None or len(op.inputs) <= _WEIGHT_OPS[name]:
                continue
            index = int(op.inputs[_WEIGHT_OPS[name]])
            producer = producers.get(index)
            if producer is not None:  # DENSIFY (sparse storage) or DEQUANTIZE (float16) in front of the op
                index = int(producer.inputs[0])
            tensor = graph.tensors[index]
            data = model.buffers[tensor.buffer].data
            if data is None or tensor.type not in _TFLITE_DTYPES:
                continue
            values = np.frombuffer(bytes(bytearray(data)), dtype=_TFLITE_DTYPES[tensor.type])
            shape = [int(d) for d in tensor.shape]
            size = int(np.prod(shape))
            zero = 0
            quant = tensor.quantization
            if quant is not None and quant.zeroPoint is not None and len(quant.zeroPoint) == 1:
                zero = int(quant.zeroPoint[0])
            encoded = tensor.sparsity is not None
            if encoded:
                sparsity = 1.0 - float(np.count_nonzero(values != zero)) / size
                holds = None
            else:
                dense = values.reshape(shape)
                sparsity = schedules.sparsity_of(dense.astype(np.int64) - zero if dense.dtype.kind == "i" else dense)
                holds = schedules.m_by_n_holds(dense != zero, *m_by_n, axis=-1) if m_by_n and name != "DEPTHWISE_CONV_2D" else None
            tensor_name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            found.append(TensorSparsity(tensor_name, name, shape, np.dtype(_TFLITE_DTYPES[tensor.type]).name, sparsity, encoded, holds))
    return TFLiteSparsity(tensors=found, m_by_n=tuple(m_by_n) if m_by_n else None)
