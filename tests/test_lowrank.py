"""tfopt.decompose: SVD rank choice as pure functions, model rebuild (Keras 3 and tf_keras), TFLite, CLI."""

from __future__ import annotations

import importlib
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tfopt.compress.lowrank import (
    allocate_ranks,
    break_even_rank,
    decompose,
    factorize,
    plan_decomposition,
    rank_for_energy,
)

# ------------------------------------------------------------------ pure math


@pytest.mark.parametrize(
    "values, energy, expected",
    [([4, 2, 1, 0], 0.9, 2), ([4, 2, 1, 0], 0.75, 1), ([1, 1, 1, 1], 1.0, 4), ([1, 1, 1, 1], 0.5, 2), ([0, 0], 0.9, 1)],
    ids=["typical", "first-enough", "all", "flat-half", "zero-matrix"],
)
def test_lowrank_rank_for_energy(values, energy, expected):
    assert rank_for_energy(values, energy) == expected


def test_lowrank_rank_for_energy_rejects_bad_energy():
    with pytest.raises(ValueError, match=r"energy must be in \(0, 1\]. Received: energy=1.5"):
        rank_for_energy([1.0], 1.5)


@pytest.mark.parametrize("rows, cols, expected", [(100, 10, 9), (2, 2, 0), (784, 300, 216), (3, 1, 0)])
def test_lowrank_break_even_rank(rows, cols, expected):
    r = break_even_rank(rows, cols)
    assert r == expected
    assert r * (rows + cols) < rows * cols
    assert (r + 1) * (rows + cols) >= rows * cols


def test_lowrank_factorize_recovers_a_low_rank_matrix_and_is_balanced():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 20))
    left, right, kept = factorize(matrix, 3)
    assert left.shape == (30, 3) and right.shape == (3, 20)
    np.testing.assert_allclose(left @ right, matrix, atol=1e-10)
    assert kept == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(left, axis=0), np.linalg.norm(right, axis=1))
    _, _, half = factorize(matrix, 1)
    assert 0 < half < 1
    with pytest.raises(ValueError, match=r"rank must be in \[1, 20\]"):
        factorize(matrix, 21)


def test_lowrank_allocate_ranks_shares_a_budget():
    # Equal spectra: the cheaper matrix gets its extra rank first.
    assert allocate_ranks([[3.0, 1.0, 0.1], [2.0, 1.0, 1.0]], [(30, 3), (40, 3)], budget=33 + 2 * 43) == [1, 2]
    # Budget for more than break-even: the 6x3 matrix stays whole (full rank returned).
    assert allocate_ranks([[3.0, 1.0], [1.0, 1.0, 1.0]], [(4, 2), (6, 3)], budget=24) == [1, 3]
    spectra = [np.linspace(3, 0.1, 300), np.linspace(3, 0.1, 100)]
    ranks = allocate_ranks(spectra, [(784, 300), (300, 100)], budget=50_000)
    assert ranks[0] * 1084 + ranks[1] * 400 <= 50_000
    assert ranks[0] * 1084 + ranks[1] * 400 > 50_000 - 1084
    with pytest.raises(ValueError, match="cannot hold rank 1"):
        allocate_ranks(spectra, [(784, 300), (300, 100)], budget=100)


# ------------------------------------------------------------------ models


def _low_rank_model(module, true_rank=3):
    """Conv -> strided conv -> Dense (shared) -> Dense, every kernel of rank `true_rank`."""
    keras = importlib.import_module(module)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, name="c2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(64, activation="relu", name="d1")(x)
    outputs = keras.layers.Dense(16, name="out")(x)
    model = keras.Model(inputs, outputs, name="lowrank")
    rng = np.random.default_rng(0)
    weights = []
    for w in model.get_weights():
        if w.ndim > 1:
            matrix = rng.normal(size=(int(np.prod(w.shape[:-1])), true_rank)) @ rng.normal(size=(true_rank, w.shape[-1]))
            weights.append((matrix / np.sqrt(matrix.shape[0])).reshape(w.shape).astype("float32"))
        else:
            weights.append(rng.normal(size=w.shape).astype("float32"))
    model.set_weights(weights)
    return model


