"""tfopt.strip: one verb for pruned, clustered, and pruned-then-clustered models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tfopt


def _mlp():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(64, name="a"),
            keras.layers.Dense(64, name="b"),
            keras.layers.Dense(4, name="out"),
        ]
    )


def test_strip_pruned_and_clustered_models_keep_flavour():
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = tfopt.strip(tfopt.prune(model, target_sparsity=0.5, include=["a", "b"], end_step=1))
    assert type(pruned).__module__.startswith("keras")
    clustered = tfopt.strip(tfopt.cluster(model, num_clusters=8, include=["a", "b"]))
    assert type(clustered).__module__.startswith("keras")
    for name in ("a", "b"):
        assert len(np.unique(clustered.get_layer(name).get_weights()[0])) <= 8


def test_strip_plain_model_is_an_error():
    with pytest.raises(ValueError, match="nothing to strip"):
        tfopt.strip(_mlp())
