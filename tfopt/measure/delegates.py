"""Which ops of a .tflite each delegate takes: XNNPACK (measured) and the GPU delegate (checked offline).

XNNPACK coverage is read from the LiteRT interpreter's execution plan after the
default delegate is applied (in the measurement worker, a child process, as
`tfopt.benchmark` does). GPU
compatibility cannot be measured without a phone GPU, so it is checked offline:
LiteRT's model analyzer gives its verdict, and tfopt applies the GPU delegate's
per-op rules by name, because the analyzer shipped in ai-edge-litert 2.3.0 /
TF 2.21 flags nothing (measured: it calls a model with an unknown custom op and
TOPK_V2 "compatible with GPU delegate").
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from tfopt.measure._worker import run_task
from tfopt.measure.benchmark import BenchmarkError, benchmark
from tfopt.analyze.flatbuffer import inspect_tflite, tflite_bytes

# Builtin ops the GPU delegate's compatibility checker accepts (TensorFlow Lite
# tools/versioning/gpu_compatibility.cc, read for TF 2.21); some have extra limits.
GPU_OPS = frozenset(
    [
        "ABS",
        "ADD",
        "ADD_N",
        "ATAN2",
        "AVERAGE_POOL_2D",
        "BATCH_MATMUL",
        "CAST",
        "CEIL",
        "CONCATENATION",
        "CONV_2D",
        "COS",
        "CUMSUM",
        "DENSIFY",
        "DEPTHWISE_CONV_2D",
        "DEPTH_TO_SPACE",
        "DEQUANTIZE",
        "DIV",
        "DYNAMIC_UPDATE_SLICE",
        "ELU",
        "EMBEDDING_LOOKUP",
        "EQUAL",
        "EXP",
        "FLOOR",
        "FLOOR_DIV",
        "FLOOR_MOD",
        "FULLY_CONNECTED",
        "GATHER",
        "GELU",
        "GREATER",
        "GREATER_EQUAL",
        "HARD_SWISH",
        "LEAKY_RELU",
        "LESS",
        "LESS_EQUAL",
        "LOG",
        "LOGICAL_AND",
        "LOGISTIC",
        "LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MIRROR_PAD",
        "MUL",
        "NEG",
        "NOT_EQUAL",
        "ONE_HOT",
        "PACK",
        "PAD",
        "PADV2",
        "POW",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "REDUCE_PROD",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SELECT",
        "SELECT_V2",
        "SIGN",
        "SIN",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SPLIT_V",
        "SQRT",
        "SQUARE",
        "SQUARED_DIFFERENCE",
        "STABLEHLO_CLAMP",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TILE",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    ]
)
GPU_CUSTOM_OPS = frozenset(
    {
        "Convolution2DTransposeBias",
        "MaxPoolingWithArgmax2D",
        "MaxUnpooling2D",
        "Resampler",
    }
)
_GPU_TYPES = frozenset({"FLOAT32", "FLOAT16", "INT8", "UINT8", "INT32", "BOOL", "INT4"})


@dataclasses.dataclass(frozen=True)
class OpDelegation:
    """One op: its precision, whether XNNPACK took it, and whether the GPU delegate can."""

    index: int
    subgraph: int
    op: str
    precision: str
    xnnpack: bool | None
    gpu: bool
    gpu_reason: str = ""


@dataclasses.dataclass(frozen=True)
class DelegateReport:
    """Delegate coverage of a .tflite, op by op."""

    ops: tuple[OpDelegation, ...]
    xnnpack_delegated_ops: int | None
    xnnpack_total_ops: int | None
    gpu_compatible: bool
    analyzer_gpu_verdict: bool | None
    signatures: dict[str, dict[str, list[str]]]
    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]
    notes: tuple[str, ...] = ()
    analyzer_text: str = dataclasses.field(default="", repr=False)

    @property
    def gpu_blockers(self) -> tuple[str, ...]:
        """`OP#index: reason` for each op the GPU delegate would leave to the CPU."""
        return tuple(f"{o.op}#{o.index}: {o.gpu_reason}" for o in self.ops if not o.gpu)

    @property
    def xnnpack_undelegated(self) -> tuple[str, ...]:
        """`OP#index` of each op XNNPACK did not take."""
        return tuple(f"{o.op}#{o.index}" for o in self.ops if o.xnnpack is False)

    def summary(self) -> str:
        """A readable report with one line per op type."""
        lines = []
        if self.xnnpack_total_ops is not None:
            left = (
                f" (not taken: {', '.join(self.xnnpack_undelegated[:8])})"
                if self.xnnpack_undelegated
                else ""
            )
            lines.append(
                f"XNNPACK: took {self.xnnpack_delegated_ops}/{self.xnnpack_total_ops} ops{left}"
            )
        else:
            lines.append("XNNPACK: unknown (the model did not run on LiteRT here)")
        verdict = (
            "compatible"
            if self.gpu_compatible
            else f"{len(self.gpu_blockers)} op(s) would fall back to the CPU"
        )
        lines.append(f"GPU delegate (offline rules): {verdict}")
        lines.extend(f"  {b}" for b in self.gpu_blockers[:12])
        for key, sig in self.signatures.items():
            lines.append(
                f"signature {key!r}: inputs {sig['inputs']} -> outputs {sig['outputs']}"
            )
        lines.append(f"{'op':<28}{'count':>6}{'XNNPACK':>10}{'GPU':>6}  precision")
        for name, rows in _by_type(self.ops).items():
            xnn = sum(1 for r in rows if r.xnnpack)
            known = any(r.xnnpack is not None for r in rows)
            gpu = sum(1 for r in rows if r.gpu)
            precisions = (
                ",".join(sorted({r.precision for r in rows if r.precision != "other"}))
                or "-"
            )
            lines.append(
                f"{name:<28}{len(rows):>6}{(f'{xnn}/{len(rows)}' if known else '-'):>10}{f'{gpu}/{len(rows)}':>6}  {precisions}"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the analyzer text left out)."""
        out = dataclasses.asdict(self)
        out.pop("analyzer_text")
        out.update(
            gpu_blockers=list(self.gpu_blockers),
            xnnpack_undelegated=list(self.xnnpack_undelegated),
        )
        return out


