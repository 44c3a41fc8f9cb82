"""Side-by-side reports of model variants measured on the runtime: table, Markdown, JSON.

The ratios are computed from measurements taken in one run, against one baseline
variant, and the notes are read off the same numbers (nothing is promised that was
not measured).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfopt._io import atomic_write, write_json
from tfopt.measure.benchmark import BenchmarkError, BenchmarkResult, benchmark
from tfopt.measure.sweep import _figure, _save
from tfopt.errors import InvalidArgumentError


@dataclasses.dataclass(frozen=True)
class VariantRow:
    """One variant's measurements and its ratios to the baseline."""

    name: str
    size_bytes: int
    gzip_bytes: int
    latency_ms_median: float
    latency_ms_p90: float
    accuracy: float | None
    size_ratio: float
    speed_ratio: float
    accuracy_drop: float | None
    xnnpack_delegated_ops: int | None
    xnnpack_total_ops: int | None
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class VariantReport:
    """A comparison of variants of one model: rows, the Keras accuracy, and measured notes."""

    rows: list[VariantRow]
    baseline: str
    keras_accuracy: float | None
    notes: list[str]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def row(self, name: str) -> VariantRow:
        """The row of one variant by name."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"No variant named {name!r}; variants are {[r.name for r in self.rows]}.")

    def table(self) -> str:
        """A fixed-width text table."""
        header = ["variant", "size KB", "size x", "gzip KB", "median ms", "p90 ms", "speed x", "accuracy", "drop pts", "XNNPACK ops"]
        lines = [header]
        for r in self.rows:
            lines.append(
                [
                    r.name,
                    f"{r.size_bytes / 1024:.1f}",
                    f"{r.size_ratio:.2f}",
                    f"{r.gzip_bytes / 1024:.1f}",
                    f"{r.latency_ms_median:.3f}",
                    f"{r.latency_ms_p90:.3f}",
                    f"{r.speed_ratio:.2f}",
                    "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%",
                    "-" if r.accuracy_drop is None else f"{100 * r.accuracy_drop:+.2f}",
                    "-" if r.xnnpack_total_ops is None else f"{r.xnnpack_delegated_ops}/{r.xnnpack_total_ops}",
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for k, line in enumerate(lines):
            out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
            if k == 0:
                out.append("-" * len(out[0]))
        return "\n".join(out)

    def summary(self) -> str:
        """The table, the Keras accuracy and the notes."""
        lines = []
        if self.keras_accuracy is not None:
            lines.append(f"Keras float model accuracy: {100 * self.keras_accuracy:.2f}%")
        lines.append(self.table())
        lines.append(f"(size x and speed x are relative to {self.baseline}; speed x > 1 means faster; "
                     "drop pts = Keras accuracy minus variant accuracy, in points)")
        lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as Markdown."""
        head = "| variant | size KB | size x | gzip KB | median ms | p90 ms | speed x | accuracy | drop (pts) | XNNPACK ops |"
        lines = ["# tfopt report", ""]
        for key, value in self.meta.items():
            lines.append(f"- {key}: {value}")
        if self.keras_accuracy is not None:
            lines.append(f"- Keras float model accuracy: {100 * self.keras_accuracy:.2f}%")
        lines += ["", head, "|" + "---|" * 10]
        for r in self.rows:
            acc = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
            drop = "-" if r.accuracy_drop is None else f"{100 * r.accuracy_drop:+.2f}"
            xnn = "-" if r.xnnpack_total_ops is None else f"{r.xnnpack_delegated_ops}/{r.xnnpack_total_ops}"
            lines.append(
                f"| {r.name} | {r.size_bytes / 1024:.1f} | {r.size_ratio:.2f} | {r.gzip_bytes / 1024:.1f} | "
                f"{r.latency_ms_median:.3f} | {r.latency_ms_p90:.3f} | {r.speed_ratio:.2f} | {acc} | {drop} | {xnn} |"
            )
        lines += ["", f"Ratios are relative to `{self.baseline}`, measured in the same run.", ""]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: `keras_accuracy`, `baseline`, `variants` (one dict a row), `notes`."""
        return {
            "keras_accuracy": self.keras_accuracy,
            "baseline": self.baseline,
            "variants": [dataclasses.asdict(r) for r in self.rows],
            "notes": list(self.notes),
            **({"meta": dict(self.meta)} if self.meta else {}),
        }

    def write(self, folder: str | os.PathLike) -> dict[str, str]:
        """Writes `report.md` and `report.json` into `folder` (atomically); returns their paths."""
        folder = os.fspath(folder)
        md = atomic_write(os.path.join(folder, "report.md"), self.to_markdown().encode())
        js = write_json(os.path.join(folder, "report.json"), self.to_dict())
        return {"report_md": md, "report_json": js}


def variant_report(
    results: Mapping[str, BenchmarkResult],
    *,
    keras_accuracy: float | None = None,
    baseline: str | None = None,
    paths: Mapping[str, str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> VariantReport:
    """Compares benchmarked variants of one model against a baseline, in one table.

    Args:
        results: variant name -> `BenchmarkResult`, measured in the same run.
        keras_accuracy: accuracy of the original Keras model on the same data, for
            the accuracy drop. Defaults to `None`.
        baseline: the variant the ratios are relative to. Defaults to `None` (the
            first variant).
        paths: variant name -> file path, recorded in the rows. Defaults to `None`.
        meta: extra facts to print at the top of the Markdown report. Defaults to `None`.
            The machine the results were measured on is added as `host` when they share one.

    Returns:
        A `VariantReport` with `summary()`, `to_markdown()`, `to_dict()` and `write(folder)`.

    Raises:
        ValueError: no results, or a baseline that is not among them.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256)])
    >>> runs = {m: tfopt.benchmark(tfopt.convert(model, mode=m), num_runs=5) for m in ("float32", "float16")}
    >>> tfopt.variant_report(runs).row("float16").size_ratio < 1.0
    True
    """
    if not results:
        raise InvalidArgumentError("variant_report needs at least one benchmark result; received none.")
    baseline = baseline or next(iter(results))
    if baseline not in results:
        raise InvalidArgumentError(f"baseline {baseline!r} is not among the variants {list(results)}.")
    base = results[baseline]
    rows = []
    for name, res in results.items():
        rows.append(
            VariantRow(
                name=name,
                size_bytes=res.size_bytes,
                gzip_bytes=res.gzip_bytes,
                latency_ms_median=res.latency_ms_median,
                latency_ms_p90=res.latency_ms_p90,
                accuracy=res.accuracy,
                size_ratio=res.size_bytes / base.size_bytes,
                speed_ratio=base.latency_ms_median / res.latency_ms_median,
                accuracy_drop=(keras_accuracy - res.accuracy)
                if keras_accuracy is not None and res.accuracy is not None
                else None,
                xnnpack_delegated_ops=res.xnnpack_delegated_ops,
                xnnpack_total_ops=res.xnnpack_total_ops,
                path=(paths or {}).get(name),
            )
        )
    facts = dict(meta or {})
    hosts = {res.host for res in results.values()}
    if "host" not in facts and len(hosts) == 1 and hosts != {""}:  # ratios are read against the machine
        facts["host"] = hosts.pop()
    return VariantReport(rows, baseline, keras_accuracy, _notes(rows, results, baseline), facts)


def _notes(rows: list[VariantRow], results: Mapping[str, BenchmarkResult], baseline: str) -> list[str]:
    """Plain statements read off the measurements."""
    notes = []
    for row in rows:
        if row.name == baseline:
            continue
        res = results[row.name]
        if row.speed_ratio < 0.85:
            left = res.xnnpack_undelegated
            why = f"; XNNPACK left {len(left)} op(s) to the reference kernels ({', '.join(left[:4])})" if left else ""
            notes.append(f"{row.name} ran {1 / row.speed_ratio:.2f}x slower than {baseline} here{why}.")
        elif row.speed_ratio < 1.15:
            notes.append(
                f"{row.name} saves size ({row.size_ratio:.2f}x) but no measurable time on this machine "
                f"({row.speed_ratio:.2f}x, within run-to-run noise)."
            )
        else:
            notes.append(f"{row.name} ran {row.speed_ratio:.2f}x faster than {baseline} at {row.size_ratio:.2f}x the size.")
    return notes


def compare_variants(
    variants: Mapping[str, Any],
    *,
    data: Any = None,
    keras_accuracy: float | None = None,
    baseline: str | None = None,
    num_threads: int = 1,
    num_runs: int = 50,
    output_dir: str | os.PathLike | None = None,
    plot: bool = True,
):
    """Benchmarks several .tflite variants of one model and compares them in one table (and a PNG).

    Args:
        variants: name -> .tflite (bytes, path or `ConversionResult`), e.g.
            `{"float32": ..., "int8": ...}`.
        data: `(x, y)` for accuracy, as in `tfopt.benchmark`. Defaults to `None`.
        keras_accuracy: the Keras model's accuracy on the same data. Defaults to `None`.
        baseline: variant the ratios are relative to. Defaults to `None` (the first).
        num_threads: interpreter threads. Defaults to `1`.
        num_runs: timed invocations per variant. Defaults to `50`.
        output_dir: write `report.md`, `report.json` and `tradeoffs.png` here.
            Defaults to `None` (nothing written).
        plot: also save `tradeoffs.png` (size vs accuracy vs latency) in `output_dir`.
            Defaults to `True`.

    Returns:
        A `tfopt.VariantReport`; variants that could not run are listed in its notes.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    >>> report = tfopt.compare_variants({m: tfopt.convert(model, mode=m) for m in ("float32", "float16")}, num_runs=5)
    >>> [row.name for row in report.rows]
    ['float32', 'float16']
    """
    if not variants:
        raise InvalidArgumentError("compare_variants needs at least one variant; received none.")
    results: dict[str, BenchmarkResult] = {}
    failed = []
    for name, tflite in variants.items():
        try:
            results[name] = benchmark(
                tflite, data=data, num_threads=num_threads, num_runs=num_runs
            )
        except BenchmarkError as err:
            failed.append(f"{name} could not be benchmarked: {err}")
    if not results:
        raise BenchmarkError("no variant could be benchmarked: " + " | ".join(failed))
    if baseline not in results:
        baseline = next(iter(results))
    paths = {
        k: os.fspath(v)
        for k, v in variants.items()
        if isinstance(v, (str, os.PathLike))
    }
    report = variant_report(
        results, keras_accuracy=keras_accuracy, baseline=baseline, paths=paths
    )
    report.notes.extend(failed)
    if output_dir is not None:
        report.write(output_dir)
        if plot:
            plot_tradeoffs(report, os.path.join(os.fspath(output_dir), "tradeoffs.png"))
    return report


def plot_tradeoffs(report, path: str | os.PathLike) -> str:
    """Saves size vs accuracy vs latency of a `VariantReport` as a PNG; returns the path.

    Left: latency (x) against accuracy (y), marker area proportional to size.
    Right: size against accuracy. Without accuracy, size against latency.

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256)])
    >>> runs = {m: tfopt.benchmark(tfopt.convert(model, mode=m), num_runs=5) for m in ("float32", "float16")}
    >>> path = tfopt.plot_tradeoffs(tfopt.variant_report(runs), os.path.join(tempfile.mkdtemp(), "t.png"))
    >>> os.path.getsize(path) > 0
    True
    """
    rows = report.rows
    has_acc = all(r.accuracy is not None for r in rows)
    fig, (left, right) = _figure(2)
    sizes_kb = np.array([r.size_bytes / 1024 for r in rows])
    area = 60 + 600 * sizes_kb / max(sizes_kb.max(), 1e-9)
    y = (
        [100 * r.accuracy for r in rows]
        if has_acc
        else [r.latency_ms_median for r in rows]
    )
    left.scatter([r.latency_ms_median for r in rows], y, s=area, alpha=0.6)
    right.scatter(sizes_kb, y, s=80, alpha=0.8)
    for r, yy, kb in zip(rows, y, sizes_kb):
        left.annotate(
            r.name, (r.latency_ms_median, yy), textcoords="offset points", xytext=(6, 6)
        )
        right.annotate(r.name, (kb, yy), textcoords="offset points", xytext=(6, 6))
    ylabel = "accuracy (%)" if has_acc else "median latency (ms)"
    left.set(
        xlabel="median latency (ms)",
        ylabel=ylabel,
        title="latency vs accuracy (area = size)",
    )
    right.set(
        xlabel="size (KB)",
        ylabel=ylabel,
        title="size vs " + ("accuracy" if has_acc else "latency"),
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)
