"""Tests for channel (filter) pruning: tfopt.compress.channels and channel_graph."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from conftest import bn_cnn, subclassed_dense

from tfopt._keras import keras_of

from tfopt.compress.channel_graph import weight_name
from tfopt.compress.channels import (
    ChannelPruneResult,
    kernel_scores,
    keep_count,
    prune_channels,
    top_channels,
)

# ---------------------------------------------------------------- helpers


def _randomize(model, seed=0):
    """Random weights and BN statistics, so a wrong slice changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for var, value in zip(layer.weights, layer.get_weights()):
            name = weight_name(var)
            if name == "moving_variance":
                value = rng.uniform(0.5, 2.0, value.shape)
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, value.shape)
            else:
                value = rng.normal(0.0, 0.3, value.shape)
            values.append(value.astype("float32"))
        layer.set_weights(values)
    return model


def _masked_reference(model, result: ChannelPruneResult):
    """A copy of `model` whose removed channels output exactly zero.

    Zeroing every per-channel parameter of a removed channel (kernel column,
    bias, BN gamma / beta / mean, depthwise filter) makes that channel 0 after
    BN, and ReLU / padding / pooling keep it 0, so its contribution to the
    next layer vanishes: the structurally pruned model must compute the same.
    """
    clone = keras_of(model).models.clone_model(model)
    clone.set_weights(model.get_weights())
    for name, kept in result.kept_channels.items():
        layer = clone.get_layer(name)
        values = []
        for var, value in zip(layer.weights, layer.get_weights()):
            wname = weight_name(var)
            axis = -2 if type(layer).__name__.startswith("Depthwise") and wname != "bias" else -1
            mask = np.zeros(value.shape[axis], dtype=bool)
            mask[kept] = True
            if wname != "moving_variance":
                shape = [1] * value.ndim
                shape[axis] = -1
                value = value * mask.reshape(shape)
            values.append(value)
        layer.set_weights(values)
    return clone


def _mixed_model():
    """Concat, separable, depthwise, squeeze-excite, residual add, flatten, reshape."""
    i = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(12, 3, padding="same")(i)
    a = keras.layers.BatchNormalization()(a)
    a = keras.layers.ReLU()(a)
    b = keras.layers.SeparableConv2D(8, 3, padding="same", depth_multiplier=2)(a)
    c = keras.layers.Conv2D(6, 1, name="side")(a)
    cat = keras.layers.Concatenate(name="cat")([b, c])
    d = keras.layers.DepthwiseConv2D(3, padding="same")(cat)
    d = keras.layers.Activation("relu")(d)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(d)
    se = keras.layers.Conv2D(4, 1, activation="relu", name="squeeze")(se)
    se = keras.layers.Conv2D(14, 1, activation="sigmoid", name="excite")(se)
    d = keras.layers.Multiply()([d, se])
    e = keras.layers.Conv2D(14, 1)(d)
    e = keras.layers.Add(name="mismatched_add")([e, cat])
    e = keras.layers.MaxPooling2D()(e)
    e = keras.layers.ZeroPadding2D()(e)
    f = keras.layers.Conv2D(10, 3, activation="relu", name="body")(e)
    f = keras.layers.Reshape((64, 10))(f)
    f = keras.layers.Dense(9, activation="relu")(f)
    f = keras.layers.Flatten()(f)
    f = keras.layers.Dense(7, activation="relu", name="hidden")(f)
    f = keras.layers.Dropout(0.2)(f)
    return keras.Model(i, keras.layers.Dense(5, name="head")(f))


