"""Weight clustering: plain fit, strip (also with TFOpLambda and pruning wrappers), skipped layers, report, CLI."""

import json

import keras
import numpy as np
import pytest
import tf_keras
from conftest import assert_weights_unchanged, weights_snapshot

from tfopt import _keras
from tfopt.compress import kmeans
from tfopt.compress.batchnorm import reestimate_batchnorm
from tfopt.compress.cluster import (
    cluster,
    clustering_summary,
    load_clustered,
    strip_clustering,
)
from tfopt.analyze.cluster_report import cluster_report

from conftest import bn_cnn  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.random((64, 10, 10, 1), dtype="float32")
Y = RNG.integers(0, 4, 64)


def _cnn(k=keras):
    return bn_cnn(k)


def _fit(model, epochs=1):
    model.compile(tf_keras.optimizers.Adam(1e-3), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(X, Y, epochs=epochs, batch_size=16, verbose=0)


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a(X[:8], training=False)) - np.asarray(b(X[:8], training=False)))))


@pytest.mark.parametrize("flavor", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_cluster_plain_fit_strip_keeps_flavour_and_caller_model(flavor):
    model = _cnn(flavor)
    snapshot = weights_snapshot(model)
    clustered = cluster(model, num_clusters=8)
    assert _keras.keras_flavor(clustered) == _keras.TF_KERAS
    _fit(clustered)
    summary = clustering_summary(clustered)
    assert [l.name for l in summary.layers] == ["conv_mid", "dense_mid"]
    assert all(l.max_unique <= 8 for l in summary.layers)
    skipped = {s.name: s.reason for s in summary.skipped}
    assert "first/last" in skipped["conv_in"] and "first/last" in skipped["classifier"]
    assert "normalization" in skipped["bn"]

    plain = strip_clustering(clustered)
    assert _keras.keras_flavor(plain) == _keras.keras_flavor(model)
    assert _max_diff(plain, clustered) < 1e-5
    for name in ("conv_mid", "dense_mid"):
        assert kmeans.unique_counts(plain.get_layer(name).get_weights()[0]) <= 8
    assert kmeans.unique_counts(plain.get_layer("classifier").get_weights()[0]) > 8
    assert_weights_unchanged(model, snapshot)


def test_centroids_start_at_kmeans_of_the_trained_kernel():
    model = _cnn()
    clustered = cluster(model, num_clusters=8, include=["dense_mid"])
    wrapper = next(l for l in clustered.layers if hasattr(l, "cluster_centroids"))
    centroids = wrapper.cluster_centroids["kernel"].numpy()
    expected, _ = kmeans.kmeans(model.get_layer("dense_mid").get_weights()[0], 8)
    np.testing.assert_allclose(centroids, expected, rtol=1e-6)


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
def test_per_channel_bounds_each_output_channel(use_bias):
    # tfmot alone silently skips per-channel clustering of a Conv2D without bias.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((10, 10, 1)), keras.layers.Conv2D(16, 3, use_bias=use_bias, name="conv"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, name="head"),
    ])
    clustered = cluster(model, num_clusters=4, per_channel=True, include=["conv"])
    _fit(clustered)
    kernel = strip_clustering(clustered).get_layer("conv").get_weights()[0]
    assert kmeans.unique_counts(kernel, axis=-1).max() <= 4
    assert kmeans.unique_counts(kernel) > 4
    assert clustering_summary(clustered).layers[0].per_channel


def test_preserve_sparsity_keeps_zeros():
    model = _cnn()
    kernel, bias = model.get_layer("dense_mid").get_weights()
    kernel[RNG.random(kernel.shape) < 0.6] = 0.0
    model.get_layer("dense_mid").set_weights([kernel, bias])
    clustered = cluster(model, num_clusters=8, preserve_sparsity=True, include=["dense_mid"])
    _fit(clustered)
    stripped = strip_clustering(clustered).get_layer("dense_mid").get_weights()[0]
    np.testing.assert_array_equal(stripped[kernel == 0], 0.0)
    assert kmeans.unique_counts(stripped) <= 8


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


