"""tfopt.convert: the five modes, Keras 3 and tf_keras, files, and what the flatbuffer really holds."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tfopt
from conftest import assert_weights_unchanged, weights_snapshot


@pytest.fixture()
def calib(tiny_cnn, rng):
    return tfopt.calibration_data(rng.random((64, 8, 8, 1), dtype=np.float32), model=tiny_cnn, num_samples=32)


@pytest.mark.parametrize(
    "mode, precision",
    [("float32", "float32"), ("float16", "float16-weights"), ("int8", "int8"), ("int16x8", "int16x8")],
)
def test_convert_modes_precision(tiny_cnn, calib, mode, precision):
    before = weights_snapshot(tiny_cnn)
    result = tfopt.convert(tiny_cnn, mode=mode, calibration=calib if mode in ("int8", "int16x8") else None)
    counts = result.inspection.precision_counts
    assert counts == {precision: 2}, counts
    assert result.tflite[4:8] == b"TFL3"
    assert_weights_unchanged(tiny_cnn, before)


def test_convert_dynamic_quantizes_large_weights(rng):
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(10)])
    result = tfopt.convert(model, mode="dynamic")
    assert result.inspection.precision_counts.get("hybrid", 0) == 2
    assert any("XNNPACK" in w for w in result.warnings)
    assert result.inspection.weight_dtypes.get("INT8", 0) >= 64 * 256


def test_convert_int8_io_types(tiny_cnn, calib):
    result = tfopt.convert(tiny_cnn, mode="int8", calibration=calib, input_type="int8", output_type="int8")
    (inp,), (out,) = result.inspection.inputs, result.inspection.outputs
    assert inp.dtype == "INT8" and out.dtype == "INT8"
    assert inp.scale and out.scale
    assert "DEQUANTIZE" not in result.inspection.op_counts and "QUANTIZE" not in result.inspection.op_counts


def test_convert_signature_names_are_stable(two_input_model, rng):
    data = [rng.random((40, 8, 8, 1), dtype=np.float32), rng.random((40, 3), dtype=np.float32)]
    result = tfopt.convert(two_input_model, mode="int8", calibration=data)
    assert result.inspection.signatures["serving_default"] == {"inputs": ["image", "meta"], "outputs": ["logits"]}
    assert all(shape[0] == 1 for shape in (t.shape for t in result.inspection.inputs))


def test_convert_tf_keras_model(rng):
    import tf_keras

    model = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 1)), tf_keras.layers.Conv2D(4, 3), tf_keras.layers.Flatten(), tf_keras.layers.Dense(3)]
    )
    x = rng.random((20, 8, 8, 1), dtype=np.float32)
    result = tfopt.convert(model, mode="int8", calibration=x)
    assert result.inspection.precision_counts == {"int8": 2}
    bench = tfopt.benchmark(result, data=(x, model.predict(x, verbose=0).argmax(-1)), num_runs=3)
    assert bench.accuracy >= 0.8


def test_convert_keras_file_and_savedmodel(tiny_cnn, tmp_path):
    path = str(tmp_path / "m.keras")
    tiny_cnn.save(path)
    out = tmp_path / "sub" / "m.tflite"
    result = tfopt.convert(path, mode="float16", output=out)
    assert result.path == str(out) and out.read_bytes() == result.tflite
    saved = str(tmp_path / "saved")
    tiny_cnn.export(saved, verbose=False)
    assert tfopt.convert(saved).inspection.precision_counts == {"float32": 2}


def test_convert_refuses_lambda_file_by_default(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(2)])
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="(?i)safe_mode|lambda"):
        tfopt.convert(path)
    assert tfopt.convert(path, safe_mode=False).size_bytes > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "int4"}, "Unknown mode 'int4'"),
        ({"engine": "tflm"}, "engine must be one of"),
        ({"mode": "float16", "engine": "litert_quantizer"}, "no float16 recipe"),
        ({"mode": "int8", "engine": "litert_quantizer", "input_type": "float32"}, "integer inputs and outputs"),
        ({"mode": "float16", "float_fallback": ["conv"]}, "quantizes nothing"),
        ({"mode": "int8", "calibration": np.zeros((2, 8, 8, 1)), "float_fallback": ["nope"]}, "matched no op"),
        ({"mode": "int8", "validation": (np.zeros((2, 8, 8, 1)), np.zeros(2))}, "only used by float_fallback='auto'"),
        ({"mode": "int8", "float_fallback": "auto", "max_accuracy_drop": 150}, "max_accuracy_drop is in points"),
        ({"mode": "int8"}, "needs calibration data"),
        ({"mode": "float16", "input_type": "int8"}, "input_type='int8' is not available"),
        ({"mode": "float32", "calibration": np.zeros((2, 8, 8, 1))}, "only used by modes"),
    ],
    ids=["unknown-mode", "unknown-engine", "litert-float16", "litert-float-io", "fallback-float16", "fallback-no-match",
         "validation-unused", "bad-drop", "int8-no-calibration", "bad-io-type", "calibration-unused"],
)
def test_convert_errors(tiny_cnn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfopt.convert(tiny_cnn, **kwargs)


def test_convert_bad_model_inputs(tmp_path):
    with pytest.raises(TypeError, match="expects a Keras model"):
        tfopt.convert(object())
    with pytest.raises(FileNotFoundError, match="not found"):
        tfopt.convert(str(tmp_path / "missing.keras"))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="saved_model.pb"):
        tfopt.convert(str(empty))
    bogus = tmp_path / "x.keras"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="Could not load|not a Keras model file"):
        tfopt.convert(str(bogus))


def test_convert_calibration_shape_mismatch(tiny_cnn, two_input_model, rng):
    other = tfopt.calibration_data([rng.random((10, 8, 8, 1)), rng.random((10, 3))], model=two_input_model)
    with pytest.raises(ValueError, match="calibration data holds examples of shapes"):
        tfopt.convert(tiny_cnn, mode="int8", calibration=other)
    assert not any(name.startswith(".tmp-") for name in os.listdir("."))


def test_convert_sparse_encoding_of_pruned_weights():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, use_bias=False), keras.layers.Dense(4)])
    kernel = model.get_weights()[0]
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.9)] = 0.0
    model.set_weights([kernel, *model.get_weights()[1:]])
    dense, sparse = tfopt.convert(model), tfopt.convert(model, sparse=True)
    assert sparse.inspection.op_counts.get("DENSIFY", 0) >= 1
    assert sparse.size_bytes < dense.size_bytes
    from tfopt.analyze.sparsity import tflite_sparsity

    report = tflite_sparsity(sparse)
    assert max(t.sparsity for t in report.tensors) == pytest.approx(0.9, abs=0.01)


def test_convert_reports_xnnpack_coverage(tiny_cnn, calib):
    result = tfopt.convert(tiny_cnn, mode="int8", calibration=calib)
    assert result.xnnpack is not None and result.xnnpack.fully_delegated
    assert result.xnnpack.total_ops == len(result.inspection.ops)
    assert "XNNPACK takes" in result.summary()
    assert tfopt.convert(tiny_cnn, check_delegation=False).xnnpack is None


def test_convert_warns_when_xnnpack_leaves_ops(rng):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32)])
    def odd(x):
        return tf.math.cumsum(tf.sin(x) * 3.0, axis=-1)  # CUMSUM has no XNNPACK kernel

    content = tf.lite.TFLiteConverter.from_concrete_functions([odd.get_concrete_function()]).convert()
    from tfopt.measure.benchmark import xnnpack_coverage

    coverage = xnnpack_coverage(content)
    assert not coverage.fully_delegated and any("CUMSUM" in op for op in coverage.undelegated)


# --- one entry point: engines, per-tensor Dense, float fallback, 16x8 alias, QAT models -------------------------


def _dense_weight_scales(content: bytes) -> list[int]:
    """Number of quantization scales of each FULLY_CONNECTED weight tensor, read from the flatbuffer."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    counts = []
    for op in graph.operators:
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "FULLY_CONNECTED":
            quant = graph.tensors[int(op.inputs[1])].quantization
            counts.append(0 if quant is None or quant.scale is None else len(quant.scale))
    return counts


