"""Keras 3 <-> tf_keras model conversion with identical weights."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tf_keras

from tfopt import _keras
from tfopt._legacy.bridge import max_output_difference, to_keras3, to_tf_keras


def _cnn_with_batchnorm():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.Add()([x, y])
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    # Non-trivial BatchNorm statistics, so a lost weight would show.
    bn = model.layers[2]
    bn.set_weights([w + np.random.default_rng(i).uniform(0.5, 1.5, w.shape) for i, w in enumerate(bn.get_weights())])
    return model


def test_to_tf_keras_cnn_with_batchnorm_same_outputs():
    model = _cnn_with_batchnorm()
    converted = to_tf_keras(model)
    assert _keras.keras_flavor(converted) == _keras.TF_KERAS
    x = np.random.default_rng(0).random((4, 16, 16, 1), dtype="float32")
    assert max_output_difference(model, converted, x) < 1e-6
    assert [w.shape for w in converted.get_weights()] == [w.shape for w in model.get_weights()]


def test_round_trip_back_to_keras3():
    model = _cnn_with_batchnorm()
    back = to_keras3(to_tf_keras(model))
    assert _keras.keras_flavor(back) == _keras.KERAS3
    x = np.random.default_rng(1).random((4, 16, 16, 1), dtype="float32")
    assert max_output_difference(model, back, x) < 1e-6
    assert [l.name for l in back.layers] == [l.name for l in model.layers]


def test_mobilenetv2_converts_both_ways():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    x = np.random.default_rng(2).random((2, 32, 32, 3), dtype="float32")
    converted = to_tf_keras(model)
    assert max_output_difference(model, converted, x) < 1e-5
    assert max_output_difference(model, to_keras3(converted), x) < 1e-5


def test_sequential_both_ways():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    converted = to_tf_keras(model)
    assert isinstance(converted, tf_keras.Sequential)
    back = to_keras3(converted)
    assert isinstance(back, keras.Sequential)
    x = np.ones((3, 6), "float32")
    assert max_output_difference(model, back, x) == 0.0


def test_same_flavour_is_returned_as_is():
    k3 = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    tk = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1)])
    assert to_tf_keras(tk) is tk
    assert to_keras3(k3) is k3


class _Tiny(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x) * 2.0


def test_subclassed_model_is_traced_to_functional():
    model = _Tiny()
    model(np.ones((1, 3), "float32"))
    converted = to_tf_keras(model)
    x = np.random.default_rng(3).random((4, 3), dtype="float32")
    assert max_output_difference(model, converted, x) < 1e-6
    assert [type(l).__name__ for l in converted.layers][1] == "Dense"


def test_unbuilt_subclassed_model_is_rejected():
    with pytest.raises(NotImplementedError, match="Cannot trace subclassed model .* functional API"):
        to_tf_keras(_Tiny())


def test_keras3_ops_custom_layers_and_nested_models_cross_both_ways():
    @keras.saving.register_keras_serializable(package="tfopt_test")
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.gamma

    keras.utils.set_random_seed(0)
    stem = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same")], name="stem")
    inputs = keras.Input((8, 8, 3))
    x = stem(inputs)
    x = keras.layers.Activation("hard_silu")(x + 3.0)  # a Keras 3 op and an activation tf_keras lacks
    x = Scale(name="scale")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.get_layer("scale").set_weights([np.arange(4, dtype="float32")])
    converted = to_tf_keras(model)
    x = np.random.default_rng(4).random((2, 8, 8, 3), dtype="float32")
    assert max_output_difference(model, converted, x) < 1e-5
    np.testing.assert_array_equal(converted.get_layer("scale").get_weights()[0], np.arange(4))
    back = to_keras3(converted)
    assert type(back.get_layer("scale")).__name__ == "Scale"
    assert max_output_difference(model, back, x) < 1e-5


def test_caller_model_unchanged():
    model = _cnn_with_batchnorm()
    before = [w.copy() for w in model.get_weights()]
    to_keras3(to_tf_keras(model))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_prune_keeps_tf_keras_as_keras3_in_fresh_process():
    code = textwrap.dedent(
        """
        import numpy as np, tfopt, keras
        import tensorflow as tf
        from tfopt.compress.prune import prune, strip
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
        p = prune(m, include="re:dense.*", end_step=1)
        p.compile("sgd", "mse"); p.fit(np.ones((4, 4)), np.ones((4, 4)), verbose=0)
        strip(p)
        print("KERAS", tf.keras.Model is keras.Model, keras.__version__)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "KERAS True 3." in out.stdout
