"""Reads a .tflite flatbuffer: the one parser of tfopt, and `inspect_tflite` (ops, dtypes, precision).

Every reader of .tflite bytes in tfopt goes through `read_model`: it parses with
LiteRT's own schema (`ai_edge_litert.tools.flatbuffer_utils`, pure Python) and
then checks that every index in the file points somewhere (operator codes,
tensors, buffers) and every tensor type is known, so code downstream can walk
the model without guarding each access. Untrusted bytes (truncated, fuzzed)
give `InvalidArgumentError("not a valid .tflite ...")`, never a crash.
`op_name` is the one table from operator codes to names.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

import numpy as np
from tfopt.errors import InvalidArgumentError, InvalidTypeError, MissingFileError

# Ops whose cost dominates inference; their precision is what "quantized" means to a user.
COMPUTE_OPS = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "TRANSPOSE_CONV",
        "CONV_3D",
        "BATCH_MATMUL",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "EMBEDDING_LOOKUP",
    }
)


# Ops that hold weights -> the input index of their weight tensor: the one table of "ops with weights".
WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1, "CONV_3D": 1}


def tflite_bytes(tflite: Any) -> bytes:
    """Returns flatbuffer bytes from bytes, a path, or an object with a `.tflite` attribute.

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: when the content is not a TFLite flatbuffer.
        TypeError: for any other kind of object.
    """
    if hasattr(tflite, "tflite") and isinstance(getattr(tflite, "tflite"), (bytes, bytearray)):
        content = bytes(tflite.tflite)
        where = "the conversion result"
    elif isinstance(tflite, (bytes, bytearray, memoryview)):
        content = bytes(tflite)
        where = "the given bytes"
    elif isinstance(tflite, (str, os.PathLike)):
        path = os.fspath(tflite)
        if not os.path.isfile(path):
            raise MissingFileError(f"TFLite file not found: {path!r}. Pass the path of an existing .tflite file.")
        with open(path, "rb") as handle:
            content = handle.read()
        where = repr(path)
    else:
        raise InvalidTypeError(
            "Expected a .tflite model as bytes, a file path, or a tfopt.ConversionResult. "
            f"Received: an object of type {type(tflite).__name__}."
        )
    if len(content) < 8 or content[4:8] != b"TFL3":
        head = content[:8]
        raise InvalidArgumentError(
            f"not a valid .tflite: {where} is not a TFLite flatbuffer ({len(content)} bytes; the file identifier at bytes 4-8 is "
            f"{head[4:8]!r}, expected b'TFL3'). Pass a .tflite file written by the TFLite converter or tfopt.convert."
        )
    return content


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, shape (-1 for dynamic dims), dtype and quantization."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One operator: its name, the dtypes it reads and writes, and the precision it runs at."""

    index: int
    subgraph: int
    name: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    precision: str  # int8, int4, int16x8, int16x4, hybrid, hybrid-int4, float16-weights, float32, or other


