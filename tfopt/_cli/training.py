"""What the model-to-model commands (prune, cluster, decompose, qat) share: checked setup, accuracy, loss."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from absl import flags

from tfopt._cli import checks, common
from tfopt._cli.common import CLIError


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """A checked `MODEL --data --output` call: the loaded model, the data and the parsed options."""

    model: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    epochs: int
    batch_size: int
    include: list[str] | None
    exclude: list[str] | None


def training_run(args: list[str], fv: flags.FlagValues, command: str, *,
                 output_suffixes: tuple[str, ...] = (".keras", ".h5")) -> TrainingRun:
    """Checks `MODEL --data --output [--json]`, paths and data against the model; loads both; seeds Keras."""
    if len(args) != 1:
        raise CLIError(f"{command} takes one MODEL path (.keras / .h5). Received: {args!r}. "
                       f"Usage: tfopt {command} MODEL --data DATA.npz --output OUT{output_suffixes[0]}")
    if not fv.output or not fv.output.endswith(output_suffixes):
        raise CLIError(f"pass --output OUT{output_suffixes[0]}"
                       + (" (or .h5)" if ".h5" in output_suffixes else "") + f". Received: --output={fv.output!r}.")
    checks.check_paths(inputs={"MODEL": args[0], "--data": fv.data},
                       outputs={"--output": fv.output, "--json": fv.json})
    include = common.layer_rule(fv["include"].value, "include") if "include" in fv else None
    exclude = common.layer_rule(fv["exclude"].value, "exclude") if "exclude" in fv else None
    common.check_model_file(args[0], (".keras", ".h5", ".hdf5"))
    data = checks.load_npz(fv.data)
    model = common.load_keras(args[0], unsafe=fv.unsafe)
    checks.check_model_data(model, data, fv.data)
    keras_of(model).utils.set_random_seed(fv.seed)
    return TrainingRun(model, *(np.asarray(data[k]) for k in checks.DATA_KEYS), epochs=fv.epochs,
                       batch_size=fv.batch_size, include=include, exclude=exclude)


def keras_of(model):
    """The Keras module (keras or tf_keras) that built `model`."""
    from tfopt import _keras

    return _keras.keras_of(model)


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


def report_paths(fv: flags.FlagValues) -> dict[str, str]:
    """The `paths` entry of a training command's JSON: absolute --output (and --json)."""
    import os

    paths = {"output": os.path.abspath(fv.output)}
    if fv.json:
        paths["json"] = os.path.abspath(fv.json)
    return paths
