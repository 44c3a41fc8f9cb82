"""Tests for tfopt.export.onnx_export: tf2onnx export with an onnxruntime parity check."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from tfopt.export.onnx_export import OnnxExportResult, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")
    return x[:1400], y[:1400].astype("int64"), x[1400:], y[1400:].astype("int64")


def _cnn(k, softmax=True):
    layers = k.layers
    return k.Sequential(
        [
            k.Input((8, 8, 1)),
            layers.Conv2D(8, 3, activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax" if softmax else None),
        ]
    )


@pytest.fixture(scope="module")
def trained_cnn(digits):
    """A small CNN trained on real data (sklearn digits), reaching well above chance."""
    x_train, y_train, x_test, y_test = digits
    keras.utils.set_random_seed(0)
    model = _cnn(keras)
    model.compile("adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.7
    return model


def test_export_onnx_parity_on_real_cnn(trained_cnn, digits, tmp_path):
    x_test = digits[2]
    before = [w.copy() for w in trained_cnn.get_weights()]
    result = export_onnx(trained_cnn, tmp_path / "cnn.onnx", data=(x_test, digits[3]))
    assert isinstance(result, OnnxExportResult)
    assert os.path.getsize(result.path) == result.size_bytes > 0
    assert result.opset == 17 and result.keras_flavor == "keras3"
    assert result.num_samples == 256
    assert result.max_abs_diff <= 1e-4, result.summary()
    assert result.op_counts.get("Conv") == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, trained_cnn.get_weights()))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_export_onnx_runs_in_onnxruntime_with_dynamic_batch(trained_cnn, digits, tmp_path):
    import onnxruntime as ort

    result = export_onnx(trained_cnn, tmp_path / "cnn.onnx")
    assert result.num_samples is None and result.max_abs_diff is None
    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == result.input_names == ["input"]
    for batch in (1, 7):
        out = session.run(None, {"input": digits[2][:batch]})[0]
        np.testing.assert_allclose(out, trained_cnn.predict(digits[2][:batch], verbose=0), atol=1e-5)


def test_export_onnx_tf_keras_model(digits, tmp_path):
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = _cnn(tf_keras, softmax=False)
    result = export_onnx(model, tmp_path / "tfk.onnx", data=digits[2], opset=13, num_samples=50)
    assert result.keras_flavor == "tf_keras" and result.opset == 13 and result.num_samples == 50
    assert result.max_abs_diff <= 1e-4


def test_export_onnx_from_keras_file(trained_cnn, digits, tmp_path):
    trained_cnn.save(tmp_path / "cnn.keras")
    result = export_onnx(str(tmp_path / "cnn.keras"), tmp_path / "cnn.onnx", data=digits[2][:20])
    assert result.max_abs_diff <= 1e-4


def test_export_onnx_multi_input_names_follow_keras(tmp_path):
    a = keras.Input((4,), name="left")
    b = keras.Input((3,), name="right")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], [keras.layers.Dense(2, name="scores")(joined), keras.layers.Dense(1, name="aux")(a)])
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(6, 3)).astype("float32")]
    result = export_onnx(model, tmp_path / "multi.onnx", data=data)
    assert result.input_names == ["left", "right"] and result.output_names == ["scores", "aux"]
    assert result.max_abs_diff <= 1e-5


def test_export_onnx_unsupported_op_names_it_and_writes_nothing(tmp_path):
    class Igamma(keras.layers.Layer):
        def call(self, x):
            return tf.math.igamma(x, x)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Igamma()(inputs))
    with pytest.raises(ValueError, match=r"no ONNX opset-17 conversion .*Igamma"):
        export_onnx(model, tmp_path / "bad.onnx")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"opset": 3}, ValueError, r"opset must be an int between 7 and 21.*opset=3"),
        ({"num_samples": 0}, ValueError, r"num_samples must be a positive int"),
        ({"data": [np.zeros((2, 8, 8, 1)), np.zeros((2, 3))]}, ValueError, r"2 input array\(s\) but the model has 1"),
    ],
    ids=["opset", "num_samples", "data-arity"],
)
def test_export_onnx_rejects_bad_arguments(trained_cnn, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export_onnx(trained_cnn, tmp_path / "x.onnx", **kwargs)


def test_export_onnx_rejects_non_models(tmp_path):
    with pytest.raises(TypeError, match="expects a Keras model.*Received: dict"):
        export_onnx({}, tmp_path / "x.onnx")


def test_export_onnx_missing_tf2onnx_says_what_to_install(trained_cnn, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(ImportError, match="pip install tf2onnx onnx onnxruntime"):
        export_onnx(trained_cnn, tmp_path / "x.onnx")


def test_export_onnx_result_summary_and_dict(trained_cnn, digits, tmp_path):
    result = export_onnx(trained_cnn, tmp_path / "cnn.onnx", data=digits[2][:10])
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["max_abs_diff"] == result.max_abs_diff and payload["path"] == result.path
    assert "parity:  max |onnx - keras|" in result.summary() and "over 10 inputs" in result.summary()


def test_cli_export_onnx_writes_model_and_json(trained_cnn, digits, tmp_path):
    from tfopt import cli

    model_path = tmp_path / "cnn.keras"
    trained_cnn.save(model_path)
    data_path = tmp_path / "data.npz"
    np.savez(data_path, x_train=digits[0], y_train=digits[1], x_test=digits[2], y_test=digits[3])
    out, report = tmp_path / "cnn.onnx", tmp_path / "report.json"
    assert cli.main(["export-onnx", str(model_path), f"--output={out}", f"--data={data_path}", f"--json={report}"]) == 0
    payload = json.loads(report.read_text())
    assert out.exists() and payload["paths"]["onnx"] == str(out)
    assert payload["max_abs_diff"] <= 1e-4 and payload["num_samples"] == 256


def test_cli_export_onnx_needs_one_model(capsys):
    from tfopt import cli

    assert cli.main(["export-onnx", "--output", "x.onnx"]) == 2
    assert "MODEL" in capsys.readouterr().err