@pytest.fixture()
def mlp(rng):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,), name="features"), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(4, name="head")])
    return model, rng.random((64, 8), dtype=np.float32)


@pytest.mark.parametrize("engine", ["converter", "litert_quantizer"])
def test_convert_per_channel_dense_false_gives_one_scale_per_dense_weight(mlp, engine):
    model, x = mlp
    per_channel = tfopt.convert(model, mode="int8", engine=engine, calibration=x, check_delegation=False)
    per_tensor = tfopt.convert(model, mode="int8", engine=engine, calibration=x, per_channel_dense=False,
                               check_delegation=False)
    assert _dense_weight_scales(per_channel.tflite) == [16, 4]
    assert _dense_weight_scales(per_tensor.tflite) == [1, 1]
    assert per_tensor.size_bytes < per_channel.size_bytes
    assert per_tensor.inspection.precision_counts == {"int8": 2}


def test_convert_litert_engine_result(mlp):
    model, x = mlp
    result = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=x, check_delegation=False)
    assert (result.engine, result.recipe, result.mode) == ("litert_quantizer", "static_wi8_ai8", "int8")
    assert result.inspection.inputs[0].dtype == "INT8" and result.inspection.precision_counts == {"int8": 2}
    assert result.to_dict()["engine"] == "litert_quantizer" and "litert_quantizer (static_wi8_ai8)" in result.summary()
    again = tfopt.convert(tfopt.convert(model, check_delegation=False), mode="int4", engine="litert_quantizer",
                          check_delegation=False)  # a float .tflite goes in too
    assert again.recipe == "dynamic_wi4_afp32" and set(again.inspection.precision_counts) == {"hybrid-int4"}