def _by_type(ops) -> dict[str, list[OpDelegation]]:
    groups: dict[str, list[OpDelegation]] = {}
    for op in ops:
        groups.setdefault(op.op, []).append(op)
    return groups


def delegate_report(
    tflite: Any,
    *,
    num_threads: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    timeout: float = 300.0,
) -> DelegateReport:
    """Reports, op by op, what XNNPACK takes (measured on LiteRT) and what the GPU delegate can take.

    Use it before shipping a .tflite to phones: an op XNNPACK leaves to the
    reference kernels (e.g. a hybrid dynamic-range op) costs CPU time, and an op
    the GPU delegate rejects splits the graph between GPU and CPU.

    Args:
        tflite: flatbuffer bytes, a .tflite path, or a `ConversionResult`.
        num_threads: interpreter threads for the XNNPACK run. Defaults to `1`.
        input_shapes: concrete shapes for dynamic inputs, as in `tfopt.benchmark`.
            Defaults to `None`.
        timeout: seconds for each step in the measurement worker. Defaults to `300`.

    Returns:
        A `DelegateReport`: per-op `xnnpack` / `gpu` flags, counts, signatures,
        the GPU blockers with reasons, and the analyzer's own verdict.

    Raises:
        ValueError: not a TFLite flatbuffer.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()])
    >>> report = tfopt.delegate_report(tfopt.convert(model, mode="float16"))
    >>> report.gpu_compatible
    True
    """
    content = tflite_bytes(tflite)
    info = inspect_tflite(content)
    notes = []
    xnn = None
    try:
        xnn = benchmark(
            content,
            num_runs=1,
            warmup_runs=0,
            num_threads=num_threads,
            input_shapes=input_shapes,
            timeout=timeout,
        )
    except BenchmarkError as err:
        notes.append(f"XNNPACK coverage unknown: {err}")
    analyzer_text, verdict = _analyzer(content, timeout, notes)
    undelegated = (
        set(xnn.xnnpack_undelegated)
        if xnn is not None and xnn.xnnpack_total_ops is not None
        else None
    )
    gpu = _gpu_rules(content)
    rows = []
    for op in info.ops:
        if undelegated is None or op.subgraph != 0:
            taken = None
        else:
            taken = f"{op.name}#{op.index}" not in undelegated
        ok, reason = gpu.get((op.subgraph, op.index), (False, "unknown op"))
        rows.append(
            OpDelegation(
                op.index, op.subgraph, op.name, op.precision, taken, ok, reason
            )
        )
    compatible = all(r.gpu for r in rows)
    if verdict and not compatible:
        notes.append(
            "LiteRT's analyzer calls this model GPU-compatible, but its check flags nothing in this wheel; "
            "the blockers above come from the GPU delegate's op rules."
        )
    if len(info.signatures) > 1:
        notes.append(
            f"{len(info.signatures)} signatures; XNNPACK coverage is for the first subgraph"
        )
    return DelegateReport(
        ops=tuple(rows),
        xnnpack_delegated_ops=None if xnn is None else xnn.xnnpack_delegated_ops,
        xnnpack_total_ops=None if xnn is None else xnn.xnnpack_total_ops,
        gpu_compatible=compatible,
        analyzer_gpu_verdict=verdict,
        signatures=info.signatures,
        inputs=tuple(dataclasses.asdict(t) for t in info.inputs),
        outputs=tuple(dataclasses.asdict(t) for t in info.outputs),
        notes=tuple(notes),
        analyzer_text=analyzer_text,
    )


