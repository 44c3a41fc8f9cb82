"""Can this runtime turn sparsity into speed? Rules checked on the .tflite, gains measured on LiteRT.

XNNPACK (LiteRT's CPU delegate) has sparse kernels for one case only: a
float32 model whose weights are stored in LiteRT's sparse format, in a
subgraph that starts with a 3x3 stride-2 convolution on 3 channels and ends
in a spatial mean, with at least 2/3 zeros across its 1x1 convolutions; and it
never uses them on x86 CPUs with AVX. TFLite Micro has no sparse kernels.
`advise_sparsity` checks a model against those rules for a target and, given
the dense model too, measures size (raw and gzip) and latency side by side,
so the advice rests on numbers rather than promises.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfopt import _keras
from tfopt.errors import InvalidArgumentError
from tfopt.measure.host import CPUINFO, host_cpu_flags

TARGETS = ("xnnpack_x86", "xnnpack_arm", "tflite_micro")
# Minimum fraction of zeros across the 1x1 convolutions for XNNPACK's sparse path.
MIN_CONV1X1_SPARSITY = 2.0 / 3.0
# Ops XNNPACK can run in its sparse (NCHW) layout between the first conv and the mean.
_NCHW_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MUL", "RELU", "RELU6", "RELU_N1_TO_1", "HARD_SWISH", "LOGISTIC",
    "ELU", "LEAKY_RELU", "MEAN", "DENSIFY", "PAD", "RESIZE_BILINEAR",
}


@dataclasses.dataclass
class SparsityRule:
    """One condition of the runtime's sparse path: met (True), not met (False) or unknown (None)."""

    name: str
    passed: bool | None
    detail: str


@dataclasses.dataclass
class Advice:
    """What `advise_sparsity` found: the rules, the 1x1 convolutions and the measured gains."""

    target: str
    sparse_speedup_possible: bool
    verdict: str
    rules: list[SparsityRule]
    conv1x1: list[dict]
    host_cpu_flags: list[str] | None
    pruned: Any = None  # BenchmarkResult of the model given
    dense: Any = None  # BenchmarkResult of the dense model, when given

    @property
    def conv1x1_sparsity(self) -> float | None:
        """Fraction of zeros over all 1x1 convolution weights together (None without 1x1 convs)."""
        total = sum(c["num_weights"] for c in self.conv1x1)
        return sum(c["num_weights"] * c["sparsity"] for c in self.conv1x1) / total if total else None

    def ratios(self) -> dict[str, float] | None:
        """Measured pruned / dense ratios: `size`, `gzip`, `latency` (None without a dense model)."""
        if self.pruned is None or self.dense is None:
            return None
        return {
            "size": self.pruned.size_bytes / self.dense.size_bytes,
            "gzip": self.pruned.gzip_bytes / self.dense.gzip_bytes,
            "latency": self.pruned.latency_ms_median / self.dense.latency_ms_median,
        }

    def summary(self) -> str:
        """The verdict, each rule, and the measured comparison."""
        lines = [f"target {self.target}: {self.verdict}"]
        marks = {True: "yes", False: "NO", None: "?"}
        for rule in self.rules:
            lines.append(f"  [{marks[rule.passed]:>3}] {rule.name}: {rule.detail}")
        if self.pruned is not None:
            lines.append(f"  measured on this machine (LiteRT, XNNPACK, {self.pruned.num_threads} thread(s), "
                         f"median of {self.pruned.num_runs} runs):")
            lines.append(f"    {'model':<8} {'bytes':>10} {'gzip':>10} {'median ms':>10} {'accuracy':>9}")
            for label, result in (("dense", self.dense), ("pruned", self.pruned)):
                if result is not None:
                    accuracy = "-" if result.accuracy is None else f"{result.accuracy:.4f}"
                    lines.append(f"    {label:<8} {result.size_bytes:>10} {result.gzip_bytes:>10} "
                                 f"{result.latency_ms_median:>10.3f} {accuracy:>9}")
            ratios = self.ratios()
            if ratios:
                lines.append(f"    pruned/dense: size x{ratios['size']:.2f}, gzip x{ratios['gzip']:.2f}, "
                             f"latency x{ratios['latency']:.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "target": self.target,
            "sparse_speedup_possible": self.sparse_speedup_possible,
            "verdict": self.verdict,
            "rules": [dataclasses.asdict(r) for r in self.rules],
            "conv1x1": self.conv1x1,
            "conv1x1_sparsity": self.conv1x1_sparsity,
            "host_cpu_flags": self.host_cpu_flags,
            "pruned": self.pruned.to_dict() if self.pruned is not None else None,
            "dense": self.dense.to_dict() if self.dense is not None else None,
            "ratios": self.ratios(),
        }


