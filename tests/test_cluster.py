"""Weight clustering: the native Keras 3 wrapper under the user's own training code, and the tf_keras path (tfmot)."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from conftest import assert_weights_unchanged, bn_cnn, weights_snapshot

from tfopt import _keras
from tfopt.analyze.cluster_report import cluster_report
from tfopt.compress import kmeans
from tfopt.compress.cluster import (
    cluster,
    clustering_summary,
    has_wrappers,
    load_clustered,
    strip_clustering,
)
from tfopt.compress.cluster_layer import ClusterWeights

RNG = np.random.default_rng(0)
X = RNG.random((64, 10, 10, 1), dtype="float32")
Y = RNG.integers(0, 4, 64)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _loss(k):
    return k.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(model, epochs=1, k=keras):
    model.compile(k.optimizers.Adam(1e-3), _loss(k))
    return model.fit(X, Y, epochs=epochs, batch_size=16, verbose=0)


def _max_diff(a, b, x=X[:8]):
    return float(np.max(np.abs(np.asarray(a(x, training=False)) - np.asarray(b(x, training=False)))))


def _accuracy(model, x, y):
    from tfopt.measure.evaluate import evaluate

    return evaluate(model, (x, y), batch_size=256).value


# --- real data --------------------------------------------------------------------------------


def _digits_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", name="conv1"),
        layers.BatchNormalization(name="bn1"),
        layers.ReLU(),
        layers.Conv2D(32, 3, padding="same", name="conv2"),
        layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(64, activation="relu", name="fc"),
        layers.Dense(10, name="logits"),
    ])


@pytest.fixture(scope="module")
def digits():
    import tfopt

    return tfopt.load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    model = _digits_cnn()
    model.compile(keras.optimizers.Adam(3e-3), _loss(keras), metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=8, batch_size=64, verbose=0)
    return model, _accuracy(model, digits.x_test, digits.y_test)


def test_cluster_real_digits_keras_and_int8_tflite_within_1p5_points(digits, trained):
    from tfopt.export.convert import convert

    model, float_accuracy = trained
    assert float_accuracy > 0.9
    snapshot = weights_snapshot(model)
    clustered = cluster(model, num_clusters=16, include=["conv2", "fc", "logits"], batchnorm_data=digits.x_train)
    assert _keras.keras_flavor(clustered) == _keras.KERAS3
    clustered.compile(keras.optimizers.Adam(1e-3), _loss(keras))
    clustered.fit(digits.x_train, digits.y_train, epochs=2, batch_size=64, verbose=0)
    plain = strip_clustering(clustered)
    assert all(type(l).__module__.startswith("keras.") for l in plain.layers)
    assert _max_diff(plain, clustered, digits.x_test[:32]) < 1e-4
    keras_accuracy = _accuracy(plain, digits.x_test, digits.y_test)
    assert keras_accuracy >= float_accuracy - 0.015

    tflite = convert(plain, mode="int8", calibration=digits.x_train[:200])
    report = cluster_report(tflite, num_clusters=16)
    # the three clustered kernels keep <= 16 int8 values per output channel; conv1 (unclustered) holds more
    by_layer = {name: [k for k in report.kernels if re.search(rf"/{name}(_\d+)?/", k.name)]
                for name in ("conv1", "conv2", "fc", "logits")}
    assert all(len(found) == 1 for found in by_layer.values()), report.summary()
    assert all(by_layer[name][0].max_unique_per_channel <= 16 for name in ("conv2", "fc", "logits"))
    assert by_layer["conv1"][0].num_unique > 16
    int8_accuracy = _accuracy(tflite, digits.x_test, digits.y_test)
    print(f"digits top-1: float {float_accuracy:.4f}, clustered {keras_accuracy:.4f}, int8 {int8_accuracy:.4f}")
    assert int8_accuracy >= float_accuracy - 0.015
    assert_weights_unchanged(model, snapshot)


def test_optimizer_objects_callbacks_and_checkpoint(digits, trained, tmp_path):
    clustered = cluster(trained[0], num_clusters=8)
    clustered.compile(keras.optimizers.Adam(1e-3), _loss(keras), metrics=["accuracy"])
    path = str(tmp_path / "best.keras")
    history = clustered.fit(
        digits.x_train, digits.y_train, validation_split=0.2, epochs=3, batch_size=64, verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True),
        ],
    )
    assert 1 <= len(history.history["loss"]) <= 3
    restored = keras.models.load_model(path)
    assert has_wrappers(restored)
    assert max(l.max_unique for l in clustering_summary(restored).layers) <= 8


def test_gradient_tape_loop_trains_centroids_not_assignments():
    clustered = cluster(bn_cnn(keras), num_clusters=8, per_channel=True)
    wrapper = next(l for l in clustered.layers if isinstance(l, ClusterWeights))
    centroids, assignments = wrapper.centroids.numpy().copy(), wrapper.assignments.numpy().copy()
    kernel = wrapper.kernel.numpy().copy()
    optimizer = keras.optimizers.SGD(0.1)
    loss_fn = _loss(keras)
    for start in range(0, 64, 16):
        with tf.GradientTape() as tape:
            loss = loss_fn(Y[start:start + 16], clustered(X[start:start + 16], training=True))
        gradients = tape.gradient(loss, clustered.trainable_variables)
        assert all(g is not None for g in gradients)
        optimizer.apply_gradients(zip(gradients, clustered.trainable_variables))
    assert not np.allclose(wrapper.centroids.numpy(), centroids)
    np.testing.assert_array_equal(wrapper.assignments.numpy(), assignments)
    np.testing.assert_array_equal(wrapper.kernel.numpy(), kernel)  # the original kernel is kept, unused
    assert kmeans.unique_counts(strip_clustering(clustered).get_layer("conv_mid").get_weights()[0], axis=-1).max() <= 8


def test_freezing_and_unfreezing_keeps_the_original_kernel_out_of_training():
    clustered = cluster(bn_cnn(keras), num_clusters=8, include=["dense_mid"])
    expected = [v.path for v in clustered.trainable_variables]
    assert any(p.endswith("centroids") for p in expected) and not any(p.endswith("dense_mid/kernel") for p in expected)
    clustered.trainable = False
    assert clustered.trainable_variables == []
    clustered.trainable = True
    assert [v.path for v in clustered.trainable_variables] == expected


_FRESH = """
import sys, numpy as np
import tfopt  # registers tfopt's layers with Keras: no scope needed
import keras
model = keras.models.load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(model(x, training=False)))
from tfopt.compress.cluster import strip_clustering
from tfopt.compress import kmeans
wrapper = model.get_layer("cluster_dense_mid")
before = wrapper.assignments.numpy().copy()
model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, np.arange(len(x)) % 4, epochs=1, verbose=0)
assert (wrapper.assignments.numpy() == before).all()
plain = strip_clustering(model)
print("UNIQUE", int(kmeans.unique_counts(plain.get_layer("dense_mid").get_weights()[0])))
"""


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process_resumes_training(tmp_path):
    clustered = cluster(bn_cnn(keras), num_clusters=8)
    _fit(clustered)
    path = str(tmp_path / "clustered.keras")
    clustered.save(path)
    np.save(tmp_path / "x.npy", X[:16])
    script = tmp_path / "load.py"
    script.write_text(_FRESH)
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run(
        [sys.executable, str(script), path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), clustered(X[:16], training=False), atol=1e-6)
    assert int(run.stdout.split("UNIQUE")[-1]) <= 8


_MIRRORED = """
import json, sys, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, tfopt
from tfopt.compress.cluster import cluster, strip_clustering
from tfopt.compress import kmeans
sys.path.insert(0, sys.argv[1])
from conftest import bn_cnn
x = np.random.default_rng(0).random((64, 10, 10, 1), dtype="float32"); y = np.arange(64) % 4
out = {}
for label, strategy in (("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])), ("default", None)):
    scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
    with scope:
        model = cluster(bn_cnn(keras), num_clusters=8, per_channel=True)
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    plain = strip_clustering(model)
    out[label] = {
        "replicas": strategy.num_replicas_in_sync if strategy else 1,
        "unique": [int(kmeans.unique_counts(plain.get_layer(n).get_weights()[0], axis=-1).max())
                   for n in ("conv_mid", "dense_mid")],
    }
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus_same_cluster_counts(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED)
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, str(script), os.path.join(ROOT, "tests")], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT")[-1])
    assert result["mirrored"]["replicas"] == 2
    assert result["mirrored"]["unique"] == result["default"]["unique"] == [8, 8]


@pytest.mark.parametrize("flavor", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_preserve_sparsity_keeps_the_zeros_of_a_pruned_model(flavor):
    model = bn_cnn(flavor)
    zeros = {}
    for name in ("conv_mid", "dense_mid"):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.7)] = 0.0  # magnitude pruning to 70%
        model.get_layer(name).set_weights([kernel, bias])
        zeros[name] = kernel == 0
    snapshot = weights_snapshot(model)
    clustered = cluster(model, num_clusters=8, preserve_sparsity=True)
    _fit(clustered, k=flavor)
    plain = strip_clustering(clustered)
    assert _keras.keras_flavor(plain) == _keras.keras_flavor(model)
    for name, mask in zeros.items():
        kernel = plain.get_layer(name).get_weights()[0]
        np.testing.assert_array_equal(kernel[mask], 0.0)
        assert kmeans.unique_counts(kernel[kernel != 0]) <= 8  # 8 shared values for the non-zeros, plus 0
    assert all(l.preserve_sparsity for l in clustering_summary(clustered).layers)
    assert_weights_unchanged(model, snapshot)


