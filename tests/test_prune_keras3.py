"""Native Keras 3 pruning under the user's own Keras 3 code, on real digits.

Optimizer objects and callbacks in `fit`, a `tf.GradientTape` loop,
`MirroredStrategy` on two logical CPUs, `.keras` save then load in a fresh
process, int8 .tflite accuracy and sparsity, and the graph maths of
`PruneWrapper` against the numpy contract in `tfopt.compress.schedules`.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_weights_unchanged, weights_snapshot
from tfopt import _keras
from tfopt.compress import schedules
from tfopt.compress.prune import has_wrappers, prune, pruning_summary, strip_pruning
from tfopt.compress.prune_layer import PruneWrapper, m_by_n_mask, magnitude_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_digits_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_cnn",
    )


def load_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype("int64")
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def accuracy(model, x, y):
    from tfopt.measure.evaluate import evaluate

    return evaluate(model, (x, y)).value


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits()
    model = build_digits_cnn()
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(*train, epochs=12, batch_size=32, verbose=0)
    return model, train, test


def _run(code: str, timeout: int = 300) -> str:
    path = os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=timeout, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# ------------------------------------------------------------------ real data, the user's own fit
def test_keras3_80_percent_on_digits_with_optimizer_object_and_callbacks(digits, tmp_path):
    from tfopt.analyze.sparsity import tflite_sparsity
    from tfopt.export.convert import convert

    model, (x_train, y_train), (x_test, y_test) = digits
    snapshot, optimizer = weights_snapshot(model), model.optimizer
    dense = accuracy(model, x_test, y_test)
    steps_per_epoch = int(np.ceil(len(x_train) / 32))
    pruned = prune(model, target_sparsity=0.8, end_step=3 * steps_per_epoch)
    assert _keras.keras_flavor(pruned) == _keras.KERAS3
    assert all(isinstance(layer, PruneWrapper) for layer in pruned.layers if "conv2" in layer.name)
    checkpoint = str(tmp_path / "best.keras")
    pruned.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    history = pruned.fit(
        x_train, y_train, epochs=5, batch_size=32, verbose=0, validation_data=(x_test, y_test),
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=10),
                   keras.callbacks.ModelCheckpoint(checkpoint)],
    )
    assert len(history.history["loss"]) == 5
    summary = pruning_summary(pruned)
    assert [l.name for l in summary.layers] == ["conv2", "hidden"] and summary.finished
    assert all(l.step == 5 * steps_per_epoch for l in summary.layers)
    assert has_wrappers(keras.models.load_model(checkpoint))  # ModelCheckpoint wrote a loadable wrapped model
    stripped = strip_pruning(pruned)
    assert not has_wrappers(stripped) and _keras.keras_flavor(stripped) == _keras.KERAS3
    for name in ("conv2", "hidden"):
        assert schedules.sparsity_of(stripped.get_layer(name).get_weights()[0]) == pytest.approx(0.8, abs=0.005)
    pruned_accuracy = accuracy(stripped, x_test, y_test)
    assert pruned_accuracy >= dense - 0.015, (dense, pruned_accuracy)

    int8 = convert(stripped, mode="int8", calibration=x_train, check_delegation=False)
    int8_accuracy = accuracy(int8.tflite, x_test, y_test)
    assert abs(int8_accuracy - pruned_accuracy) <= 0.015, (pruned_accuracy, int8_accuracy)
    pruned_tensors = [t for t in tflite_sparsity(int8).tensors if t.sparsity >= 0.79]
    assert len(pruned_tensors) == 2 and all(t.dtype == "int8" for t in pruned_tensors)
    assert_weights_unchanged(model, snapshot)
    assert model.compiled and model.optimizer is optimizer  # the caller's compile state is kept


def test_gradient_tape_loop_applies_masks_and_advances_the_step(digits):
    model, (x_train, y_train), (x_test, y_test) = digits
    pruned = prune(model, target_sparsity=0.75, end_step=12, include=["conv2", "hidden"])
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = LOSS(y, pruned(x, training=True))
        gradients = tape.gradient(loss, pruned.trainable_variables)
        optimizer.apply_gradients(zip(gradients, pruned.trainable_variables))
        return gradients

    for start in range(0, 16 * 32, 32):
        gradients = train_step(x_train[start : start + 32], y_train[start : start + 32])
    summary = pruning_summary(pruned)
    assert [l.step for l in summary.layers] == [16, 16]
    assert all(abs(l.sparsity - 0.75) < 0.005 for l in summary.layers)
    wrapper = pruned.get_layer("prune_hidden")
    kernel_gradient = next(g for g, v in zip(gradients, pruned.trainable_variables) if v is wrapper.layer.kernel)
    assert np.all(np.asarray(kernel_gradient)[wrapper.masks[0].numpy() == 0] == 0)  # masked weights get no gradient
    pruned(x_test[:8], training=False)
    assert pruning_summary(pruned).layers[0].step == 16  # inference does not advance the step
    stripped = strip_pruning(pruned)
    np.testing.assert_allclose(pruned.predict(x_test, verbose=0), stripped.predict(x_test, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_reaches_the_same_sparsity():
    out = _run(
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import json, keras, numpy as np, tfopt
        from test_prune_keras3 import LOSS, build_digits_cnn, load_digits
        from tfopt.compress.prune import prune, pruning_summary, strip_pruning
        (x, y), _ = load_digits()

        def run(strategy):
            with strategy.scope():
                pruned = prune(build_digits_cnn(), target_sparsity=0.8, end_step=20)
                pruned.compile(keras.optimizers.Adam(1e-3), LOSS)
            pruned.fit(x[:512], y[:512], epochs=2, batch_size=32, verbose=0)
            plain = strip_pruning(pruned)
            return {"replicas": strategy.num_replicas_in_sync,
                    "steps": [l.step for l in pruning_summary(pruned).layers],
                    "sparsity": [float(np.mean(plain.get_layer(n).get_weights()[0] == 0)) for n in ("conv2", "hidden")]}

        print(json.dumps([run(tf.distribute.get_strategy()), run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]))
        """
    )
    single, mirrored = json.loads(out.strip().splitlines()[-1])
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert single["steps"] == mirrored["steps"] == [32, 32]
    assert single["sparsity"] == mirrored["sparsity"] and min(single["sparsity"]) >= 0.795


