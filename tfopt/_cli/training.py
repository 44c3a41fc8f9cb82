"""What the model-to-model commands (prune, cluster, decompose, distill, qat) share: checked setup, progress, accuracy, loss.

Their work runs in a supervised child process (`tfopt._cli.supervise`); the
`supervise.stage(...)` calls here name what the child was doing if it dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import flags

from tfopt._cli import checks, common, supervise
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
    include, exclude, data = check_call(args, fv, command, output_suffixes=output_suffixes)
    supervise.stage("loading the model")
    model = common.load_keras(args[0], unsafe=fv.unsafe)
    allow_code_copies(model, fv)
    supervise.stage("checking the data against the model", model=model)
    checks.check_model_data(model, data, fv.data)
    keras_of(model).utils.set_random_seed(fv.seed)
    return TrainingRun(model, *(np.asarray(data[k]) for k in checks.DATA_KEYS), epochs=fv.epochs,
                       batch_size=fv.batch_size, include=include, exclude=exclude)


def check_call(args: list[str], fv: flags.FlagValues, command: str, *,
               output_suffixes: tuple[str, ...] = (".keras", ".h5")):
    """The checks of `MODEL --data --output [--json]` that need no TensorFlow; returns (include, exclude, data).

    Arguments, flags, paths, the model file's kind and the data file (numbers, finite,
    labels) without the model; `training_run` adds the checks against the model.
    """
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
    verbosity(fv)  # --verbose with --quiet is refused before any work
    common.check_model_file(args[0], (".keras", ".h5", ".hdf5"))
    data = checks.load_npz(fv.data)
    check_data(data, fv.data)
    return include, exclude, data


def check_data(data, source: str) -> None:
    """The (x, y) pairs of a data file, checked without a model (numbers, finite, one label per example)."""
    for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
        checks.check_xy(np.asarray(data[x_key]), np.asarray(data[y_key]), x_name=x_key, y_name=y_key, source=source)


def define_progress_flags(fv: flags.FlagValues) -> None:
    """--verbose / --quiet: how much of Keras' training progress a command prints (one line per epoch by default)."""
    flags.DEFINE_boolean("verbose", False, "Show Keras' progress bar during training (default: one line per epoch).",
                         flag_values=fv)
    flags.DEFINE_boolean("quiet", False, "Print no training progress, only the final report.", flag_values=fv)


def verbosity(fv: flags.FlagValues) -> int:
    """Keras' `fit(verbose=...)` for the command's flags: 2 (one line per epoch), 1 with --verbose, 0 with --quiet."""
    if "verbose" not in fv:
        return 2
    if fv.verbose and fv.quiet:
        raise CLIError("pass --verbose or --quiet, not both.")
    return 1 if fv.verbose else 0 if fv.quiet else 2


def fit(model, x, y, fv: flags.FlagValues, *, epochs: int, batch_size: int, what: str = "fine-tuning") -> None:
    """`model.fit` with the command's progress setting, recorded as the running stage for the supervisor."""
    supervise.stage(f"{what} (fit)", model=model)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbosity(fv))
    supervise.stage(f"{what} finished", model=model)


# What the TFLite converter prints from C++ on every conversion, even with TF_CPP_MIN_LOG_LEVEL=2.
CONVERTER_CHATTER = re.compile(
    r"^(fully_quantize: \d+, inference_type: .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*)$")


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Keeps the converter's C++ chatter off the command's output; every other line is passed on.

    File descriptors 1 and 2 go to temporary files for the block; their lines are
    written back afterwards (also when the block raises), except `CONVERTER_CHATTER`.
    """
    streams = (sys.stdout, sys.stderr)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = []
        for stream, fd, capture in zip(streams, (1, 2), (out, err)):
            stream.flush()
            saved.append(os.dup(fd))
            os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            for stream, fd, old, capture in zip(streams, (1, 2), saved, (out, err)):
                stream.flush()
                os.dup2(old, fd)
                os.close(old)
                capture.seek(0)
                text = capture.read().decode("utf-8", errors="replace")
                kept = [line for line in text.splitlines() if not CONVERTER_CHATTER.match(line)]
                if kept:
                    stream.write("\n".join(kept) + "\n")
                    stream.flush()


def allow_code_copies(model, fv: flags.FlagValues) -> None:
    """With --unsafe, lets Keras 3 copy the Lambda layers the command just loaded (tfopt works on copies).

    The user already allowed the file's code to run; without this, the copy made by
    every transform is refused by Keras' safe mode. Only in the supervised child,
    a process that runs this one command, so the global switch changes nothing else.
    """
    if fv.unsafe and supervise.in_child() and keras_of(model).__name__ == "keras":
        keras_of(model).config.enable_unsafe_deserialization()


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
    paths = {"output": os.path.abspath(fv.output)}
    if fv.json and fv.json != common.STDOUT:
        paths["json"] = os.path.abspath(fv.json)
    return paths
