"""Which TFLite Micro kernels take 4-bit (INT4) weights: found by running them, on a model trained on real digits."""

from __future__ import annotations

import numpy as np
import pytest

from tfopt.export.micro_compress import requantize_int4


def test_requantize_int4_range_and_scale():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (6, 20)).astype(np.int8)
    scales = rng.uniform(0.01, 0.1, 6)
    q4, s4 = requantize_int4(q, scales, axis=0)
    assert q4.dtype == np.int8 and q4.min() >= -7 and q4.max() <= 7 and np.abs(q4).max(axis=1).tolist() == [7] * 6
    # the real values move by at most half a new step
    assert np.all(np.abs(q4 * s4[:, None] - q * scales[:, None]) <= s4[:, None] / 2 + 1e-9)
    last, s_last = requantize_int4(np.ascontiguousarray(q.T), scales, axis=1)
    assert np.array_equal(last, q4.T) and np.allclose(s_last, s4)


@pytest.fixture(scope="module")
def digits_models():
    import keras

    import tfopt

    data = tfopt.load_dataset("digits")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu", name="up")(x)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=2, verbose=0)
    kwargs = {"mode": "int8", "calibration": data.x_train[:100], "input_type": "int8", "output_type": "int8"}
    per_channel = tfopt.convert(model, **kwargs).tflite
    per_tensor_dense = tfopt.convert(model, per_channel_dense=False, **kwargs).tflite
    return per_channel, per_tensor_dense, data


def test_int4_kernel_support_on_tflite_micro(digits_models):
    from tfopt.export.micro import int4_kernel_support

    per_channel, per_tensor_dense, data = digits_models
    rows = {r["op"]: r for r in int4_kernel_support(per_channel, data=data.x_test, num_samples=10)}
    assert set(rows) == {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"}
    assert rows["CONV_2D"]["accepted"] and rows["DEPTHWISE_CONV_2D"]["accepted"]
    assert not rows["TRANSPOSE_CONV"]["accepted"] and "Hybrid" in rows["TRANSPOSE_CONV"]["reason"]
    # per-channel Dense weights: TFLite Micro's FULLY_CONNECTED takes int4 only with one scale per tensor
    assert not rows["FULLY_CONNECTED"]["accepted"] and "kTfLiteInt4" in rows["FULLY_CONNECTED"]["reason"]
    dense = [r for r in int4_kernel_support(per_tensor_dense, data=data.x_test, num_samples=10)
             if r["op"] == "FULLY_CONNECTED"]
    assert dense[0]["accepted"] and dense[0]["int4_bytes"] < dense[0]["int8_bytes"]


def test_rewrite_weights_refuses_values_outside_int4(digits_models):
    from tfopt.analyze.flatbuffer_micro import rewrite_weights, weight_tensors_for_micro

    tensor = weight_tensors_for_micro(digits_models[0])[0]
    with pytest.raises(ValueError, match=r"INT4 values must lie in \[-8, 7\]"):
        rewrite_weights(digits_models[0], {tensor["index"]: tensor["values"]}, int4=True)
