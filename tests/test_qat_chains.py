"""Collaborative QAT: zeros (PQAT), shared values (CQAT) and both (PCQAT) survive training and int8 conversion."""

import keras
import numpy as np
import pytest

from tfopt.analyze.cluster_report import cluster_report
from tfopt.analyze.sparsity import tflite_sparsity
from tfopt.compress.qat import qat, qat_summary, strip_qat
from tfopt.export.convert import convert

NUM_CLUSTERS = 8
SPARSITY = 0.7
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype("float32")[..., None], data.target


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def _prune(kernel):
    """Zeroes the smallest SPARSITY of a kernel, as a stripped pruned model holds."""
    out = kernel.copy()
    out[np.abs(out) < np.quantile(np.abs(out), SPARSITY)] = 0.0
    return out


def _cluster(kernel, keep_zeros):
    """Snaps the kernel to NUM_CLUSTERS shared values (one of them 0 when keep_zeros), as a stripped clustered model."""
    nonzero = kernel[kernel != 0] if keep_zeros else kernel.ravel()
    count = NUM_CLUSTERS - 1 if keep_zeros else NUM_CLUSTERS
    centroids = np.quantile(nonzero, np.linspace(0.02, 0.98, count)).astype("float32")
    snapped = centroids[np.argmin(np.abs(kernel[..., None] - centroids), axis=-1)]
    return np.where(kernel == 0, 0.0, snapped).astype("float32") if keep_zeros else snapped


@pytest.fixture(scope="module")
def trained(digits):
    x, y = digits
    model = _model()
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x[:1400], y[:1400], epochs=3, batch_size=32, verbose=0)
    return model


def _prepared(trained, preserve):
    model = keras.models.clone_model(trained)
    model.set_weights(trained.get_weights())
    for name in ("conv", "conv2", "logits"):
        layer = model.get_layer(name)
        weights = layer.get_weights()
        kernel = weights[0]
        if "sparsity" in preserve:
            kernel = _prune(kernel)
        if "clusters" in preserve:
            kernel = _cluster(kernel, keep_zeros="sparsity" in preserve)
        layer.set_weights([kernel] + weights[1:])
    return model


@pytest.mark.parametrize("preserve", ["sparsity", "clusters", "sparsity_clusters"], ids=["pqat", "cqat", "pcqat"])
def test_collaborative_qat_keeps_zeros_and_shared_values_in_the_int8_tflite(digits, trained, preserve):
    x, y = digits
    model = _prepared(trained, preserve)
    wrapped = qat(model, preserve=preserve)
    assert qat_summary(wrapped).preserve == preserve
    wrapped.compile(keras.optimizers.Adam(1e-3), LOSS)
    wrapped.fit(x[:1400], y[:1400], epochs=1, batch_size=32, verbose=0)
    plain = strip_qat(wrapped)
    tflite = convert(wrapped, mode="int8", calibration=x[:100], check_delegation=False)
    assert tflite.inspection.float_compute_ops == []
    if "sparsity" in preserve:
        for name in ("conv", "conv2", "logits"):
            assert np.mean(plain.get_layer(name).get_weights()[0] == 0) >= SPARSITY - 0.01
        for tensor in tflite_sparsity(tflite).tensors:
            assert tensor.sparsity >= SPARSITY - 0.01, tensor
    if "clusters" in preserve:
        for name in ("conv", "conv2", "logits"):
            assert len(np.unique(plain.get_layer(name).get_weights()[0])) <= NUM_CLUSTERS
        report = cluster_report(tflite)
        assert len(report.kernels) == 3
        assert len(report.within(NUM_CLUSTERS, per_channel=True)) == 3, report.summary()
    # the trained values moved: QAT did train them
    assert not np.array_equal(plain.get_layer("conv2").get_weights()[0], model.get_layer("conv2").get_weights()[0])


def test_preserve_accepts_a_pair_for_pcqat(trained):
    wrapped = qat(_prepared(trained, "sparsity_clusters"), preserve=("sparsity", "clusters"))
    assert qat_summary(wrapped).preserve == "sparsity_clusters"