def test_strip_works_with_tfoplambda_layers():
    # `x + 3.0` and `x * (1/6)` (hard-swish) become TFOpLambda layers, on which tfmot's strip_clustering fails.
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    y = tf_keras.layers.Conv2D(8, 3, padding="same", name="body")(x)
    y = y * tf_keras.layers.ReLU(6.0)(y + 3.0) * (1.0 / 6.0)
    x = x + y
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf_keras.layers.Dense(4, name="head")(tf_keras.layers.Dense(16, name="neck")(x))
    model = tf_keras.Model(inputs, outputs)
    assert any(type(l).__name__ == "TFOpLambda" for l in model.layers)
    clustered = cluster(model, num_clusters=4)
    xs = RNG.random((16, 8, 8, 3), dtype="float32")
    clustered.compile("adam", "mse")
    clustered.fit(xs, RNG.random((16, 4)), epochs=1, verbose=0)
    plain = strip_clustering(clustered)
    assert not any(hasattr(l, "cluster_centroids") for l in plain.layers)
    np.testing.assert_allclose(plain(xs), clustered(xs, training=False), atol=1e-5)
    assert kmeans.unique_counts(plain.get_layer("body").get_weights()[0]) <= 4


def test_strip_also_removes_pruning_wrappers():
    from tfopt.compress.prune import prune

    pruned = prune(_cnn(), target_sparsity=0.5, end_step=2)
    _fit(pruned)
    plain = strip_clustering(pruned)
    assert not any(hasattr(l, "pruning_vars") for l in plain.layers)
    assert np.mean(plain.get_layer("conv_mid").get_weights()[0] == 0) == pytest.approx(0.5, abs=0.01)


def test_clustered_model_survives_save_and_load(tmp_path):
    clustered = cluster(_cnn(), num_clusters=8)
    _fit(clustered)
    path = str(tmp_path / "clustered.keras")
    clustered.save(path)
    loaded = load_clustered(path)
    assert _max_diff(loaded, clustered) < 1e-6
    _fit(loaded)  # training continues with a plain fit
    plain = strip_clustering(loaded)
    assert _keras.keras_flavor(plain) == _keras.TF_KERAS  # the original flavour is not saved
    assert kmeans.unique_counts(plain.get_layer("dense_mid").get_weights()[0]) <= 8


def test_batchnorm_data_reestimates_statistics_without_touching_weights():
    model = _cnn()
    clustered = cluster(model, num_clusters=8, batchnorm_data=X)
    bn = clustered.get_layer("bn")
    features = np.asarray(clustered.get_layer("conv_in")(X))  # the first layer stays unclustered
    np.testing.assert_allclose(bn.moving_mean.numpy(), features.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99  # restored
    copy = reestimate_batchnorm(model, X, batch_size=16, num_batches=2)
    assert not np.allclose(copy.get_layer("bn").moving_mean.numpy(), model.get_layer("bn").moving_mean.numpy())


def test_cluster_report_keras_and_int8_tflite():
    from tfopt.export.convert import convert

    model = _cnn()
    clustered = cluster(model, num_clusters=8, include=["conv_mid", "dense_mid"])
    _fit(clustered)
    plain = strip_clustering(clustered)
    report = cluster_report(plain, reference=model, num_clusters=8)
    assert set(report.within(8)) == {"conv_mid/kernel", "dense_mid/kernel"}
    assert report.gzip_ratio < 1.0 and "gzip" in report.summary()
    tflite = convert(plain, mode="int8", calibration=X)
    kernels = cluster_report(tflite, num_clusters=8).kernels
    assert len(kernels) == 4 and all(k.dtype == "int8" for k in kernels)
    # the two clustered kernels keep <= 8 int8 values per output channel; the others do not
    assert sorted(k.max_unique_per_channel <= 8 for k in kernels) == [False, False, True, True]
    json.dumps(report.to_dict())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_clusters": 1}, ValueError, "num_clusters must be an integer >= 2"),
        ({"num_clusters": 2, "preserve_sparsity": True}, ValueError, ">= 3 with preserve_sparsity"),
        ({"init": "kmeans"}, ValueError, "init must be one of"),
        ({"per_channel": "yes"}, TypeError, "per_channel must be True or False"),
        ({"include": ["nope"]}, ValueError, "matched no layer"),
        ({"include": ["bn"]}, ValueError, "No layer .* can be clustered"),
    ],
    ids=["k1", "k2-sparse", "bad-init", "bad-per-channel", "no-match", "nothing-to-cluster"],
)
def test_cluster_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        cluster(_cnn(), **kwargs)


