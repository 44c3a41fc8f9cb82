"""Magnitude pruning on both flavours: plain fit without callbacks, strip, skipped layers, 2:4, save/load, CLI.

Keras 3 specifics (optimizer objects, callbacks, GradientTape, MirroredStrategy,
fresh-process load, real-data accuracy) are in test_prune_keras3.py.
"""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfopt import _keras
from tfopt.compress import schedules
from tfopt._legacy import prune as legacy
from tfopt.compress.prune import (
    has_wrappers,
    load_pruned,
    prune,
    pruning_summary,
    sparsity_logger,
    strip_pruning as strip,
)
from tfopt.analyze.sparsity import tflite_sparsity

from conftest import bn_cnn  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.random((64, 10, 10, 1), dtype="float32")
Y = RNG.integers(0, 4, 64)


def _cnn(k=keras):
    return bn_cnn(k)


def _fit(model, epochs=2, **kwargs):
    k = _keras.keras_of(model)
    model.compile(k.optimizers.Adam(1e-3), k.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(X, Y, epochs=epochs, batch_size=8, verbose=0, **kwargs)


def _kernel(model, name):
    return model.get_layer(name).get_weights()[0]


@pytest.mark.parametrize("flavor", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_prune_plain_fit_reaches_target_and_strip_keeps_flavour(flavor):
    model = _cnn(flavor)
    before = [w.copy() for w in model.get_weights()]
    pruned = prune(model, target_sparsity=0.8, end_step=10)
    assert _keras.keras_flavor(pruned) == _keras.keras_flavor(model) and has_wrappers(pruned)
    _fit(pruned)  # 16 steps, no UpdatePruningStep callback
    summary = pruning_summary(pruned)
    assert [l.name for l in summary.layers] == ["conv_mid", "dense_mid"]
    assert all(abs(l.sparsity - 0.8) < 0.01 and l.step == 16 for l in summary.layers)
    assert {s.name for s in summary.skipped} == {"conv_in", "bn", "classifier"}
    stripped = strip(pruned)
    assert _keras.keras_flavor(stripped) == _keras.keras_flavor(model)
    for name in ("conv_mid", "dense_mid"):
        assert schedules.sparsity_of(_kernel(stripped, name)) >= 0.79
    assert schedules.sparsity_of(_kernel(stripped, "conv_in")) == 0.0
    np.testing.assert_allclose(pruned.predict(X, verbose=0), stripped.predict(X, verbose=0), atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("kind", ["polynomial", "constant"])
@pytest.mark.parametrize("step", [0, 1, 5, 11, 21, 40])
def test_tfmot_schedule_matches_numpy_maths(step, kind):
    spec = schedules.make_schedule(0.75, kind, begin_step=0, end_step=21, frequency=None if kind == "polynomial" else 5)
    should_prune, sparsity = legacy.tfmot_schedule(spec.to_dict())(tf.constant(step, tf.int64))
    if spec.updates_at(step):
        assert float(sparsity) == pytest.approx(spec.sparsity(step), abs=1e-6)
    assert bool(should_prune) == spec.updates_at(step)


def test_frequency_longer_than_ramp_is_an_error():
    with pytest.raises(ValueError, match="frequency=100 is longer than the pruning ramp"):
        prune(_cnn(), end_step=50, frequency=100)


def test_frequency_not_dividing_ramp_warns_and_extends():
    with pytest.warns(UserWarning, match="Using end_step=31"):
        pruned = prune(_cnn(), end_step=25, frequency=10)
    assert pruning_summary(pruned).layers[0].end_step == 31


def test_strip_warns_when_schedule_unfinished():
    pruned = prune(_cnn(), target_sparsity=0.8, end_step=100)
    with pytest.warns(UserWarning, match="have not finished their schedule"):
        strip(pruned)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"target_sparsity": 1.0}, ValueError, r"target_sparsity must be a number in \[0, 1\)"),
        ({"schedule": "cubic"}, ValueError, "schedule must be one of"),
        ({"include": ["nope"]}, ValueError, "include rule 'nope' matched no layer"),
        ({"exclude": "re:zzz.*"}, ValueError, r"exclude rule 're:zzz\.\*' matched no layer"),
        ({"include": lambda layer: False}, ValueError, "matched no layer"),
        ({"include": [3]}, TypeError, "include items must be layer names"),
        ({"m_by_n": (4, 2)}, ValueError, "m:n sparsity needs integers"),
        ({"begin_step": -1}, ValueError, "begin_step must be a non-negative integer"),
        ({"include": "bn"}, ValueError, "No layer of .* can be pruned"),
    ],
    ids=["sparsity", "schedule", "include", "exclude", "callable", "type", "m_by_n", "begin", "nothing"],
)
def test_prune_rejects_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        prune(_cnn(), **kwargs)


