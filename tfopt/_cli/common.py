"""Shared pieces of the `tfopt` commands, and the convention every command module follows.

A command is a module in `tfopt._cli` that defines four names:

    NAME = "prune"                                   # the command word: `tfopt prune ...`
    HELP = "Prune a model ..."                       # one line for `tfopt help`

    def define_flags(fv: flags.FlagValues) -> None:
        # The command's flags, on its own FlagValues (never absl's global FLAGS):
        common.define_training_flags(fv, epochs=2, batch_size=32, learning_rate=1e-3)
        flags.DEFINE_float("target_sparsity", 0.8, "...", flag_values=fv)
        common.define_alias(fv, "prune_learning_rate", "learning_rate")   # an old spelling that warns

    def main(args: list[str], fv: flags.FlagValues) -> int:
        # args: the positional arguments; fv: the parsed flags (fv.epochs, fv.output, ...).
        common.check_paths(NAME, inputs=..., outputs=...)  # before any long work
        ...
        return 0

Shared flag groups come from the helpers below (`define_data_flag`, `define_output_flag`,
`define_json_flag`, `define_seed_flag`, `define_unsafe_flag`, `define_layer_flags`,
`define_training_flags`); use them so one concept has one spelling in every command.

The dispatcher (`tfopt/cli.py`) parses a command's arguments against that command's
FlagValues only: an unknown flag, or a flag of another command, exits 2 with the list
of valid flags, and `tfopt NAME --help` lists them. A user mistake is raised as a
`tfopt.errors.TfoptError` (`CLIError` here): the dispatcher prints
`tfopt NAME: error: <one line>` and exits 2. Any other exception is a bug in tfopt and
keeps its traceback (exit 1). Check what the user gave before long work starts:
`check_paths` (outputs never overwrite an input or each other, output locations are
writable) and the data checks in `tfopt._cli.checks`.

`--json -` prints the JSON to stdout: write it with `common.write_json(fv.json, payload)`
(never `tfopt._io.write_json` directly) and the dispatcher does the rest. Error messages
raised by library code may give fix hints as keyword arguments (`input_type='int8'`);
the dispatcher rewrites them as the command's flags (`flag_hints`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping

from absl import flags

from tfopt._data import split_rules  # noqa: F401 - the rules splitter, shared with the library
from tfopt import _io
from tfopt._io import atomic_write, save_keras_model  # noqa: F401 - re-exported for commands
from tfopt.errors import InvalidArgumentError, MissingFileError

# `--json -`: the JSON goes to stdout.
STDOUT = "-"
_json_stream: list = []  # the real stdout while `json_to_stdout` is active


class CLIError(InvalidArgumentError):
    """A user error in a CLI call: printed as `tfopt <command>: error: <message>`, exit status 2."""


def warn(message: str) -> None:
    """Prints one warning line to stderr (deprecations, odd but accepted input)."""
    print(f"tfopt: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- --json (a path, or - for stdout)


def write_json(path: str, payload) -> str:
    """Writes a command's JSON: atomically to `path`, or to stdout when `path` is `-`. Returns `path`."""
    if path != STDOUT:
        return _io.write_json(path, payload)
    stream = json_stdout()
    stream.write(json.dumps(payload, indent=2, default=_io._jsonable) + "\n")
    stream.flush()
    return path


def json_stdout():
    """The stream `--json -` writes to: the real stdout while `json_to_stdout` is active, else `sys.stdout`."""
    return _json_stream[-1] if _json_stream else sys.stdout


@contextlib.contextmanager
def json_to_stdout() -> Iterator[None]:
    """While active, `print` goes to stderr and `write_json(STDOUT, ...)` to the real stdout.

    So `tfopt CMD ... --json - | jq .` reads JSON only, and the command's progress lines stay visible.
    """
    _json_stream.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stream.pop()


def shown_path(path: str | None) -> str:
    """How a written path is named in a command's closing line: `-` reads as `stdout`."""
    return "stdout" if path == STDOUT else str(path)


# ----------------------------------------------------------------------------- fix hints as flags

