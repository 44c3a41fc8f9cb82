"""Configs: plain values that round-trip, fail early on bad values, and `apply` equals the verbs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import tfopt

CONFIGS = [
    tfopt.PruneConfig(target_sparsity=0.7, include=["a"], m_by_n=(2, 4)),
    tfopt.ChannelPruneConfig(ratio=0.25, round_to=8),
    tfopt.ClusterConfig(num_clusters=8, init="linear", exclude="re:out.*"),
    tfopt.QATConfig(preserve="sparsity"),
    tfopt.LowRankConfig(energy=0.9),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_config_round_trips_through_json(config):
    payload = json.loads(json.dumps(config.to_dict()))
    assert payload["technique"] == config.technique
    assert tfopt.Config.from_dict(payload) == config
    assert type(config).from_dict(payload) == config


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: tfopt.PruneConfig(target_sparsity=1.2), ValueError, r"target_sparsity must be a number in \[0, 1\)"),
        (lambda: tfopt.PruneConfig(schedule="cubic"), ValueError, "schedule must be one of"),
        (lambda: tfopt.ClusterConfig(num_clusters=1), ValueError, "num_clusters must be an integer >= 2"),
        (lambda: tfopt.ChannelPruneConfig(importance="taylor"), ValueError, "importance must be one of"),
        (lambda: tfopt.LowRankConfig(rank=4, energy=0.9), ValueError, "at most one of"),
        (lambda: tfopt.QATConfig(preserve="zeros"), ValueError, "preserve must be one of"),
        (lambda: tfopt.PruneConfig(include=lambda layer: True), TypeError, "Use the verb"),
        (lambda: tfopt.Config.from_dict({"technique": "prune", "sparsity": 0.5}), ValueError, r"Unknown PruneConfig key"),
        (lambda: tfopt.Config.from_dict({"technique": "distill"}), ValueError, "Unknown technique 'distill'"),
        (lambda: tfopt.ClusterConfig.from_dict({"technique": "prune"}), ValueError, "cannot be built from a 'prune'"),
    ],
    ids=["sparsity", "schedule", "clusters", "importance", "two-ranks", "preserve", "callable", "unknown-key",
         "unknown-technique", "wrong-class"],
)
def test_config_rejects_bad_values(make, error, match):
    with pytest.raises(error, match=match):
        make()


def _model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, name="a"), keras.layers.Dense(32, name="b"), keras.layers.Dense(4, name="out")]
    )


def test_apply_matches_the_verbs():
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).random((8, 16), dtype=np.float32)
    low = tfopt.apply(model, tfopt.LowRankConfig(rank=4, include=["a", "b"]))
    direct = tfopt.decompose(model, rank=4, include=["a", "b"])
    np.testing.assert_allclose(np.asarray(low(x)), np.asarray(direct(x)), atol=1e-6)
    channels = tfopt.apply(model, tfopt.ChannelPruneConfig(ratio=0.5))
    assert channels.count_params() == tfopt.prune_channels(model, ratio=0.5).model.count_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = tfopt.apply(model, tfopt.PruneConfig(target_sparsity=0.5, include=["a"]))
    assert [layer.name for layer in tfopt.pruning_summary(pruned).layers] == ["a"]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="takes a tfopt config"):
        tfopt.apply(model, {"technique": "prune"})
