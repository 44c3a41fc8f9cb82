"""The sparsity advisor: XNNPACK's sparse rules read from the .tflite, CPU flags, measured gains."""

import json

import keras
import numpy as np
import pytest

from tfopt.compress import schedules
from tfopt.search.advisor import advise_sparsity, host_cpu_flags


def _mobile_like(first_stride=2, prune_1x1=0.8):
    """3x3 stride-2 stem on 3 channels, 1x1 convs, a depthwise conv, global average pooling."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, strides=first_stride, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(64, 1, activation="relu", name="pw1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(128, 1, activation="relu", name="pw2")(x)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    if prune_1x1:
        for name in ("pw1", "pw2"):
            kernel, bias = model.get_layer(name).get_weights()
            model.get_layer(name).set_weights([kernel * schedules.magnitude_mask(kernel, prune_1x1), bias])
    return model


def test_advisor_arm_rules_met_by_mobile_like_pruned_model():
    advice = advise_sparsity(_mobile_like(), target="xnnpack_arm")
    assert advice.sparse_speedup_possible
    assert all(rule.passed for rule in advice.rules)
    assert [c["shape"] for c in advice.conv1x1] == [[64, 1, 1, 16], [128, 1, 1, 64]]
    assert advice.conv1x1_sparsity == pytest.approx(0.8, abs=0.01)
    assert "measurement on the device" in advice.verdict


@pytest.mark.parametrize(
    "kwargs, failing",
    [
        ({"first_stride": 1}, "starts with a 3x3 stride-2 conv on 3 channels"),
        ({"prune_1x1": 0.5}, ">= 0.67 zeros across the 1x1 convs"),
    ],
    ids=["stride1_stem", "too_dense"],
)
def test_advisor_names_the_rule_that_fails(kwargs, failing):
    advice = advise_sparsity(_mobile_like(**kwargs), target="xnnpack_arm")
    assert not advice.sparse_speedup_possible
    assert [r.name for r in advice.rules if r.passed is False] == [failing]
    assert failing in advice.verdict


def test_advisor_x86_reads_avx_from_cpuinfo_and_measures_side_by_side(tmp_path):
    flags = host_cpu_flags()
    assert flags is None or isinstance(flags, list)
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert host_cpu_flags(str(fake)) == ["avx", "avx2", "fma", "fpu", "sse2"]
    dense, pruned = _mobile_like(prune_1x1=0.0), _mobile_like()
    x = np.random.default_rng(0).random((8, 32, 32, 3), dtype="float32")
    advice = advise_sparsity(pruned, target="xnnpack_x86", dense=dense, data=(x, np.zeros(8, "int64")), num_runs=10)
    avx_rule = advice.rules[-1]
    assert avx_rule.name == "x86 CPU without AVX"
    if flags is not None and any(f.startswith("avx") for f in flags):
        assert avx_rule.passed is False and not advice.sparse_speedup_possible
    ratios = advice.ratios()
    assert ratios["gzip"] < 0.7 and ratios["size"] < 0.7  # the zeros do buy size
    assert "Measured here: latency x" in advice.verdict and "pruned/dense" in advice.summary()
    assert json.loads(json.dumps(advice.to_dict()))["ratios"]["gzip"] == pytest.approx(ratios["gzip"])


def test_advisor_micro_has_no_sparse_kernels_and_rejects_unknown_target():
    advice = advise_sparsity(_mobile_like(), target="tflite_micro")
    assert not advice.sparse_speedup_possible and "no sparse kernels" in advice.summary()
    with pytest.raises(ValueError, match="target must be one of"):
        advise_sparsity(_mobile_like(), target="gpu")