# A keyword argument in a message: name=value, where value is a quoted string, a list, a literal or `...`.
_VALUE = r"""'[^']*'|"[^"]*"|\[[^\]]*\]|True\b|False\b|None\b|[-+]?\d[\d.e+-]*|\.\.\.|tfopt\.\w+\([^()]*\)"""
_KWARG = re.compile(r"(?<![\w.\-])([a-z_][a-z0-9_]*)=(?:(" + _VALUE + r")|(?=[\s,.;:)]|$))")
_CALL = re.compile(r"tfopt\.([a-z_]+)\(([^()]*)\)")
_WORDS = re.compile(r"""[(\[]('[^']*'|"[^"]*")(?:, ('[^']*'|"[^"]*"))*,?[)\]]""")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_SHAPE = re.compile(r"\((?:None|\d+)(?:, (?:None|\d+))*,?\)")


def _flag_value(name: str, value: str | None, fv: flags.FlagValues) -> str:
    """One keyword argument as the flag that says the same thing."""
    if value and value.startswith("tfopt."):
        value = "..."  # a Python call (tfopt.calibration_data(...)): the flag takes a file instead
    if value in (None, "", "..."):
        return f"--{name} ..." if value == "..." or not fv[name].boolean else f"--{name}"
    if value == "True":
        return f"--{name}"
    if value == "False":
        return f"--no-{name}"
    if value == "None":
        return f"--{name} (not given)"
    if value[0] in "'\"":
        value = value[1:-1]
    elif value[0] == "[":
        value = ",".join(part.strip().strip("'\"") for part in value[1:-1].split(",") if part.strip())
    return f"--{name} {value}"


def _call_as_command(match: re.Match, commands: Mapping[str, flags.FlagValues]) -> str:
    """`tfopt.convert(model, mode='int8')` -> `tfopt convert MODEL --mode int8`, when every keyword is a flag."""
    command = match.group(1).replace("_", "-")
    fv = commands.get(command)
    if fv is None:
        return match.group(0)
    words = [f"tfopt {command}"]
    for part in (p.strip() for p in match.group(2).split(",") if p.strip()):
        kwarg = _KWARG.fullmatch(part)
        if kwarg is None:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", part):
                return match.group(0)
            words.append(part.upper())  # model -> MODEL
        elif kwarg.group(1) in fv:
            words.append(_flag_value(kwarg.group(1), kwarg.group(2), fv))
        else:
            return match.group(0)  # an argument the command has no flag for: keep the Python form
    return "`" + " ".join(words) + "`"