@pytest.mark.parametrize("module", ["keras", "tf_keras"])
def test_lowrank_decompose_exact_at_kernel_rank_and_original_untouched(module):
    model = _low_rank_model(module)
    before = [np.copy(w) for w in model.get_weights()]
    small = decompose(model, energy=0.999999)
    assert type(small).__module__.split(".")[0] == type(model).__module__.split(".")[0]
    names = [layer.name for layer in small.layers]
    for name in ("c1", "c2", "d1", "out"):
        assert names.index(f"{name}_lowrank") + 1 == names.index(name)
    assert small.get_layer("c2_lowrank").get_config()["strides"] in ((2, 2), [2, 2])
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(small.predict(x, verbose=0), expected, atol=1e-4 * np.abs(expected).max())
    assert small.count_params() < model.count_params()
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_lowrank_plan_matches_model_and_lists_skipped_layers():
    model = _low_rank_model("keras")
    plan = plan_decomposition(model, rank=12)
    small = decompose(model, rank=12)
    assert plan.params_after == small.count_params()
    by_name = {layer.name: layer for layer in plan.layers}
    # c1: 27x16 kernel, break-even rank 9 < 12: left alone and listed with the reason.
    assert not by_name["c1"].factorised and "saves nothing" in by_name["c1"].reason
    assert "c1_lowrank" not in [layer.name for layer in small.layers]
    assert by_name["d1"].factorised and by_name["d1"].rank == 12
    assert "c1" in plan.summary() and json.loads(json.dumps(plan.to_dict()))["layers"][0]["name"] == "c1"


def test_lowrank_param_ratio_meets_whole_model_target():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)), keras.layers.Dense(300, activation="relu"), keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ])
    small = decompose(model, param_ratio=0.3)
    assert small.count_params() <= 0.3 * model.count_params()
    plan = plan_decomposition(model, param_ratio=0.3)
    assert plan.params_after == small.count_params()
    assert [layer.factorised for layer in plan.layers][-1] is False  # the 100x10 head keeps full rank
    with pytest.raises(ValueError, match="param_ratio=0.005 is out of reach"):
        decompose(model, param_ratio=0.005)


def test_lowrank_default_rule_is_energy_0_9():
    model = _low_rank_model("keras", true_rank=8)
    assert plan_decomposition(model).rule == {"energy": 0.9}


def test_lowrank_include_exclude_rules():
    model = _low_rank_model("keras")
    plan = plan_decomposition(model, rank=2, include="re:d.*")
    assert [layer.name for layer in plan.layers] == ["d1"]
    plan = plan_decomposition(model, rank=2, include=lambda layer: layer.name.startswith("c"), exclude=["c2"])
    assert [layer.name for layer in plan.layers] == ["c1"]
    with pytest.raises(ValueError, match="include rule 'dense_9' matched no layer"):
        decompose(model, include="dense_9")
    with pytest.raises(ValueError, match=r"exclude rule 're:zz.\*' matched no layer"):
        decompose(model, exclude=["re:zz.*"])
    with pytest.raises(TypeError, match="must be layer names"):
        decompose(model, include=[3])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"rank": 2, "energy": 0.5}, "Pass one of rank, energy or param_ratio"), ({"rank": 0}, "rank must be a positive"),
     ({"energy": 0.0}, r"energy must be in \(0, 1\]"), ({"param_ratio": 1.0}, r"param_ratio must be in \(0, 1\)")],
    ids=["two-rules", "rank-0", "energy-0", "ratio-1"],
)
def test_lowrank_bad_rules_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decompose(_low_rank_model("keras"), **kwargs)


def test_lowrank_rejects_non_models_and_skips_grouped_conv():
    import keras

    with pytest.raises(TypeError, match="Expected a Keras model"):
        decompose(np.zeros((2, 2)))
    model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(8, 3, groups=2, name="g")])
    plan = plan_decomposition(model, rank=1)
    assert plan.layers[0].reason == "grouped convolution (groups > 1)"
    assert [layer.name for layer in decompose(model, rank=1).layers] == ["g"]