@pytest.mark.parametrize("flavor", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_flavour_in_is_flavour_out_and_caller_model_untouched(flavor):
    model = bn_cnn(flavor)
    snapshot = weights_snapshot(model)
    clustered = cluster(model, num_clusters=8)
    assert _keras.keras_flavor(clustered) == _keras.keras_flavor(model)
    _fit(clustered, k=flavor)
    summary = clustering_summary(clustered)
    assert [l.name for l in summary.layers] == ["conv_mid", "dense_mid"]
    assert all(l.max_unique <= 8 for l in summary.layers)
    skipped = {s.name: s.reason for s in summary.skipped}
    assert "first/last" in skipped["conv_in"] and "first/last" in skipped["classifier"]
    assert "normalization" in skipped["bn"]
    plain = strip_clustering(clustered)
    assert not has_wrappers(plain) and has_wrappers(clustered)
    assert _keras.keras_flavor(plain) == _keras.keras_flavor(model)
    assert _max_diff(plain, clustered) < 1e-5
    for name in ("conv_mid", "dense_mid"):
        assert kmeans.unique_counts(plain.get_layer(name).get_weights()[0]) <= 8
    assert kmeans.unique_counts(plain.get_layer("classifier").get_weights()[0]) > 8
    assert_weights_unchanged(model, snapshot)


@pytest.mark.parametrize("init", kmeans.INITS)
def test_centroids_start_at_kmeans_of_the_trained_kernel(init):
    model = bn_cnn(keras)
    wrapper = next(l for l in cluster(model, num_clusters=8, init=init, include=["dense_mid"]).layers
                   if isinstance(l, ClusterWeights))
    expected, labels = kmeans.kmeans(model.get_layer("dense_mid").get_weights()[0], 8, init=init)
    np.testing.assert_allclose(wrapper.centroids.numpy()[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(wrapper.assignments.numpy(), labels)


def test_tf_keras_centroids_start_at_kmeans():
    model = bn_cnn(tf_keras)
    clustered = cluster(model, num_clusters=8, include=["dense_mid"])
    wrapper = next(l for l in clustered.layers if hasattr(l, "cluster_centroids"))
    expected, _ = kmeans.kmeans(model.get_layer("dense_mid").get_weights()[0], 8)
    np.testing.assert_allclose(wrapper.cluster_centroids["kernel"].numpy(), expected, rtol=1e-6)


def _per_channel_model(layer, shape):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    x = layer(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


@pytest.mark.parametrize(
    "layer, shape, axis",
    [
        (lambda: keras.layers.Conv2D(16, 3, use_bias=False, name="target"), (10, 10, 4), -1),
        (lambda: keras.layers.Conv1D(16, 3, name="target"), (10, 8), -1),
        (lambda: keras.layers.Conv2DTranspose(12, 3, name="target"), (6, 6, 8), -2),
        (lambda: keras.layers.SeparableConv2D(16, 3, name="target"), (8, 8, 8), -1),
        (lambda: keras.layers.Dense(24, name="target"), (32,), -1),
    ],
    ids=["conv2d-no-bias", "conv1d", "conv2d-transpose", "separable", "dense"],
)
def test_per_channel_bounds_each_output_channel(layer, shape, axis):
    model = _per_channel_model(layer(), shape)
    clustered = cluster(model, num_clusters=4, per_channel=True, include=["target"])
    x = RNG.random((16, *shape), dtype="float32")
    clustered.compile(keras.optimizers.Adam(1e-3), "mse")
    clustered.fit(x, RNG.random((16, 4)), epochs=1, verbose=0)
    plain = strip_clustering(clustered)
    target = plain.get_layer("target")
    kernel = target.pointwise_kernel.numpy() if hasattr(target, "pointwise_kernel") else target.get_weights()[0]
    assert kmeans.unique_counts(kernel, axis=axis).max() <= 4
    assert kmeans.unique_counts(kernel) > 4
    assert clustering_summary(clustered).layers[0].per_channel
    assert _max_diff(plain, clustered, x) < 1e-5


def test_tf_keras_per_channel_conv_without_bias():
    # tfmot alone silently skips per-channel clustering of a Conv2D without bias.
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input((10, 10, 1)), tf_keras.layers.Conv2D(16, 3, use_bias=False, name="conv"),
        tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(4, name="head"),
    ])
    clustered = cluster(model, num_clusters=4, per_channel=True, include=["conv"])
    _fit(clustered, k=tf_keras)
    kernel = strip_clustering(clustered).get_layer("conv").get_weights()[0]
    assert kmeans.unique_counts(kernel, axis=-1).max() <= 4 < kmeans.unique_counts(kernel)


def test_unsupported_and_small_layers_are_skipped_with_reasons():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="first")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.Conv2D(2, 1, name="tiny")(x)  # 8 weights
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, name="middle")(x)
    outputs = keras.layers.Dense(3, name="last")(x)
    summary = clustering_summary(cluster(keras.Model(inputs, outputs), num_clusters=8))
    reasons = {s.name: s.reason for s in summary.skipped}
    assert [l.name for l in summary.layers] == ["middle"]
    assert "depthwise" in reasons["depthwise"]
    assert "8 weights for 8 clusters" in reasons["tiny"]
    assert "first/last" in reasons["first"]
    assert "first/last" in summary.summary()


