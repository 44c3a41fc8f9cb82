"""QAT on the Keras 3 path: real-digit accuracy and parity of the int8 .tflite, layer coverage, strip, summary, errors."""

import keras
import numpy as np
import pytest

from conftest import assert_weights_unchanged, weights_snapshot
from tfopt import _keras
from tfopt.compress.qat import has_wrappers, qat, qat_summary, quantize, strip_qat
from tfopt.export.convert import convert
from tfopt.measure.parity import compare

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], data.target[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def digits_cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="digits_cnn")


@pytest.fixture(scope="module")
def trained(digits):
    x_train, y_train, x_test, y_test = digits
    model = digits_cnn()
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)
    return model, model.evaluate(x_test, y_test, verbose=0)[1]


def test_qat_digits_int8_tflite_within_one_point_full_int8_and_parity(digits, trained):
    x_train, y_train, x_test, y_test = digits
    model, float_accuracy = trained
    snapshot = weights_snapshot(model)
    wrapped = qat(model)
    assert _keras.keras_flavor(wrapped) == _keras.KERAS3 and has_wrappers(wrapped)
    summary = qat_summary(wrapped)
    assert {"conv", "relu", "conv2", "logits"} <= set(summary.quantized) and not summary.kept_float
    assert "conv <- bn (BatchNormalization folded)" in summary.rewrites
    assert summary.uninitialized_ranges > 0  # no batch seen yet
    wrapped.compile(keras.optimizers.Adam(1e-4), LOSS)
    wrapped.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    assert qat_summary(wrapped).uninitialized_ranges == 0
    tflite = convert(wrapped, mode="int8", calibration=x_train[:200], check_delegation=False)
    assert tflite.inspection.float_compute_ops == []
    parity = compare(wrapped, tflite, (x_test, y_test), localize=False)
    assert parity.top1_agreement >= 0.99
    tflite_accuracy = parity.to_dict()["candidate_accuracy"]
    assert tflite_accuracy >= float_accuracy - 0.01, (tflite_accuracy, float_accuracy)
    assert_weights_unchanged(model, snapshot)


def _zoo():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    a = keras.layers.Activation("hard_silu", name="hswish")(x)
    b = keras.layers.SeparableConv2D(8, 3, padding="same", activation="swish", name="sep")(a)
    c = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    c = keras.layers.Activation("sigmoid", name="gate")(c)
    x = keras.layers.Multiply(name="mul")([b, c])
    x = keras.layers.Add(name="add")([x, a])
    x = keras.layers.Concatenate(name="cat")([x, a])
    x = keras.layers.AveragePooling2D(2, name="avg")(x)
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(6, name="hidden")(x)
    x = keras.layers.Lambda(lambda t: t * 1.0, name="custom")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="zoo")


def test_qat_layer_coverage_converts_to_full_int8():
    model = _zoo()
    x = np.random.default_rng(0).random((64, 8, 8, 3), dtype="float32")
    wrapped = qat(model, exclude="re:hid.*")
    summary = qat_summary(wrapped)
    expected = {"rescale", "conv", "hswish", "sep", "dw", "gate", "mul", "add", "cat", "up", "relu6", "gap", "logits"}
    assert expected <= set(summary.quantized)
    kept = {f.name: f.reason for f in summary.kept_float}
    assert "avg" not in kept and "avg" not in summary.quantized  # keeps its input's range, as LiteRT requires
    assert kept["hidden"] == "matched by exclude"
    assert "no int8 QAT rule" in kept["custom"]
    wrapped.compile(keras.optimizers.Adam(1e-3), "mse")
    wrapped.fit(x, np.zeros((64, 3)), batch_size=16, epochs=1, verbose=0)
    tflite = convert(wrapped, mode="int8", calibration=x, check_delegation=False)
    assert tflite.inspection.float_compute_ops == []
    assert compare(wrapped, tflite, x, localize=False).top1_agreement >= 0.95


def test_strip_qat_gives_the_source_architecture_and_weights(trained):
    model, _ = trained
    plain = strip_qat(qat(model))
    assert not has_wrappers(plain)
    assert [type(layer).__name__ for layer in plain.layers] == [type(layer).__name__ for layer in model.layers]
    x = np.random.default_rng(0).random((8, 8, 8, 1), dtype="float32")
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_qat_sequential_subclassed_and_nested_models():
    keras.utils.set_random_seed(0)
    sequential = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="c"),
                                   keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
    snapshot = weights_snapshot(sequential)
    assert "Sequential model rebuilt as a functional model" in qat_summary(qat(sequential)).rewrites
    assert_weights_unchanged(sequential, snapshot)

    class Small(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, activation="relu")
            self.flat = keras.layers.Flatten()
            self.head = keras.layers.Dense(4)

        def call(self, x):
            return self.head(self.flat(self.conv(x)))

    sub = Small()
    sub(np.zeros((1, 8, 8, 1), "float32"))
    assert any("traced" in r for r in qat_summary(qat(sub, input_shape=(8, 8, 1))).rewrites)

    inner = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3, name="inner_conv")], name="block")
    inputs = keras.Input((8, 8, 1))
    outer = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(inner(sequential.layers[0](inputs)))))
    summary = qat_summary(qat(outer))
    assert "inner_conv" in summary.quantized and "nested model 'block' inlined" in summary.rewrites


def test_qat_errors_name_what_was_received():
    model = digits_cnn()
    with pytest.raises(ValueError, match="exclude rule 'nope' matched no layer"):
        qat(model, exclude="nope")
    with pytest.raises(ValueError, match="preserve must be one of"):
        qat(model, preserve="weights")
    with pytest.raises(ValueError, match="ema_decay must be in"):
        qat(model, ema_decay=1.5)
    wrapped = qat(model)
    with pytest.raises(ValueError, match="already prepared for QAT"):
        qat(wrapped)
    with pytest.raises(ValueError, match="carries no QAT layers; nothing to strip"):
        strip_qat(model)
    with pytest.raises(ValueError, match="carries no QAT layers"):
        qat_summary(model)
    with pytest.raises(TypeError, match="Expected a Keras model"):
        qat("model.keras")
    with pytest.warns(DeprecationWarning, match="use tfopt.qat"):
        quantize(model)