def test_include_regex_and_exclude():
    pruned = prune(_cnn(), include="re:conv_.*|classifier", exclude=["conv_in"])
    assert [l.name for l in pruning_summary(pruned).layers] == ["conv_mid", "classifier"]


def test_unsupported_tf_keras_layers_are_skipped_and_listed():
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Rescaling(1 / 255.0)(inputs)
    x = tf_keras.layers.Conv2D(8, 3, name="c1")(x)
    x = tf_keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = x + 1.0  # TFOpLambda
    x = tf_keras.layers.Conv2D(8, 1, name="c2")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf_keras.layers.Dense(2, name="head")(x)
    model = tf_keras.Model(inputs, outputs)
    pruned = prune(model, target_sparsity=0.5, end_step=2)
    summary = pruning_summary(pruned)
    assert [l.name for l in summary.layers] == ["c2"]
    reasons = {s.name: s.reason for s in summary.skipped}
    assert "depthwise" in reasons["dw"]
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((4, 8, 8, 3)), np.ones((4, 2)), epochs=1, batch_size=2, verbose=0)
    assert schedules.sparsity_of(_kernel(strip(pruned), "c2")) == pytest.approx(0.5)


def test_two_four_pattern_in_stripped_model_and_tflite():
    pruned = prune(_cnn(), m_by_n=(2, 4))
    _fit(pruned, epochs=1)
    stripped = strip(pruned)
    for name in ("conv_mid", "dense_mid"):
        kernel = _kernel(stripped, name)
        assert schedules.m_by_n_holds(kernel, 2, 4)
        assert schedules.sparsity_of(kernel) == pytest.approx(0.5)
    report = tflite_sparsity(tf.lite.TFLiteConverter.from_keras_model(stripped).convert(), m_by_n=(2, 4))
    checked = [t for t in report.tensors if t.sparsity > 0.4]
    assert len(checked) == 2 and all(t.m_by_n_holds for t in checked)
    assert "yes" in report.summary()


def test_tflite_sparsity_reads_int8_and_sparse_encoding():
    pruned = prune(_cnn(), target_sparsity=0.8, end_step=4)
    _fit(pruned, epochs=1)
    stripped = strip(pruned)
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    converter.representative_dataset = lambda: ([X[i : i + 1]] for i in range(8))
    report = tflite_sparsity(converter.convert())
    by_sparsity = sorted(t.sparsity for t in report.tensors)
    assert by_sparsity[-2] >= 0.79 and by_sparsity[0] < 0.1
    assert any(t.sparse_encoded for t in report.tensors)
    assert {t.dtype for t in report.tensors} == {"int8"}
    assert json.dumps(report.to_dict())