def test_tf_keras_strip_works_with_tfoplambda_layers():
    # `x + 3.0` and `x * (1/6)` (hard-swish) become TFOpLambda layers, on which tfmot's strip_clustering fails.
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    y = tf_keras.layers.Conv2D(8, 3, padding="same", name="body")(x)
    y = y * tf_keras.layers.ReLU(6.0)(y + 3.0) * (1.0 / 6.0)
    x = tf_keras.layers.GlobalAveragePooling2D()(x + y)
    outputs = tf_keras.layers.Dense(4, name="head")(tf_keras.layers.Dense(16, name="neck")(x))
    model = tf_keras.Model(inputs, outputs)
    assert any(type(l).__name__ == "TFOpLambda" for l in model.layers)
    clustered = cluster(model, num_clusters=4)
    xs = RNG.random((16, 8, 8, 3), dtype="float32")
    clustered.compile("adam", "mse")
    clustered.fit(xs, RNG.random((16, 4)), epochs=1, verbose=0)
    plain = strip_clustering(clustered)
    assert not has_wrappers(plain)
    np.testing.assert_allclose(plain(xs), clustered(xs, training=False), atol=1e-5)
    assert kmeans.unique_counts(plain.get_layer("body").get_weights()[0]) <= 4


def test_keras3_ops_in_the_graph_survive_wrap_and_strip():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", name="body")(x)
    y = y * keras.ops.relu6(y + 3.0) / 6.0
    x = keras.layers.GlobalAveragePooling2D()(x + y)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(keras.layers.Dense(16, name="neck")(x)))
    clustered = cluster(model, num_clusters=4)
    xs = RNG.random((8, 8, 8, 3), dtype="float32")
    plain = strip_clustering(clustered)
    assert _max_diff(plain, clustered, xs) < 1e-5
    assert kmeans.unique_counts(plain.get_layer("body").get_weights()[0]) <= 4


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_tf_keras_save_and_load_clustered(tmp_path, suffix):
    clustered = cluster(bn_cnn(tf_keras), num_clusters=8)
    _fit(clustered, k=tf_keras)
    path = str(tmp_path / f"clustered{suffix}")
    clustered.save(path)
    loaded = load_clustered(path)
    assert _max_diff(loaded, clustered) < 1e-6
    _fit(loaded, k=tf_keras)
    plain = strip_clustering(loaded)
    assert _keras.keras_flavor(plain) == _keras.TF_KERAS
    assert kmeans.unique_counts(plain.get_layer("dense_mid").get_weights()[0]) <= 8
    from tfopt._legacy.cluster import custom_objects

    assert has_wrappers(_keras.load_model(path, custom_objects=custom_objects()))  # tfopt's safe loader


