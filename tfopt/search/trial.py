"""Measures one candidate .tflite on the runtime it names: metric on LiteRT, file and gzip size,
XNNPACK latency interleaved with the baseline, and the TFLite Micro arena for `target="micro"`."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from tfopt.measure.benchmark import gzip_size
from tfopt.measure.evaluate import predict_tflite, score
from tfopt.measure.host import this_host
from tfopt.measure.metrics import get_metric, per_example
from tfopt.search.constraints import drop, higher_is_better, paired_drop


class Measurer:
    """Measures candidates against one baseline .tflite with the same data, metric and target."""

    def __init__(
        self, baseline_tflite: bytes, data: dict[str, np.ndarray], *, metric, target: str, num_runs: int = 50,
        max_eval: int = 2000,
    ) -> None:
        self.data = data
        self.metric = metric
        self.target = target
        self.num_runs = num_runs
        self.max_eval = max_eval
        self.higher_better = higher_is_better(metric)
        # The one evaluation path (tfopt.evaluate's): outputs from the LiteRT worker, scored by the metric.
        self.scorer = get_metric(metric, higher_is_better=None if isinstance(metric, str) else self.higher_better)
        self.baseline_tflite = bytes(baseline_tflite)
        self.baseline: dict[str, Any] | None = None
        self.baseline_outputs: np.ndarray | None = None
        self.baseline_examples: dict[str, np.ndarray | None] = {}

    def _outputs(self, content: bytes, split: str) -> np.ndarray:
        x = np.asarray(self.data[f"x_{split}"][: self.max_eval])
        return np.asarray(predict_tflite(content, [x])["predictions"][0], dtype=np.float32)

    def _score(self, outputs: np.ndarray, split: str) -> float:
        value, _ = score(self.scorer, [outputs], self.data[f"y_{split}"][: self.max_eval], ["output_0"])
        return value

    def _examples(self, outputs: np.ndarray, split: str) -> np.ndarray | None:
        """Each example's share of the metric (None for metrics that are not means over examples)."""
        return per_example(self.scorer, self.data[f"y_{split}"][: self.max_eval], outputs)

    def _drop(self, row: dict[str, Any], examples: dict[str, np.ndarray | None], split: str) -> tuple[float, float | None]:
        """The drop on `split` against the baseline, with its paired standard error when the metric allows one."""
        key = "val_metric" if split == "val" else "accuracy"
        base, mine = self.baseline_examples.get(split), examples.get(split)
        if base is None or mine is None:
            return drop(row[key], self.baseline[key], higher_better=self.higher_better), None
        return paired_drop(base, mine, higher_better=self.higher_better)

    def _latency(self, content: bytes) -> tuple[float, float]:
        """Median latency (ms) of `content` and its ratio to the baseline timed around it in the same run."""
        from tfopt.measure.benchmark import benchmark

        x = self.data["x_val"][:1]
        runs = {"num_runs": self.num_runs, "warmup_runs": 10}
        before = benchmark(self.baseline_tflite, data=x, **runs).latency_ms_median
        mine = benchmark(content, data=x, **runs).latency_ms_median
        after = benchmark(self.baseline_tflite, data=x, **runs).latency_ms_median
        return mine, mine / max(1e-9, 0.5 * (before + after))

    def _micro(self, content: bytes) -> tuple[int | None, int | None]:
        """The TFLite Micro arena and flash of what `export_micro` writes (compressed, re-planned, checked
        bit-identical on the interpreter); (None, None) for the cpu target or a model TFLite Micro cannot run."""
        if self.target != "micro":
            return None, None
        from tfopt.export.micro import export_micro

        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = export_micro(content, tmp, data=self.data["x_val"][:20], num_samples=20)
            except Exception:  # noqa: BLE001 - a model TFLite Micro cannot run has no arena
                return None, None
            return (result.arena_bytes, result.flash_bytes) if result.ok else (None, None)

    def _row(self, content: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray | None]]:
        latency, ratio = self._latency(content)
        val_outputs = self._outputs(content, "val")
        test_outputs = self._outputs(content, "test")
        if self.baseline_outputs is None:
            self.baseline_outputs = val_outputs
        examples = {"val": self._examples(val_outputs, "val"), "test": self._examples(test_outputs, "test")}
        arena, flash = self._micro(content)
        return {
            "val_metric": self._score(val_outputs, "val"),
            # How far the outputs move from the float32 model's on validation (mean absolute difference):
            # finer than an accuracy that a few hundred examples cannot tell apart.
            "output_error": float(np.mean(np.abs(val_outputs - self.baseline_outputs))),
            "accuracy": self._score(test_outputs, "test"),
            "size_bytes": len(content),
            "gzip_bytes": gzip_size(content),
            "latency_ms_median": latency,
            "latency_ratio": ratio,
            "arena_bytes": arena,
            "flash_bytes": flash,
            "host": this_host(),  # where this trial (and the baseline it is timed against) ran
            "n_selection": len(val_outputs),
            "n_reporting": len(test_outputs),
        }, examples

    def measure(self, content: bytes) -> dict[str, Any]:
        """All numbers of one .tflite: `drop` on the selection data and `test_drop` on the reporting data,
        each against the baseline on the same examples, with their paired standard errors (`drop_se`,
        `test_drop_se`; None for a metric that is not a mean over examples)."""
        if self.baseline is None:
            self.measure_baseline()
        row, examples = self._row(bytes(content))
        row["drop"], row["drop_se"] = self._drop(row, examples, "val")
        row["test_drop"], row["test_drop_se"] = self._drop(row, examples, "test")
        return row

    def measure_baseline(self) -> dict[str, Any]:
        """The float32 baseline's numbers (latency ratio 1 by definition)."""
        row, self.baseline_examples = self._row(self.baseline_tflite)
        row.update(latency_ratio=1.0, drop=0.0, test_drop=0.0, drop_se=0.0, test_drop_se=0.0)
        self.baseline = row
        return row