def _subclassed(k):
    class Sub(k.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = k.layers.Dense(32, name="hidden")
            self.head = k.layers.Dense(4, name="head")

        def call(self, x):
            return self.head(self.hidden(x))

    model = Sub()
    model(np.zeros((1, 16), "float32"))
    return model


def test_subclassed_models():
    # Keras 3: the bridge traces the subclassed model into a functional one.
    model = _subclassed(keras)
    clustered = cluster(model, num_clusters=4, include=["hidden"])
    plain = strip_clustering(clustered)
    assert kmeans.unique_counts(plain.get_layer("hidden").get_weights()[0]) <= 4
    # tf_keras: neither tfmot nor tfopt can copy a subclassed model.
    with pytest.raises(NotImplementedError, match="subclassed"):
        cluster(_subclassed(tf_keras))


def test_errors_for_unwrapped_models():
    with pytest.raises(ValueError, match="no clustering or pruning wrappers"):
        strip_clustering(_cnn(tf_keras))
    with pytest.raises(ValueError, match="strip_clustering"):
        cluster_report(cluster(_cnn(), num_clusters=8))


def test_cli_cluster_writes_model_and_json(tmp_path):
    from absl import flags

    from tfopt._cli import cluster as command

    model = _cnn()
    model.save(str(tmp_path / "model.keras"))
    np.savez(tmp_path / "data.npz", x_train=X, y_train=Y, x_test=X[:32], y_test=Y[:32])
    flags.FLAGS([
        "tfopt", f"--data={tmp_path / 'data.npz'}", f"--output={tmp_path / 'out.keras'}",
        f"--json={tmp_path / 'out.json'}", "--num_clusters=8", "--epochs=1",
    ])
    try:
        assert command.main([str(tmp_path / "model.keras")]) == 0
    finally:
        flags.FLAGS.unparse_flags()
    payload = json.loads((tmp_path / "out.json").read_text())
    assert {"accuracy_before", "accuracy_after", "params_before", "params_after", "layers", "paths"} <= set(payload)
    clustered = [l for l in payload["layers"] if l["clustered"]]
    assert [l["name"] for l in clustered] == ["conv_mid/kernel", "dense_mid/kernel"]
    assert all(l["num_unique"] <= 8 for l in clustered)
    reloaded = keras.models.load_model(payload["paths"]["output"])
    assert kmeans.unique_counts(reloaded.get_layer("dense_mid").get_weights()[0]) <= 8


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
    x = RNG.random((4, 32, 32, 3), dtype="float32")
    clustered = cluster(model, num_clusters=16)
    clustered.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clustered.train_on_batch(x, np.arange(4))
    plain = strip_clustering(clustered)  # tfmot's strip_clustering fails on MobileNetV3 (TFOpLambda)
    np.testing.assert_allclose(plain(x), clustered(x, training=False), atol=1e-4)
    names = {l.name for l in clustering_summary(clustered).layers}
    assert len(names) > 5
    assert all(kmeans.unique_counts(plain.get_layer(n).get_weights()[0]) <= 16 for n in names)
    assert convert(plain, mode="float32").size_bytes > 0