@pytest.mark.parametrize("engine", ["converter", "litert_quantizer"])
def test_convert_int16x8_alias(mlp, engine):
    model, x = mlp
    result = tfopt.convert(model, mode="16x8", engine=engine, calibration=x, check_delegation=False)
    assert result.mode == "int16x8"
    assert result.inspection.precision_counts == {"int16x8": 2}


@pytest.mark.parametrize("engine", ["converter", "litert_quantizer"])
def test_convert_float_fallback_by_name(mlp, engine):
    model, x = mlp
    result = tfopt.convert(model, mode="int8", engine=engine, calibration=x, float_fallback=["hidden"],
                           check_delegation=False)
    assert result.inspection.precision_counts == {"int8": 1, "float32": 1}
    assert len(result.float_fallback) == 1 and "hidden" in result.float_fallback[0]
    assert not result.warnings  # float on purpose is not a surprise
    assert result.to_dict()["float_fallback"] == list(result.float_fallback)


def _fake_quant_mlp():
    """A Keras 3 MLP whose layers call keras.quantizers.fake_quant_with_min_max_vars, as QAT wrappers do."""
    import keras
    from keras import ops

    class FakeQuantDense(keras.layers.Layer):
        def __init__(self, units, low, high, relu=False, **kwargs):
            super().__init__(**kwargs)
            self.units, self.low, self.high, self.relu = units, low, high, relu

        def build(self, shape):
            self.kernel = self.add_weight(shape=(shape[-1], self.units), initializer="glorot_uniform")
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros")

        def call(self, x):
            bound = ops.max(ops.abs(self.kernel))
            kernel = keras.quantizers.fake_quant_with_min_max_vars(self.kernel, -bound, bound, narrow_range=True)
            y = ops.matmul(x, kernel) + self.bias
            y = ops.relu(y) if self.relu else y
            return keras.quantizers.fake_quant_with_min_max_vars(y, self.low, self.high)

    class FakeQuantInput(keras.layers.Layer):
        def call(self, x):
            return keras.quantizers.fake_quant_with_min_max_vars(x, -1.0, 1.0)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = FakeQuantInput()(inputs)
    x = FakeQuantDense(16, 0.0, 4.0, relu=True)(x)
    outputs = FakeQuantDense(4, -4.0, 4.0)(x)
    return keras.Model(inputs, outputs)


def test_convert_fake_quant_model_to_int8_without_and_with_calibration(rng):
    from tfopt.measure.parity import compare

    model = _fake_quant_mlp()
    before = weights_snapshot(model)
    x = rng.uniform(-1, 1, (32, 8)).astype(np.float32)
    plain = tfopt.convert(model, mode="int8", check_delegation=False)
    assert plain.inspection.precision_counts == {"int8": 2} and not plain.inspection.float_compute_ops
    full = tfopt.convert(model, mode="int8", input_type="int8", output_type="int8", check_delegation=False)
    assert full.inspection.inputs[0].dtype == "INT8" and set(full.inspection.op_counts) == {"FULLY_CONNECTED"}
    assert compare(model, full, x, localize=False).top1_agreement >= 0.95
    calibrated = tfopt.convert(model, mode="int8", calibration=x, check_delegation=False)
    assert calibrated.inspection.precision_counts == {"int8": 2}
    assert_weights_unchanged(model, before)


def test_convert_tf_keras_model_with_both_engines_and_fallback(rng):
    from tfopt._legacy import tf_keras_module

    k = tf_keras_module()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.Input((8, 8, 1)), k.layers.Conv2D(4, 3, activation="relu", name="conv"), k.layers.Flatten(),
                          k.layers.Dense(3, name="head")])
    x = rng.random((30, 8, 8, 1), dtype=np.float32)
    litert = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=x, check_delegation=False)
    assert litert.inspection.precision_counts == {"int8": 2}
    kept = tfopt.convert(model, mode="int8", engine="litert_quantizer", calibration=x, float_fallback=["conv"],
                         per_channel_dense=False, check_delegation=False)
    assert kept.inspection.precision_counts == {"float32": 1, "int8": 1} and "conv" in kept.float_fallback[0]
    assert _dense_weight_scales(kept.tflite) == [1]
    with pytest.raises(ValueError, match="Use engine='litert_quantizer' for those together"):
        tfopt.convert(model, mode="int8", calibration=x, float_fallback=["conv"], per_channel_dense=False)
