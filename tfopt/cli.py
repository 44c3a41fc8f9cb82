"""The `tfopt` command line: `tfopt <command> [positional args] [--flags]`.

Commands are modules in `tfopt._cli` (the convention is written at the top of
`tfopt/_cli/common.py`): each has its own flags, parsed here against its own
`absl.flags.FlagValues`. A user mistake (a `tfopt.errors.TfoptError`, an unknown
flag, another command's flag) prints `tfopt <command>: error: <one line>` and
exits 2; any other exception is a bug in tfopt and keeps its traceback.

Flags are absl's, with three additions: `--no-FLAG` is accepted next to absl's
`--noFLAG` for on/off flags, a misspelled flag or command gets a "did you mean",
and `--json -` prints the JSON to stdout (the command's other lines then go to
stderr, so stdout is JSON only). Fix hints in error messages are spoken as the
command's own flags (`common.flag_hints`), not as Python keyword arguments.

Exit status 4: a training command's work died by a signal inside TensorFlow
twice (the second time with `TF_ENABLE_ONEDNN_OPTS=0`), or once with oneDNN
already off (`tfopt._cli.supervise`). `TFOPT_NO_SUPERVISOR=1` runs training
commands in-process.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import os
import re
import sys

from absl import flags

from tfopt._cli import common
from tfopt._version import __version__
from tfopt.errors import TfoptError

# Command name -> module under tfopt._cli, in the order `tfopt help` lists them.
COMMANDS = {
    "demo": "demo",
    "convert": "convert",
    "bench": "bench",
    "profile": "profile",
    "prune": "prune",
    "cluster": "cluster",
    "qat": "qat",
    "decompose": "decompose",
    "distill": "distill",
    "optimize": "optimize",
    "export-onnx": "export_onnx",
    "export-micro": "export_micro",
    "quantize": "quantize",
}

HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")
VERSION_FLAGS = ("--version", "-V", "version")


def command_module(name: str):
    """The module of command `name`, or None when there is no such command (or its module is not installed)."""
    module = COMMANDS.get(name)
    if module is None or importlib.util.find_spec(f"tfopt._cli.{module}") is None:
        return None
    return importlib.import_module(f"tfopt._cli.{module}")


def command_names() -> list[str]:
    return [name for name, module in COMMANDS.items() if importlib.util.find_spec(f"tfopt._cli.{module}") is not None]


def command_flags(module) -> flags.FlagValues:
    """A fresh FlagValues holding only the flags of one command."""
    fv = flags.FlagValues()
    module.define_flags(fv)
    return fv


def usage() -> str:
    lines = ["usage: tfopt <command> [args] [--flags]", "", "commands:"]
    for name in command_names():
        lines.append(f"  {name:<14} {command_module(name).HELP}")
    lines += ["", "Run `tfopt <command> --help` for its flags; `tfopt --version` prints the version."]
    return "\n".join(lines)


def command_help(name: str, module, fv: flags.FlagValues) -> str:
    """`tfopt <command> --help`: the usage line of the module docstring, then every flag with its default."""
    doc = (module.__doc__ or "").strip().splitlines()
    lines = [doc[0] if doc else f"tfopt {name}", "", module.HELP, "", "flags:"]
    aliases = common.alias_names(fv)
    for flag_name in sorted(set(fv) - set(aliases)):
        flag = fv[flag_name]
        if flag.name != flag_name:  # a short name
            continue
        spelled = f"--[no]{flag_name}" if flag.boolean else f"--{flag_name}"
        default = "" if flag.default is None else f" (default: {_shown_default(flag)})"
        text = " ".join(flag.help.split()).replace("; repeat this option to specify a list of values", "")
        lines.append(f"  {spelled:<28} {text}{default}")
    if any(fv[flag_name].boolean for flag_name in set(fv) - set(aliases)):
        lines += ["", "on/off flags: --FLAG turns one on; --noFLAG or --no-FLAG turns it off."]
    if aliases:
        lines += ["", "deprecated spellings (still accepted, with a warning):"]
        lines += [f"  --{old:<26} use --{new}" for old, new in sorted(aliases.items())]
    return "\n".join(lines)


def _shown_default(flag) -> str:
    """A flag's default as the user would type it: `on` / `off`, `1`, `converter` (absl quotes it: `'1'`)."""
    if flag.boolean:
        return "on" if flag.default else "off"
    text = flag.default_as_str or str(flag.default)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text


def valid_flags(fv: flags.FlagValues) -> str:
    aliases = common.alias_names(fv)
    return ", ".join(f"--{name}" for name in sorted(set(fv) - set(aliases)) if fv[name].name == name)


def _owners(flag_name: str, exclude: str) -> list[str]:
    """Commands that define `flag_name` (to say where a foreign flag belongs)."""
    owners = []
    for name in command_names():
        if name != exclude and flag_name in command_flags(command_module(name)):
            owners.append(name)
    return owners


