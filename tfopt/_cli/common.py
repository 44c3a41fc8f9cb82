"""Flags shared by several subcommands, and small helpers for command modules.

A command module defines `NAME`, `HELP`, its own flags (names unique across
modules) and `main(args: list[str]) -> int`, where `args` are the positional
arguments after the command name. Raise `CLIError` (or ValueError / TypeError /
FileNotFoundError / ImportError) for bad input: the dispatcher prints the
message and exits non-zero, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from absl import flags

from tfopt._io import atomic_write, save_keras_model, write_json  # noqa: F401 - re-exported for commands

FLAGS = flags.FLAGS

flags.DEFINE_string("output", None, "Output file or folder.")
flags.DEFINE_string("data", None, "An .npz file with x_train, y_train, x_test, y_test.")
flags.DEFINE_string("json", None, "Also write the result as JSON to this path.")
flags.DEFINE_string(
    "mode", None, "convert: float32 (default), float16, dynamic, int8, int16x8; quantize: int8 (default), 16x8, int4."
)
flags.DEFINE_list("threads", ["1"], "Interpreter threads; `tfopt bench` sweeps a list, e.g. --threads 1,2.")
flags.DEFINE_integer("epochs", None, "Training / fine-tuning epochs.")
flags.DEFINE_integer("batch_size", None, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_list("include", None, "Layer names (or re:<regex>) to include.")
flags.DEFINE_list("exclude", None, "Layer names (or re:<regex>) to exclude.")


class CLIError(Exception):
    """A user error in a CLI call: printed as `tfopt <cmd>: error: <message>`."""


DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str, *, required: tuple[str, ...] = DATA_KEYS) -> dict[str, np.ndarray]:
    """Loads a data file (.npz) and checks it holds the required arrays."""
    if not path:
        raise CLIError("No data file given: pass --data DATA.npz (with x_train, y_train, x_test, y_test).")
    if not os.path.isfile(path):
        raise CLIError(f"Data file not found: {path!r}. Pass an existing .npz file.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise CLIError(f"Could not read {path!r} as an .npz file: {err}") from err
    missing = [key for key in required if key not in data]
    if missing:
        raise CLIError(
            f"{path!r} lacks {missing}; it holds {sorted(data)}. Save it with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    return data


def labels_of(y: np.ndarray) -> np.ndarray:
    """Class indices from integer labels or one-hot rows."""
    return np.argmax(y, axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1)


def scores_of(model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Model outputs, computed eagerly in batches (no predict() retracing across models)."""
    return np.concatenate([np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)])


def keras_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a Keras model (either flavour) on labelled data."""
    return float(np.mean(np.argmax(scores_of(model, x), axis=-1) == labels_of(y)))


def classification_loss(keras, model, x_sample: np.ndarray, y: np.ndarray):
    """Cross-entropy that matches the labels (one-hot or sparse) and the outputs (probabilities or logits)."""
    outputs = scores_of(model, x_sample)
    probabilities = bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))
    if y.ndim > 1 and y.shape[-1] > 1:
        return keras.losses.CategoricalCrossentropy(from_logits=not probabilities)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)


def save_model(model, path: str) -> str:
    """Saves a Keras model to .keras / .h5 atomically; returns the path."""
    if not path or not path.endswith((".keras", ".h5")):
        raise CLIError(f"--output must end in .keras (or .h5). Received: {path!r}.")
    return save_keras_model(model, path)


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What a model-to-model command needs: the loaded model, the data, epochs and batch size."""

    model: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    epochs: int
    batch_size: int


def training_run(args: list[str], command: str, *, default_epochs: int, default_batch_size: int = 64,
                 min_epochs: int = 0) -> TrainingRun:
    """Checks `MODEL --data --output` of a training command, loads the model and data, seeds Keras."""
    from tfopt import _keras

    if len(args) != 1:
        raise CLIError(f"{command} takes one MODEL path (.keras / .h5). Received: {args!r}.")
    if not FLAGS.output or not FLAGS.output.endswith((".keras", ".h5")):
        raise CLIError(f"pass --output OUT.keras (or .h5). Received: --output={FLAGS.output!r}.")
    data = load_npz(FLAGS.data)
    epochs = FLAGS.epochs if FLAGS.epochs is not None else default_epochs
    if epochs < min_epochs:
        raise CLIError(f"--epochs must be >= {min_epochs} for {command}. Received: {epochs}.")
    model = _keras.load_model(args[0])
    _keras.keras_of(model).utils.set_random_seed(FLAGS.seed)
    return TrainingRun(model, *(data[k] for k in DATA_KEYS), epochs=epochs,
                       batch_size=FLAGS.batch_size or default_batch_size)
