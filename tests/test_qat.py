"""QAT: plain fit on Keras 3 and tf_keras inputs, full-int8 conversion, the preparer, preserve, save/load."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import assert_weights_unchanged, weights_snapshot
from tfopt import _keras
from tfopt.compress.qat import load_qat, qat_summary, quantize
from tfopt.compress.qat_prepare import prepare
from tfopt.export.calibration import calibration_data
from tfopt.export.convert import convert
from tfopt.measure.parity import compare

RNG = np.random.default_rng(0)
X = RNG.random((48, 8, 8, 1), dtype="float32")
Y = RNG.integers(0, 4, 48)


def _cnn(k):
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = k.layers.BatchNormalization(name="bn")(x)
    x = k.layers.ReLU(name="relu")(x)
    x = k.layers.Flatten(name="flatten")(x)
    return k.Model(inputs, k.layers.Dense(4, name="logits")(x), name="cnn")


def _fit(model, epochs=1):
    model.compile(tf_keras.optimizers.Adam(1e-3), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(X, Y, epochs=epochs, batch_size=16, verbose=0)


@pytest.mark.parametrize("k", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_qat_plain_fit_converts_to_full_int8_and_agrees(k):
    model = _cnn(k)
    snapshot = weights_snapshot(model)
    qat = quantize(model)
    assert _keras.keras_flavor(qat) == _keras.TF_KERAS
    history = _fit(qat, epochs=2)  # the user's own fit, no callback
    assert np.isfinite(history.history["loss"][-1])
    summary = qat_summary(qat)
    assert summary.flavor == ("keras3" if k is keras else "tf_keras")
    assert {"conv", "bn", "logits"} <= set(summary.quantized)
    tflite = convert(qat, mode="int8", calibration=calibration_data(X, model=qat))
    assert tflite.inspection.float_compute_ops == []
    assert set(tflite.inspection.precision_counts) == {"int8"}
    parity = compare(qat, tflite, X)
    assert parity.top1_agreement >= 0.95
    assert_weights_unchanged(model, snapshot)


def test_qat_preparer_rewrites_what_tfmot_refuses():
    # Rescaling preprocessing, hard-swish as TFOpLambda ops, Multiply of two tensors,
    # a BatchNormalization not after a conv, and a nested model.
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = tf_keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = x * tf.nn.relu6(x + 3.0) / 6.0  # hard-swish
    x = tf_keras.layers.BatchNormalization(name="lone_bn")(x)
    gate = tf_keras.layers.Conv2D(8, 1, activation="sigmoid", name="gate")(x)
    x = x * gate
    inner = tf_keras.Sequential([tf_keras.Input((8, 8, 8)), tf_keras.layers.Conv2D(4, 3, name="inner_conv")], name="block")
    x = inner(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="logits")(x))
    with pytest.raises(Exception):  # plain tfmot stops on this model
        _keras.import_tfmot().quantization.keras.quantize_model(model)
    prepared = prepare(model)
    assert "TFOpLambda" not in {type(l).__name__ for l in prepared.model.layers}
    assert "inner_conv" in {l.name for l in prepared.model.layers}
    qat = quantize(model)
    summary = qat_summary(qat)
    kept = {f.name: f.reason for f in summary.kept_float}
    assert "scale" in kept and "lone_bn" in kept
    assert {"conv", "gate", "inner_conv", "logits"} <= set(summary.quantized)
    assert any("nested model 'block' inlined" in r for r in summary.rewrites)
    data = RNG.random((16, 8, 8, 3), dtype="float32") * 255
    tflite = convert(qat, mode="int8", calibration=data)
    assert tflite.inspection.float_compute_ops == []
    assert "kept float" in summary.summary()


def test_qat_conv1d_and_subclassed_models():
    keras.utils.set_random_seed(0)
    seq_in = keras.Input((20, 4))
    h = keras.layers.Conv1D(8, 3, activation="relu", name="conv1d")(seq_in)
    h = keras.layers.GlobalAveragePooling1D()(h)
    conv1d = keras.Model(seq_in, keras.layers.Dense(3, name="logits")(h))
    qat = quantize(conv1d)
    assert [f.name for f in qat_summary(qat).kept_float] == ["conv1d"]
    tflite = convert(qat, mode="int8", calibration=RNG.random((16, 20, 4), dtype="float32"))
    assert tflite.inspection.float_compute_ops == []

    class Small(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, activation="relu")
            self.flat = keras.layers.Flatten()
            self.head = keras.layers.Dense(4)

        def call(self, x):
            return self.head(self.flat(self.conv(x)))

    sub = Small()
    sub(X[:1])
    snapshot = weights_snapshot(sub)
    qat = quantize(sub, input_shape=(8, 8, 1))
    assert any("traced" in r for r in qat_summary(qat).rewrites)
    _fit(qat)
    assert_weights_unchanged(sub, snapshot)


def test_qat_exclude_save_load_and_errors(tmp_path):
    model = _cnn(keras)
    qat = quantize(model, exclude=["logits"])
    assert "logits" in {f.name for f in qat_summary(qat).kept_float}
    _fit(qat)
    path = os.path.join(tmp_path, "qat.h5")  # tfmot wrappers do not reload from .keras
    qat.save(path)
    loaded = load_qat(path)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), qat.predict(X, verbose=0), atol=1e-5)
    _fit(loaded)  # training continues after a reload
    with pytest.raises(ValueError, match="exclude rule 'nope' matched no layer"):
        quantize(model, exclude="nope")
    with pytest.raises(ValueError, match="preserve must be one of"):
        quantize(model, preserve="weights")
    with pytest.raises(ValueError, match="was not returned by tfopt.quantize"):
        qat_summary(model)


def test_qat_preserve_sparsity_keeps_zeros_in_int8_tflite():
    from tfopt.analyze.sparsity import tflite_sparsity

    model = _cnn(keras)
    weights = model.get_weights()
    kernel = weights[-2]
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.8)] = 0.0  # an 80%-sparse head, as after pruning
    model.set_weights(weights)
    qat = quantize(model, preserve="sparsity")
    _fit(qat)
    tflite = convert(qat, mode="int8", calibration=X)
    dense = [t for t in tflite_sparsity(tflite).tensors if t.op == "FULLY_CONNECTED"][0]
    assert dense.sparsity >= 0.79


def test_qat_keras3_hard_swish_and_symbolic_ops_are_rewritten():
    # MobileNetV3 in Keras 3: Activation("hard_silu") and `x + 3.0` op nodes, which tf_keras cannot rebuild.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Activation("hard_silu", name="hswish")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x + 3.0) * (1.0 / 6.0)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(x)))
    qat = quantize(model)
    rewrites = " ".join(qat_summary(qat).rewrites)
    assert "hswish (Activation hard_silu)" in rewrites and "(keras.ops Add) -> Rescaling" in rewrites
    expected = model.predict(X[:8], verbose=0)  # fake-quant noise only: the rewrite itself is exact (checked inside)
    assert np.max(np.abs(qat.predict(X[:8], verbose=0) - expected)) < 0.25 * np.max(np.abs(expected))