def test_tf_keras_pruned_model_survives_save_and_load(tmp_path):
    pruned = prune(_cnn(tf_keras), target_sparsity=0.6, end_step=10)
    _fit(pruned, epochs=1)
    for suffix in (".keras", ".h5"):
        path = str(tmp_path / f"pruned{suffix}")
        pruned.save(path)
        loaded = load_pruned(path)
        assert pruning_summary(loaded).layers[0].step == 8
        np.testing.assert_allclose(loaded.predict(X, verbose=0), pruned.predict(X, verbose=0), atol=1e-5)
    _fit(loaded, epochs=1)  # keeps training without a callback
    assert all(abs(l.sparsity - 0.6) < 0.01 for l in pruning_summary(loaded).layers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _keras.keras_flavor(strip(loaded)) == _keras.TF_KERAS


@pytest.mark.parametrize("flavor", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_sparsity_logger_adds_epoch_logs(flavor):
    pruned = prune(_cnn(flavor), target_sparsity=0.5, end_step=4)
    history = _fit(pruned, epochs=1, callbacks=[sparsity_logger(flavor=_keras.keras_flavor(pruned))])
    assert history.history["sparsity/conv_mid"][0] == pytest.approx(0.5, abs=0.01)


def test_sparsity_logger_rejects_unknown_flavour():
    with pytest.raises(ValueError, match="flavor must be 'keras3' or 'tf_keras'. Received: flavor='jax'"):
        sparsity_logger(flavor="jax")


def test_strip_rejects_unpruned_model():
    for flavor in (keras, tf_keras):
        with pytest.raises(ValueError, match="has no pruning wrappers. Pass the model returned by tfopt.prune"):
            strip(_cnn(flavor))


def test_cli_prune_writes_model_and_json(tmp_path):
    from absl import flags

    from tfopt._cli import prune as cli

    model = _cnn()
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    model.save(model_path)
    np.savez(data_path, x_train=X, y_train=Y, x_test=X[:16], y_test=Y[:16])
    out, report = str(tmp_path / "out.keras"), str(tmp_path / "out.json")
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["tfopt", f"--data={data_path}", f"--output={out}", f"--json={report}", "--epochs=2",
        "--batch_size=16", "--target_sparsity=0.75"])
    assert cli.main([model_path], fv) == 0
    payload = json.load(open(report))
    assert payload["params_after"] == payload["params_before"]
    sparsities = {row["name"].split("/")[0]: row["sparsity"] for row in payload["layers"]}
    assert sparsities["conv_mid"] >= 0.74 and sparsities["conv_in"] == 0.0
    assert 0.0 <= payload["accuracy_after"] <= 1.0 and payload["paths"]["output"].endswith("out.keras")
    assert _keras.keras_flavor(_keras.load_model(out)) == _keras.KERAS3


# ------------------------------------------------------------------ coverage: what plain tfmot stops on
def _fit_random(pruned, shape, steps=3):
    rng = np.random.default_rng(0)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(rng.random((2 * steps, *shape), dtype="float32"), rng.integers(0, 10, 2 * steps),
               batch_size=2, epochs=1, verbose=0)


@pytest.mark.slow
def test_prune_mobilenetv3small_keras3_ops_and_hard_silu():
    """Plain tfmot stops on this model (Keras 3 ops `x + 3.0`, Rescaling); the full run is bench_prune_coverage."""
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10)
    before = [w.copy() for w in model.get_weights()]
    pruned = prune(model, target_sparsity=0.8, end_step=2)
    _fit_random(pruned, (32, 32, 3))
    summary = pruning_summary(pruned)
    assert len(summary.layers) >= 30
    assert {s.class_name for s in summary.skipped} >= {"DepthwiseConv2D", "BatchNormalization"}
    assert len(summary.layers) + len(summary.skipped) == len([l for l in pruned.layers if l.weights])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stripped = strip(pruned)
    assert _keras.keras_flavor(stripped) == _keras.KERAS3
    classes = {type(layer).__name__ for layer in stripped.layers}
    assert {"ReLU", "Activation"} <= classes and "Keras3Layer" not in classes  # Keras 3 layers come back as themselves
    for layer in summary.layers:
        assert schedules.sparsity_of(_kernel(stripped, layer.name)) >= 0.79
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype="float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), stripped.predict(x, verbose=0), atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@keras.saving.register_keras_serializable(package="tfopt_test")
class _LayerScale(keras.layers.Layer):
    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")

    def call(self, x):
        return x * self.gamma


