"""Benchmark depth: thread and batch sweeps with peak memory, variant comparisons, and trade-off plots.

Every point runs LiteRT in a fresh child process of its own (the measurement
worker, started for that point and ended after it, so its peak memory belongs
to that point alone), so a configuration the model cannot take - a batch size
its RESHAPE ops fix, a crash - becomes a row with an error, not a crash of the
caller. The child reports its peak resident memory (VmHWM); a child running a
one-op model gives the runtime's own footprint, so the model's share is the
difference.

Per-op timing: ai-edge-litert 2.3.0 exposes no op profiler to Python (the
Interpreter has no profiling hook, CompiledModel neither; the C++
`benchmark_model --enable_op_profiling` is not installable from a registry), so
sweeps report whole-model latency and `tfopt.delegate_report` says which ops
XNNPACK leaves to the slower reference kernels.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfopt.measure._worker import run_task
from tfopt.measure.benchmark import BenchmarkError, BenchmarkResult, benchmark  # noqa: F401 - re-exported
from tfopt.analyze.flatbuffer import inspect_tflite, tflite_bytes
from tfopt.errors import InvalidArgumentError

PER_OP_TIMING_NOTE = (
    "per-op timing is not available: ai-edge-litert 2.3.0 exposes no op profiler to Python; "
    "use tfopt.delegate_report for the ops XNNPACK leaves to the reference kernels"
)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One (threads, batch) measurement, or the reason it could not be made."""

    num_threads: int
    batch_size: int
    latency_ms_median: float | None = None
    latency_ms_p90: float | None = None
    throughput_per_s: float | None = None
    peak_rss_mb: float | None = None
    xnnpack_ops: str | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Latency, throughput and peak memory of one .tflite across thread counts and batch sizes."""

    points: tuple[SweepPoint, ...]
    size_bytes: int
    runtime_rss_mb: float | None
    num_runs: int
    use_xnnpack: bool
    notes: tuple[str, ...] = ()

    def point(self, num_threads: int, batch_size: int = 1) -> SweepPoint:
        """The measurement for one configuration."""
        for p in self.points:
            if p.num_threads == num_threads and p.batch_size == batch_size:
                return p
        raise KeyError(
            f"No point with num_threads={num_threads}, batch_size={batch_size}; have {[(p.num_threads, p.batch_size) for p in self.points]}."
        )

    def table(self) -> str:
        """A fixed-width text table, one row per configuration."""
        head = f"{'threads':>7} {'batch':>5} {'median ms':>10} {'p90 ms':>8} {'items/s':>9} {'peak MB':>8} {'model MB':>8}  XNNPACK"
        lines = [head, "-" * len(head)]
        for p in self.points:
            if p.error:
                lines.append(
                    f"{p.num_threads:>7} {p.batch_size:>5}  not measured: {p.error}"
                )
                continue
            model_mb = (
                p.peak_rss_mb - self.runtime_rss_mb
                if p.peak_rss_mb and self.runtime_rss_mb
                else None
            )
            lines.append(
                f"{p.num_threads:>7} {p.batch_size:>5} {p.latency_ms_median:>10.3f} {p.latency_ms_p90:>8.3f} "
                f"{p.throughput_per_s:>9.1f} {_mb(p.peak_rss_mb):>8} {_mb(model_mb):>8}  {p.xnnpack_ops or '-'}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """The table, the runtime's own memory and the notes."""
        lines = [
            f"model {self.size_bytes / 1024:.1f} KB, {self.num_runs} timed runs a point, XNNPACK {'on' if self.use_xnnpack else 'off'}"
        ]
        lines.append(self.table())
        if self.runtime_rss_mb is not None:
            lines.append(
                f"(peak MB = the child process; model MB = peak minus {self.runtime_rss_mb:.1f} MB for the runtime alone)"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    def plot(self, path: str | os.PathLike) -> str:
        """Saves latency and throughput against threads (one line per batch size) as a PNG."""
        fig, (left, right) = _figure(2)
        for batch in sorted({p.batch_size for p in self.points}):
            pts = [p for p in self.points if p.batch_size == batch and p.error is None]
            if pts:
                left.plot(
                    [p.num_threads for p in pts],
                    [p.latency_ms_median for p in pts],
                    "o-",
                    label=f"batch {batch}",
                )
                right.plot(
                    [p.num_threads for p in pts],
                    [p.throughput_per_s for p in pts],
                    "o-",
                    label=f"batch {batch}",
                )
        left.set(xlabel="threads", ylabel="median latency (ms)", title="latency")
        right.set(xlabel="threads", ylabel="items / s", title="throughput")
        for ax in (left, right):
            ax.legend()
            ax.grid(alpha=0.3)
        return _save(fig, path)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def benchmark_sweep(
    tflite: Any,
    *,
    threads: Sequence[int] = (1, 2),
    batch_sizes: Sequence[int] = (1,),
    num_runs: int = 50,
    warmup_runs: int = 5,
    use_xnnpack: bool = True,
    input_shapes: dict[str, list[int]] | None = None,
    timeout: float = 600.0,
) -> SweepResult:
    """Measures a .tflite on LiteRT across thread counts and batch sizes, with peak memory.

    Use it to pick `num_threads` for a device class and to see whether batching
    pays: throughput is `batch_size / median latency`. Batch sizes other than 1
    resize the first dimension of every input; a model whose graph fixes batch 1
    (e.g. Keras models converted by `tfopt.convert`, whose RESHAPE ops hold the
    batch) gets a row that says so instead of a number.

    Args:
        tflite: flatbuffer bytes, a .tflite path, or a `ConversionResult`.
        threads: thread counts to try. Defaults to `(1, 2)`.
        batch_sizes: batch sizes to try. Defaults to `(1,)`.
        num_runs: timed invocations per point. Defaults to `50`.
        warmup_runs: untimed invocations first. Defaults to `5`.
        use_xnnpack: apply XNNPACK. Defaults to `True`.
        input_shapes: concrete shapes for inputs with dynamic non-batch dimensions
            (the batch is then set per point), as in `tfopt.benchmark`. Defaults to `None`.
        timeout: seconds per point. Defaults to `600`.

    Returns:
        A `SweepResult` (`table()`, `summary()`, `to_dict()`, `plot(path)`).

    Raises:
        ValueError: bad thread counts or batch sizes, or not a TFLite flatbuffer.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    >>> sweep = tfopt.benchmark_sweep(tfopt.convert(model), threads=(1, 2), num_runs=5)
    >>> [p.num_threads for p in sweep.points]
    [1, 2]
    """
    content = tflite_bytes(tflite)
    info = inspect_tflite(content)
    threads, batch_sizes = (
        _positive_ints("threads", threads),
        _positive_ints("batch_sizes", batch_sizes),
    )
    points = []
    runtime_kb = _runtime_rss_kb(timeout)
    for batch in batch_sizes:
        try:
            shapes = _batched_shapes(info, batch, input_shapes)
        except ValueError as err:
            points.extend(SweepPoint(t, batch, error=str(err)) for t in threads)
            continue
        for t in threads:
            points.append(
                _measure(content, t, batch, shapes, num_runs, warmup_runs, use_xnnpack, timeout)
            )
    notes = [PER_OP_TIMING_NOTE]
    if len(info.signatures) > 1:
        notes.append(
            f"{len(info.signatures)} signatures; LiteRT runs the first subgraph ({', '.join(info.signatures)})"
        )
    return SweepResult(
        points=tuple(points),
        size_bytes=len(content),
        runtime_rss_mb=runtime_kb / 1024 if runtime_kb else None,
        num_runs=num_runs,
        use_xnnpack=bool(use_xnnpack),
        notes=tuple(notes),
    )


def _positive_ints(label: str, values: Sequence[int]) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
        for v in values
    ):
        raise InvalidArgumentError(
            f"{label} must be a non-empty list of integers >= 1. Received: {label}={values!r}."
        )
    return [int(v) for v in values]