def test_lowrank_shared_layer_converts_fits_and_round_trips(tmp_path):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((20,))
    shared = keras.layers.Dense(20, activation="relu", name="shared")
    outputs = keras.layers.Dense(3, name="head")(keras.layers.Add()([shared(inputs), shared(shared(inputs))]))
    model = keras.Model(inputs, outputs)
    small = decompose(model, rank=4, include="shared")
    x = np.random.default_rng(0).normal(size=(16, 20)).astype("float32")
    assert small.predict(x, verbose=0).shape == (16, 3)
    flat = tf.lite.TFLiteConverter.from_keras_model(small).convert()
    assert flat[4:8] == b"TFL3"
    small.compile("adam", "mse")
    before = small.get_layer("shared_lowrank").get_weights()[0].copy()
    small.fit(x, np.zeros((16, 3)), epochs=1, verbose=0)
    assert not np.array_equal(before, small.get_layer("shared_lowrank").get_weights()[0])
    path = str(tmp_path / "small.keras")
    small.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-6)


def test_cli_decompose_reports_json(tmp_path):
    import keras

    from tfopt import cli

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((64, 32)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int64")
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(4)])
    model_path, data_path = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    model.save(model_path)
    np.savez(data_path, x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    out, report = str(tmp_path / "small.keras"), str(tmp_path / "r.json")
    assert cli.main(["decompose", model_path, f"--data={data_path}", f"--output={out}", f"--json={report}", "--rank=4",
                     "--epochs=1"]) == 0
    payload = json.loads(open(report).read())
    assert payload["params_after"] < payload["params_before"]
    assert {"accuracy_before", "accuracy_after", "accuracy_decomposed"} <= set(payload)
    assert [layer["rank"] for layer in payload["layers"] if layer["factorised"]] == [4]
    assert os.path.isfile(payload["paths"]["output"]) and payload["paths"]["json"] == os.path.abspath(report)


# ------------------------------------------------------------------ per-layer rules (what a search sets)


def _mlp3():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(48, activation="relu", name="fc1"),
                             keras.layers.Dense(32, activation="relu", name="fc2"), keras.layers.Dense(10, name="head")])


def test_lowrank_rank_for_param_ratio():
    from tfopt.compress.lowrank import rank_for_param_ratio

    assert rank_for_param_ratio(784, 300, 0.25) == 54
    assert rank_for_param_ratio(10, 10, 0.01) == 1  # never below rank 1


@pytest.mark.parametrize(
    "rule, expected",
    [({"param_ratio": {"fc1": 0.25, "fc2": 0.5}}, {"fc1": 6, "fc2": 9}),
     ({"rank": {"fc1": 4}}, {"fc1": 4}),
     ({"energy": {"fc2": 1.0}}, {"fc2": 32})],
    ids=["param_ratio", "rank", "energy"],
)
def test_lowrank_per_layer_rules(rule, expected):
    model = _mlp3()
    plan = plan_decomposition(model, **rule)
    ranks = {layer.name: layer.rank for layer in plan.layers}
    assert ranks == expected  # only the named layers are considered
    small = decompose(model, **rule)
    for name, rank in expected.items():
        if rank <= break_even_rank(*((64, 48) if name == "fc1" else (48, 32))):
            assert small.get_layer(f"{name}_lowrank").units == rank


def test_lowrank_per_layer_rule_errors():
    model = _mlp3()
    with pytest.raises(ValueError, match=r"not top-level Dense / Conv2D layers .*\['nope'\]"):
        plan_decomposition(model, param_ratio={"nope": 0.5})
    with pytest.raises(ValueError, match=r"param_ratio must be in \(0, 1\). Received: param_ratio\['fc1'\]=1.5"):
        plan_decomposition(model, param_ratio={"fc1": 1.5})
    with pytest.raises(ValueError, match="empty dict"):
        plan_decomposition(model, rank={})
