"""Checks a command runs before any long work: paths it writes, data files it reads, data against the model.

Each check raises `CLIError` (a `tfopt.errors.InvalidArgumentError`) or `MissingFileError`
with one line: what was received, what was expected, how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from tfopt._cli.common import CLIError
from tfopt.errors import MissingFileError

DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")

# ----------------------------------------------------------------------------- output paths


def check_paths(*, inputs: Mapping[str, str | None], outputs: Mapping[str, str | None],
                folder_outputs: Iterable[str] = ()) -> None:
    """Refuses outputs that would overwrite an input or each other, and outputs that cannot be written.

    Args:
        inputs: label (e.g. "MODEL", "--data") -> path read by the command; empty entries are skipped.
        outputs: label (e.g. "--output", "--json") -> path the command writes; empty entries, and `-`
            (stdout, for `--json -`), are skipped.
        folder_outputs: labels of outputs that are folders (created when missing).
    """
    from tfopt._cli.common import STDOUT
    from tfopt._io import check_outputs

    check_outputs({label: path for label, path in outputs.items() if path and path != STDOUT},
                  {label: path for label, path in inputs.items() if path}, folders=folder_outputs)


# ----------------------------------------------------------------------------- data files


def load_npz(path: str | None, *, required: tuple[str, ...] = DATA_KEYS, label: str = "--data") -> dict[str, np.ndarray]:
    """Loads a data file (.npz, no pickles) and checks it holds the required arrays."""
    if not path:
        raise CLIError(f"no data file given: pass {label} DATA.npz (with {', '.join(required) or 'x_train or x'}).")
    if not os.path.exists(path):
        raise MissingFileError(f"Data file not found: {path!r} ({label}). Pass an existing .npz file.")
    if os.path.isdir(path):
        raise CLIError(f"{label} {path!r} is a folder; expected an .npz file.")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CLIError(f"{label} {path!r} holds a single array (.npy); expected an .npz with named arrays: "
                           "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
        with loaded:
            data = {key: loaded[key] for key in loaded.files}
    except CLIError:
        raise
    except Exception as err:  # noqa: BLE001 - untrusted bytes: zipfile, numpy's header parser and the pickle
        # refusal raise many types (BadZipFile, ValueError, EOFError, NotImplementedError for an unknown
        # compression, RuntimeError for an encrypted member); each is the same user error, a file we cannot read.
        reason = ("it holds Python objects, which are never unpickled" if "allow_pickle" in str(err)
                  else f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
        raise CLIError(f"could not read {label} {path!r} as an .npz file of numeric arrays ({reason}). Expected a "
                       "file written by np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).") from err
    missing = [key for key in required if key not in data]
    if missing:
        raise CLIError(f"{label} {path!r} lacks {', '.join(missing)}; it holds {', '.join(sorted(data)) or 'nothing'}. "
                       "Save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
    return data


def check_x(x: np.ndarray, name: str, source: str, *, input_shape: tuple | None = None) -> None:
    """Inputs: numbers, at least one example, finite, and shaped like the model's input (None = any size)."""
    from tfopt._data import check_arrays

    check_arrays(x, None, name=f"{source!r} ({name})", input_shape=_model_shape(x, input_shape), task=None)


def check_xy(x: np.ndarray, y: np.ndarray, *, x_name: str, y_name: str, source: str,
             num_classes: int | None = None, input_shape: tuple | None = None) -> None:
    """Inputs as `check_x`; labels: one per example, class indices in [0, num_classes) or one-hot rows."""
    from tfopt._data import check_arrays

    if num_classes is not None and num_classes < 2:
        num_classes = None  # one output unit: a sigmoid or a regressor, no class range to check
    check_arrays(x, y, name=f"{source!r} ({x_name}, {y_name})", num_classes=num_classes,
                 input_shape=_model_shape(x, input_shape), task="classification")


def _model_shape(x: np.ndarray, input_shape: tuple | None) -> tuple | None:
    """The model's input shape in the form `_data.check_arrays` reads without ambiguity for this `x`.

    `check_arrays` takes the shape with or without the batch axis and guesses which
    from `x.ndim`; give the batch axis only where that guess is right.
    """
    if input_shape is None:
        return None
    ndim = np.ndim(x)
    return (None, *input_shape) if ndim in (len(input_shape), len(input_shape) + 1) else tuple(input_shape)


def keras_io(model) -> tuple[tuple | None, int | None]:
    """(input shape without batch, number of output classes) of a single-input, single-output Keras model."""
    try:
        inputs, outputs = list(model.inputs or []), list(model.outputs or [])
    except (AttributeError, ValueError):  # a subclassed model that was never called has neither
        return None, None
    input_shape = tuple(inputs[0].shape)[1:] if len(inputs) == 1 else None
    num_classes = None
    if len(outputs) == 1 and len(outputs[0].shape) >= 2 and outputs[0].shape[-1] is not None:
        num_classes = int(outputs[0].shape[-1])
    return input_shape, num_classes


def check_model_data(model, data: Mapping[str, np.ndarray], source: str, *,
                     pairs: Iterable[tuple[str, str]] = (("x_train", "y_train"), ("x_test", "y_test"))) -> None:
    """Checks (x, y) pairs of a data file against a Keras model's input shape and output size."""
    input_shape, num_classes = keras_io(model)
    for x_key, y_key in pairs:
        check_xy(np.asarray(data[x_key]), np.asarray(data[y_key]), x_name=x_key, y_name=y_key, source=source,
                 num_classes=num_classes, input_shape=input_shape)


def check_tflite(path: str, label: str = "MODEL"):
    """Refuses a missing, empty or malformed .tflite before it is run; returns its inspection."""
    from tfopt.analyze.flatbuffer import inspect_tflite

    if not os.path.exists(path):
        raise MissingFileError(f"{label} {path!r} not found. Pass an existing .tflite file.")
    if os.path.isdir(path):
        raise CLIError(f"{label} {path!r} is a folder; expected a .tflite file.")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise CLIError(f"{label} {path!r} is not a TFLite flatbuffer (no TFL3 identifier"
                       + (", the file is empty" if not head else "") + "); pass a .tflite written by a LiteRT converter.")
    return inspect_tflite(path)


def tflite_num_classes(inspection) -> int | None:
    """Output size of a single-output .tflite (None when it has several outputs)."""
    outputs = inspection.outputs
    if len(outputs) == 1 and len(outputs[0].shape) >= 2:
        return int(outputs[0].shape[-1])
    return None
