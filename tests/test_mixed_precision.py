"""Keras 3 mixed-precision policies: pruning and clustering train under them; QAT computes in float32.

Real data (sklearn digits). The global policy is restored after each test, so other tests on the same
worker never see it.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import tfopt
from tfopt.compress import qat_layers


@pytest.fixture(params=["mixed_bfloat16", "mixed_float16"])
def mixed(request):
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy(before)


def _digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _trained_cnn(train):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(name="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits", dtype="float32"),  # float32 logits: the mixed-precision recipe
    ])
    _compile(model, 1e-3)
    model.fit(*train, epochs=6, batch_size=32, verbose=0)
    return model


def _compile(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _accuracy(model, test) -> float:
    return float(np.mean(np.argmax(model.predict(test[0], verbose=0), -1) == test[1]))


def test_prune_and_cluster_train_under_a_mixed_policy(mixed):
    train, test = _digits()
    model = _trained_cnn(train)
    assert model.get_layer("hidden").dtype_policy.name == mixed
    base = _accuracy(model, test)

    pruned = tfopt.prune(model, target_sparsity=0.75, schedule="constant", include=["hidden"])
    _compile(pruned, 1e-4)
    pruned.fit(*train, epochs=2, batch_size=32, verbose=0)
    plain = tfopt.strip(pruned)
    kernel = keras.ops.convert_to_numpy(plain.get_layer("hidden").kernel)
    assert kernel.dtype == np.float32 and float(np.mean(kernel == 0)) == pytest.approx(0.75, abs=0.01)
    assert plain.get_layer("hidden").dtype_policy.name == mixed  # the user's policy is kept
    assert _accuracy(plain, test) >= base - 0.03

    clustered = tfopt.cluster(model, num_clusters=8, include=["hidden"])
    _compile(clustered, 1e-4)
    clustered.fit(*train, epochs=2, batch_size=32, verbose=0)
    plain = tfopt.strip(clustered)
    assert len(np.unique(keras.ops.convert_to_numpy(plain.get_layer("hidden").kernel))) <= 8
    assert plain.get_layer("hidden").dtype_policy.name == mixed
    assert _accuracy(plain, test) >= base - 0.03


def test_qat_computes_in_float32_says_so_and_converts(mixed):
    train, test = _digits()
    model = _trained_cnn(train)
    with pytest.warns(UserWarning, match=f"computes in float32; its source layers used {mixed}"):
        quantized = tfopt.qat(model)
    qat_parts = [layer for layer in quantized.layers if isinstance(layer, qat_layers.QAT_LAYERS)]
    assert qat_parts and all(layer.dtype_policy.compute_dtype == "float32" for layer in qat_parts)
    assert all(layer.layer.dtype_policy.compute_dtype == "float32"
               for layer in qat_parts if isinstance(layer, keras.layers.Wrapper))
    assert any(mixed in rewrite for rewrite in tfopt.summary(quantized).rewrites)
    _compile(quantized, 1e-4)
    quantized.fit(*train, epochs=1, batch_size=32, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = tfopt.convert(quantized, mode="int8", calibration=train[0][:100])
    accuracy = tfopt.evaluate(int8, test).value
    assert accuracy >= _accuracy(model, test) - 0.015  # int8 within 1.5 points of the mixed-precision float model
    parity = tfopt.compare(quantized, int8, test[0], localize=False)
    assert parity.top1_agreement >= 0.99
