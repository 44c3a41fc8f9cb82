"""tfopt.benchmark: real measurements, accuracy of the .tflite itself, and no crash on bad models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tfopt
from tfopt.measure.host import this_host


@pytest.fixture(scope="module")
def digits_model():
    """A tiny dense classifier trained on sklearn's real 8x8 digits, with its data."""
    import keras

    data = tfopt.load_dataset("digits")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=15, verbose=0)
    return model, data


def test_benchmark_measures_and_matches_keras_predictions(digits_model):
    model, data = digits_model
    result = tfopt.benchmark(tfopt.convert(model), data=(data.x_test, data.y_test), num_runs=20)
    keras_pred = model.predict(data.x_test, verbose=0).argmax(-1)
    assert np.array_equal(np.array(result.predictions), keras_pred)
    assert result.accuracy == pytest.approx(float(np.mean(keras_pred == data.y_test)))
    assert result.num_runs == 20 and result.latency_ms_median > 0
    assert result.latency_ms_min <= result.latency_ms_median <= result.latency_ms_p90
    assert 0 < result.gzip_bytes < result.size_bytes
    assert result.fully_delegated is True
    assert set(result.to_dict()) >= {"latency_ms_median", "latency_ms_p90", "size_bytes", "gzip_bytes", "accuracy"}


def test_benchmark_int8_input_quantized(digits_model):
    model, data = digits_model
    calib = tfopt.calibration_data(data.x_train, model=model)
    int8 = tfopt.convert(model, mode="int8", calibration=calib, input_type="int8", output_type="int8")
    result = tfopt.benchmark(int8, data=(data.x_test, data.y_test), num_runs=5)
    keras_acc = float(np.mean(model.predict(data.x_test, verbose=0).argmax(-1) == data.y_test))
    assert result.inputs[0]["dtype"] == "int8"
    assert abs(result.accuracy - keras_acc) <= 0.02, (result.accuracy, keras_acc)


def test_benchmark_one_hot_labels_and_xnnpack_off(digits_model):
    model, data = digits_model
    one_hot = np.eye(10)[data.y_test]
    on = tfopt.benchmark(tfopt.convert(model), data=(data.x_test, one_hot), num_runs=5)
    off = tfopt.benchmark(tfopt.convert(model), data=(data.x_test, data.y_test), num_runs=5, use_xnnpack=False)
    assert on.accuracy == off.accuracy
    assert off.xnnpack_total_ops is None and not off.use_xnnpack


def test_benchmark_dynamic_shapes(tmp_path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def mean_pool(x):
        return tf.reduce_mean(x, axis=1)

    content = tf.lite.TFLiteConverter.from_concrete_functions([mean_pool.get_concrete_function()]).convert()
    with pytest.raises(tfopt.BenchmarkError, match="dynamic dimensions"):
        tfopt.benchmark(content, num_runs=2)
    name = tfopt.inspect_tflite(content).inputs[0].name
    result = tfopt.benchmark(content, num_runs=2, input_shapes={name: [2, 5, 3]})
    assert result.inputs[0]["shape"] == [2, 5, 3]


def test_benchmark_custom_op_reported_not_crash(digits_model):
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model, _ = digits_model
    obj = fu.read_model_from_bytearray(bytearray(tfopt.convert(model).tflite))
    code = obj.operatorCodes[0]
    code.builtinCode = code.deprecatedBuiltinCode = 32  # CUSTOM
    code.customCode = "TfoptMissingOp"
    content = bytes(fu.convert_object_to_bytearray(obj))
    assert tfopt.inspect_tflite(content).custom_ops == ["TfoptMissingOp"]
    with pytest.raises(tfopt.BenchmarkError, match="(?i)custom|TfoptMissingOp"):
        tfopt.benchmark(content, num_runs=1)


def test_benchmark_truncated_flatbuffer_is_reported(digits_model):
    model, _ = digits_model
    content = tfopt.convert(model).tflite
    with pytest.raises(tfopt.BenchmarkError, match="(?i)interpreter|model"):
        tfopt.benchmark(content[: len(content) // 2], num_runs=1)


def test_benchmark_scribbled_flatbuffer_is_refused_and_the_worker_lives_on(digits_model):
    # 400 random bytes over the ~11 kB file always break the flatbuffer's offsets: LiteRT's verifier refuses it in
    # the worker at load (a crash while running is tested in test_measure_isolation.py). The caller gets a
    # BenchmarkError, and the next call on the intact model still measures.
    model, _ = digits_model
    intact = tfopt.convert(model).tflite
    content = np.frombuffer(intact, dtype=np.uint8).copy()
    rng = np.random.default_rng(1)
    content[rng.integers(64, len(content) - 64, size=400)] = rng.integers(0, 256, size=400, dtype=np.uint8)
    with pytest.raises(tfopt.BenchmarkError, match="could not load the model"):
        tfopt.benchmark(content.tobytes(), num_runs=1)
    assert tfopt.benchmark(intact, num_runs=1).num_runs == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_threads": 0}, ValueError, "num_threads must be"),
        ({"num_runs": 0}, ValueError, "num_runs must be"),
        ({"data": (np.zeros((3, 8, 8, 1)), np.zeros(4))}, ValueError, "3 examples but y holds 4"),
        ({"data": np.array([["a"]])}, TypeError, "numeric"),
    ],
    ids=["threads", "runs", "label-count", "strings"],
)
def test_benchmark_argument_errors(digits_model, kwargs, error, match):
    model, _ = digits_model
    with pytest.raises(error, match=match):
        tfopt.benchmark(tfopt.convert(model), **kwargs)


def test_variant_report_ratios(digits_model):
    model, data = digits_model
    runs = {
        mode: tfopt.benchmark(
            tfopt.convert(model, mode=mode, calibration=data.x_train if mode == "int8" else None),
            data=(data.x_test, data.y_test),
            num_runs=10,
        )
        for mode in ("float32", "int8")
    }
    report = tfopt.variant_report(runs, keras_accuracy=0.9, baseline="float32")
    row = report.row("int8")
    assert row.size_ratio == pytest.approx(runs["int8"].size_bytes / runs["float32"].size_bytes)
    assert row.speed_ratio == pytest.approx(runs["float32"].latency_ms_median / runs["int8"].latency_ms_median)
    assert row.accuracy_drop == pytest.approx(0.9 - runs["int8"].accuracy)
    assert "int8" in report.table() and "| int8 |" in report.to_markdown()
    with pytest.raises(ValueError, match="baseline 'int4'"):
        tfopt.variant_report(runs, baseline="int4")
    # the ratios are read against the machine: every result and the report name it
    assert {r.host for r in runs.values()} == {this_host()} and "logical CPUs" in this_host()
    assert report.meta["host"] == this_host() and this_host() in report.to_markdown()
    other = {**runs, "elsewhere": dataclasses.replace(runs["int8"], host="another CPU")}
    assert "host" not in tfopt.variant_report(other).meta  # measured on two machines: no single host to name