@pytest.mark.slow
def test_saved_keras_file_loads_in_a_fresh_process_and_resumes(tmp_path):
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype="float32")
    y = np.random.default_rng(1).integers(0, 10, 64)
    paths = {}
    for name, kwargs in {"unstructured": dict(target_sparsity=0.8, end_step=12), "2:4": dict(m_by_n=(2, 4))}.items():
        pruned = prune(build_digits_cnn(), **kwargs)
        pruned.compile(keras.optimizers.Adam(1e-3), LOSS)
        pruned.fit(x, y, epochs=1, batch_size=8, verbose=0)  # 8 steps: the ramp is not finished
        paths[name] = str(tmp_path / f"{name.replace(':', 'by')}.keras")
        pruned.save(paths[name])
    np.savez(tmp_path / "data.npz", x=x, y=y)
    out = _run(
        f"""
        import json, sys, numpy as np, tfopt, keras
        data = np.load({str(tmp_path / "data.npz")!r})
        result = {{}}
        for name, path in {paths!r}.items():
            model = keras.models.load_model(path)  # no scope, no custom_objects
            from tfopt.compress.prune import pruning_summary, strip_pruning
            from tfopt.compress.schedules import m_by_n_holds
            before = [l.step for l in pruning_summary(model).layers]
            model.fit(data["x"], data["y"], epochs=1, batch_size=8, verbose=0)  # the optimizer came back too
            summary = pruning_summary(model)
            plain = strip_pruning(model)
            kernels = [plain.get_layer(n).get_weights()[0] for n in ("conv2", "hidden")]
            result[name] = {{
                "before": before, "after": [l.step for l in summary.layers],
                "sparsity": [float(np.mean(k == 0)) for k in kernels],
                "two_four": [bool(m_by_n_holds(k, 2, 4)) for k in kernels],
                "plain": sorted({{type(l).__module__.split(".")[0] for l in plain.layers}}),
            }}
        result["legacy_imported"] = sorted(m for m in ("tf_keras", "tensorflow_model_optimization") if m in sys.modules)
        print(json.dumps(result))
        """
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["unstructured"]["before"] == [8, 8] and result["unstructured"]["after"] == [16, 16]
    assert min(result["unstructured"]["sparsity"]) >= 0.795  # resumed and finished the ramp at step 12
    assert result["2:4"]["two_four"] == [True, True] and result["2:4"]["sparsity"] == [0.5, 0.5]
    assert result["unstructured"]["plain"] == ["keras"]
    assert result["legacy_imported"] == []  # the Keras 3 path never loads tf_keras or tfmot


def test_wrapper_config_round_trip_and_masks_saved(tmp_path):
    pruned = prune(build_digits_cnn(), target_sparsity=0.6, schedule="constant", include=["hidden"])
    pruned(np.ones((2, 8, 8, 1), "float32"), training=True)
    wrapper = pruned.get_layer("prune_hidden")
    clone = PruneWrapper.from_config(wrapper.get_config())
    assert clone.get_config() == wrapper.get_config()
    path = str(tmp_path / "constant.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path).get_layer("prune_hidden")
    np.testing.assert_array_equal(loaded.masks[0].numpy(), wrapper.masks[0].numpy())
    assert int(loaded.pruning_step.numpy()) == 1 and loaded.schedule == "constant"


# ------------------------------------------------------------------ graph maths == numpy contract
@pytest.mark.parametrize(
    "kwargs",
    [dict(schedule="polynomial", end_step=21), dict(schedule="polynomial", end_step=40, frequency=8),
     dict(schedule="constant", begin_step=3, frequency=5), dict(schedule="constant", end_step=9, frequency=2)],
    ids=["poly", "poly-f8", "constant-open", "constant-end"],
)
def test_wrapper_schedule_matches_numpy_schedule(kwargs):
    spec = schedules.make_schedule(0.7, **kwargs)
    options = spec.to_dict()
    wrapper = PruneWrapper(keras.layers.Dense(2), schedule=options.pop("kind"), **options)
    for step in range(0, 50):
        assert bool(wrapper._updates_at(tf.constant(step, tf.int64))) == spec.updates_at(step), step
        if spec.updates_at(step):
            assert float(wrapper._sparsity_at(tf.constant(step, tf.int64))) == pytest.approx(spec.sparsity(step))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("shape", [(17,), (3, 3, 6, 4), (64, 10)], ids=str)
def test_graph_magnitude_mask_matches_numpy(shape, sparsity):
    weights = np.round(np.random.default_rng(0).normal(size=shape), 1).astype("float32")  # ties included
    got = np.asarray(magnitude_mask(tf.constant(weights), tf.constant(sparsity, tf.float64)))
    np.testing.assert_array_equal(got, schedules.magnitude_mask(weights, sparsity))


@pytest.mark.parametrize("shape", [(8, 3), (3, 3, 6, 4), (10, 5)], ids=str)
@pytest.mark.parametrize("m, n", [(2, 4), (1, 4), (3, 8)])
def test_graph_m_by_n_mask_matches_numpy(shape, m, n):
    weights = np.round(np.random.default_rng(1).normal(size=shape), 1).astype("float32")
    got = np.asarray(m_by_n_mask(tf.constant(weights), m, n))
    np.testing.assert_array_equal(got, schedules.m_by_n_mask(weights, m, n))
    assert schedules.m_by_n_holds(weights * got, m, n)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"m_by_n": (2, 4), "target_sparsity": {"hidden": 0.5}}, ValueError, "pass a single target_sparsity"),
        ({"m_by_n": [2]}, ValueError, r"m_by_n must be a pair \(m, n\)"),
        ({"frequency": 0}, ValueError, "frequency must be >= 1 or None. Received: frequency=0"),
        ({"begin_step": 10, "end_step": 5}, ValueError, "end_step must be >= begin_step"),
        ({"end_step": 2.5}, ValueError, "end_step must be a non-negative integer or None. Received: end_step=2.5"),
        ({"target_sparsity": "0.8"}, ValueError, r"target_sparsity must be a number in \[0, 1\). Received: "),
    ],
    ids=["m_by_n-dict", "m_by_n-shape", "frequency", "end-before-begin", "end-float", "target-str"],
)
def test_keras3_prune_error_messages(kwargs, error, message):
    with pytest.raises(error, match=message):
        prune(build_digits_cnn(), **kwargs)


def test_prune_rejects_non_keras_objects():
    with pytest.raises(TypeError, match="Expected a Keras model"):
        prune(object())
