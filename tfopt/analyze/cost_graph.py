"""Cost graphs for the profiler: nodes in execution order, tensors with shapes and sizes.

`profile.py` builds one from a Keras model; this module holds the graph types and
the reader that builds one from a `.tflite` flatbuffer.
"""

from __future__ import annotations

import dataclasses

from tfopt.analyze import flops as F
from tfopt.errors import InvalidArgumentError


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
    """Reads the main subgraph of a flatbuffer into a cost graph (float and quantized models)."""
    from tfopt._keras import optional_import

    if len(content) < 8 or content[4:8] != b"TFL3":
        raise InvalidArgumentError(
            f"Not a TFLite flatbuffer: {name!r} ({len(content)} bytes) lacks the 'TFL3' identifier. "
            "Pass the bytes or path of a .tflite file (e.g. from tfopt.convert)."
        )
    fb = optional_import("ai_edge_litert.tools.flatbuffer_utils", "ai-edge-litert")
    schema = optional_import("ai_edge_litert.schema_py_generated", "ai-edge-litert")
    model = fb.read_model_from_bytearray(bytearray(content))
    sub = model.subgraphs[0]
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    tensors = sub.tensors

    def data_of(index: int):
        buffer = model.buffers[tensors[index].buffer] if tensors[index].buffer < len(model.buffers) else None
        data = getattr(buffer, "data", None)
        return data if data is not None and len(data) else None

    def dtype_of(index: int) -> str:
        return fb.type_to_name(tensors[index].type).lower()

    def shape_of(index: int) -> tuple:
        return tuple(int(d) for d in (tensors[index].shape if tensors[index].shape is not None else ()))

    first_input = shape_of(sub.inputs[0]) if len(sub.inputs) else ()
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
        code = fb.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        kind = op_names.get(code, f"BUILTIN_{code}")
        if kind == "CUSTOM":
            custom = model.operatorCodes[op.opcodeIndex].customCode
            kind = f"CUSTOM({custom.decode() if isinstance(custom, bytes) else custom})"
        inputs = [i for i in op.inputs if i >= 0]
        if kind == "DEQUANTIZE" and inputs and all(i in constants for i in inputs):
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
        except (ValueError, IndexError, TypeError):
            macs, other = None, 0
        raw_name = tensors[op.outputs[0]].name if len(op.outputs) else kind
        graph.nodes.append(_Node(
            name=(raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)).split(";")[0], kind=kind,
            inputs=[add_tensor(i) for i in inputs if i not in constants],
            outputs=[add_tensor(i) for i in op.outputs],
            params=params, macs=None if macs is None else int(round(macs * scale)),
            other_ops=int(round(other * scale)), stored_bytes=stored,
        ))
    graph.output_ids = [f"t{i}" for i in sub.outputs]
    return graph