def flag_hints(message: str, fv: flags.FlagValues,
               commands: Mapping[str, flags.FlagValues] | Callable[[], Mapping[str, flags.FlagValues]] = ()) -> str:
    """A library message as a CLI user reads it: keyword arguments that are flags of the command become flags.

    `pass write_unsupported=True` -> `pass --write_unsupported`; `Received: num_samples=0` ->
    `Received: --num_samples 0`; `tfopt.convert(model, mode='int8')` -> `tfopt convert MODEL --mode int8`
    (when `commands`, command name -> its flags, names it); a tuple of names prints as `a, b`, and shapes
    print `N` for an unknown size, not `None`.
    Keywords the command has no flag for stay as they are.
    """
    if "tfopt." in message:
        table = commands() if callable(commands) else commands
        if table:
            message = _CALL.sub(lambda m: _call_as_command(m, table), message)

    def one(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in fv or hasattr(fv[name], "tfopt_alias_of"):
            return match.group(0)
        return _flag_value(name, value, fv)

    message = _KWARG.sub(one, message)
    message = _WORDS.sub(lambda m: ", ".join(w[1:-1] for w in _QUOTED.findall(m.group(0))), message)
    return _SHAPE.sub(lambda m: m.group(0).replace("None", "N").replace(",)", ")"), message)


# Text that may hold a Python form worth rewriting (a keyword argument, a tfopt.<verb>(...) call, None, a tuple).
_PYTHONIC = re.compile(r"[a-z_]=|tfopt\.[a-z_]+\(|None|\('|\['")


class _FlagSpeaker:
    """A text stream that passes each write through `flag_hints` (the command's summaries and notes)."""

    def __init__(self, stream, fv: flags.FlagValues, commands) -> None:
        self._stream, self._fv, self._commands = stream, fv, commands

    def write(self, text: str) -> int:
        if _PYTHONIC.search(text):
            text = flag_hints(text, self._fv, self._commands)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def speak_flags(fv: flags.FlagValues, commands=()) -> Iterator[None]:
    """While active, what the command prints has its hints rewritten as flags (see `flag_hints`)."""
    with contextlib.redirect_stdout(_FlagSpeaker(sys.stdout, fv, commands)):
        yield


# ----------------------------------------------------------------------------- shared flag groups


def define_output_flag(fv: flags.FlagValues, help_text: str = "Output file.") -> None:
    flags.DEFINE_string("output", None, help_text, flag_values=fv)


def define_json_flag(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("json", None, "Also write the result as JSON to this path (- prints it to stdout).",
                        flag_values=fv)


def define_data_flag(fv: flags.FlagValues, help_text: str = "An .npz file with x_train, y_train, x_test, y_test.") -> None:
    flags.DEFINE_string("data", None, help_text, flag_values=fv)


def define_seed_flag(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=fv)


def define_unsafe_flag(fv: flags.FlagValues) -> None:
    flags.DEFINE_boolean(
        "unsafe", False, "Allow loading a model file whose layers carry Python code (Lambda, custom objects). "
        "Only for files you trust.", flag_values=fv)


def define_num_samples_flag(fv: flags.FlagValues, default: int, help_text: str) -> None:
    flags.DEFINE_integer("num_samples", default, help_text, lower_bound=1, flag_values=fv)


def define_layer_flags(fv: flags.FlagValues, *, include: bool = True, exclude: bool = True) -> None:
    """--include / --exclude: layer names or `re:<regex>`, separated by commas, repeatable."""
    text = ("Layers to {}: names or re:<regex> (full match), separated by commas; a comma inside {{}}, [] or () "
            "belongs to the regex, `\\,` is a literal comma. Repeatable.")
    if include:
        flags.DEFINE_multi_string("include", None, text.format("include"), flag_values=fv)
    if exclude:
        flags.DEFINE_multi_string("exclude", None, text.format("exclude"), flag_values=fv)


def define_training_flags(fv: flags.FlagValues, *, epochs: int, batch_size: int, learning_rate: float,
                          layers: bool = True) -> None:
    """MODEL --data --output --json --epochs --batch_size --learning_rate --seed --unsafe [--include --exclude]."""
    define_data_flag(fv)
    define_output_flag(fv, "The trained model to write (.keras or .h5).")
    define_json_flag(fv)
    flags.DEFINE_integer("epochs", epochs, "Training / fine-tuning epochs (>= 1).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch_size", batch_size, "Batch size.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("learning_rate", learning_rate, "Adam learning rate.", flag_values=fv)
    define_range_validator(fv, "learning_rate", 0, 10, low_open=True, high_open=True)
    define_seed_flag(fv)
    define_unsafe_flag(fv)
    if layers:
        define_layer_flags(fv)


def define_range_validator(fv: flags.FlagValues, name: str, low: float | None, high: float | None, *,
                           low_open: bool = False, high_open: bool = False) -> None:
    """A validator `low <(=) value <(=) high` for a number flag (None passes: 'not given')."""
    opening = "(" if low_open or low is None else "["
    closing = ")" if high_open or high is None else "]"
    text = f"{opening}{'-inf' if low is None else low}, {'inf' if high is None else high}{closing} (finite)"

    def check(value) -> bool:
        if value is None:
            return True
        if not math.isfinite(value):
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        return not (high is not None and (value >= high if high_open else value > high))

    flags.register_validator(name, check, message=f"must be in {text}", flag_values=fv)


# ----------------------------------------------------------------------------- renamed flags


def define_alias(fv: flags.FlagValues, old: str, new: str) -> None:
    """Keeps `--old` working as a deprecated spelling of `--new` (a one-line warning when used)."""
    original = fv[new]
    help_text = f"Deprecated spelling of --{new}."
    if original.boolean:
        flags.DEFINE_boolean(old, None, help_text, flag_values=fv)
    else:
        flags.DEFINE_flag(flags.Flag(original.parser, original.serializer, old, None, help_text), fv)
    fv[old].tfopt_alias_of = new


def alias_names(fv: flags.FlagValues) -> dict[str, str]:
    """{old: new} for the deprecated spellings defined on `fv`."""
    return {name: fv[name].tfopt_alias_of for name in list(fv) if hasattr(fv[name], "tfopt_alias_of")}


def resolve_aliases(fv: flags.FlagValues) -> None:
    """Moves values given under an old spelling to the new flag, with a warning; both at once is an error."""
    for old, new in alias_names(fv).items():
        if not fv[old].present:
            continue
        if fv[new].present:
            raise CLIError(f"--{old} and --{new} are the same flag (--{old} is its old spelling); pass only --{new}.")
        warn(f"--{old} is deprecated; use --{new}.")
        fv[new].value = fv[old].value
        fv[new].present = 1
    fv.validate_all_flags()


def canonical_mode(value: str | None, allowed: tuple[str, ...], default: str) -> str:
    """--mode value; `16x8` is accepted as the old spelling of `int16x8` (with a warning)."""
    mode = value or default
    if mode == "16x8":
        warn("--mode 16x8 is deprecated; use --mode int16x8.")
        mode = "int16x8"
    if mode not in allowed:
        raise CLIError(f"unknown --mode {mode!r}; expected one of {', '.join(allowed)}.")
    return mode


def layer_rule(values: list[str] | None, label: str) -> list[str] | None:
    """--include / --exclude values -> a list of rules; commas split outside brackets, regexes are checked."""
    if not values:
        return None
    rules: list[str] = []
    for value in values:
        rules.extend(split_rules(value))
    for rule in rules:
        if rule.startswith("re:"):
            try:
                re.compile(rule[3:])
            except re.error as err:
                raise CLIError(f"--{label} {rule!r} is not a valid regular expression ({err}).") from err
    return rules or None


# ----------------------------------------------------------------------------- model files


def load_keras(path: str, *, unsafe: bool = False):
    """Loads a .keras / .h5 model for a command, with one-line errors for empty, text or truncated files."""
    from tfopt import _keras

    check_model_file(path, (".keras", ".h5", ".hdf5"))
    return _keras.load_model(path, safe_mode=not unsafe)


_H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_model_file(path: str, suffixes: tuple[str, ...]) -> None:
    """Refuses a missing, empty or mis-typed model file before a loader turns it into a long error."""
    import zipfile

    if not os.path.exists(path):
        raise MissingFileError(f"model file not found: {path!r}. Pass an existing {' / '.join(suffixes)} file.")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")) and ".savedmodel" in suffixes:
            return
        raise CLIError(f"{path!r} is a folder; expected a {' / '.join(s for s in suffixes if s != '.savedmodel')} file.")
    if not path.endswith(tuple(s for s in suffixes if s != ".savedmodel")):
        raise CLIError(f"{path!r} is not a {' / '.join(suffixes)} file (judged by its name).")
    size = os.path.getsize(path)
    if size == 0:
        raise CLIError(f"model file {path!r} is empty (0 bytes); it was not written completely. Re-save the model.")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise CLIError(f"{path!r} is not a valid .keras file (a .keras file is a zip archive; this one is truncated "
                       "or another format). Re-save it with model.save(path).")
    if path.endswith((".h5", ".hdf5")) and head != _H5_SIGNATURE:
        raise CLIError(f"{path!r} is not an HDF5 (.h5) file; it may be truncated or another format.")
    if path.endswith(".tflite") and (size < 8 or head[4:8] != b"TFL3"):
        raise CLIError(f"{path!r} is not a TFLite flatbuffer (no TFL3 identifier); pass a .tflite written by a "
                       "LiteRT converter.")


def save_model(model, path: str) -> str:
    """Saves a Keras model to .keras / .h5 atomically; returns the path."""
    if not path or not path.endswith((".keras", ".h5")):
        raise CLIError(f"--output must end in .keras (or .h5). Received: {path!r}.")
    return save_keras_model(model, path)