@dataclasses.dataclass(frozen=True)
class WeightInfo:
    """A constant tensor: name, dtype, shape, element count and fraction of exact zeros."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    num_elements: int
    zero_fraction: float
    num_unique: int


@dataclasses.dataclass(frozen=True)
class TFLiteInspection:
    """What a .tflite really holds: its ops, their precision, inputs, outputs and weights."""

    size_bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: list[OpInfo]
    weights: list[WeightInfo]
    signatures: dict[str, dict[str, list[str]]]
    custom_ops: list[str]

    @property
    def op_counts(self) -> dict[str, int]:
        """How many times each op type appears."""
        return dict(collections.Counter(op.name for op in self.ops))

    @property
    def compute_ops(self) -> list[OpInfo]:
        """The convolution / fully-connected / matmul ops."""
        return [op for op in self.ops if op.name in COMPUTE_OPS]

    @property
    def float_compute_ops(self) -> list[OpInfo]:
        """Compute ops that still run on float32 weights and activations."""
        return [
            op
            for op in self.compute_ops
            if op.precision in ("float32", "float16-weights") or op.precision.startswith("dequantized")
        ]

    @property
    def precision_counts(self) -> dict[str, int]:
        """Compute ops by precision, e.g. {'int8': 5, 'float32': 1}."""
        return dict(collections.Counter(op.precision for op in self.compute_ops))

    @property
    def weight_dtypes(self) -> dict[str, int]:
        """Bytes of constant data by dtype."""
        totals: dict[str, int] = collections.defaultdict(int)
        for w in self.weights:
            totals[w.dtype] += (w.num_elements + 1) // 2 if w.dtype == "INT4" else w.num_elements * _itemsize(w.dtype)
        return dict(totals)

    def summary(self) -> str:
        """A readable report of the inspection."""
        lines = [f"TFLite model: {self.size_bytes / 1024:.1f} KB, {len(self.ops)} ops"]
        for tensor in self.inputs:
            lines.append(f"  input  {tensor.name}: {list(tensor.shape)} {tensor.dtype}" + _quant_text(tensor))
        for tensor in self.outputs:
            lines.append(f"  output {tensor.name}: {list(tensor.shape)} {tensor.dtype}" + _quant_text(tensor))
        lines.append(f"  compute ops by precision: {self.precision_counts or 'none'}")
        lines.append(f"  constant bytes by dtype: {self.weight_dtypes}")
        if self.float_compute_ops:
            names = ", ".join(f"{op.name}#{op.index}" for op in self.float_compute_ops[:10])
            lines.append(f"  compute ops left in float: {len(self.float_compute_ops)} ({names})")
        if self.custom_ops:
            lines.append(f"  custom ops: {self.custom_ops}")
        lines.append(f"  op counts: {self.op_counts}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = dataclasses.asdict(self)
        out.update(
            op_counts=self.op_counts,
            precision_counts=self.precision_counts,
            float_compute_ops=[f"{op.name}#{op.index}" for op in self.float_compute_ops],
            weight_bytes_by_dtype=self.weight_dtypes,
        )
        return out


def _quant_text(tensor: TensorInfo) -> str:
    if tensor.scale is None:
        return ""
    return f" (scale={tensor.scale:.6g}, zero_point={tensor.zero_point})"


_ITEMSIZE = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "INT16": 2, "INT8": 1, "FLOAT64": 8,
             "BOOL": 1, "INT4": 1, "UINT32": 4, "UINT16": 2, "BFLOAT16": 2}
_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8, "INT64": np.int64,
          "INT16": np.int16, "INT8": np.int8, "FLOAT64": np.float64, "UINT32": np.uint32, "UINT16": np.uint16}


def _itemsize(dtype: str) -> int:
    return _ITEMSIZE.get(dtype.upper(), 1)


def _not_valid(where: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"not a valid .tflite ({where}): {problem}. Pass a .tflite file written by the TFLite converter or "
        "tfopt.convert; if it was copied or downloaded, fetch it again."
    )


def read_model(tflite: Any, *, where: str | None = None):
    """Parses and checks a .tflite; returns LiteRT's object API (`schema_py_generated.ModelT`).

    After this call every operator's `opcodeIndex`, every tensor index in operator
    and subgraph inputs/outputs (`-1` only for omitted optional inputs), every
    tensor's `buffer` and `type` are valid; shapes are lists of ints.

    Args:
        tflite: flatbuffer bytes, a path to a .tflite file, or a `ConversionResult`.
        where: how to name the source in messages. Defaults to a description of `tflite`.

    Raises:
        InvalidArgumentError: "not a valid .tflite ..." for anything that is not a well-formed model.
        MissingFileError: for a path that does not exist.
    """
    content = tflite_bytes(tflite)
    where = where or (repr(os.fspath(tflite)) if isinstance(tflite, (str, os.PathLike)) else f"{len(content)} bytes")
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    except Exception as err:  # noqa: BLE001 - the generated parser raises anything on damaged bytes
        raise _not_valid(where, f"the flatbuffer is malformed or truncated ({type(err).__name__})") from err
    _validate(model, where)
    return model


def _int_list(values, what: str, where: str) -> list[int]:
    if values is None:
        return []
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError, OverflowError) as err:
        raise _not_valid(where, f"{what} is not a list of integers") from err
    return out


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate(model, where: str) -> None:
    """Checks the cross references of a parsed model; normalises index and shape vectors to lists of ints."""
    subgraphs = model.subgraphs or []
    if not subgraphs:
        raise _not_valid(where, "the model has no subgraph")
    codes = model.operatorCodes or []
    model.operatorCodes = codes
    buffers = model.buffers or []
    model.buffers = buffers
    for i, code in enumerate(codes):
        if not _is_int(code.builtinCode) or not _is_int(code.deprecatedBuiltinCode):
            raise _not_valid(where, f"operator code {i} is not an integer")
        code.builtinCode, code.deprecatedBuiltinCode = int(code.builtinCode), int(code.deprecatedBuiltinCode)
    for i, buffer in enumerate(buffers):
        if buffer.data is not None and not isinstance(buffer.data, (np.ndarray, bytes, bytearray)):
            raise _not_valid(where, f"buffer {i} holds no byte data")
    for g, subgraph in enumerate(subgraphs):
        tensors = subgraph.tensors or []
        subgraph.tensors = tensors
        subgraph.operators = subgraph.operators or []
        for t, tensor in enumerate(tensors):
            if not _is_int(tensor.type) or int(tensor.type) not in _type_names():
                raise _not_valid(where, f"subgraph {g} tensor {t} has an unknown type {tensor.type!r}")
            tensor.shape = _int_list(tensor.shape, f"subgraph {g} tensor {t} shape", where)
            if tensor.shapeSignature is not None:
                tensor.shapeSignature = _int_list(tensor.shapeSignature, f"subgraph {g} tensor {t} shape", where)
            if any(d < -1 for d in tensor.shape + list(tensor.shapeSignature or [])):
                raise _not_valid(where, f"subgraph {g} tensor {t} has a negative dimension {tensor.shape}")
            if not _is_int(tensor.buffer) or not 0 <= tensor.buffer < max(len(buffers), 1):
                raise _not_valid(where, f"subgraph {g} tensor {t} points to buffer {tensor.buffer} of {len(buffers)}")
            tensor.buffer = int(tensor.buffer)
        for name in ("inputs", "outputs"):
            ids = _int_list(getattr(subgraph, name), f"subgraph {g} {name}", where)
            if any(not 0 <= i < len(tensors) for i in ids):
                raise _not_valid(where, f"subgraph {g} {name} {ids} point outside its {len(tensors)} tensors")
            setattr(subgraph, name, ids)
        for o, op in enumerate(subgraph.operators):
            if not _is_int(op.opcodeIndex) or not 0 <= op.opcodeIndex < len(codes):
                raise _not_valid(where, f"subgraph {g} operator {o} uses operator code {op.opcodeIndex} of {len(codes)}")
            op.opcodeIndex = int(op.opcodeIndex)
            op.inputs = _int_list(op.inputs, f"subgraph {g} operator {o} inputs", where)
            op.outputs = _int_list(op.outputs, f"subgraph {g} operator {o} outputs", where)
            if any(not -1 <= i < len(tensors) for i in op.inputs) or any(
                not 0 <= i < len(tensors) for i in op.outputs
            ):
                raise _not_valid(where, f"subgraph {g} operator {o} reads or writes a tensor outside its {len(tensors)}")


def op_name(model, opcode_index: int) -> str:
    """The operator name of `model.operatorCodes[opcode_index]`, e.g. `"CONV_2D"`; `"CUSTOM"` for custom ops.

    The one op-name table of tfopt (from LiteRT's schema); unknown codes give `"BUILTIN_<code>"`.
    """
    code = model.operatorCodes[opcode_index]
    number = max(code.builtinCode, code.deprecatedBuiltinCode)
    return _op_names().get(number, f"BUILTIN_{number}")


def custom_code(model, opcode_index: int) -> str:
    """The custom op's name (`customCode`) of an operator code, or `""`."""
    return _name(model.operatorCodes[opcode_index].customCode)


def type_name(tensor_type: int) -> str:
    """The TFLite tensor type name, e.g. `"INT8"`."""
    return _type_names().get(tensor_type, f"TYPE_{tensor_type}")


def buffer_bytes(model, tensor) -> np.ndarray | None:
    """The constant data of a tensor as uint8, or `None` for activations (a validated model)."""
    if tensor.buffer <= 0 or tensor.buffer >= len(model.buffers):
        return None
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    return np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)


