"""tfopt.apply runs recipes; the verbs are apply with one config; strip and summary dispatch by wrapper."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tfopt


def _mlp(seed: int = 0, inputs: int = 16, classes: int = 4):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(64, activation="relu", name="a"),
            keras.layers.Dense(64, activation="relu", name="b"),
            keras.layers.Dense(classes, name="out"),
        ]
    )


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:1400], y[:1400].astype("int64")), (x[1400:], y[1400:].astype("int64"))


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _unchanged(model, before):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_apply_matches_the_verbs():
    model = _mlp()
    before = _weights(model)
    x = np.random.default_rng(0).random((8, 16), dtype=np.float32)
    low = tfopt.apply(model, tfopt.LowRankConfig(rank=4, include=["a", "b"]))
    direct = tfopt.decompose(model, rank=4, include=["a", "b"])
    np.testing.assert_allclose(np.asarray(low(x)), np.asarray(direct(x)), atol=1e-6)
    via_apply = tfopt.apply(model, tfopt.ChannelPruneConfig(ratio=0.5))
    via_verb = tfopt.prune_channels(model, ratio=0.5)
    assert type(via_apply) is type(via_verb)  # the ChannelPruneResult, not only its model
    assert via_apply.model.count_params() == via_verb.model.count_params() < model.count_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = tfopt.apply(model, tfopt.PruneConfig(target_sparsity=0.5, include=["a"]))
    assert [layer.name for layer in tfopt.summary(pruned).layers] == ["a"]
    _unchanged(model, before)


def test_apply_accepts_to_dict_output_and_replays_it():
    model = _mlp()
    x = np.random.default_rng(1).random((8, 16), dtype=np.float32)
    recipe = [tfopt.LowRankConfig(rank=3, include=["a"])]
    first = tfopt.apply(model, *recipe)
    replayed = tfopt.apply(model, *[c.to_dict() for c in recipe])
    np.testing.assert_allclose(np.asarray(first(x)), np.asarray(replayed(x)), atol=1e-6)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: tfopt.apply(m), ValueError, "at least one config"),
        (lambda m: tfopt.apply(m, "prune"), TypeError, "takes tfopt configs"),
        (lambda m: tfopt.apply(m, tfopt.PTQConfig(), tfopt.FineTuneConfig()), ValueError, "must be the last step"),
        (lambda m: tfopt.apply(m, tfopt.FineTuneConfig()), ValueError, "needs data"),
        (lambda m: tfopt.apply(m, tfopt.FineTuneConfig(), data=42), TypeError, "data must be"),
        (lambda m: tfopt.apply(m, tfopt.FineTuneConfig(), data="missing.npz"), FileNotFoundError, "missing.npz"),
        (lambda m: tfopt.apply(m, tfopt.FineTuneConfig(), data={"x": 1}), ValueError, "x_train"),
        (lambda m: tfopt.strip(m), ValueError, "nothing to strip"),
        (lambda m: tfopt.summary(m), ValueError, "carries no tfopt wrappers"),
    ],
    ids=["empty", "not-a-config", "ptq-not-last", "no-data", "data-type", "data-path", "data-keys", "strip-plain", "summary-plain"],
)
def test_apply_rejects_bad_recipes_with_tfopt_errors(call, error, match):
    model = _mlp()
    with pytest.raises(error, match=match) as info:
        call(model)
    assert isinstance(info.value, tfopt.TfoptError)


def test_fine_tune_step_never_trains_the_callers_model(digits):
    (x, y), _ = digits
    model = _mlp(inputs=64, classes=10)
    before = _weights(model)
    tuned = tfopt.apply(model, tfopt.FineTuneConfig(epochs=1), data=(x, y))
    assert tuned is not model
    _unchanged(model, before)
    assert any(not np.array_equal(a, b) for a, b in zip(before, tuned.get_weights()))


def test_recipe_prune_finetune_cluster_finetune_int8_on_real_digits(digits):
    (x, y), (x_test, y_test) = digits
    import keras

    model = _mlp(inputs=64, classes=10)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    before = _weights(model)
    dense_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    recipe = [
        tfopt.PruneConfig(target_sparsity=0.75, include=["a", "b"]),
        tfopt.FineTuneConfig(epochs=3),
        tfopt.ClusterConfig(num_clusters=8, preserve_sparsity=True, include=["a", "b"]),
        tfopt.FineTuneConfig(epochs=2),
        tfopt.PTQConfig(mode="int8"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = tfopt.apply(model, *recipe, data=(x, y))
    _unchanged(model, before)
    assert result.inspection.precision_counts.get("int8", 0) == 3
    from tfopt.analyze.sparsity import tflite_sparsity

    kernels = [t for t in tflite_sparsity(result.tflite).tensors if t.sparsity > 0.5]
    assert len(kernels) == 2 and all(t.sparsity >= 0.74 for t in kernels)
    accuracy = tfopt.benchmark(result, data=(x_test, y_test), num_runs=2).accuracy
    assert accuracy >= dense_acc - 0.03, (accuracy, dense_acc)


def test_distill_step_with_data_returns_a_trained_student(digits):
    (x, y), (x_test, y_test) = digits
    import keras

    teacher = _mlp(inputs=64, classes=10)
    teacher.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=10, batch_size=64, verbose=0)
    keras.utils.set_random_seed(3)
    student = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    before = _weights(student)
    trained = tfopt.apply(student, tfopt.DistillConfig(epochs=10, learning_rate=1e-2), data=(x, y), teacher=teacher)
    _unchanged(student, before)
    accuracy = float(np.mean(np.argmax(trained.predict(x_test, verbose=0), -1) == y_test))
    assert accuracy > 0.85, accuracy


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


def test_load_model_reads_wrapped_tf_keras_files(tmp_path):
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(16, name="a"), tf_keras.layers.Dense(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, wrapped in (("pruned", tfopt.prune(model, include=["a"])), ("clustered", tfopt.cluster(model, num_clusters=4, include=["a"]))):
            path = str(tmp_path / f"{name}.h5")
            wrapped.save(path)
            loaded = tfopt.load_model(path)
            assert type(loaded).__module__.startswith("tf_keras"), name
            x = np.random.default_rng(0).random((4, 8), dtype=np.float32)
            np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(wrapped(x)), atol=1e-6)
            assert tfopt.strip(loaded).get_layer("a") is not None