def _tfmot_stoppers():
    """What stops plain tfmot, in one small Keras 3 model: Rescaling, Normalization, a Keras 3 op,
    an activation tf_keras lacks, a custom layer with weights, a nested Sequential, DepthwiseConv2D."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Normalization(mean=[0.5, 0.5, 0.5], variance=[0.1, 0.1, 0.1])(x)
    x = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(8, 3, strides=2, name="stem_conv")],
                         name="stem")(x)
    x = keras.layers.Conv2D(16, 1, name="expand")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Activation("hard_silu", name="hard_silu")(x + 3.0)
    x = _LayerScale(name="scale")(keras.layers.Conv2D(16, 1, name="project")(x))
    x = keras.layers.Dense(24, name="mlp")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(10, name="classifier")(x))


def test_prune_model_with_everything_plain_tfmot_stops_on(tmp_path):
    model = _tfmot_stoppers()
    before = [w.copy() for w in model.get_weights()]
    pruned = prune(model, target_sparsity=0.8, end_step=2)
    _fit_random(pruned, (12, 12, 3))
    summary = pruning_summary(pruned)
    assert [l.name for l in summary.layers] == ["project", "mlp"]
    reasons = {s.name: s.reason for s in summary.skipped}
    assert "first/last" in reasons["expand"] and "first/last" in reasons["classifier"]
    assert "nested model" in reasons["stem"] and "depthwise" in reasons["dw"]
    assert "custom layer: define get_prunable_weights()" in reasons["scale"]
    assert len(summary.layers) + len(summary.skipped) == len([l for l in pruned.layers if l.weights])
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    assert [l.name for l in pruning_summary(load_pruned(path)).layers] == ["project", "mlp"]
    stripped = strip(pruned)
    assert type(stripped.get_layer("scale")) is _LayerScale and _keras.keras_flavor(stripped) == _keras.KERAS3
    for name in ("project", "mlp"):
        assert schedules.sparsity_of(_kernel(stripped, name)) >= 0.79
    x = np.random.default_rng(1).random((2, 12, 12, 3), dtype="float32") * 255
    np.testing.assert_allclose(pruned.predict(x, verbose=0), stripped.predict(x, verbose=0), atol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    report = tflite_sparsity(tf.lite.TFLiteConverter.from_keras_model(stripped).convert())
    assert sum(t.sparsity >= 0.79 for t in report.tensors) == 2


@keras.saving.register_keras_serializable(package="tfopt_test")
class _PrunableScale(_LayerScale):
    def build(self, input_shape):
        self.matrix = self.add_weight(shape=(input_shape[-1], input_shape[-1]), name="matrix")

    def call(self, x):
        return keras.ops.matmul(x, self.matrix)

    def get_prunable_weights(self):
        return [self.matrix]


def test_custom_keras3_layer_with_get_prunable_weights_is_pruned(tmp_path):
    model = keras.Sequential([keras.Input((16,)), _PrunableScale(name="custom"), keras.layers.Dense(10, name="out")])
    pruned = prune(model, target_sparsity=0.75, end_step=2, include=["custom"])
    _fit_random(pruned, (16,))
    path = str(tmp_path / "custom.keras")
    pruned.save(path)
    stripped = strip(load_pruned(path))
    assert schedules.sparsity_of(stripped.get_layer("custom").get_weights()[0]) == pytest.approx(0.75)
    assert type(stripped.get_layer("custom")) is _PrunableScale


class _Residual(keras.Model):
    def __init__(self):
        super().__init__(name="residual")
        self.stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")
        self.body = keras.layers.Conv2D(8, 3, padding="same", name="body")
        self.hidden = keras.layers.Dense(16, activation="relu", name="hidden")
        self.head = keras.layers.Dense(4, name="head")

    def call(self, x):
        x = keras.activations.relu(self.stem(x))
        x = x + self.body(x)
        return self.head(self.hidden(keras.layers.Flatten()(x)))


def test_prune_subclassed_model_is_traced_and_pruned():
    model = _Residual()
    model(np.zeros((1, 10, 10, 1), "float32"))
    before = [w.copy() for w in model.get_weights()]
    pruned = prune(model, target_sparsity=0.75, end_step=4)
    _fit(pruned)
    assert [l.name for l in pruning_summary(pruned).layers] == ["body", "hidden"]
    stripped = strip(pruned)
    assert schedules.sparsity_of(_kernel(stripped, "hidden")) == pytest.approx(0.75, abs=0.01)
    np.testing.assert_allclose(pruned.predict(X, verbose=0), stripped.predict(X, verbose=0), atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_prune_unbuilt_subclassed_model_names_the_alternative():
    with pytest.raises(NotImplementedError, match="functional API"):
        prune(_Residual())


def test_strip_reestimates_batchnorm_for_the_pruned_kernels():
    from tfopt.compress.batchnorm import reestimate_batchnorm

    pruned = prune(_cnn(), target_sparsity=0.8, end_step=4, include=["conv_in", "conv_mid"])
    _fit(pruned, epochs=1)
    kept, recomputed = strip(pruned), strip(pruned, batchnorm_data=X)
    reference = reestimate_batchnorm(kept, X)
    mean = recomputed.get_layer("bn").get_weights()[2]
    np.testing.assert_allclose(mean, reference.get_layer("bn").get_weights()[2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(mean, kept.get_layer("bn").get_weights()[2])
    np.testing.assert_array_equal(_kernel(recomputed, "conv_mid"), _kernel(kept, "conv_mid"))
