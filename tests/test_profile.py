"""tfopt.profile: FLOP/MAC formulas as pure functions, Keras graphs (Keras 3, tf_keras, nested), TFLite."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from conftest import subclassed_dense

from tfopt.analyze import flops as F
from tfopt.analyze.profile import Profile, profile


# ------------------------------------------------------------------ pure formulas (no Keras)

def test_flops_conv7x7_textbook_count():
    out = F.conv_output_length(25, 7, 1, "valid")
    macs = F.conv_macs(output_spatial=(out, out), kernel_size=(7, 7), in_channels=9, filters=64)
    assert (out, macs, 2 * macs) == (19, 10_188_864, 20_377_728)


def test_flops_conv3x3_256_to_512_bytes():
    params = 3 * 3 * 256 * 512
    assert F.weight_bytes(params, "float32") == 4.5 * 2**20
    side = F.conv_output_length(224, 3, 1, "same")
    assert F.activation_bytes((128, side, side, 512)) == 12.25 * 2**30


@pytest.mark.parametrize(
    "length, kernel, stride, padding, dilation, expected",
    [(25, 7, 1, "valid", 1, 19), (224, 3, 2, "same", 1, 112), (225, 3, 2, "valid", 1, 112),
     (10, 3, 1, "valid", 2, 6), (10, 3, 1, "full", 1, 12)],
    ids=["valid", "same-stride2", "valid-stride2", "dilated", "full"],
)
def test_flops_conv_output_length(length, kernel, stride, padding, dilation, expected):
    assert F.conv_output_length(length, kernel, stride, padding, dilation) == expected


def test_flops_layer_formulas_by_hand():
    assert F.dense_macs(in_features=784, units=300, positions=2, batch=3) == 784 * 300 * 6
    assert F.depthwise_conv_macs(output_spatial=(4, 4), kernel_size=(3, 3), in_channels=5, depth_multiplier=2) \
        == 16 * 5 * 2 * 9
    assert F.separable_conv_macs(output_spatial=(4, 4), kernel_size=(3, 3), in_channels=5, filters=7) \
        == 16 * 5 * 9 + 16 * 5 * 7
    assert F.conv_macs(output_spatial=(4, 4), kernel_size=(3, 3), in_channels=8, filters=6, groups=2) == 16 * 6 * 9 * 4
    assert F.conv_transpose_macs(input_spatial=(4, 4), kernel_size=(2, 2), in_channels=3, filters=5) == 16 * 3 * 4 * 5
    assert F.pooling_ops(output_elements=10, pool_size=(2, 2)) == 40
    assert F.rnn_macs(timesteps=5, in_features=3, units=4, gates=3) == 5 * 3 * (12 + 16)
    assert F.einsum_macs("abc,cd->abd", (2, 3, 4), (4, 5)) == 2 * 3 * 4 * 5
    assert F.einsum_macs("...c,cd->...d", (2, 3, 4), (4, 5)) == 2 * 3 * 4 * 5
    assert F.matmul_macs(output_shape=(2, 3, 5), inner=4) == 120


def test_flops_grouped_conv_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible by groups"):
        F.conv_macs(output_spatial=(2, 2), kernel_size=(1, 1), in_channels=5, filters=4, groups=2)


def test_flops_unknown_dimension_is_an_error():
    with pytest.raises(ValueError, match="unknown dimension"):
        F.num_elements((None, 3))


def test_flops_peak_live_bytes_by_hand():
    # a (4 B) -> op0 -> b (8 B) -> op1 -> c (2 B); a also read by op1.
    assert F.peak_live_bytes([4, 8, 2], [0, 0, 1], [1, 1, 1], steps=2) == (14, 1)
    assert F.peak_live_bytes([], [], [], steps=0) == (0, 0)


@pytest.mark.parametrize(
    "kind, config, ins, outs, expected",
    [
        ("Dense", {"units": 10}, [(2, 5, 100)], [(2, 5, 10)], (10_000, 0)),
        ("Conv2D", {"kernel_size": (7, 7)}, [(1, 25, 25, 9)], [(1, 19, 19, 64)], (10_188_864, 0)),
        ("Conv2D", {"kernel_size": (7, 7), "data_format": "channels_first"}, [(1, 9, 25, 25)], [(1, 64, 19, 19)],
         (10_188_864, 0)),
        ("MaxPooling2D", {"pool_size": (2, 2)}, [(1, 4, 4, 3)], [(1, 2, 2, 3)], (0, 48)),
        ("Add", {}, [(1, 4), (1, 4), (1, 4)], [(1, 4)], (0, 8)),
        ("Flatten", {}, [(1, 2, 2)], [(1, 4)], (0, 0)),
        ("MyCustomLayer", {}, [(1, 4)], [(1, 4)], (None, 0)),
    ],
    ids=["dense-3d", "conv", "conv-channels-first", "maxpool", "add3", "flatten", "unknown"],
)
def test_flops_keras_layer_cost_table(kind, config, ins, outs, expected):
    assert F.keras_layer_cost(kind, config, ins, outs) == expected


def test_flops_tflite_op_cost_table():
    assert F.tflite_op_cost("DEPTHWISE_CONV_2D", [(1, 8, 8, 4), (1, 3, 3, 4)], [(1, 8, 8, 4)]) == (8 * 8 * 4 * 9, 0)
    assert F.tflite_op_cost("FULLY_CONNECTED", [(1, 784), (300, 784)], [(1, 300)]) == (235_200, 0)
    assert F.tflite_op_cost("CUSTOM(Foo)", [(1, 4)], [(1, 4)]) == (None, 0)


# ------------------------------------------------------------------ Keras models

def _conv7x7(keras):
    return keras.Sequential([keras.Input((25, 25, 9)), keras.layers.Conv2D(64, 7, padding="valid")])


def test_profile_conv7x7_keras3_and_tf_keras():
    import keras
    import tf_keras

    for module in (keras, tf_keras):
        result = profile(_conv7x7(module))
        assert (result.macs, result.flops, result.params) == (10_188_864, 20_377_728, 7 * 7 * 9 * 64 + 64)
        assert result.layers[0].output_shapes == ((1, 19, 19, 64),)


def test_profile_conv3x3_256_512_batch128():
    import keras

    model = keras.Sequential([keras.Input((224, 224, 256)), keras.layers.Conv2D(512, 3, padding="same", use_bias=False)])
    result = profile(model, batch_size=128)
    assert result.weight_bytes["float32"] == 4.5 * 2**20
    assert result.weight_bytes["int8"] == 3 * 3 * 256 * 512
    assert result.layers[0].output_bytes == 12.25 * 2**30


def _graph_model(keras):
    """Shared Dense, a merge, a nested Sequential: every node type the walker handles."""
    inputs = keras.Input((8, 8, 3), name="x")
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    shared = keras.layers.Dense(5, name="d")
    y = keras.layers.Add(name="add")([shared(x), shared(keras.layers.ReLU(name="r")(x))])
    head = keras.Sequential([keras.Input((6, 6, 5)), keras.layers.Dense(3, name="inner")], name="head")
    return keras.Model(inputs, head(y), name="graph")


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_profile_shared_and_nested_layers(flavor):
    import importlib

    model = _graph_model(importlib.import_module(flavor))
    result = profile(model, batch_size=2)
    by_name = [(layer.name, layer.macs, layer.params) for layer in result.layers]
    assert by_name == [
        ("c", 2 * 36 * 4 * 27, 112), ("r", 0, 0), ("d", 2 * 36 * 4 * 5, 25), ("d", 2 * 36 * 4 * 5, 0),
        ("add", 0, 0), ("head/inner", 2 * 36 * 5 * 3, 18),
    ]
    assert result.params == model.count_params() == 155
    assert result.unknown_layers == ()
    # Peak while the Add runs: its two inputs and its output (2 x 6 x 6 x 5 floats each).
    assert result.peak_activation_bytes == 4 * 2 * 36 * (5 + 5 + 5)
    assert result.peak_layer == "add"


def test_profile_memory_of_a_chain_by_hand():
    import keras

    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(20), keras.layers.Dense(30)])
    result = profile(model, batch_size=4, optimizer_slots=2)
    activations = 4 * 4 * (10 + 20 + 30)
    assert result.activation_bytes == activations
    assert result.peak_activation_bytes == 4 * 4 * (20 + 30)
    params = 10 * 20 + 20 + 20 * 30 + 30
    assert result.training_breakdown == {
        "activations": activations, "activation_gradients": activations, "weights": 4 * params,
        "weight_gradients": 4 * params, "optimizer_slots": 8 * params,
    }
    assert result.training_bytes == sum(result.training_breakdown.values())


def test_profile_unknown_layer_listed_not_guessed():
    import keras

    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Scale(name="scale")(inputs)))
    result = profile(model)
    assert result.unknown_layers == ("scale (Scale)",)
    scale = result.layers[0]
    assert (scale.macs, scale.flops, scale.params) == (None, None, 6)
    assert result.macs == 12 and result.params == model.count_params()


def test_profile_applications_mobilenetv2_resnet50():
    import keras

    mobilenet = profile(keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)))
    assert 295e6 <= mobilenet.macs <= 305e6
    assert mobilenet.params == 3_538_984 and mobilenet.unknown_layers == ()
    resnet = profile(keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3)))
    # Keras ResNet50 (v1, stride in the 1x1 conv): 3.86 G MACs; torchvision's v1.5 counts 4.09 G.
    assert 3.8e9 <= resnet.macs <= 4.1e9
    assert resnet.params == 25_636_712


def test_profile_summary_and_json():
    import keras

    result = profile(_conv7x7(keras), batch_size=2)
    text = result.summary()
    assert "conv2d" in text and "20,377,728" in text and "training memory" in text
    payload = json.loads(json.dumps(result.to_dict()))
    assert (payload["params"], payload["macs"], payload["flops"]) == (28_288, 2 * 10_188_864, 4 * 10_188_864)
    assert payload["layers"][0]["output_shapes"] == [[2, 19, 19, 64]]


# ------------------------------------------------------------------ TFLite

def _tflite(model, *, int8: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)
        shape = (1,) + tuple(model.inputs[0].shape[1:])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.random(shape, dtype=np.float32)] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.fixture(scope="module")
def small_cnn():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.DepthwiseConv2D(3),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    # Non-zero biases: the converter merges identical constants (e.g. all-zero biases) into one.
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_profile_tflite_matches_keras(small_cnn, int8, tmp_path):
    flat = _tflite(small_cnn, int8=int8)
    path = tmp_path / "m.tflite"
    path.write_bytes(flat)
    keras_result = profile(small_cnn)
    for source in (flat, str(path)):
        result = profile(source, batch_size=3)
        assert result.source == "tflite" and result.unknown_layers == ()
        assert result.macs == 3 * keras_result.macs
        weighted = {layer.kind: layer.params for layer in result.layers if layer.macs}
        assert weighted == {"CONV_2D": 224, "DEPTHWISE_CONV_2D": 80, "FULLY_CONNECTED": 3930}
        # Total: the same weights plus a few int32 shape operands of the ops Flatten becomes.
        assert keras_result.params <= result.params <= keras_result.params + 8
        assert result.training_bytes is None
    first_conv = next(layer for layer in result.layers if layer.kind == "CONV_2D")
    per_value = 1 if int8 else 4
    assert first_conv.output_bytes == 3 * 16 * 16 * 8 * per_value
    if int8:  # int8 kernels + int32 biases, as stored
        assert first_conv.weight_bytes["stored"] == 3 * 3 * 3 * 8 + 4 * 8


# ------------------------------------------------------------------ errors

def test_profile_errors_say_what_to_do(tmp_path):
    import keras

    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        profile(_conv7x7(keras), batch_size=0)
    with pytest.raises(ValueError, match="not a valid .tflite"):
        profile(b"definitely not a model")
    with pytest.raises(ValueError, match="Expected a .tflite path"):
        profile(str(tmp_path / "model.keras"))
    with pytest.raises(FileNotFoundError, match="TFLite file not found"):
        profile(str(tmp_path / "missing.tflite"))
    with pytest.raises(TypeError, match="Expected a Keras model"):
        profile(np.zeros(3))
    dynamic = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="unknown dimension"):
        profile(dynamic)

    sub = subclassed_dense()
    with pytest.raises(NotImplementedError, match="subclassed models"):
        profile(sub)


# ------------------------------------------------------------------ CLI

def test_cli_profile_writes_json(small_cnn, tmp_path, capsys):
    from tfopt import cli

    model_path = str(tmp_path / "cnn.keras")
    small_cnn.save(model_path)
    tflite_path = tmp_path / "cnn.tflite"
    tflite_path.write_bytes(_tflite(small_cnn, int8=False))
    for source in (model_path, str(tflite_path)):
        out = str(tmp_path / (os.path.basename(source) + ".json"))
        assert cli.main(["profile", source, f"--json={out}", "--batch_size=2"]) == 0
        payload = json.loads(open(out).read())
        assert payload["macs"] == 2 * profile(small_cnn).macs
        assert payload["flops"] == 2 * payload["macs"] and payload["params"] > 0
        assert payload["layers"] and {"name", "macs", "params"} <= set(payload["layers"][0])
    assert cli.main(["profile", str(tmp_path / "nope.keras")]) == 2
    assert "model not found" in capsys.readouterr().err


def test_cli_profile_damaged_tflite_one_line(small_cnn, tmp_path, capsys):
    from tfopt import cli

    content = _tflite(small_cnn, int8=False)
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(content[: len(content) // 2])
    capsys.readouterr()
    assert cli.main(["profile", str(damaged)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a valid .tflite" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_profile_result_type(small_cnn):
    assert isinstance(profile(small_cnn), Profile)


def test_profile_keras3_operations_in_the_graph():
    import keras

    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 1, name="c")(inputs)
    x = keras.ops.relu(x + 3.0)  # Keras 3 operations, not layers: elementwise, no MACs
    model = keras.Model(inputs, keras.layers.Flatten(name="f")(x))
    result = profile(model)
    kinds = [layer.kind for layer in result.layers]
    assert kinds == ["Conv2D", "Add", "Relu", "Flatten"]
    assert result.unknown_layers == () and result.macs == 16 * 3 * 2
    assert result.other_ops == 2 * 16 * 3