def _residual_model():
    """Two residual adds sharing one channel group, squeeze-excite, global pooling."""
    i = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(i)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    for k in range(2):
        y = keras.layers.Conv2D(24, 1, activation="relu", name=f"expand{k}")(x)
        y = keras.layers.DepthwiseConv2D(3, padding="same")(y)
        y = keras.layers.BatchNormalization()(y)
        y = keras.layers.ReLU(6.0)(y)
        s = keras.layers.GlobalAveragePooling2D(keepdims=True)(y)
        s = keras.layers.Conv2D(8, 1, activation="relu", name=f"se_reduce{k}")(s)
        s = keras.layers.Conv2D(24, 1, activation="sigmoid", name=f"se_expand{k}")(s)
        y = keras.layers.Multiply()([y, s])
        y = keras.layers.Conv2D(16, 1, name=f"project{k}")(y)
        y = keras.layers.BatchNormalization()(y)
        x = keras.layers.Add()([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(i, keras.layers.Dense(4, name="head")(x))


def _cnn():
    return keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(8, 3, name="c1"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(12, 3, activation="relu", name="c2"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(3, name="out"),
    ])


def _mobilenet():
    return keras.applications.MobileNetV2(
        input_shape=(64, 64, 3), alpha=0.35, weights=None, classifier_activation=None
    )


MODELS = {"mixed": _mixed_model, "residual": _residual_model, "sequential_cnn": _cnn, "mobilenetv2": _mobilenet}


def _inputs(model, n=3, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *model.inputs[0].shape[1:])).astype("float32")


# ---------------------------------------------------------------- pure math


@pytest.mark.parametrize(
    "channels,ratio,round_to,min_channels,expected",
    [(32, 0.5, 1, 1, 16), (32, 0.0, 1, 1, 32), (10, 0.33, 1, 1, 7), (20, 0.5, 8, 1, 16),
     (8, 0.5, 8, 1, 8), (4, 0.9, 1, 2, 2), (3, 0.99, 1, 1, 1), (1000, 0.5, 8, 1, 504)],
    ids=["half", "zero", "ceil", "round_up", "round_keeps_all", "min_channels", "at_least_one", "large"],
)
def test_keep_count_rounds_and_clamps(channels, ratio, round_to, min_channels, expected):
    assert keep_count(channels, ratio, round_to=round_to, min_channels=min_channels) == expected


def test_top_channels_keeps_largest_in_index_order():
    assert top_channels(np.array([0.5, 2.0, 0.1, 3.0, 2.0]), 3).tolist() == [1, 3, 4]
    assert top_channels(np.ones(4), 2).tolist() == [0, 1]


def test_kernel_scores_l1_l2_per_output_channel():
    kernel = np.zeros((3, 3, 2, 2))
    kernel[..., 0, 0] = 1.0
    kernel[0, 0, 1, 1] = -4.0
    np.testing.assert_allclose(kernel_scores(kernel, "l1"), [9.0, 4.0])
    np.testing.assert_allclose(kernel_scores(kernel, "l2"), [3.0, 4.0])


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", list(MODELS), ids=list(MODELS))
def test_prune_channels_ratio_zero_is_identical(name):
    model = _randomize(MODELS[name]())
    x = _inputs(model)
    result = prune_channels(model, ratio=0.0)
    assert result.params_after == result.params_before
    assert not result.kept_channels
    np.testing.assert_array_equal(result.model(x, training=False), model(x, training=False))


@pytest.mark.parametrize("name", list(MODELS), ids=list(MODELS))
def test_prune_channels_matches_masked_reference(name):
    model = _randomize(MODELS[name]())
    x = _inputs(model)
    result = prune_channels(model, ratio=0.5)
    assert result.params_after < result.params_before
    reference = _masked_reference(model, result)(x, training=False).numpy()
    pruned = result.model(x, training=False).numpy()
    original = model(x, training=False).numpy()
    scale = np.abs(reference).max()
    assert np.abs(original - reference).max() > 1e-2 * scale  # the masking really changed something
    np.testing.assert_allclose(pruned, reference, atol=2e-5 * scale, rtol=1e-4)


def test_prune_channels_leaves_caller_model_unchanged():
    model = _randomize(_mixed_model())
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    prune_channels(model, ratio=0.5, importance="bn")
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert model.get_config() == config


# ---------------------------------------------------------------- graph rules


def test_prune_channels_residual_group_shares_indices():
    result = prune_channels(_randomize(_residual_model()), ratio=0.5)
    kept = result.kept_channels
    assert kept["stem"] == kept["project0"] == kept["project1"]
    assert len(kept["stem"]) == 8
    groups = {row.name: row.group for row in result.layers}
    assert groups["stem"] == groups["project0"] == groups["project1"]
    assert groups["expand0"] == groups["se_expand0"]  # squeeze-excite Multiply joins them
    assert result.model.get_layer("head").units == 4


def test_prune_channels_concat_mismatch_left_whole_with_reason():
    result = prune_channels(_randomize(_mixed_model()), ratio=0.5)
    rows = {row.name: row for row in result.layers}
    assert rows["side"].channels_after == 6
    assert "mismatched_add" in rows["side"].reason
    assert rows["squeeze"].channels_after == 2
    assert rows["body"].channels_after == 5
    assert rows["hidden"].channels_after == 4
    assert rows["head"].channels_after == 5 and rows["head"].reason == "model output"


def test_prune_channels_mobilenetv2_prunes_expansion_and_projection_groups():
    result = prune_channels(_mobilenet(), ratio=0.5)
    rows = {row.name: row for row in result.layers}
    assert rows["block_1_expand"].channels_after == rows["block_1_expand"].channels_before // 2
    assert rows["block_2_project"].group == rows["block_1_project"].group
    assert rows["predictions"].channels_after == 1000
    assert rows["Conv_1"].channels_after == 640
    assert not result.skipped_layers
    assert result.model.output_shape == (None, 1000)


def test_prune_channels_resnet50_runs_and_shrinks():
    model = keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classifier_activation=None)
    result = prune_channels(model, ratio=0.5, round_to=8)
    assert result.param_ratio < 0.35
    assert result.model.get_layer("conv2_block1_0_conv").filters == 128
    assert result.model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 1000)


