"""Per-layer pruning sensitivity on real digits, and the sparsity allocation maths (no Keras)."""

import json

import keras
import numpy as np
import pytest

from conftest import assert_weights_unchanged, weights_snapshot
from tfopt.compress import schedules
from tfopt.compress.prune import prune, pruning_summary, strip
from tfopt.compress.sensitivity import allocate_sparsity, prune_sensitivity

GRID = [0.5, 0.7, 0.9]


# ------------------------------------------------------------------ allocation maths, no Keras
def _average(sizes, sparsities):
    return float(np.dot(sizes, sparsities) / np.sum(sizes))


@pytest.mark.parametrize("target", [0.3, 0.6, 0.8], ids=str)
def test_allocate_meets_weighted_global_target(target):
    sizes = [100, 5000, 20000, 300]
    drops = [[0.01, 0.05, 0.30], [0.0, 0.01, 0.02], [0.0, 0.0, 0.01], [0.02, 0.10, 0.40]]
    got = allocate_sparsity(sizes, GRID, drops, global_sparsity=target)
    assert _average(sizes, got) == pytest.approx(target, abs=1e-6)
    assert np.all(got >= 0) and np.all(got <= 0.9 + 1e-9)


def test_allocate_protects_sensitive_layers_and_prunes_robust_large_ones():
    sizes = [500, 50000, 500]
    drops = [[0.05, 0.20, 0.60], [0.0, 0.005, 0.02], [0.03, 0.15, 0.50]]
    got = allocate_sparsity(sizes, GRID, drops, global_sparsity=0.8)
    assert got[1] > 0.8 > got[0] and got[1] > got[2]


def test_allocate_equal_curves_give_equal_sparsity():
    got = allocate_sparsity([40, 40, 40], GRID, [[0.0, 0.01, 0.05]] * 3, global_sparsity=0.65)
    assert np.ptp(got) < 0.01


def test_allocate_noisy_curve_is_made_monotone():
    # A dip at 0.7 (noise) must not make 0.7 look cheaper than 0.5.
    got = allocate_sparsity([100, 100], GRID, [[0.10, 0.0, 0.30], [0.01, 0.02, 0.03]], global_sparsity=0.5)
    assert got[1] > got[0]


def test_allocate_max_drop_caps_layers():
    drops = [[0.0, 0.02, 0.10], [0.0, 0.0, 0.0]]
    got = allocate_sparsity([1000, 1000], GRID, drops, global_sparsity=0.7, max_drop=0.01)
    np.testing.assert_allclose(got, [0.5, 0.9], atol=1e-6)  # layer 0 stops where its drop passes 1 point


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"global_sparsity": 0.8, "max_drop": 0.01}, r"not reachable: .* at most 0\.700"),
        ({"global_sparsity": 1.0}, r"global_sparsity must be in \[0, 1\)"),
        ({"global_sparsity": 0.5, "max_sparsity": 1.2}, r"max_sparsity must be in \[0, 1\)"),
    ],
    ids=["unreachable", "global", "max_sparsity"],
)
def test_allocate_rejects_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        allocate_sparsity([1000, 1000], GRID, [[0.0, 0.02, 0.10], [0.0, 0.0, 0.0]], **kwargs)


def test_allocate_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="one row of 3 values per layer"):
        allocate_sparsity([10, 10], GRID, [[0.0, 0.1, 0.2]], global_sparsity=0.5)
    with pytest.raises(ValueError, match="increase strictly"):
        allocate_sparsity([10], [0.9, 0.5], [[0.0, 0.1]], global_sparsity=0.5)


# ------------------------------------------------------------------ measured on real data
@pytest.fixture(scope="module")
def digits_model():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="first"),
            keras.layers.Dense(64, activation="relu", name="middle"),
            keras.layers.Dense(10, name="last"),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=15, batch_size=64, verbose=0)
    return model, (x[:1400], y[:1400]), (x[1400:], y[1400:])


def test_sensitivity_measures_real_drops_without_touching_the_model(digits_model):
    model, _, val = digits_model
    snapshot = weights_snapshot(model)
    result = prune_sensitivity(model, val, sparsities=(0.5, 0.9, 0.98))
    assert_weights_unchanged(model, snapshot)
    accuracy = float(np.mean(np.argmax(model.predict(val[0], verbose=0), -1) == val[1]))
    assert result.baseline_accuracy == pytest.approx(accuracy)
    assert [l.name for l in result.layers] == ["first", "middle", "last"]
    assert [l.num_weights for l in result.layers] == [64 * 64, 64 * 64, 64 * 10]
    for layer in result.layers:
        assert layer.drops[-1] >= layer.drops[0]  # 98% hurts at least as much as 50%
    assert max(l.drops[-1] for l in result.layers) > 0.05  # pruning a layer to 98% costs real accuracy
    assert json.dumps(result.to_dict()) and "middle" in result.summary()


def test_sensitivity_targets_feed_prune_per_layer(digits_model):
    model, train, val = digits_model
    result = prune_sensitivity(model, val, sparsities=(0.5, 0.7, 0.9), exclude="last")
    targets = result.per_layer_targets(0.8)
    sizes = {l.name: l.num_weights for l in result.layers}
    assert set(targets) == {"first", "middle"}
    assert _average(list(sizes.values()), [targets[n] for n in sizes]) == pytest.approx(0.8, abs=1e-3)
    pruned = prune(model, target_sparsity=targets, end_step=10)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(*train, epochs=1, batch_size=64, verbose=0)
    summary = pruning_summary(pruned)
    assert {l.name: l.target_sparsity for l in summary.layers} == pytest.approx(targets)
    stripped = strip(pruned)
    for name, target in targets.items():
        assert schedules.sparsity_of(stripped.get_layer(name).get_weights()[0]) == pytest.approx(target, abs=0.01)
    assert schedules.sparsity_of(stripped.get_layer("last").get_weights()[0]) == 0.0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sparsities": (0.5, 1.0)}, ValueError, r"sparsities must be distinct numbers in \(0, 1\)"),
        ({"include": "nope"}, ValueError, "include rule 'nope' matched no layer"),
        ({"data": (np.zeros((3, 64)), np.zeros(2))}, ValueError, "same number"),
    ],
    ids=["grid", "include", "data"],
)
def test_sensitivity_rejects_bad_arguments(digits_model, kwargs, error, message):
    model, _, val = digits_model
    kwargs.setdefault("data", val)
    with pytest.raises(error, match=message):
        prune_sensitivity(model, **kwargs)


@pytest.mark.parametrize(
    "targets, error, message",
    [
        ({"nope": 0.5}, ValueError, r"target_sparsity names unknown layers \['nope'\]"),
        ({"first": 1.5}, ValueError, r"target_sparsity for 'first' must be in \[0, 1\)"),
        ({"first": "x"}, TypeError, "must map layer names to numbers"),
    ],
    ids=["unknown", "range", "type"],
)
def test_prune_rejects_bad_per_layer_targets(digits_model, targets, error, message):
    with pytest.raises(error, match=message):
        prune(digits_model[0], target_sparsity=targets)