def spelled_flags(fv: flags.FlagValues) -> list[str]:
    """Every accepted spelling of the command's flags (no dashes): `epochs`, and `unsafe`, `nounsafe`, `no-unsafe`."""
    aliases = common.alias_names(fv)
    names = []
    for name in sorted(set(fv) - set(aliases)):
        if fv[name].name != name:
            continue
        names.append(name)
        if fv[name].boolean:
            names += [f"no{name}", f"no-{name}"]
    return names


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """The closest of `choices` to a misspelled `word` (difflib), or None when nothing is close."""
    normal = word.replace("-", "_")
    if normal != word and normal in choices:
        return normal  # --per-channel-dense -> per_channel_dense
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return matches[0] if matches else None


def dash_no(fv: flags.FlagValues, args: list[str]) -> list[str]:
    """`--no-FLAG` -> absl's `--noFLAG` for on/off flags of the command; everything else unchanged.

    Stops at `--` (what follows is positional). `--no-FLAG` for a flag that takes a value is an error.
    """
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        match = re.fullmatch(r"(--?)no-([A-Za-z0-9_]+)(=.*)?", arg)
        if not match or match.group(2) not in fv:
            continue
        flag_name = match.group(2)
        if not fv[flag_name].boolean:
            raise common.CLIError(f"--no-{flag_name}: only on/off flags take --no-; --{flag_name} takes a value "
                                  f"(--{flag_name} VALUE). Leave it out to keep its default.")
        if match.group(3):
            raise common.CLIError(f"{arg}: --no-{flag_name} takes no value; pass --{flag_name} or --no-{flag_name}.")
        out[i] = f"{match.group(1)}no{flag_name}"
    return out


def parse_flags(name: str, fv: flags.FlagValues, args: list[str]) -> list[str]:
    """Parses `args` against the command's flags; returns the positional arguments."""
    try:
        positional = fv([f"tfopt {name}", *dash_no(fv, args)])[1:]
    except flags.UnrecognizedFlagError as err:
        flag_name = (err.flagname or "").lstrip("-")
        bare = re.sub(r"^no-?", "", flag_name) or flag_name
        owners = _owners(flag_name, name) or _owners(bare, name)
        where = f" (it belongs to tfopt {' / '.join(owners)})" if owners else ""
        guess = None if owners else did_you_mean(flag_name, spelled_flags(fv))
        hint = f" Did you mean --{guess}?" if guess else ""
        raise common.CLIError(f"unknown flag --{flag_name}{where}.{hint} Valid flags: {valid_flags(fv)}.") from None
    except flags.Error as err:
        raise common.CLIError(_flag_message(str(err))) from None
    try:
        common.resolve_aliases(fv)
    except flags.IllegalFlagValueError as err:
        raise common.CLIError(_flag_message(str(err))) from None
    return positional


@functools.cache
def _flag_sets() -> dict[str, flags.FlagValues]:
    """Command name -> its flags, for hints that name another command (`tfopt.convert(...)` -> `tfopt convert`)."""
    return {name: command_flags(command_module(name)) for name in command_names()}


def _flag_message(text: str) -> str:
    """absl's 'flag --x=1: reason' -> '--x=1: reason'."""
    return re.sub(r"^flag (--\S+)", r"\1", one_line(text))


def one_line(text: str) -> str:
    """One line of plain text: no ANSI colours, no line breaks, at most 1,000 characters."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    text = " ".join(text.split())
    return text if len(text) <= 1000 else text[:997] + "..."


def main(argv: list[str] | None = None) -> int:
    """Runs `tfopt <argv...>` (argv without the program name) and returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # libraries reading absl's global flags get their defaults
    if argv and argv[0] in VERSION_FLAGS:
        print(f"tfopt {__version__}")
        return 0
    if not argv or argv[0] in ("help", *HELP_FLAGS):
        if len(argv) > 1 and command_module(argv[1]) is not None:
            module = command_module(argv[1])
            print(command_help(argv[1], module, command_flags(module)))
            return 0
        print(usage())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    module = command_module(name)
    if module is None:
        guess = did_you_mean(name, command_names())
        hint = f" Did you mean `tfopt {guess}`?" if guess else ""
        print(f"tfopt: error: unknown command {name!r}.{hint} Expected one of: {', '.join(command_names())}.",
              file=sys.stderr)
        return 2
    fv = command_flags(module)
    before_dashes = args[: args.index("--")] if "--" in args else args
    if any(arg in HELP_FLAGS for arg in before_dashes):
        print(command_help(name, module, fv))
        return 0
    try:
        positional = parse_flags(name, fv, args)
        with contextlib.ExitStack() as stack:
            if "json" in fv and fv["json"].value == common.STDOUT:
                stack.enter_context(common.json_to_stdout())  # stdout: the JSON only; other lines go to stderr
            stack.enter_context(common.speak_flags(fv, _flag_sets))  # summaries' hints as this command's flags
            return int(module.main(positional, fv) or 0)
    except TfoptError as err:
        print(f"tfopt {name}: error: {common.flag_hints(one_line(str(err)), fv, _flag_sets)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tfopt {name}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the CLI process only, never at import tfopt
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # keeps absl / TensorFlow INFO chatter out of the output
    try:
        status = main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:  # `tfopt help | head`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    run()