def _batched_shapes(
    info, batch: int, input_shapes: dict[str, list[int]] | None
) -> dict[str, list[int]]:
    """Input name -> shape with the batch set; other dims from input_shapes or the model."""
    given = {str(k): list(v) for k, v in (input_shapes or {}).items()}
    shapes = {}
    for index, tensor in enumerate(info.inputs):
        shape = given.get(tensor.name, given.get(str(index), list(tensor.shape)))
        if any(d < 0 for d in shape[1:]):
            raise InvalidArgumentError(
                f"input {tensor.name!r} has dynamic dimensions {list(tensor.shape)}; pass "
                f"input_shapes={{'{tensor.name}': [1, ...]}} (tfopt bench: --input_shape) with concrete sizes."
            )
        if shape and (
            batch != 1 or shape[0] < 0 or tensor.name in given or str(index) in given
        ):
            shapes[tensor.name] = [batch, *shape[1:]]
    return shapes


def _measure(
    content, threads, batch, shapes, num_runs, warmup_runs, use_xnnpack, timeout
) -> SweepPoint:
    request = {
        "content": content,
        "num_threads": threads,
        "num_runs": num_runs,
        "warmup_runs": warmup_runs,
        "use_xnnpack": bool(use_xnnpack),
        "input_shapes": shapes,
    }
    try:
        raw = run_task("benchmark", request, timeout=timeout, fresh=True)
    except BenchmarkError as err:
        reason = str(err)
        if batch != 1 and (
            "reshape" in reason.lower() or "failed to prepare" in reason.lower()
        ):
            reason = f"the graph fixes its batch (RESHAPE/prepare failed at batch {batch}); convert with a dynamic batch to batch it ({reason[:160]})"
        return SweepPoint(threads, batch, error=reason)
    times = np.asarray(raw["latencies_ms"], dtype=np.float64)
    xnn = raw.get("xnnpack") or {}
    median = float(np.median(times))
    return SweepPoint(
        num_threads=threads,
        batch_size=batch,
        latency_ms_median=median,
        latency_ms_p90=float(np.percentile(times, 90)),
        throughput_per_s=batch * 1000.0 / median if median > 0 else None,
        peak_rss_mb=raw["peak_rss_kb"] / 1024 if raw.get("peak_rss_kb") else None,
        xnnpack_ops=f"{xnn['delegated_ops']}/{xnn['total_ops']}" if xnn else None,
    )