def _analyzer(
    content: bytes, timeout: float, notes: list[str]
) -> tuple[str, bool | None]:
    try:
        raw = run_task("analyze", {"content": content}, timeout=timeout, runtime="LiteRT's model analyzer")
    except BenchmarkError as err:
        notes.append(f"LiteRT's analyzer could not read the model: {err}")
        return "", None
    text = raw["text"]
    if (
        re.search(r"compatib\w* with GPU delegate", text)
        and "GPU COMPATIBILITY WARNING" not in text
    ):
        return text, True
    return text, False if "GPU COMPATIBILITY WARNING" in text else None


def _gpu_rules(content: bytes) -> dict[tuple[int, int], tuple[bool, str]]:
    """(subgraph, op index) -> (GPU delegate can take it, reason if not), from op names, types and shapes."""
    from tfopt.analyze import flatbuffer as fb

    model = fb.read_model(content)
    out = {}
    for sg, subgraph in enumerate(model.subgraphs):
        tensors = subgraph.tensors
        for k, op in enumerate(subgraph.operators):
            name = fb.op_name(model, op.opcodeIndex)
            ids = [i for i in op.inputs if i >= 0] + list(op.outputs)
            out[(sg, k)] = _gpu_check(model, name, op, [tensors[i] for i in ids], fb)
    return out


def _gpu_check(model, name, op, tensors, fb) -> tuple[bool, str]:
    if name == "CUSTOM":
        custom = fb.custom_code(model, op.opcodeIndex)
        return (
            (True, "")
            if custom in GPU_CUSTOM_OPS
            else (False, f"custom op {custom!r} has no GPU kernel")
        )
    if name not in GPU_OPS:
        return False, "no GPU delegate kernel for this op"
    for t in tensors:
        dtype = fb.type_name(t.type)
        if dtype not in _GPU_TYPES:
            return False, f"tensor type {dtype} is not supported on the GPU"
        signature = (
            t.shapeSignature
            if t.shapeSignature is not None and len(t.shapeSignature)
            else None
        )
        if signature is not None and any(int(d) < 0 for d in signature[1:]):
            return (
                False,
                "dynamic (non-batch) dimensions; the GPU delegate needs static shapes",
            )
        if (
            t.shape is not None
            and len(t.shape) > 4
            and name not in ("RESHAPE", "TRANSPOSE", "CONCATENATION")
        ):
            return (
                False,
                f"{len(t.shape)}-D tensor; the GPU delegate handles up to 4-D here",
            )
    if name == "DEQUANTIZE" and fb.type_name(tensors[0].type) == "INT16":
        return False, "int16 dequantization is not supported on the GPU"
    if name == "ADD_N" and len(op.inputs) != 2:
        return False, "ADD_N with more than 2 inputs"
    return True, ""
