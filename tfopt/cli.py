"""The `tfopt` command line: `tfopt <command> [positional args] [--flags]`.

Commands are modules in `tfopt._cli`; each defines NAME, HELP, its flags and
`main(args) -> int`. User errors print one line and exit 2; no tracebacks.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, logging

from tfopt._cli import common

# Command name -> module under tfopt._cli. Every module is imported at start so
# that absl knows all flags before parsing.
COMMANDS = {
    "demo": "demo",
    "convert": "convert",
    "bench": "bench",
    "prune": "prune",
    "distill": "distill",
    "export-onnx": "export_onnx",
    "profile": "profile",
    "decompose": "decompose",
    "export-micro": "export_micro",
    "quantize": "quantize",
    "cluster": "cluster",
}


def _modules():
    return {name: importlib.import_module(f"tfopt._cli.{module}") for name, module in COMMANDS.items()}


def _usage(modules) -> str:
    lines = ["usage: tfopt <command> [args] [--flags]", "", "commands:"]
    for name, module in modules.items():
        lines.append(f"  {name:<14} {module.HELP}")
    lines.append("")
    lines.append("Run `tfopt <command> --helpfull` for the flags.")
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    modules = _modules()
    if len(argv) < 2 or argv[1] in ("help", "-h"):
        print(_usage(modules))
        return 0 if len(argv) >= 2 else 2
    command, args = argv[1], argv[2:]
    if command not in modules:
        print(f"tfopt: error: unknown command {command!r}. Expected one of: {', '.join(modules)}.", file=sys.stderr)
        return 2
    try:
        return int(modules[command].main(args) or 0)
    except (common.CLIError, ValueError, TypeError, FileNotFoundError, ImportError, NotImplementedError, RuntimeError) as err:
        print(f"tfopt {command}: error: {err}", file=sys.stderr)
        return 2


def run() -> None:
    """Console-script entry point."""
    _modules()  # define every command's flags before absl parses argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the CLI process only, never at import tfopt
    app.run(lambda argv: sys.exit(_main(_quiet(argv))))


def _quiet(argv: list[str]) -> list[str]:
    """Keeps absl / TensorFlow INFO chatter out of the command's output."""
    logging.set_verbosity(logging.WARNING)
    return argv


if __name__ == "__main__":
    run()