def advise_sparsity(
    model_or_tflite: Any,
    *,
    target: str = "xnnpack_x86",
    dense: Any = None,
    data: Any = None,
    num_runs: int = 50,
) -> Advice:
    """Says whether a runtime can turn a model's sparsity into speed, and measures what it does buy.

    Use it before pruning for speed. The model is checked against the sparse
    rules of the target runtime (for XNNPACK: float32, sparse weight storage,
    first op a 3x3 stride-2 conv on 3 channels, a spatial mean at the end, at
    least 2/3 zeros across the 1x1 convs, and for `"xnnpack_x86"` a CPU
    without AVX, read from `/proc/cpuinfo`). With `dense`, both models are
    benchmarked on this machine's LiteRT and the measured size (raw and gzip)
    and latency are shown side by side. A Keras model is converted to float32
    (with sparse storage for the XNNPACK targets, dense storage for TFLite Micro).

    Args:
        model_or_tflite: the pruned model: a Keras model, or a .tflite as bytes,
            a path or a `tfopt.ConversionResult`.
        target: `"xnnpack_x86"` (this kind of CPU), `"xnnpack_arm"` or
            `"tflite_micro"`. Defaults to `"xnnpack_x86"`.
        dense: the unpruned model, same forms, to measure the gains against.
            Defaults to `None` (rules only, no measurement).
        data: `(x, y)` to also report accuracy (or `x` to time on real inputs).
            Defaults to `None`.
        num_runs: timed invocations per model. Defaults to `50`.

    Returns:
        An `Advice`; `summary()` prints the verdict, the rules and the numbers.

    Raises:
        ValueError: unknown target.

    Example:

    >>> import keras, tfopt
    >>> from tfopt.search.advisor import advise_sparsity
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 1), keras.layers.GlobalAveragePooling2D()])
    >>> advise_sparsity(m, target="xnnpack_arm").sparse_speedup_possible
    False
    """
    if target not in TARGETS:
        raise InvalidArgumentError(f"target must be one of {TARGETS}. Received: target={target!r}.")
    sparse_storage = target != "tflite_micro"
    pruned_bytes = _as_tflite(model_or_tflite, sparse=sparse_storage)
    rules, conv1x1 = _check_graph(pruned_bytes)
    flags = host_cpu_flags()
    advice_rules = _target_rules(target, rules, conv1x1, flags)
    possible = all(r.passed is True for r in advice_rules)
    pruned = dense_result = None
    if dense is not None:
        from tfopt.measure.benchmark import benchmark

        dense_bytes = _as_tflite(dense, sparse=False)
        dense_result = benchmark(dense_bytes, data=data, num_runs=num_runs)
        pruned = benchmark(pruned_bytes, data=data, num_runs=num_runs)
    verdict = _verdict(target, possible, advice_rules, pruned, dense_result)
    return Advice(
        target=target,
        sparse_speedup_possible=possible,
        verdict=verdict,
        rules=advice_rules,
        conv1x1=conv1x1,
        host_cpu_flags=flags,
        pruned=pruned,
        dense=dense_result,
    )


def _as_tflite(model: Any, *, sparse: bool) -> bytes:
    if _keras.is_keras_model(model):
        from tfopt.export.convert import convert

        return convert(model, mode="float32", sparse=sparse, check_delegation=False).tflite
    from tfopt.analyze.flatbuffer import tflite_bytes

    return tflite_bytes(model)