def test_batchnorm_data_reestimates_statistics():
    clustered = cluster(bn_cnn(keras), num_clusters=8, batchnorm_data=X)
    bn = clustered.get_layer("bn")
    features = np.asarray(clustered.get_layer("conv_in")(X))  # the first layer stays unclustered
    np.testing.assert_allclose(bn.moving_mean.numpy(), features.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99  # restored


def test_cluster_report_keras_and_int8_tflite():
    from tfopt.export.convert import convert

    model = bn_cnn(keras)
    clustered = cluster(model, num_clusters=8, include=["conv_mid", "dense_mid"])
    _fit(clustered)
    plain = strip_clustering(clustered)
    report = cluster_report(plain, reference=model, num_clusters=8)
    assert set(report.within(8)) == {"conv_mid/kernel", "dense_mid/kernel"}
    assert report.gzip_ratio < 1.0 and "gzip" in report.summary()
    kernels = cluster_report(convert(plain, mode="int8", calibration=X), num_clusters=8).kernels
    assert len(kernels) == 4 and all(k.dtype == "int8" for k in kernels)
    # the two clustered kernels keep <= 8 int8 values per output channel; the others do not
    assert sorted(k.max_unique_per_channel <= 8 for k in kernels) == [False, False, True, True]
    json.dumps(report.to_dict())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_clusters": 1}, ValueError, r"num_clusters must be an integer >= 2. Received: num_clusters=1"),
        ({"num_clusters": True}, ValueError, "num_clusters must be an integer"),
        ({"init": "kmeans"}, ValueError, "init must be one of .*Received: init='kmeans'"),
        ({"per_channel": "yes"}, TypeError, "per_channel must be True or False. Received: per_channel='yes'"),
        ({"preserve_sparsity": 1}, TypeError, "preserve_sparsity must be True or False"),
        ({"include": ["nope"]}, ValueError, "matched no layer"),
        ({"include": ["bn"]}, ValueError, "No layer .* can be clustered.*bn: normalization"),
    ],
    ids=["k1", "k-bool", "bad-init", "bad-per-channel", "bad-preserve", "no-match", "nothing-to-cluster"],
)
def test_cluster_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        cluster(bn_cnn(keras), **kwargs)