def _runtime_rss_kb(timeout: float) -> int | None:
    """Peak RSS of a fresh child that runs a one-op model: the runtime's own memory."""
    request = {
        "content": one_op_model(),
        "num_threads": 1,
        "num_runs": 1,
        "warmup_runs": 0,
        "use_xnnpack": True,
        "input_shapes": {},
    }
    try:
        return run_task("benchmark", request, timeout=timeout, fresh=True).get("peak_rss_kb")
    except BenchmarkError:
        return None


def one_op_model() -> bytes:
    """A valid .tflite holding one RELU on a [1, 4] float tensor (built without TensorFlow)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = schema.ModelT()
    model.version = 3
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    code.version = 1
    model.operatorCodes, model.buffers = [code], [schema.BufferT()]
    tensors = []
    for name in ("x", "y"):
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = (
            name,
            np.array([1, 4], np.int32),
            schema.TensorType.FLOAT32,
            0,
        )
        tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = (
        0,
        np.array([0], np.int32),
        np.array([1], np.int32),
    )
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.operators = tensors, [op]
    subgraph.inputs, subgraph.outputs = np.array([0], np.int32), np.array([1], np.int32)
    model.subgraphs = [subgraph]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _figure(columns: int):
    from matplotlib.figure import (
        Figure,  # object API: no global backend or pyplot state
    )

    fig = Figure(figsize=(5.5 * columns, 4.2), dpi=100)
    axes = fig.subplots(1, columns)
    return fig, axes


def _save(fig, path: str | os.PathLike) -> str:
    import io

    from tfopt._io import atomic_write

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return atomic_write(path, buffer.getvalue())