_CACHE: dict[str, dict[int, str]] = {}


def _schema_table(enum_name: str) -> dict[int, str]:
    if enum_name not in _CACHE:
        from ai_edge_litert import schema_py_generated as schema

        enum = getattr(schema, enum_name)
        _CACHE[enum_name] = {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}
    return _CACHE[enum_name]


def _op_names() -> dict[int, str]:
    return _schema_table("BuiltinOperator")


def _type_names() -> dict[int, str]:
    return _schema_table("TensorType")


def inspect_tflite(tflite: Any) -> TFLiteInspection:
    """Inspects a .tflite: ops and the precision each compute op really runs at.

    Use it after conversion to check that quantization happened where you think:
    a converter can leave convolutions in float32 between DEQUANTIZE/QUANTIZE
    without a warning. `tfopt.convert` calls it for you.

    Args:
        tflite: flatbuffer bytes, a path to a .tflite file, or a `ConversionResult`.

    Returns:
        A `TFLiteInspection`; print `.summary()` or read `.float_compute_ops`.

    Raises:
        ValueError: if the content is not a valid TFLite flatbuffer.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> info = tfopt.inspect_tflite(tfopt.convert(model, mode="float32"))
    >>> info.precision_counts
    {'float32': 1}
    """
    content = tflite_bytes(tflite)
    model = read_model(content, where=repr(os.fspath(tflite)) if isinstance(tflite, (str, os.PathLike)) else None)
    return _inspect(model, content)


