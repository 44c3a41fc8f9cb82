"""Tests for tfopt.compress.distill: the loss math, the Distiller under model.fit, and the CLI."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from tfopt.compress.distill import (  # noqa: E402
    Distiller,
    as_logits,
    distill,
    distillation_loss,
    looks_like_probabilities,
    soft_targets,
)


def _np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _np_kd(t, s, temperature):
    p, q = _np_softmax(t / temperature), _np_softmax(s / temperature)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)) * temperature**2)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")
    return x[:1200], y[:1200].astype("int64"), x[1200:], y[1200:].astype("int64")


def _cnn(k, width, *, softmax, name):
    layers = k.layers
    return k.Sequential(
        [
            k.Input((8, 8, 1)),
            layers.Conv2D(width, 3, activation="relu", name="conv"),
            layers.Flatten(name="flat"),
            layers.Dense(10, activation="softmax" if softmax else None, name="head"),
        ],
        name=name,
    )


@pytest.fixture(scope="module")
def teacher(digits):
    keras.utils.set_random_seed(0)
    model = _cnn(keras, 16, softmax=True, name="teacher")
    model.compile("adam", loss="sparse_categorical_crossentropy")
    model.fit(digits[0], digits[1], epochs=3, batch_size=32, verbose=0)
    return model


def _student(k=keras, softmax=False, width=4):
    k.utils.set_random_seed(1)
    return _cnn(k, width, softmax=softmax, name="student")


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ pure math


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0], ids=["T1", "T4", "T10"])
def test_distillation_loss_matches_numpy_kl_times_t_squared(temperature):
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    got = float(distillation_loss(t.astype("float32"), s.astype("float32"), temperature))
    assert got == pytest.approx(_np_kd(t, s, temperature), rel=1e-4)
    assert float(distillation_loss(t.astype("float32"), t.astype("float32"), temperature)) == pytest.approx(0, abs=1e-6)


def test_soft_targets_flatten_with_temperature():
    logits = np.array([[4.0, 1.0, 0.0]], "float32")
    sharp, soft = np.asarray(soft_targets(logits, 1.0)), np.asarray(soft_targets(logits, 8.0))
    np.testing.assert_allclose(sharp.sum(), 1.0, rtol=1e-6)
    assert soft.max() < sharp.max() and soft.min() > sharp.min()


def test_as_logits_of_probabilities_gives_the_same_soft_targets():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], "float32")
    probs = _np_softmax(logits).astype("float32")
    from_probs = np.asarray(soft_targets(as_logits(probs, "probabilities"), 4.0))
    np.testing.assert_allclose(from_probs, np.asarray(soft_targets(logits, 4.0)), atol=1e-6)
    assert as_logits(logits, "logits") is logits


def test_looks_like_probabilities():
    assert looks_like_probabilities(np.array([[0.2, 0.8], [1.0, 0.0]]))
    assert not looks_like_probabilities(np.array([[2.0, -1.0]]))
    assert not looks_like_probabilities(np.array([[0.2, 0.3]]))


# ------------------------------------------------------------------ the Distiller


@pytest.mark.parametrize(
    "student_softmax, declared, expected",
    [(False, "auto", "logits"), (True, "auto", "probabilities"), (True, "probabilities", "probabilities")],
    ids=["auto-logits", "auto-probabilities", "declared"],
)
def test_distill_detects_output_kinds(teacher, student_softmax, declared, expected):
    distiller = distill(_student(softmax=student_softmax), teacher, student_outputs=declared)
    assert distiller.teacher_outputs == "probabilities"
    assert distiller.student_outputs == expected


def test_distill_loss_follows_the_documented_convention(teacher, digits):
    x, y = digits[0][:16], digits[1][:16]
    distiller = distill(_student(), teacher, temperature=3.0, alpha=0.25)
    distiller.compile("adam")
    y_pred = distiller(x, training=True)
    loss = float(distiller.compute_loss(x, y, y_pred, training=True))
    s = np.asarray(y_pred, "float64")
    t = np.log(np.asarray(teacher(x), "float64"))
    hard = float(np.mean(-np.log(_np_softmax(s)[np.arange(16), y])))
    assert loss == pytest.approx(0.25 * hard + 0.75 * _np_kd(t, s, 3.0), rel=1e-4)
    eval_loss = float(distiller.compute_loss(x, y, distiller(x, training=False), training=False))
    assert eval_loss == pytest.approx(hard, rel=1e-4)


def test_distill_alpha_one_is_plain_label_training(teacher, digits):
    x, y = digits[0][:256], digits[1][:256]
    student = _student()
    plain = keras.models.clone_model(student)
    plain.set_weights(student.get_weights())
    keras.utils.set_random_seed(5)
    plain.compile(keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
    keras.utils.set_random_seed(5)
    distiller = distill(student, teacher, alpha=1.0)
    distiller.compile(keras.optimizers.SGD(0.1))
    distiller.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), distiller.student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_distill_trains_a_copy_and_leaves_the_callers_models_alone(teacher, digits):
    student = _student()
    student_before, teacher_before = _weights(student), _weights(teacher)
    distiller = distill(student, teacher)
    distiller.compile("adam", metrics=["accuracy"])
    history = distiller.fit(digits[0], digits[1], epochs=4, batch_size=32, verbose=0)
    assert _same(student_before, student.get_weights()) and _same(teacher_before, teacher.get_weights())
    assert teacher.trainable and distiller.student is not student
    assert _same(teacher_before, distiller.teacher.get_weights())  # frozen copy
    assert not _same(student_before, distiller.student.get_weights())
    assert history.history["loss"][-1] < history.history["loss"][0]
    trained = distiller.student
    assert type(trained) is type(student) and trained.count_params() == student.count_params()
    accuracy = np.mean(np.argmax(trained.predict(digits[2], verbose=0), -1) == digits[3])
    assert accuracy > 0.7  # chance is 0.1


def test_distill_feature_layers_add_a_projection_outside_the_student(teacher, digits):
    student = _student(width=4)
    distiller = distill(student, teacher, feature_layers=[("conv", "conv")], feature_weight=0.5)
    assert len(distiller.projections) == 1 and distiller.projections[0].kernel.shape == (4, 16)
    distiller.compile("adam")
    distiller.fit(digits[0][:256], digits[1][:256], epochs=1, batch_size=64, verbose=0)
    distiller(digits[0][:8], training=True)
    assert len(distiller.losses) == 2  # soft-label loss and feature loss
    assert distiller.student.count_params() == student.count_params()
    assert all("project" not in layer.name for layer in distiller.student.layers)


def test_distill_save_and_load_round_trip(teacher, digits, tmp_path):
    distiller = distill(_student(), teacher, feature_layers=[("conv", "conv")])
    distiller.compile("adam")
    distiller.fit(digits[0][:128], digits[1][:128], epochs=1, batch_size=64, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert isinstance(loaded, Distiller)
    assert (loaded.temperature, loaded.alpha, loaded.feature_layers) == (4.0, 0.1, [("conv", "conv")])
    np.testing.assert_array_equal(loaded.predict(digits[2][:8], verbose=0), distiller.predict(digits[2][:8], verbose=0))
    distiller.student.save(tmp_path / "student.keras")
    plain = keras.models.load_model(tmp_path / "student.keras")
    assert not isinstance(plain, Distiller)


def test_distill_tf_keras_models(digits):
    import tf_keras

    teacher = _cnn(tf_keras, 8, softmax=False, name="teacher")
    student = _student(tf_keras)
    before = _weights(student)
    distiller = distill(student, teacher)
    assert isinstance(distiller, tf_keras.Model) and distiller.teacher_outputs == "logits"
    distiller.compile(tf_keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    history = distiller.fit(digits[0][:256], digits[1][:256], epochs=1, batch_size=64, verbose=0)
    assert "loss" in history.history and "accuracy" in history.history
    assert isinstance(distiller.student, tf_keras.Model) and _same(before, student.get_weights())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"temperature": 0}, ValueError, r"temperature must be a number > 0.*temperature=0"),
        ({"alpha": 1.5}, ValueError, r"alpha is the weight of the hard-label loss.*alpha=1.5"),
        ({"teacher_outputs": "softmax"}, ValueError, r"teacher_outputs must be one of"),
        ({"feature_layers": [("conv",)]}, TypeError, r"feature_layers must be a list of"),
        ({"feature_layers": [("nope", "conv")]}, ValueError, r"teacher layer 'nope'.*Its layers are"),
        ({"feature_layers": [("conv", "flat")]}, ValueError, r"differ in more than the channel"),
    ],
    ids=["temperature", "alpha", "outputs-kind", "pairs", "unknown-layer", "shape"],
)
def test_distill_rejects_bad_options(teacher, kwargs, error, match):
    with pytest.raises(error, match=match):
        distill(_student(), teacher, **kwargs)


def test_distill_rejects_class_mismatch(teacher):
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="teacher has 10 classes but student has 3"):
        distill(other, teacher)


def test_distill_recovers_a_tfmot_pruned_tf_keras_student_from_a_keras3_teacher(teacher, digits):
    """The recovery recipe: the original (Keras 3) model teaches its compressed tfmot/tf_keras copy."""
    import tf_keras

    from tfopt._keras import import_tfmot

    sparsity = import_tfmot().sparsity.keras
    copy = _cnn(tf_keras, 16, softmax=True, name="copy")  # the trained teacher rebuilt in tf_keras
    copy.set_weights(teacher.get_weights())
    pruned = sparsity.prune_low_magnitude(
        copy, pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1)
    )
    distiller = distill(pruned, teacher)
    teacher_trainable = [id(w) for w in teacher.trainable_weights]
    assert not [w for w in distiller.trainable_weights if id(w) in teacher_trainable]
    distiller.compile(tf_keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    distiller.fit(digits[0][:256], digits[1][:256], epochs=2, batch_size=64, verbose=0,
                  callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(distiller.student)
    kernel = stripped.get_layer("conv").get_weights()[0]
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)
    accuracy = np.mean(np.argmax(stripped.predict(digits[2], verbose=0), -1) == digits[3])
    teacher_accuracy = np.mean(np.argmax(teacher.predict(digits[2], verbose=0), -1) == digits[3])
    assert accuracy > teacher_accuracy - 0.05


def test_distill_rejects_subclassed_models(teacher):
    class Tiny(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(NotImplementedError, match="no symbolic outputs"):
        distill(Tiny(), teacher)


def test_cli_distill_writes_student_and_json(teacher, digits, tmp_path):
    from tfopt import cli

    teacher.save(tmp_path / "teacher.keras")
    _student().save(tmp_path / "student.keras")
    data = tmp_path / "data.npz"
    np.savez(data, x_train=digits[0][:256], y_train=digits[1][:256], x_test=digits[2], y_test=digits[3])
    out, report = tmp_path / "out" / "small.keras", tmp_path / "report.json"
    assert cli.main(["distill", str(tmp_path / "teacher.keras"), str(tmp_path / "student.keras"), f"--data={data}",
                     f"--output={out}", f"--json={report}", "--epochs=2"]) == 0
    payload = json.loads(report.read_text())
    assert out.exists() and payload["paths"]["model"] == str(out)
    assert payload["teacher_params"] > payload["student_params"] == keras.models.load_model(out).count_params()
    assert payload["student_accuracy_after"] > payload["student_accuracy_before"]
    assert 0.0 <= payload["teacher_accuracy"] <= 1.0 and payload["epochs"] == 2


def test_cli_distill_needs_two_models(capsys):
    from tfopt import cli

    assert cli.main(["distill", "only_one.keras", "--data", "d.npz", "--output", "s.keras"]) == 2
    assert "TEACHER" in capsys.readouterr().err