def test_preserve_sparsity_with_two_clusters_means_two_values_plus_zero():
    model = bn_cnn(keras)
    kernel, bias = model.get_layer("dense_mid").get_weights()
    kernel[::2] = 0.0
    model.get_layer("dense_mid").set_weights([kernel, bias])
    plain = strip_clustering(cluster(model, num_clusters=2, preserve_sparsity=True, include=["dense_mid"]))
    stripped = plain.get_layer("dense_mid").get_weights()[0]
    assert kmeans.unique_counts(stripped) == 3 and np.all(stripped[::2] == 0)


def test_save_and_load_round_trip_in_process(tmp_path):
    clustered = cluster(bn_cnn(keras), num_clusters=8, per_channel=True, preserve_sparsity=True)
    path = str(tmp_path / "clustered.keras")
    clustered.save(path)
    loaded = keras.models.load_model(path)
    assert _max_diff(loaded, clustered) < 1e-6
    for before, after in zip(_wrappers_of(clustered), _wrappers_of(loaded)):
        options = ("num_clusters", "init", "per_channel", "preserve_sparsity", "name")
        assert {k: after.get_config()[k] for k in options} == {k: before.get_config()[k] for k in options}
        for name in ("centroids", "assignments", "nonzero_mask"):
            np.testing.assert_array_equal(getattr(after, name).numpy(), getattr(before, name).numpy())
    assert load_clustered(path).count_params() == clustered.count_params()


