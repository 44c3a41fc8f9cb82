"""Measures one candidate .tflite on the runtime it names: metric on LiteRT, file and gzip size,
XNNPACK latency interleaved with the baseline, and the TFLite Micro arena for `target="micro"`."""

from __future__ import annotations

import gzip
import tempfile
from typing import Any, Callable

import numpy as np

from tfopt.search.constraints import drop, higher_is_better


def gzip_size(content: bytes) -> int:
    """Bytes of `content` after gzip at level 9 (what a download or a compressed flash image costs)."""
    return len(gzip.compress(bytes(content), compresslevel=9, mtime=0))


def predict_tflite(content: bytes, x: np.ndarray, *, batch: int = 1) -> np.ndarray:
    """Runs a single-input .tflite over `x` on LiteRT (XNNPACK) and returns the float outputs of output 0."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(content), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for row in np.asarray(x):
        value = row[None]
        if np.issubdtype(inp["dtype"], np.integer):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale + zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], value.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        if np.issubdtype(out["dtype"], np.integer):
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        results.append(y[0])
    return np.stack(results)


def score(outputs: np.ndarray, y: np.ndarray, metric: str | Callable) -> float:
    """The metric of model `outputs` against labels / targets `y`.

    >>> score(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]), "top1")
    0.5
    """
    y = np.asarray(y)
    if callable(metric):
        return float(metric(y, outputs))
    if metric in ("top1", "top5"):
        labels = y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1)
        if metric == "top1":
            return float(np.mean(outputs.argmax(axis=-1) == labels))
        top = np.argsort(-outputs, axis=-1)[:, :5]
        return float(np.mean(np.any(top == labels[:, None], axis=-1)))
    diff = outputs.reshape(len(outputs), -1) - y.reshape(len(y), -1).astype(np.float32)
    return float(np.mean(np.abs(diff))) if metric == "mae" else float(np.mean(diff**2))


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
        self.baseline_tflite = bytes(baseline_tflite)
        self.baseline: dict[str, Any] | None = None
        self.baseline_outputs: np.ndarray | None = None

    def _outputs(self, content: bytes, split: str) -> np.ndarray:
        return predict_tflite(content, self.data[f"x_{split}"][: self.max_eval])

    def _score(self, outputs: np.ndarray, split: str) -> float:
        return score(outputs, self.data[f"y_{split}"][: self.max_eval], self.metric)

    def _latency(self, content: bytes) -> tuple[float, float]:
        """Median latency (ms) of `content` and its ratio to the baseline timed around it in the same run."""
        from tfopt.measure.benchmark import benchmark

        x = self.data["x_val"][:1]
        runs = {"num_runs": self.num_runs, "warmup_runs": 10}
        before = benchmark(self.baseline_tflite, data=x, **runs).latency_ms_median
        mine = benchmark(content, data=x, **runs).latency_ms_median
        after = benchmark(self.baseline_tflite, data=x, **runs).latency_ms_median
        return mine, mine / max(1e-9, 0.5 * (before + after))

    def _arena(self, content: bytes) -> int | None:
        if self.target != "micro":
            return None
        from tfopt.export.micro import export_micro

        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = export_micro(content, tmp, data=self.data["x_val"][:20], num_samples=20)
            except Exception:  # noqa: BLE001 - a model TFLite Micro cannot run has no arena
                return None
            return result.arena_bytes if result.ok else None

    def _row(self, content: bytes) -> dict[str, Any]:
        latency, ratio = self._latency(content)
        val_outputs = self._outputs(content, "val")
        if self.baseline_outputs is None:
            self.baseline_outputs = val_outputs
        return {
            "val_metric": self._score(val_outputs, "val"),
            # How far the outputs move from the float32 model's on validation (mean absolute difference):
            # finer than an accuracy that a few hundred examples cannot tell apart.
            "output_error": float(np.mean(np.abs(val_outputs - self.baseline_outputs))),
            "accuracy": self._score(self._outputs(content, "test"), "test"),
            "size_bytes": len(content),
            "gzip_bytes": gzip_size(content),
            "latency_ms_median": latency,
            "latency_ratio": ratio,
            "arena_bytes": self._arena(content),
        }

    def measure(self, content: bytes) -> dict[str, Any]:
        """All numbers of one .tflite; `drop` (validation) and `test_drop` against the baseline."""
        if self.baseline is None:
            self.measure_baseline()
        row = self._row(bytes(content))
        row["drop"] = drop(row["val_metric"], self.baseline["val_metric"], higher_better=self.higher_better)
        row["test_drop"] = drop(row["accuracy"], self.baseline["accuracy"], higher_better=self.higher_better)
        return row

    def measure_baseline(self) -> dict[str, Any]:
        """The float32 baseline's numbers (latency ratio 1 by definition)."""
        row = self._row(self.baseline_tflite)
        row.update(latency_ratio=1.0, drop=0.0, test_drop=0.0)
        self.baseline = row
        return row