def decode_name(value) -> str:
    """A flatbuffer string (bytes) as text; invalid UTF-8 is replaced, `None` gives `""`."""
    return _name(value)


def _name(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def _inspect(model, content: bytes) -> TFLiteInspection:
    ops: list[OpInfo] = []
    weights: list[WeightInfo] = []
    custom: list[str] = []
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    for sg_index, subgraph in enumerate(model.subgraphs):
        tensors = subgraph.tensors
        constant = {i for i, t in enumerate(tensors) if buffer_bytes(model, t) is not None}
        producers = {}
        for op in subgraph.operators:
            for out in op.outputs:
                producers[out] = op
        for i in sorted(constant):
            weights.append(_weight_info(model, tensors[i]))
        for op_index, op in enumerate(subgraph.operators):
            name = op_name(model, op.opcodeIndex)
            if name == "CUSTOM":
                custom_name = custom_code(model, op.opcodeIndex)
                name = f"CUSTOM:{custom_name}"
                custom.append(custom_name)
            in_types = tuple(type_name(tensors[i].type) if i >= 0 else "NONE" for i in op.inputs)
            out_types = tuple(type_name(tensors[i].type) for i in op.outputs)
            precision = _precision(name, op, tensors, constant, producers, model)
            ops.append(OpInfo(op_index, sg_index, name, in_types, out_types, precision))
        if sg_index == 0:
            inputs = [_tensor_info(tensors[i]) for i in subgraph.inputs]
            outputs = [_tensor_info(tensors[i]) for i in subgraph.outputs]
    signatures = {}
    for sig in model.signatureDefs or []:
        signatures[_name(sig.signatureKey)] = {
            "inputs": [_name(t.name) for t in sig.inputs or []],
            "outputs": [_name(t.name) for t in sig.outputs or []],
        }
    return TFLiteInspection(len(content), inputs, outputs, ops, weights, signatures, sorted(set(custom)))


def _weight_info(model, tensor) -> WeightInfo:
    dtype = type_name(tensor.type)
    data = buffer_bytes(model, tensor)
    shape = tuple(tensor.shape)
    np_dtype = _NUMPY.get(dtype.upper())
    if dtype == "INT4":  # two 4-bit values a byte, low nibble first
        low = (data & 0x0F).astype(np.int8)
        high = (data >> 4).astype(np.int8)
        nibbles = np.stack([low, high], axis=-1).reshape(-1)
        nibbles = np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)
        values = nibbles[: int(np.prod(shape)) if shape else nibbles.size]
    elif np_dtype is not None and data.size % np.dtype(np_dtype).itemsize == 0:
        values = data.view(np_dtype)
    else:
        values = data
    zero = float(np.mean(values == 0)) if values.size else 0.0
    unique = int(np.unique(values).size) if values.size else 0
    return WeightInfo(_name(tensor.name), dtype, shape, int(values.size), zero, unique)