class Scale(keras.layers.Layer):
    """A custom layer channel pruning does not know."""

    def call(self, x):
        return x * 2.0


def test_prune_channels_unknown_and_shared_layers_left_whole_and_listed():
    i = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, name="before_custom")(i)
    x = Scale(name="custom")(x)
    x = keras.layers.Conv2D(6, 1, name="free")(x)
    shared = keras.layers.Conv2D(6, 1, name="shared")
    x = keras.layers.Add()([shared(x), shared(x)])
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Conv2D(4, 1, name="after_ln")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(i, keras.layers.Dense(2)(x))
    result = prune_channels(model, ratio=0.5)
    assert set(result.skipped_layers) == {"custom", "shared", "ln"}
    assert "shared layer" in result.skipped_layers["shared"]
    rows = {row.name: row for row in result.layers}
    assert rows["before_custom"].channels_after == 6 and "custom" in rows["before_custom"].reason
    assert rows["free"].channels_after == 6  # feeds the shared layer
    assert rows["after_ln"].channels_after == 2
    assert result.model(np.zeros((1, 8, 8, 2), "float32")).shape == (1, 2)


# ---------------------------------------------------------------- options


def _two_conv(filters=4):
    i = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(filters, 3, name="conv")(i)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(i, keras.layers.Dense(2, name="head")(x))


def test_prune_channels_bn_importance_ranks_by_gamma():
    model = _two_conv()
    kernel, bias = model.get_layer("conv").get_weights()
    kernel = np.ones_like(kernel) * np.array([4.0, 3.0, 2.0, 1.0])  # l1 prefers 0, 1
    model.get_layer("conv").set_weights([kernel, bias])
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    model.get_layer("bn").set_weights([np.array([0.1, 0.1, 5.0, 5.0], "float32"), beta, mean, var])
    assert prune_channels(model, ratio=0.5, importance="l1").kept_channels["conv"] == [0, 1]
    assert prune_channels(model, ratio=0.5, importance="bn").kept_channels["conv"] == [2, 3]


def test_prune_channels_activation_importance_uses_data():
    model = _two_conv()
    kernel = np.ones((3, 3, 1, 4), "float32") * np.array([4.0, 3.0, 0.5, 0.4], "float32")
    model.get_layer("conv").set_weights([kernel, np.zeros(4, "float32")])
    # BN shifts channels 0 and 1 far negative: ReLU silences them on positive inputs.
    model.get_layer("bn").set_weights([np.ones(4, "float32"), np.array([-1e3, -1e3, 0, 0], "float32"),
                                       np.zeros(4, "float32"), np.ones(4, "float32")])
    data = np.abs(_inputs(model, n=16))
    result = prune_channels(model, ratio=0.5, importance="activation", data=data)
    assert result.kept_channels["conv"] == [2, 3]
    assert result.groups[0].importance == "activation"


def test_prune_channels_round_to_and_min_channels():
    model = _two_conv(filters=20)
    assert prune_channels(model, ratio=0.5, round_to=8).model.get_layer("conv").filters == 16
    assert prune_channels(model, ratio=0.95, min_channels=4).model.get_layer("conv").filters == 4