def _wrappers_of(model):
    return [l for l in model.layers if isinstance(l, ClusterWeights)]


def _subclassed(k):
    class Sub(k.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = k.layers.Dense(32, name="hidden")

        def call(self, x):
            return self.hidden(x)

    model = Sub()
    model(np.zeros((1, 16), "float32"))
    return model


@pytest.mark.parametrize("flavor", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_errors_for_subclassed_and_unwrapped_models(flavor):
    with pytest.raises(NotImplementedError, match="subclassed .*functional"):
        cluster(_subclassed(flavor))
    with pytest.raises(ValueError, match="no clustering wrappers"):
        strip_clustering(bn_cnn(flavor))
    with pytest.raises(TypeError, match="Expected a Keras model"):
        cluster("model.keras")


def test_errors_for_wrapped_models_and_wrong_layers():
    with pytest.raises(ValueError, match="still has clustering or pruning wrappers"):
        cluster_report(cluster(bn_cnn(keras), num_clusters=8))
    with pytest.raises(TypeError, match="ClusterWeights wraps .*Received: .*BatchNormalization"):
        ClusterWeights(keras.layers.BatchNormalization())


@pytest.mark.slow
@pytest.mark.parametrize(
    "build",
    [
        lambda: keras.applications.MobileNet(alpha=0.25, input_shape=(32, 32, 3), weights=None, classes=4,
                                             classifier_activation=None),
        lambda: tf_keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4,
                                                       include_preprocessing=False, classifier_activation=None),
    ],
    ids=["keras3-MobileNet", "tf_keras-MobileNetV3Small"],
)
def test_applications_wrap_train_strip_convert(build):
    from tfopt.export.convert import convert

    model = build()
    k = _keras.keras_of(model)
    x = RNG.random((4, 32, 32, 3), dtype="float32")
    clustered = cluster(model, num_clusters=16)
    clustered.compile(k.optimizers.Adam(1e-4), _loss(k))
    clustered.train_on_batch(x, np.arange(4))
    plain = strip_clustering(clustered)  # tfmot's strip_clustering fails on MobileNetV3 (TFOpLambda)
    np.testing.assert_allclose(plain(x), clustered(x, training=False), atol=1e-4)
    names = {l.name for l in clustering_summary(clustered).layers}
    assert len(names) > 5
    assert all(kmeans.unique_counts(plain.get_layer(n).get_weights()[0]) <= 16 for n in names)
    assert convert(plain, mode="float32").size_bytes > 0
