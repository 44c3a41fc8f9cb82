"""Rewrites of a .tflite for TFLite Micro: its graph facts for planning, an operator order and arena plan
written in (`OfflineMemoryAllocation`), weight tensors re-stored. Reads and writes through
`tfopt.analyze.flatbuffer` (the one module that touches LiteRT's schema)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tfopt.errors import InvalidArgumentError
from tfopt.analyze.flatbuffer import (
    _NUMPY, OFFLINE_PLAN_METADATA, _itemsize, _name, buffer_bytes, op_name, read_model, schema_module, serialize,
    type_name,
)


def micro_graph(tflite: Any) -> dict[str, Any]:
    """The first subgraph as the TFLite Micro planner sees it: ops, tensor bytes, graph inputs and outputs.

    `sizes[t]` is the bytes TFLite Micro allocates in the arena for tensor `t`
    (0 for constants, variables and empty tensors); `static` is False when a
    planned tensor has an unknown dimension.
    """
    model = read_model(tflite)
    subgraph = model.subgraphs[0]
    sizes, static = [], True
    for tensor in subgraph.tensors:
        if buffer_bytes(model, tensor) is not None or tensor.isVariable:
            sizes.append(0)
            continue
        if any(d < 0 for d in tensor.shape) or any(d < 0 for d in tensor.shapeSignature or []):
            static = False
        sizes.append(int(np.prod(tensor.shape, dtype=np.int64)) * _itemsize(type_name(tensor.type)) if tensor.shape else
                     _itemsize(type_name(tensor.type)))
    return {
        "ops": [([i for i in op.inputs if i >= 0], list(op.outputs)) for op in subgraph.operators],
        "op_names": [op_name(model, op.opcodeIndex) for op in subgraph.operators],
        "sizes": sizes,
        "inputs": list(subgraph.inputs),
        "outputs": list(subgraph.outputs),
        "num_subgraphs": len(model.subgraphs),
        "static": static,
        "has_offline_plan": any(_name(m.name) == OFFLINE_PLAN_METADATA for m in model.metadata or []),
    }


def write_micro_plan(tflite: Any, *, order: list[int] | None, offsets: list[int] | None) -> bytes:
    """A copy of a single-subgraph .tflite with its operators in `order` and an `OfflineMemoryAllocation` plan.

    `offsets[t]` is tensor `t`'s byte offset in TFLite Micro's arena head, or -1
    to let TFLite Micro place it (its docs/memory_management.md format: int32
    version 1, subgraph count, tensor count, one offset per tensor). `order=None`
    keeps the operator order; `offsets=None` removes any offline plan. An
    existing plan is replaced. The result is not yet aligned for a device
    (`tfopt.export.micro_plan` runs TFLite Micro's aligner on it).
    """
    schema = schema_module()

    model = read_model(tflite)
    if len(model.subgraphs) != 1:
        raise InvalidArgumentError(
            f"a TFLite Micro memory plan is written for single-subgraph models; this one has "
            f"{len(model.subgraphs)} subgraphs. Keep TFLite Micro's own plan for it."
        )
    subgraph = model.subgraphs[0]
    if order is not None:
        if sorted(order) != list(range(len(subgraph.operators))):
            raise InvalidArgumentError(
                f"order must be a permutation of the {len(subgraph.operators)} operators. Received: {order}."
            )
        subgraph.operators = [subgraph.operators[k] for k in order]
    kept = [m for m in model.metadata or [] if _name(m.name) != OFFLINE_PLAN_METADATA]
    if offsets is not None:
        if len(offsets) != len(subgraph.tensors):
            raise InvalidArgumentError(
                f"offsets must hold one entry per tensor ({len(subgraph.tensors)}). Received: {len(offsets)}."
            )
        words = np.asarray([1, 1, len(offsets), *offsets], dtype="<i4")
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(words.tobytes(), dtype=np.uint8).copy()
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = OFFLINE_PLAN_METADATA
        entry.buffer = len(model.buffers) - 1
        kept.append(entry)
    model.metadata = kept
    return serialize(model)


# Weight and bias inputs of the ops whose constant inputs TFLite Micro's DECODE may replace.
_MICRO_WEIGHT_INPUTS = {"CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2), "TRANSPOSE_CONV": (1, 3)}


def weight_tensors_for_micro(tflite: Any) -> list[dict[str, Any]]:
    """Constant weight and bias tensors of the first subgraph's conv / fully-connected ops, with their values.

    Each entry: `index` (tensor index), `name`, `values` (an array of the stored
    dtype and shape), `num_scales` (quantization scales) and
    `quantized_dimension` (for per-channel tensors, else `None`). Used by
    `tfopt.export.micro` to choose TFLite Micro compression.
    """
    model = read_model(tflite)
    subgraph = model.subgraphs[0]
    found: dict[int, dict[str, Any]] = {}
    for op in subgraph.operators:
        positions = _MICRO_WEIGHT_INPUTS.get(op_name(model, op.opcodeIndex), ())
        for position in positions:
            if position >= len(op.inputs) or op.inputs[position] < 0 or op.inputs[position] in found:
                continue
            index = op.inputs[position]
            tensor = subgraph.tensors[index]
            data = buffer_bytes(model, tensor)
            np_dtype = _NUMPY.get(type_name(tensor.type))
            if data is None or np_dtype is None or tensor.isVariable:
                continue
            count = int(np.prod(tensor.shape, dtype=np.int64)) if tensor.shape else 1
            if data.size != count * np.dtype(np_dtype).itemsize:
                continue
            q = tensor.quantization
            scales = 0 if q is None or q.scale is None else len(q.scale)
            found[index] = {
                "index": index,
                "name": _name(tensor.name),
                "values": data.view(np_dtype).reshape(tensor.shape),
                "num_scales": scales,
                "quantized_dimension": int(q.quantizedDimension) if scales > 1 else None,
            }
    return list(found.values())


def rewrite_weights(tflite: Any, values: dict[int, np.ndarray], *, scales: dict[int, np.ndarray] | None = None,
                    int4: bool = False) -> bytes:
    """A copy of a .tflite with new int8 values (and scales) for constant tensors of the first subgraph.

    With `int4=True` the tensors are stored as INT4 (two values a byte, low
    nibble first, as LiteRT and TFLite Micro unpack them); every value must
    then lie in [-8, 7]. Used to test which TFLite Micro kernels take 4-bit weights.
    """
    schema = schema_module()

    model = read_model(tflite)
    tensors = model.subgraphs[0].tensors
    for index, array in values.items():
        tensor = tensors[index]
        q = np.asarray(array).astype(np.int8)
        if list(q.shape) != list(tensor.shape) or buffer_bytes(model, tensor) is None:
            raise InvalidArgumentError(
                f"tensor {index} is a constant of shape {tensor.shape}; received values of shape {list(q.shape)}."
            )
        if int4:
            if q.min() < -8 or q.max() > 7:
                raise InvalidArgumentError(
                    f"INT4 values must lie in [-8, 7]; tensor {index} holds [{q.min()}, {q.max()}]."
                )
            flat = (q.reshape(-1).astype(np.int16) & 0x0F).astype(np.uint8)
            if flat.size % 2:
                flat = np.append(flat, np.uint8(0))
            data = flat[0::2] | (flat[1::2] << 4)
            tensor.type = schema.TensorType.INT4
        else:
            data = q.view(np.uint8).reshape(-1)
            tensor.type = schema.TensorType.INT8
        model.buffers[tensor.buffer].data = np.ascontiguousarray(data, dtype=np.uint8)
        if scales and index in scales:
            tensor.quantization.scale = np.asarray(scales[index], dtype=np.float32)
    return serialize(model)
