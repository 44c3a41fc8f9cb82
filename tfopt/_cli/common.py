"""Flags shared by several subcommands, and small helpers for command modules.

A command module defines `NAME`, `HELP`, its own flags (names unique across
modules) and `main(args: list[str]) -> int`, where `args` are the positional
arguments after the command name. Raise `CLIError` (or ValueError / TypeError /
FileNotFoundError / ImportError) for bad input: the dispatcher prints the
message and exits non-zero, never a traceback.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from tfopt._io import atomic_write, write_json  # noqa: F401 - re-exported for commands

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
