"""Configs: plain values that round-trip, fail early on bad values, and `apply` equals the verbs."""

from __future__ import annotations

import json

import pytest

import tfopt

CONFIGS = [
    tfopt.PruneConfig(target_sparsity=0.7, include=["a"], m_by_n=(2, 4)),
    tfopt.PruneConfig(target_sparsity={"a": 0.9, "b": 0.5}),
    tfopt.ChannelPruneConfig(ratio=0.25, round_to=8),
    tfopt.ClusterConfig(num_clusters=8, init="linear", exclude="re:out.*"),
    tfopt.QATConfig(preserve="sparsity_clusters", ema_decay=0.9),
    tfopt.LowRankConfig(energy=0.9),
    tfopt.DistillConfig(temperature=2.0, alpha=0.3, epochs=3, feature_layers=[("t1", "s1")]),
    tfopt.FineTuneConfig(epochs=1, learning_rate=5e-4),
    tfopt.PTQConfig(mode="int8", engine="litert_quantizer", float_fallback=["dense"], per_channel_dense=False),
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
        (lambda: tfopt.PruneConfig(include=lambda layer: True).to_dict(), TypeError, "cannot be saved"),
        (lambda: tfopt.PruneConfig(include=3), TypeError, "layer name"),
        (lambda: tfopt.ClusterConfig(preserve_sparsity="yes"), TypeError, "True or False"),
        (lambda: tfopt.PTQConfig(mode="int4"), ValueError, "mode must be one of"),
        (lambda: tfopt.PTQConfig(engine="tensorrt"), ValueError, "engine must be one of"),
        (lambda: tfopt.PTQConfig(float_fallback=3), ValueError, "float_fallback must be"),
        (lambda: tfopt.FineTuneConfig(epochs=0), ValueError, "epochs must be an integer >= 1"),
        (lambda: tfopt.FineTuneConfig(learning_rate=0.0), ValueError, "learning_rate must be a number > 0"),
        (lambda: tfopt.DistillConfig(temperature=-1.0), ValueError, "temperature must be a number > 0"),
        (lambda: tfopt.DistillConfig(alpha=float("nan")), ValueError, "alpha must be a number"),
        (lambda: tfopt.DistillConfig(feature_layers=["a"]), ValueError, "pairs"),
        (lambda: tfopt.Config.from_dict(["prune"]), TypeError, "takes a dict"),
        (lambda: tfopt.Config.from_dict({"technique": "prune", "sparsity": 0.5}), ValueError, r"Unknown PruneConfig key"),
        (lambda: tfopt.Config.from_dict({"technique": "fold"}), ValueError, "Unknown technique 'fold'"),
        (lambda: tfopt.ClusterConfig.from_dict({"technique": "prune"}), ValueError, "cannot be built from a 'prune'"),
    ],
    ids=["sparsity", "schedule", "clusters", "importance", "two-ranks", "preserve", "callable-save", "bad-rule",
         "preserve-sparsity-type", "ptq-mode", "ptq-engine", "ptq-fallback", "epochs-0", "lr-0", "temperature", "alpha-nan",
         "feature-pairs", "from-list", "unknown-key", "unknown-technique", "wrong-class"],
)
def test_config_rejects_bad_values(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_config_errors_are_tfopt_errors():
    with pytest.raises(tfopt.TfoptError):
        tfopt.PruneConfig(target_sparsity=2)


def test_config_reads_the_old_quantize_technique_name():
    assert tfopt.Config.from_dict({"technique": "quantize", "preserve": "sparsity"}) == tfopt.QATConfig(preserve="sparsity")


def test_config_16x8_is_int16x8():
    assert tfopt.PTQConfig(mode="16x8").mode == "int16x8"


def test_config_callable_rule_is_kept_for_the_verbs():
    rule = lambda layer: layer.name == "a"  # noqa: E731
    assert tfopt.PruneConfig(include=rule).include is rule


def test_config_lowrank_takes_per_layer_dicts():
    config = tfopt.LowRankConfig(param_ratio={"a": 0.3, "b": 0.5})
    assert tfopt.Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"param_ratio\['a'\] must be in \(0, 1\)"):
        tfopt.LowRankConfig(param_ratio={"a": 1.5})


def test_config_qat_preserve_pair_is_pcqat():
    assert tfopt.QATConfig(preserve=("sparsity", "clusters")).preserve == "sparsity_clusters"
