"""Cost graphs for the profiler: nodes in execution order, tensors with shapes and sizes.

`profile.py` builds one from a Keras model; this module holds the graph types and
the reader that builds one from a `.tflite` flatbuffer.
"""

from __future__ import annotations

import dataclasses

from tfopt.analyze import flatbuffer as fb
from tfopt.analyze import flops as F


@dataclasses.dataclass
class _Node:
    name: str
    kind: str
    inputs: list[str]
    outputs: list[str]
    params: int = 0
    macs: int | None = 0
    other_ops: int = 0
    stored_bytes: int | None = None


@dataclasses.dataclass
class _Graph:
    name: str
    source: str
    nodes: list[_Node] = dataclasses.field(default_factory=list)
    tensor_shapes: dict[str, tuple] = dataclasses.field(default_factory=dict)
    tensor_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    input_ids: list[str] = dataclasses.field(default_factory=list)
    output_ids: list[str] = dataclasses.field(default_factory=list)
    trainable_params: int | None = None


def _tflite_graph(content: bytes, *, batch_size: int, name: str) -> _Graph:
    """Reads the main subgraph of a flatbuffer into a cost graph (float and quantized models).

    The bytes are parsed and checked by `tfopt.analyze.flatbuffer.read_model`, so a damaged
    file gives `InvalidArgumentError("not a valid .tflite ...")`.
    """
    model = fb.read_model(content, where=repr(name))
    sub = model.subgraphs[0]
    tensors = sub.tensors

    def data_of(index: int):
        return fb.buffer_bytes(model, tensors[index])

    def dtype_of(index: int) -> str:
        return fb.type_name(tensors[index].type).lower()

    def shape_of(index: int) -> tuple:
        return tuple(tensors[index].shape)

    first_input = shape_of(sub.inputs[0]) if sub.inputs else ()
    file_batch = first_input[0] if first_input and first_input[0] > 0 else 1
    scale = batch_size / file_batch
    graph = _Graph(name=name, source="tflite", trainable_params=0)
    constants: dict[int, tuple[int, int]] = {}  # tensor -> (elements, stored bytes)
    for index in range(len(tensors)):
        data = data_of(index)
        if data is not None:
            constants[index] = (F.num_elements(shape_of(index)), len(data))
    counted: set[int] = set()

    def add_tensor(index: int) -> str:
        tid = f"t{index}"
        shape = shape_of(index)
        if shape and shape[0] == file_batch:
            shape = (int(round(shape[0] * scale)),) + shape[1:]
        if tid not in graph.tensor_shapes and all(d >= 0 for d in shape):
            graph.tensor_shapes[tid] = shape
            graph.tensor_bytes[tid] = int(F.num_elements(shape) * F.DTYPE_BYTES.get(dtype_of(index), 4))
        return tid

    graph.input_ids = [add_tensor(i) for i in sub.inputs]
    for op in sub.operators:
        kind = fb.op_name(model, op.opcodeIndex)
        if kind == "CUSTOM":
            kind = f"CUSTOM({fb.custom_code(model, op.opcodeIndex)})"
        inputs = [i for i in op.inputs if i >= 0]
        if kind == "DEQUANTIZE" and inputs and op.outputs and all(i in constants for i in inputs):
            # A dequantized constant (float16 / weight-only models) is a weight, not an activation.
            elements, stored = constants[inputs[0]]
            constants[op.outputs[0]] = (elements, stored)
            counted.add(inputs[0])
            continue
        params = stored = 0
        for i in inputs:
            if i in constants and i not in counted:
                counted.add(i)
                params += constants[i][0]
                stored += constants[i][1]
        options = vars(op.builtinOptions) if op.builtinOptions is not None else {}
        try:
            macs, other = F.tflite_op_cost(kind, [shape_of(i) for i in inputs], [shape_of(i) for i in op.outputs],
                                           options)
        except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, OverflowError):
            macs, other = None, 0  # options or shapes that no formula fits: counted as unknown
        raw_name = tensors[op.outputs[0]].name if op.outputs else kind
        graph.nodes.append(_Node(
            name=fb.decode_name(raw_name).split(";")[0] or kind, kind=kind,
            inputs=[add_tensor(i) for i in inputs if i not in constants],
            outputs=[add_tensor(i) for i in op.outputs],
            params=params, macs=None if macs is None else int(round(macs * scale)),
            other_ops=int(round(other * scale)), stored_bytes=stored,
        ))
    graph.output_ids = [f"t{i}" for i in sub.outputs]
    return graph
