"""benchmark_sweep / compare_variants / plots: thread and batch sweeps, peak memory, no crash on bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfopt.measure.benchmark import BenchmarkError
from tfopt.export.convert import convert
from tfopt.measure.sweep import benchmark_sweep, one_op_model
from tfopt.report import compare_variants, plot_tradeoffs

PNG = b"\x89PNG\r\n\x1a\n"


def _head(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(8)


@pytest.fixture(scope="module")
def dynamic_batch_model():
    """A conv classifier with a dynamic batch (as exported by many projects)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(3, 3, 1, 8)), tf.float32)
    dense = tf.constant(rng.normal(size=(8, 4)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 1], tf.float32)])
    def classify(x):
        h = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        return tf.reduce_mean(h, axis=[1, 2]) @ dense

    return tf.lite.TFLiteConverter.from_concrete_functions(
        [classify.get_concrete_function()], classify
    ).convert()


def test_sweep_threads_and_batches_with_memory(dynamic_batch_model, tmp_path):
    sweep = benchmark_sweep(
        dynamic_batch_model,
        threads=(1, 2),
        batch_sizes=(1, 3),
        num_runs=5,
        warmup_runs=1,
    )
    assert [(p.num_threads, p.batch_size) for p in sweep.points] == [
        (1, 1),
        (2, 1),
        (1, 3),
        (2, 3),
    ]
    for p in sweep.points:
        assert p.error is None and p.latency_ms_median > 0
        assert p.throughput_per_s == pytest.approx(
            p.batch_size * 1000.0 / p.latency_ms_median
        )
        assert (
            p.peak_rss_mb > sweep.runtime_rss_mb > 5
        )  # the child's own memory, not the parent's
    assert sweep.point(2, 3).xnnpack_ops is not None
    assert "per-op timing is not available" in sweep.summary()
    assert json.loads(json.dumps(sweep.to_dict()))["points"][0]["num_threads"] == 1
    path = sweep.plot(tmp_path / "sweep.png")
    assert _head(path) == PNG


def test_sweep_fixed_batch_model_explains_instead_of_crashing(tiny_cnn):
    sweep = benchmark_sweep(
        convert(tiny_cnn), threads=(1,), batch_sizes=(1, 2), num_runs=3, warmup_runs=0
    )
    assert sweep.point(1, 1).error is None
    assert (
        "batch" in sweep.point(1, 2).error
        and sweep.point(1, 2).latency_ms_median is None
    )
    assert "not measured" in sweep.table()


def test_sweep_dynamic_dims_need_input_shapes():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, None, 3], tf.float32)])
    def pool(x):
        return tf.reduce_mean(x, axis=1)

    content = tf.lite.TFLiteConverter.from_concrete_functions(
        [pool.get_concrete_function()], pool
    ).convert()
    unset = benchmark_sweep(content, threads=(1,), num_runs=2)
    assert "input_shapes" in unset.points[0].error
    given = benchmark_sweep(
        content,
        threads=(1,),
        batch_sizes=(2,),
        num_runs=2,
        input_shapes={"0": [1, 7, 3]},
    )
    assert given.points[0].error is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threads": (0,)}, "threads must be"),
        ({"threads": ()}, "threads must be"),
        ({"batch_sizes": (1.5,)}, "batch_sizes must be"),
    ],
    ids=["zero", "empty", "float"],
)
def test_sweep_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        benchmark_sweep(one_op_model(), **kwargs)


def test_compare_variants_table_plot_and_failed_variant(tiny_cnn, rng, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils as fu

    x = rng.random((30, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, 30)
    float32 = convert(tiny_cnn)
    obj = fu.read_model_from_bytearray(bytearray(float32.tflite))
    obj.operatorCodes[0].builtinCode = obj.operatorCodes[0].deprecatedBuiltinCode = 32
    obj.operatorCodes[0].customCode = "Missing"
    variants = {
        "float32": float32,
        "int8": convert(tiny_cnn, mode="int8", calibration=x),
        "custom": bytes(fu.convert_object_to_bytearray(obj)),
    }
    report = compare_variants(variants, data=(x, y), num_runs=5, output_dir=tmp_path)
    assert [r.name for r in report.rows] == ["float32", "int8"]
    assert report.row("int8").size_ratio < 0.5
    assert any(n.startswith("custom could not be benchmarked") for n in report.notes)
    assert _head(tmp_path / "tradeoffs.png") == PNG
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.json").exists()
    with pytest.raises(BenchmarkError, match="no variant"):
        compare_variants({"custom": variants["custom"]}, num_runs=2)


def test_plot_tradeoffs_without_accuracy(dynamic_batch_model, tmp_path):
    report = compare_variants(
        {"a": dynamic_batch_model, "b": one_op_model()}, num_runs=3
    )
    assert report.rows[0].accuracy is None
    path = plot_tradeoffs(report, tmp_path / "p.png")
    assert os.path.getsize(path) > 1000 and _head(path) == PNG


def test_bench_cli_sweep_and_plot(dynamic_batch_model, tmp_path):
    """`tfopt bench` with --batch_sizes, --plot and --json, through the real dispatcher."""
    model = tmp_path / "m.tflite"
    model.write_bytes(dynamic_batch_model)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = lambda *a: subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [sys.executable, "-m", "tfopt.cli", "bench", *a],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    proc = run(
        str(model),
        "--batch_sizes=1,2",
        "--runs=3",
        "--warmup_runs=0",
        "--plot",
        f"--json={tmp_path / 'b.json'}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "b.json").read_text())
    assert [p["batch_size"] for p in payload["sweep"]["points"]] == [1, 2]
    assert _head(tmp_path / "b_sweep.png") == PNG
    bad = run(str(model), "--batch_sizes=0")
    assert bad.returncode == 2 and "positive integers" in bad.stderr and "Traceback" not in bad.stderr
