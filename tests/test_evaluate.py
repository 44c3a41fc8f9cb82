"""tfopt.evaluate and its metrics: one path for Keras and LiteRT, pluggable metrics, quantized I/O, bad data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfopt.errors import InvalidArgumentError, InvalidTypeError
from tfopt.export.calibration import calibration_data
from tfopt.export.convert import convert
from tfopt.measure import metrics
from tfopt.measure.benchmark import benchmark, evaluate_tflite
from tfopt.measure.evaluate import EvaluationResult, evaluate


@pytest.fixture(scope="module")
def demo_cnn():
    """The demo's CNN trained briefly on scikit-learn's real 8x8 digits, with the data."""
    from tfopt.datasets import load_dataset
    from tfopt.demo import train_cnn

    data = load_dataset("digits")
    model, accuracy = train_cnn(data, epochs=3, seed=0)
    return model, accuracy, data


# --- metrics: plain numpy ------------------------------------------------------------------------


def test_metrics_match_hand_and_sklearn_values():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    scores = rng.random((200, 6))
    labels = rng.integers(0, 6, 200)
    assert metrics.top_k_accuracy(labels, scores) == pytest.approx(np.mean(scores.argmax(-1) == labels))
    top3 = np.argsort(-scores, -1)[:, :3]
    assert metrics.top_k_accuracy(labels, scores, k=3) == pytest.approx(np.mean((top3 == labels[:, None]).any(-1)))
    assert metrics.top_k_accuracy(labels, scores, k=6) == 1.0
    assert metrics.f1_macro(labels, scores) == pytest.approx(f1_score(labels, scores.argmax(-1), average="macro"))
    assert metrics.top_k_accuracy(np.eye(6)[labels], scores) == metrics.top_k_accuracy(labels, scores)  # one-hot
    target, pred = rng.random((50, 3)), rng.random((50, 3))
    assert metrics.mean_absolute_error(target, pred) == pytest.approx(np.abs(target - pred).mean())
    assert metrics.mean_squared_error(target, pred) == pytest.approx(((target - pred) ** 2).mean())


@pytest.mark.parametrize(
    "name, higher",
    [("top1", True), ("top5", True), ("TOP-3", True), ("mae", False), ("mse", False), ("f1", True)],
)
def test_get_metric_names_and_direction(name, higher):
    metric = metrics.get_metric(name)
    assert metric.higher_is_better is higher and metric.builtin


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: metrics.get_metric("auc"), InvalidArgumentError, "unknown metric 'auc'"),
        (lambda: metrics.get_metric(lambda t, p: 0.0), InvalidArgumentError, "higher_is_better=True"),
        (lambda: metrics.get_metric("mae", higher_is_better=True), InvalidArgumentError, "lower-is-better"),
        (lambda: metrics.get_metric(3), InvalidTypeError, "name or a callable"),
        (lambda: metrics.top_k_accuracy([0, 7], np.ones((2, 4))), InvalidArgumentError, r"in \[0, 4\).*\[7\]"),
        (lambda: metrics.top_k_accuracy([0.5, 1], np.ones((2, 4))), InvalidArgumentError, "integer class labels"),
        (lambda: metrics.top_k_accuracy([0, 1], np.ones((2, 1))), InvalidArgumentError, "single value"),
        (lambda: metrics.top_k_accuracy([0, 1, 1], np.ones((2, 4))), InvalidArgumentError, "3 labels for 2"),
        (lambda: metrics.mean_absolute_error([1.0, 2.0], [1.0]), InvalidArgumentError, "value by value"),
    ],
    ids=["unknown", "callable-direction", "wrong-direction", "type", "out-of-range", "float-labels", "one-value",
         "lengths", "regression-shapes"],
)
def test_metric_errors_name_what_was_received(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- evaluate: Keras and LiteRT through one path -------------------------------------------------


def test_evaluate_demo_cnn_matches_benchmark_and_keras(demo_cnn):
    model, keras_accuracy, data = demo_cnn
    tflite = convert(model)
    on_keras = evaluate(model, (data.x_test, data.y_test))
    on_litert = evaluate(tflite, (data.x_test, data.y_test))
    bench = benchmark(tflite, data=(data.x_test, data.y_test), num_runs=5)
    assert on_keras.value == pytest.approx(keras_accuracy)
    assert on_litert.value == bench.accuracy
    assert abs(on_litert.value - on_keras.value) <= 1 / len(data.y_test)
    assert on_litert.num_examples == bench.num_examples == len(data.y_test)
    assert on_litert.runtime == "LiteRT" and on_keras.runtime == "keras3"
    with pytest.warns(DeprecationWarning, match="tfopt.evaluate"):
        assert evaluate_tflite(tflite, data.x_test, data.y_test) == on_litert.value


def test_evaluate_int8_io_scores_like_float_io(demo_cnn):
    model, _, data = demo_cnn
    calib = calibration_data(data.x_train, model=model, num_samples=100)
    float_io = convert(model, mode="int8", calibration=calib)
    int8_io = convert(model, mode="int8", calibration=calib, input_type="int8", output_type="int8")
    a = evaluate(float_io, (data.x_test, data.y_test))
    b = evaluate(int8_io, (data.x_test, data.y_test))
    assert abs(a.value - b.value) <= 2 / len(data.y_test), (a.value, b.value)
    assert evaluate(int8_io, (data.x_test, data.y_test), metric="top3").value >= b.value


def test_evaluate_callable_metric_on_two_output_model():
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Flatten()(image)
    h = keras.layers.Dense(16, activation="relu")(h)
    classes = keras.layers.Dense(4, name="classes")(h)
    box = keras.layers.Dense(2, name="box")(h)  # Keras order: classes, box; sorted: box, classes
    model = keras.Model(image, [classes, box])
    tflite = convert(model)
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8, 1)).astype("float32")
    labels, boxes = rng.integers(0, 4, 40), rng.random((40, 2)).astype("float32")
    seen = []

    def detection_score(y_true, y_pred):
        seen.append({k: v.shape for k, v in y_pred.items()})
        return metrics.top_k_accuracy(y_true["classes"], y_pred["classes"]) - metrics.mean_absolute_error(
            y_true["box"], y_pred["box"]
        )

    y = {"classes": labels, "box": boxes}
    on_keras = evaluate(model, (x, y), metric=detection_score, higher_is_better=True)
    on_litert = evaluate(tflite, (x, y), metric=detection_score, higher_is_better=True)
    assert seen == [{"classes": (40, 4), "box": (40, 2)}] * 2
    keras_classes, keras_boxes = model.predict(x, verbose=0)
    expected = np.mean(keras_classes.argmax(-1) == labels) - np.abs(keras_boxes - boxes).mean()
    assert on_keras.value == pytest.approx(expected, abs=1e-6)
    assert on_litert.value == pytest.approx(on_keras.value, abs=1e-4)
    assert on_keras.metric == "detection_score" and on_keras.higher_is_better

    def as_lists(y_true, y_pred):
        return metrics.top_k_accuracy(y_true[0], y_pred[0]) - metrics.mean_absolute_error(y_true[1], y_pred[1])

    keras_list = evaluate(model, (x, [labels, boxes]), metric=as_lists, higher_is_better=True)  # Keras order
    tflite_list = evaluate(tflite, (x, [boxes, labels]), metric=lambda t, p: as_lists(t[::-1], p[::-1]),
                           higher_is_better=True)  # the .tflite's signature order: box, classes
    assert keras_list.value == pytest.approx(on_keras.value) and tflite_list.value == pytest.approx(on_litert.value)
    assert "['box', 'classes']" in tflite_list.notes[-1]
    builtin = evaluate(model, (x, y), metric="top1")
    assert builtin.value == pytest.approx(np.mean(keras_classes.argmax(-1) == labels))
    assert "'classes'" in builtin.notes[0]


def test_evaluate_multi_input_list_and_dict(two_input_model):
    rng = np.random.default_rng(0)
    image, meta = rng.random((30, 8, 8, 1)).astype("float32"), rng.random((30, 3)).astype("float32")
    y = rng.integers(0, 5, 30)
    tflite = convert(two_input_model)
    values = {
        evaluate(two_input_model, ([image, meta], y), metric="top2").value,
        evaluate(tflite, ([image, meta], y), metric="top2").value,
        evaluate(tflite, ({"meta": meta, "image": image}, y), metric="top2").value,
    }
    assert len(values) == 1


def test_evaluate_dynamic_batch_tflite_in_batches_equals_one_by_one():
    import tensorflow as tf

    kernel = tf.constant(np.random.default_rng(0).normal(size=(12, 5)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 12], tf.float32)])
    def regress(x):
        return tf.matmul(x, kernel)

    content = tf.lite.TFLiteConverter.from_concrete_functions([regress.get_concrete_function()], regress).convert()
    rng = np.random.default_rng(1)
    x, y = rng.random((37, 12)).astype("float32"), rng.random((37, 5)).astype("float32")
    one = evaluate(content, (x, y), metric="mse", batch_size=1)
    batched = evaluate(content, (x, y), metric="mse", batch_size=8)
    assert one.value == pytest.approx(batched.value, rel=1e-6)
    assert one.value == pytest.approx(float(np.mean((x @ kernel.numpy() - y) ** 2)), rel=1e-5)
    assert not one.higher_is_better

    @tf.function(input_signature=[tf.TensorSpec([4, 12], tf.float32)])
    def regress_by_four(x):
        return tf.matmul(x, kernel)

    fixed = tf.lite.TFLiteConverter.from_concrete_functions(
        [regress_by_four.get_concrete_function()], regress_by_four
    ).convert()
    assert evaluate(fixed, (x, y), metric="mse").value == pytest.approx(one.value, rel=1e-6)  # 37 = 9 x 4 + 1 padded


def test_evaluate_tf_keras_model():
    from tfopt._legacy import tf_keras_module

    k = tf_keras_module()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.InputLayer((4,)), k.layers.Dense(3)])
    x = np.random.default_rng(0).random((20, 4)).astype("float32")
    y = model.predict(x, verbose=0).argmax(-1)
    result = evaluate(model, (x, y))
    assert result.value == 1.0 and result.runtime == "tf_keras"


def test_evaluation_result_summary_dict_and_direction():
    good = EvaluationResult(0.25, "mae", False, 10, "m", "LiteRT")
    assert good.is_better_than(0.5) and not good.is_better_than(good)
    assert "mae: 0.2500 (lower is better) on 10 examples" in good.summary()
    nan = EvaluationResult(math.nan, "mse", False, 3, "m", "keras3", ("x",))
    assert nan.to_dict()["value"] is None and nan.to_dict()["notes"] == ["x"]


@pytest.mark.parametrize(
    "data, kwargs, error, match",
    [
        (np.zeros((4, 8, 8, 1)), {}, InvalidArgumentError, r"labelled data as a tuple \(x, y\)"),
        ((np.zeros((4, 8, 8, 1)), np.zeros(5)), {}, InvalidArgumentError, "4 examples but y holds 5"),
        ((np.full((4, 8, 8, 1), np.nan), np.zeros(4)), {}, InvalidArgumentError, "NaN or infinite"),
        ((np.zeros((0, 8, 8, 1)), np.zeros(0)), {}, InvalidArgumentError, "non-zero number"),
        ((np.array([["a"]]), np.zeros(1)), {}, InvalidTypeError, "numeric"),
        ((np.zeros((4, 8, 8, 1)), np.array([0, 1, 2, 9])), {}, InvalidArgumentError, r"\[9\]"),
        ((np.zeros((4, 8, 8, 1)), np.zeros(4)), {"batch_size": 0}, InvalidArgumentError, "batch_size must be"),
        ((np.zeros((4, 8, 8, 1)), np.zeros(4)), {"metric": "auc"}, InvalidArgumentError, "unknown metric"),
    ],
    ids=["no-labels", "lengths", "nan", "empty", "strings", "label-range", "batch-size", "metric"],
)
def test_evaluate_bad_input_is_one_clear_error(tiny_cnn, data, kwargs, error, match):
    with pytest.raises(error, match=match):
        evaluate(tiny_cnn, data, **kwargs)


def test_evaluate_rejects_other_objects_and_wrong_shapes(tiny_cnn):
    from tfopt.errors import BenchmarkError

    with pytest.raises(InvalidTypeError, match="Keras model .* or a .tflite"):
        evaluate(object(), (np.zeros((2, 4)), np.zeros(2)))
    with pytest.raises(BenchmarkError, match=r"takes \[8, 8, 1\] per example"):
        evaluate(convert(tiny_cnn), (np.zeros((2, 5, 5, 1), "float32"), np.zeros(2)))
