"""Benchmarks a .tflite on the LiteRT interpreter (XNNPACK on by default): latency, size, accuracy.

Each measurement runs in the warm measurement worker, a child process reused
across calls (`tfopt.measure._worker`), so a model that would crash the
interpreter - a malformed flatbuffer, an unset dynamic shape, a missing custom
op - is reported as a `BenchmarkError` naming the step, instead of taking the
caller down; the next call gets a fresh worker. Accuracy comes from the one
evaluation path (`tfopt.measure.evaluate`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import warnings
from typing import Any

import numpy as np

from tfopt.analyze.flatbuffer import tflite_bytes
from tfopt.errors import BenchmarkError, InvalidArgumentError  # noqa: F401 - BenchmarkError re-exported
from tfopt.measure._worker import run_task
from tfopt.measure.evaluate import evaluate, score, split_data
from tfopt.measure.host import this_host
from tfopt.measure.metrics import get_metric


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Size, latency and (given labelled data) accuracy of a .tflite on LiteRT."""

    size_bytes: int
    gzip_bytes: int
    latency_ms_median: float
    latency_ms_p90: float
    latency_ms_min: float
    latency_ms_mean: float
    num_runs: int
    num_threads: int
    use_xnnpack: bool
    init_ms: float
    first_invoke_ms: float
    accuracy: float | None = None
    num_examples: int = 0
    xnnpack_delegated_ops: int | None = None
    xnnpack_total_ops: int | None = None
    xnnpack_undelegated: tuple[str, ...] = ()
    peak_rss_mb: float | None = None
    inputs: tuple[dict, ...] = ()
    outputs: tuple[dict, ...] = ()
    notes: tuple[str, ...] = ()
    predictions: tuple[int, ...] = dataclasses.field(default=(), repr=False)
    host: str = ""  # the machine the latency was measured on (`tfopt.measure.host.describe_host`)

    @property
    def fully_delegated(self) -> bool | None:
        """True when XNNPACK took every op (None when XNNPACK was off or unknown)."""
        if self.xnnpack_total_ops is None:
            return None
        return self.xnnpack_delegated_ops == self.xnnpack_total_ops

    def summary(self) -> str:
        """A readable report."""
        lines = [
            f"size: {self.size_bytes / 1024:.1f} KB (gzip {self.gzip_bytes / 1024:.1f} KB)",
            f"latency: median {self.latency_ms_median:.3f} ms, p90 {self.latency_ms_p90:.3f} ms, "
            f"min {self.latency_ms_min:.3f} ms over {self.num_runs} runs, {self.num_threads} thread(s), "
            f"XNNPACK {'on' if self.use_xnnpack else 'off'}; init {self.init_ms:.1f} ms",
        ]
        if self.host:
            lines.append(f"host: {self.host}")
        if self.xnnpack_total_ops is not None:
            left = f"; not delegated: {', '.join(self.xnnpack_undelegated[:8])}" if self.xnnpack_undelegated else ""
            lines.append(f"XNNPACK took {self.xnnpack_delegated_ops}/{self.xnnpack_total_ops} ops{left}")
        if self.accuracy is not None:
            lines.append(f"accuracy: {self.accuracy:.4f} on {self.num_examples} examples")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (predictions left out)."""
        out = dataclasses.asdict(self)
        out.pop("predictions")
        out["fully_delegated"] = self.fully_delegated
        return out


def benchmark(
    tflite: Any,
    *,
    data: Any = None,
    num_threads: int = 1,
    num_runs: int = 50,
    warmup_runs: int = 5,
    use_xnnpack: bool = True,
    input_shapes: dict[str, list[int]] | None = None,
    max_examples: int | None = None,
    timeout: float = 600.0,
) -> BenchmarkResult:
    """Measures a .tflite on the LiteRT interpreter: latency, size, accuracy, XNNPACK coverage.

    Runs warm-up invocations, then `num_runs` timed ones on one input, in a child
    process (the warm measurement worker). With labelled `data` it also reports
    the top-1 accuracy of the .tflite itself, through `tfopt.evaluate`'s code
    (int8 / uint8 inputs are quantized with the model's scale and zero point;
    the first output in signature order is scored). For other metrics, call
    `tfopt.evaluate`.

    Args:
        tflite: flatbuffer bytes, a .tflite path, or a `ConversionResult`.
        data: `(x, y)` to measure accuracy (y: integer labels or one-hot), or `x`
            alone to time on real inputs. `x` is an array, a list of arrays in
            model-input order, or a dict keyed by input name. Defaults to `None`
            (random inputs, no accuracy).
        num_threads: interpreter threads. Defaults to `1`.
        num_runs: timed invocations. Defaults to `50`.
        warmup_runs: untimed invocations first. Defaults to `5`.
        use_xnnpack: apply LiteRT's default XNNPACK delegate. Defaults to `True`.
        input_shapes: concrete shapes for inputs with dynamic dimensions, keyed by
            input tensor name (or its position as a string). A dynamic batch alone is
            set to 1 without it. Defaults to `None`.
        max_examples: cap on the examples used for accuracy. Defaults to `None` (all).
        timeout: seconds before the measurement is abandoned. Defaults to `600`.

    Returns:
        A `BenchmarkResult`; `summary()` prints it, `to_dict()` gives JSON.

    Raises:
        BenchmarkError: the model could not be run (the message says why).
        ValueError / TypeError / FileNotFoundError: bad arguments or not a .tflite.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> result = tfopt.benchmark(tfopt.convert(model), num_runs=10)
    >>> result.latency_ms_median > 0
    True
    """
    content = tflite_bytes(tflite)
    for name, value, low in (("num_threads", num_threads, 1), ("num_runs", num_runs, 1), ("warmup_runs", warmup_runs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgumentError(f"{name} must be an integer >= {low}. Received: {name}={value!r}.")
    xs, y = (None, None) if data is None else split_data(data, max_examples=max_examples, label="benchmark")
    request = {
        "content": content,
        "num_threads": num_threads,
        "num_runs": num_runs,
        "warmup_runs": warmup_runs,
        "use_xnnpack": bool(use_xnnpack),
        "input_shapes": {str(k): list(v) for k, v in (input_shapes or {}).items()},
        "want_outputs": y is not None,
    }
    if xs is not None:
        request["input_names"] = list(xs) if isinstance(xs, dict) else None
        arrays = list(xs.values()) if isinstance(xs, dict) else xs
        request["xs"] = [a.astype(np.float32) if a.dtype == np.float64 else a for a in arrays]
    sizes: dict[str, int] = {}
    raw = run_task("benchmark", request, timeout=timeout, meanwhile=lambda: sizes.update(gzip=gzip_size(content)))
    raw["gzip_bytes"] = sizes.get("gzip") or gzip_size(content)
    if y is not None:
        raw.update(_accuracy(raw.pop("predictions"), y, [d["name"] for d in raw.get("outputs", ())]))
    return _result(content, raw, num_threads=num_threads, use_xnnpack=use_xnnpack)


_GZIP_CACHE: dict[bytes, int] = {}


def gzip_size(content: bytes) -> int:
    """Bytes after gzip -9 (what a download costs); remembered for the last 64 models by SHA-1."""
    key = hashlib.sha1(content).digest()
    if key not in _GZIP_CACHE:
        if len(_GZIP_CACHE) >= 64:
            _GZIP_CACHE.pop(next(iter(_GZIP_CACHE)))
        _GZIP_CACHE[key] = len(gzip.compress(content, compresslevel=9))
    return _GZIP_CACHE[key]


def _accuracy(outputs: list[np.ndarray], y: Any, names: list[str]) -> dict[str, Any]:
    """Top-1 of the first output, through the one evaluation path (`tfopt.measure.evaluate.score`)."""
    first = outputs[0].reshape(len(outputs[0]), -1)
    if first.shape[1] < 2:
        return {"accuracy": None, "notes_accuracy": "output has a single value; accuracy needs class scores"}
    value, notes = score(get_metric("top1"), outputs, y, names)
    return {
        "accuracy": value,
        "num_examples": len(first),
        "predictions": first.argmax(axis=-1).tolist(),
        "notes_accuracy": "; ".join(notes),
    }


def percentile(sorted_values: np.ndarray, q: float) -> float:
    """The q-th percentile of sorted values, interpolated linearly (numpy's default), without numpy's overhead."""
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low))


def _result(content: bytes, raw: dict[str, Any], *, num_threads: int, use_xnnpack: bool) -> BenchmarkResult:
    times = np.sort(np.asarray(raw["latencies_ms"], dtype=np.float64))
    xnn = raw.get("xnnpack") or {}
    return BenchmarkResult(
        size_bytes=len(content),
        gzip_bytes=raw["gzip_bytes"] if "gzip_bytes" in raw else gzip_size(content),
        latency_ms_median=percentile(times, 50),
        latency_ms_p90=percentile(times, 90),
        latency_ms_min=float(times[0]),
        latency_ms_mean=float(times.mean()),
        num_runs=len(times),
        num_threads=num_threads,
        use_xnnpack=bool(use_xnnpack),
        init_ms=float(raw["init_ms"]),
        first_invoke_ms=float(raw["first_invoke_ms"]),
        accuracy=raw.get("accuracy"),
        num_examples=int(raw.get("num_examples", 0)),
        xnnpack_delegated_ops=xnn.get("delegated_ops"),
        xnnpack_total_ops=xnn.get("total_ops"),
        xnnpack_undelegated=tuple(xnn.get("undelegated", ())),
        peak_rss_mb=raw["peak_rss_kb"] / 1024 if raw.get("peak_rss_kb") else None,
        inputs=tuple(raw.get("inputs", ())),
        outputs=tuple(raw.get("outputs", ())),
        notes=tuple(raw.get("notes", ())) + ((raw["notes_accuracy"],) if raw.get("notes_accuracy") else ()),
        predictions=tuple(raw.get("predictions", ())),
        host=this_host(),
    )


@dataclasses.dataclass(frozen=True)
class DelegateCoverage:
    """Which ops of a .tflite the XNNPACK delegate takes (read from the interpreter's execution plan)."""

    delegated_ops: int
    total_ops: int
    partitions: int
    undelegated: tuple[str, ...]

    @property
    def fully_delegated(self) -> bool:
        """True when XNNPACK took every op."""
        return self.delegated_ops == self.total_ops

    def summary(self) -> str:
        """One line."""
        left = f"; not delegated: {', '.join(self.undelegated[:8])}" if self.undelegated else ""
        return f"XNNPACK takes {self.delegated_ops}/{self.total_ops} ops in {self.partitions} partition(s){left}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**dataclasses.asdict(self), "fully_delegated": self.fully_delegated}


def xnnpack_coverage(tflite: Any, *, input_shapes: dict[str, list[int]] | None = None, timeout: float = 120.0):
    """Internal (used by `convert`): which ops XNNPACK took, loaded in the worker. Users: `tfopt.delegate_report`.

    Returns `None` when this LiteRT build does not expose its execution plan.

    Raises:
        BenchmarkError: the interpreter could not load the model.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> from tfopt.measure.benchmark import xnnpack_coverage
    >>> xnnpack_coverage(tfopt.convert(model).tflite).fully_delegated
    True
    """
    request = {
        "content": tflite_bytes(tflite),
        "num_threads": 1,
        "num_runs": 1,
        "warmup_runs": 0,
        "use_xnnpack": True,
        "coverage_only": True,
        "input_shapes": {str(k): list(v) for k, v in (input_shapes or {}).items()},
    }
    raw = run_task("benchmark", request, timeout=timeout)
    xnn = raw.get("xnnpack")
    if not xnn:
        return None
    return DelegateCoverage(xnn["delegated_ops"], xnn["total_ops"], xnn["partitions"], tuple(xnn["undelegated"]))


def evaluate_tflite(tflite: Any, x: Any, y: Any, *, max_examples: int | None = None) -> float:
    """Deprecated: use `tfopt.evaluate(tflite, (x, y))`. Top-1 accuracy of a .tflite on LiteRT.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.ones((5, 4), "float32")
    >>> labels = model.predict(x, verbose=0).argmax(-1)
    >>> tfopt.evaluate(tfopt.convert(model), (x, labels)).value
    1.0
    """
    warnings.warn("evaluate_tflite is deprecated; use tfopt.evaluate(tflite, (x, y)).value", DeprecationWarning, stacklevel=2)
    return evaluate(tflite, (x, y), metric="top1", batch_size=1, max_examples=max_examples).value