def _check_graph(content: bytes) -> tuple[dict[str, SparsityRule], list[dict]]:
    """Rules read from the flatbuffer, and the 1x1 convolutions with their sparsity."""
    from tfopt.analyze import flatbuffer as fb
    from tfopt.analyze.sparsity import tflite_sparsity

    model = fb.read_model(content)
    graph = model.subgraphs[0]
    ops = [(fb.op_name(model, op.opcodeIndex), op) for op in graph.operators]
    names = [name for name, _ in ops]
    producers = {int(out): op for _, op in ops for out in (op.outputs if op.outputs is not None else [])}

    def weight_tensor(op):
        index = int(op.inputs[1])
        producer = producers.get(index)
        return graph.tensors[int(producer.inputs[0]) if producer is not None else index], producer is not None

    float_weights, sparse_weights, first, conv1x1_ops = True, [], None, []
    for name, op in ops:
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        tensor, _ = weight_tensor(op)
        float_weights &= tensor.type == 0  # FLOAT32
        sparse_weights.append(tensor.sparsity is not None)
        shape = [int(d) for d in tensor.shape]
        if name == "CONV_2D" and first is None:
            options = op.builtinOptions
            first = (shape, int(getattr(options, "strideH", 1)), int(getattr(options, "strideW", 1)))
        if name == "CONV_2D" and len(shape) == 4 and shape[1] == 1 and shape[2] == 1:
            conv1x1_ops.append(tensor)
    report = {t.name: t for t in tflite_sparsity(content).tensors}
    conv1x1 = []
    for tensor in conv1x1_ops:
        label = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        found = report.get(label)
        conv1x1.append({
            "name": label,
            "shape": [int(d) for d in tensor.shape],
            "num_weights": int(np.prod(tensor.shape)),
            "sparsity": float(found.sparsity) if found is not None else 0.0,
            "sparse_encoded": tensor.sparsity is not None,
        })
    first_compute = next((n for n in names if n not in ("DENSIFY", "DEQUANTIZE", "QUANTIZE", "PAD")), None)
    starts = (
        first is not None and first_compute == "CONV_2D"
        and first[0][1:] == [3, 3, 3] and first[1] == 2 and first[2] == 2
    )
    start_detail = (
        "no CONV_2D" if first is None
        else f"first CONV_2D has filter {first[0][1]}x{first[0][2]} on {first[0][3]} channels, stride {first[1]}"
        + ("" if first_compute == "CONV_2D" else f"; the graph starts with {first_compute}")
    )
    means = [i for i, n in enumerate(names) if n == "MEAN"]
    between = sorted({n for n in names[: means[-1]] if n not in _NCHW_OPS}) if means else []
    rules = {
        "float32": SparsityRule("float32 weights", float_weights, "all conv/FC weights float32" if float_weights
                                else "some weights are quantized; the sparse path is float32 only"),
        "storage": SparsityRule(
            "weights stored sparse", any(sparse_weights),
            f"{sum(sparse_weights)} of {len(sparse_weights)} conv/FC weights in LiteRT's sparse format"
            + ("" if any(sparse_weights) else " (convert with tfopt.convert(..., sparse=True))"),
        ),
        "start": SparsityRule("starts with a 3x3 stride-2 conv on 3 channels", starts, start_detail),
        "mean": SparsityRule(
            "ends in a spatial mean", bool(means),
            "MEAN found" + (f"; ops before it outside XNNPACK's sparse (NCHW) set: {', '.join(between)}" if between else "")
            if means else "no MEAN (global average pooling) op",
        ),
    }
    return rules, conv1x1


def _target_rules(target: str, rules: dict, conv1x1: list[dict], flags: list[str] | None) -> list[SparsityRule]:
    if target == "tflite_micro":
        return [SparsityRule("sparse kernels in the runtime", False,
                             "TFLite Micro has no sparse kernels: zeros cost the same flash, RAM and time as other "
                             "weights unless you compress the model image yourself")]
    total = sum(c["num_weights"] for c in conv1x1)
    zeros = sum(c["num_weights"] * c["sparsity"] for c in conv1x1)
    share = zeros / total if total else 0.0
    conv_rule = SparsityRule(
        f">= {MIN_CONV1X1_SPARSITY:.2f} zeros across the 1x1 convs",
        bool(total) and share >= MIN_CONV1X1_SPARSITY - 1e-9,
        f"{len(conv1x1)} 1x1 convs, {share:.3f} zeros over {total} weights" if total else "no 1x1 convolution",
    )
    out = [rules["float32"], rules["storage"], rules["start"], rules["mean"], conv_rule]
    if target == "xnnpack_x86":
        if flags is None:
            out.append(SparsityRule("x86 CPU without AVX", None, f"could not read CPU flags from {CPUINFO}"))
        else:
            avx = sorted(f for f in flags if f.startswith("avx"))
            out.append(SparsityRule(
                "x86 CPU without AVX", not avx,
                f"this CPU has {', '.join(avx[:6])}{', ...' if len(avx) > 6 else ''}: XNNPACK disables its sparse "
                "kernels on x86 with AVX" if avx else "no AVX flag on this CPU",
            ))
    return out


def _verdict(target: str, possible: bool, rules: list[SparsityRule], pruned, dense) -> str:
    failed = [r.name for r in rules if r.passed is False]
    unknown = [r.name for r in rules if r.passed is None]
    if possible:
        text = ("the model meets the runtime's sparse rules, so XNNPACK may use its sparse kernels; "
                "only a measurement on the device shows the gain")
    elif failed:
        text = f"sparsity cannot become speed here (not met: {'; '.join(failed)})"
    else:
        text = f"undetermined ({'; '.join(unknown)})"
    if pruned is not None and dense is not None:
        ratio = pruned.latency_ms_median / dense.latency_ms_median
        gzip_ratio = pruned.gzip_bytes / dense.gzip_bytes
        text += (f". Measured here: latency x{ratio:.2f}, gzip size x{gzip_ratio:.2f}, raw size "
                 f"x{pruned.size_bytes / dense.size_bytes:.2f} vs dense")
        if target == "xnnpack_arm":
            text += " (timed on this host, not on ARM: benchmark on the device)"
    if not possible:
        text += ". For speed remove whole channels (tfopt.prune_channels) or quantize to int8"
    return text