def _tensor_info(tensor) -> TensorInfo:
    shape = tuple(tensor.shapeSignature if tensor.shapeSignature else tensor.shape)
    scale = zero_point = None
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale) == 1 and q.zeroPoint is not None and len(q.zeroPoint):
        scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0])
    return TensorInfo(_name(tensor.name), shape, type_name(tensor.type), scale, zero_point)


def _precision(name, op, tensors, constant, producers, model) -> str:
    if name not in COMPUTE_OPS:
        return "other"
    ids = [i for i in op.inputs if i >= 0]
    if len(ids) < 2:
        return "other"
    activation, weight = ids[0], ids[1]
    act_type = type_name(tensors[activation].type)
    w_type = type_name(tensors[weight].type)
    if name == "BATCH_MATMUL" and weight not in constant:
        return {"INT8": "int8", "INT16": "int16x8"}.get(act_type, act_type.lower())
    if act_type == "INT8" and w_type == "INT8":
        return "int8"
    if act_type == "INT8" and w_type == "INT4":
        return "int4"  # 4-bit weights, int8 activations
    if act_type == "INT16" and w_type == "INT8":
        return "int16x8"
    if act_type == "INT16" and w_type == "INT4":
        return "int16x4"
    if act_type == "FLOAT32" and w_type == "INT4":
        return "hybrid-int4"  # 4-bit weights, activations quantized at run time
    if act_type == "FLOAT32" and w_type in ("INT8", "UINT8"):
        return "hybrid"
    if act_type == "FLOAT32" and w_type == "FLOAT32":
        producer = producers.get(weight)
        if producer is not None and op_name(model, producer.opcodeIndex) == "DEQUANTIZE":
            sources = [i for i in producer.inputs if i >= 0]
            source_type = type_name(tensors[sources[0]].type) if sources else "UNKNOWN"
            return "float16-weights" if source_type == "FLOAT16" else "dequantized-" + source_type.lower()
        return "float32"
    return f"{act_type.lower()}/{w_type.lower()}"


# --- TFLite Micro memory plans (used by tfopt.export.micro_plan; self-contained) ---

OFFLINE_PLAN_METADATA = "OfflineMemoryAllocation"


def schema_module():
    """LiteRT's schema module (`schema_py_generated`): enums and object types for a writer of .tflite files."""
    from ai_edge_litert import schema_py_generated as schema

    return schema


def serialize(model) -> bytes:
    """The bytes of a (changed) object-API model, as LiteRT's own writer lays them out."""
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
