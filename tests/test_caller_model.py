"""prune, cluster and qat never change the caller's model: weights bit-identical, compile state kept, both flavours."""

import keras
import numpy as np
import pytest
import tf_keras
from conftest import assert_weights_unchanged, bn_cnn, weights_snapshot
from sklearn.datasets import load_digits

import tfopt


def _compiled_and_trained(k):
    """bn_cnn trained one epoch on real digits (padded to 10x10, 4 classes), so its optimizer has state."""
    digits = load_digits()
    keep = digits.target < 4
    x = np.pad(digits.images[keep] / 16.0, ((0, 0), (1, 1), (1, 1)))[..., None].astype("float32")
    y = digits.target[keep]
    model = bn_cnn(k)
    model.compile(k.optimizers.Adam(1e-3), k.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    return model, x


TECHNIQUES = {
    "prune": lambda model: tfopt.prune(model, target_sparsity=0.5),
    "cluster": lambda model: tfopt.cluster(model, num_clusters=8),
    "qat": lambda model: tfopt.qat(model),
}


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
@pytest.mark.parametrize("flavor", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_technique_leaves_the_callers_model_as_it_was(technique, flavor):
    model, x = _compiled_and_trained(flavor)
    snapshot = weights_snapshot(model)
    optimizer, loss, iterations = model.optimizer, model.loss, int(model.optimizer.iterations.numpy())
    before = model.predict(x[:32], verbose=0)
    wrapped = TECHNIQUES[technique](model)
    assert wrapped is not model
    assert_weights_unchanged(model, snapshot)
    assert model.optimizer is optimizer and model.loss is loss
    assert int(model.optimizer.iterations.numpy()) == iterations
    np.testing.assert_array_equal(model.predict(x[:32], verbose=0), before)
    model.fit(x[:64], np.zeros(64, "int64"), epochs=1, batch_size=32, verbose=0)  # still trains as compiled
    assert int(model.optimizer.iterations.numpy()) == iterations + 2