def test_prune_channels_include_and_exclude():
    model = _cnn()
    result = prune_channels(model, ratio=0.5, exclude=["c2"])
    rows = {row.name: row for row in result.layers}
    assert rows["c2"].channels_after == 12 and rows["c2"].reason.startswith("excluded")
    assert rows["c1"].channels_after == 4
    result = prune_channels(model, ratio=0.5, include="re:c.")
    rows = {row.name: row for row in result.layers}
    assert rows["d1"].channels_after == 16 and "include" in rows["d1"].reason
    assert rows["c2"].channels_after == 6
    by_callable = prune_channels(model, ratio=0.5, exclude=lambda layer: layer.name.startswith("d"))
    assert {row.name for row in by_callable.layers if row.reason} == {"d1", "out"}
    with pytest.raises(ValueError, match="matched no layer"):
        prune_channels(model, include=["nope"])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [({"ratio": 1.0}, ValueError, "ratio must be"), ({"importance": "taylor"}, ValueError, "importance must be"),
     ({"importance": "activation"}, ValueError, "needs data"), ({"data": np.zeros((1, 12, 12, 1))}, ValueError,
     "only used with"), ({"round_to": 0}, ValueError, "round_to must be"), ({"exclude": [3]}, TypeError, "items must")],
    ids=["ratio", "importance", "no_data", "stray_data", "round_to", "rule_type"],
)
def test_prune_channels_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        prune_channels(_cnn(), **kwargs)


def test_prune_channels_rejects_non_models_and_subclassed():
    with pytest.raises(TypeError, match="Expected a Keras model"):
        prune_channels("model.keras")

    sub = subclassed_dense()
    with pytest.raises(NotImplementedError, match="functional or Sequential"):
        prune_channels(sub)


# ---------------------------------------------------------------- downstream use


def test_pruned_model_trains_converts_and_round_trips(tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = _randomize(_cnn())
    result = prune_channels(model, ratio=0.5)
    pruned = result.model
    assert isinstance(pruned, keras.Sequential)
    x, y = _inputs(pruned, n=32), np.arange(32) % 3
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = pruned.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x[:4]), pruned(x[:4]), atol=1e-6)
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(pruned).convert()
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], (4, 12, 12, 1))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[:4])
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, pruned(x[:4]), atol=1e-4)


def test_prune_channels_tf_keras_sequential():
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential([
        tf_keras.layers.Conv2D(8, 3, input_shape=(10, 10, 1)), tf_keras.layers.BatchNormalization(),
        tf_keras.layers.ReLU(), tf_keras.layers.Flatten(), tf_keras.layers.Dense(3),
    ])
    x = np.random.default_rng(0).normal(size=(2, 10, 10, 1)).astype("float32")
    same = prune_channels(model, ratio=0.0).model
    np.testing.assert_array_equal(same(x), model(x))
    result = prune_channels(model, ratio=0.5, importance="bn")
    assert type(result.model).__module__.startswith("tf_keras")
    assert result.model.layers[0].filters == 4
    assert result.model(x).shape == (2, 3)


def test_result_summary_and_to_dict_are_reportable():
    result = prune_channels(_mixed_model(), ratio=0.5)
    text = result.summary()
    assert "params" in text and "side" in text and "mismatched_add" in text
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["params_after"] == result.model.count_params()
    assert payload["kept_channels"]["squeeze"] == result.kept_channels["squeeze"]
    assert {row["name"] for row in payload["layers"]} >= {"side", "head"}


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_prune_channels_functional_conv_to_conv_both_flavours(flavor):
    """Conv -> BN -> ReLU -> Conv -> ReLU -> Flatten -> Dense, functional, in each Keras (tf_keras used to fail)."""
    import importlib

    k = pytest.importorskip(flavor) if flavor == "keras" else importlib.import_module("tfopt._legacy").tf_keras_module()
    model = _randomize(bn_cnn(k))
    x = _inputs(model)
    result = prune_channels(model, ratio=0.5)
    assert type(result.model).__module__.split(".")[0] == type(model).__module__.split(".")[0]
    assert result.model.get_layer("conv_in").filters == 4 and result.model.get_layer("conv_mid").filters == 8
    reference = np.asarray(_masked_reference(model, result)(x, training=False))
    np.testing.assert_allclose(np.asarray(result.model(x, training=False)), reference, atol=1e-4, rtol=1e-4)


def test_prune_channels_real_digits_accuracy_recovers_after_short_finetune():
    """sklearn digits (1,797 real 8x8 images): ratio 0.5 + 3 fine-tune epochs stays within 3 points of dense."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(32, 3, activation="relu", name="c2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="d1"),
        keras.layers.Dense(10, name="out"),
    ])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    dense = model.evaluate(x_test, y_test, verbose=0)[1]
    result = prune_channels(model, ratio=0.5)
    assert result.param_ratio < 0.35
    pruned = result.model
    pruned.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    before = pruned.evaluate(x_test, y_test, verbose=0)[1]
    pruned.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    after = pruned.evaluate(x_test, y_test, verbose=0)[1]
    assert dense > 0.9, dense
    assert after >= dense - 0.03, (dense, before, after)
