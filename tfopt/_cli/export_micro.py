"""`tfopt export-micro MODEL.tflite --output DIR [--data DATA.npz] [--json OUT.json]`.

Runs the model in the TFLite Micro interpreter, then writes `<name>_model_data.cc/.h`.
Exit code 0 when TFLite Micro runs the model, 1 when it cannot (the unsupported
ops and their fixes are printed and in the JSON), 2 for a usage error.
"""

from __future__ import annotations

import os
import re

from absl import flags

from tfopt._cli.common import FLAGS, CLIError, load_npz, write_json

NAME = "export-micro"
HELP = "check a .tflite on the TFLite Micro interpreter and write it as a C/C++ array"

flags.DEFINE_string(
    "micro_name",
    None,
    "C name of the array (<name>_tflite). Default: from the model file name.",
)
flags.DEFINE_integer(
    "micro_samples",
    100,
    "Inputs from --data x_test compared between TFLite Micro and LiteRT.",
)
flags.DEFINE_boolean(
    "micro_write_unsupported",
    False,
    "Write the C files even when TFLite Micro cannot run the model.",
)


def default_name(path: str) -> str:
    """A C identifier from a file name: 'my-model.v2.tflite' -> 'my_model_v2'."""
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0]) or "model"
    return f"m_{stem}" if stem[0].isdigit() else stem


def main(args: list[str]) -> int:
    from tfopt.export.micro import export_micro

    if len(args) != 1:
        raise CLIError(
            f"export-micro takes one MODEL.tflite path; received {args}. Usage: tfopt export-micro MODEL.tflite --output DIR"
        )
    if not FLAGS.output:
        raise CLIError(
            "pass --output DIR (the folder for <name>_model_data.cc and .h)."
        )
    data = None
    if FLAGS.data:
        data = load_npz(FLAGS.data, required=("x_test",))["x_test"]
    result = export_micro(
        args[0],
        FLAGS.output,
        name=FLAGS.micro_name or default_name(args[0]),
        data=data,
        num_samples=FLAGS.micro_samples,
        write_unsupported=FLAGS.micro_write_unsupported,
    )
    print(result.summary())
    if FLAGS.json:
        write_json(FLAGS.json, {"model": args[0], **result.to_dict()})
    return 0 if result.ok else 1
