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

from tfopt._io import atomic_write, write_json
from tfopt.deploy.benchmark import BenchmarkResult


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
        raise ValueError("variant_report needs at least one benchmark result; received none.")
    baseline = baseline or next(iter(results))
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the variants {list(results)}.")
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
    return VariantReport(rows, baseline, keras_accuracy, _notes(rows, results, baseline), dict(meta or {}))


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
